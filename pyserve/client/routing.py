"""Helpers for clients of pyserve (and of Triton) behind a load balancer.

A sequence model keeps each sequence's state on one replica, so every request of a sequence
must reach the replica that saw its start. The correlation ID travels in the request body,
where proxies do not look; `sequence_headers` gives the header to send with it, for proxies
that hash on a header (Envoy's ring hash, Istio's consistentHash.httpHeaderName).
"""

from __future__ import annotations

SEQUENCE_ID_HEADER = "x-sequence-id"


def sequence_headers(sequence_id: int | str,
                     headers: dict[str, str] | None = None) -> dict[str, str]:
    """`headers` plus the sticky-routing header for `sequence_id`: pass the result as
    `headers=` to tritonclient's infer, async_infer or async_stream_infer (HTTP headers or gRPC
    metadata). A sequence ID of 0 or "" means no sequence: no header is added."""
    merged = dict(headers or {})
    if sequence_id not in (0, ""):
        merged[SEQUENCE_ID_HEADER] = str(sequence_id)
    return merged
