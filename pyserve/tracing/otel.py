"""`--trace-config mode=opentelemetry`: each finished trace as Triton's spans, exported over
OTLP/HTTP through the OpenTelemetry SDK (the `trace` extra).

Triton's shape: a root span "InferRequest" (the client's `traceparent` its parent, when the
request carried one), a span named after the model from REQUEST_START to REQUEST_END with the
triton.* attributes, and inside it a span "compute" from COMPUTE_START to COMPUTE_END; each
timestamp is an event of the innermost span open at the time."""

from __future__ import annotations

import time

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as e:  # said once, at startup, by the caller
    raise ImportError("--trace-config mode=opentelemetry needs the OpenTelemetry SDK: "
                      "pip install 'pyserve[trace]'") from e

TRACER_NAME = "triton-server"  # Triton's kTritonTracer
DEFAULT_URL = "http://localhost:4318/v1/traces"  # the OTLP/HTTP exporter's default
_COMPUTE = {"COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"}
_REQUEST = {"REQUEST_START", "QUEUE_START", "REQUEST_END"}


class OpenTelemetryExport:
    def __init__(self, options: list[tuple[str, str]]) -> None:
        url, attributes, bsp = DEFAULT_URL, {"service.name": "triton-inference-server"}, {}
        for key, value in options:
            if key == "url":
                url = value
            elif key == "resource":
                name, _, attribute = value.partition("=")
                attributes[name] = attribute
            elif key.startswith("bsp_"):
                bsp[key] = int(value)
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url),
            max_queue_size=bsp.get("bsp_max_queue_size", 2048),
            schedule_delay_millis=bsp.get("bsp_schedule_delay", 5000),
            max_export_batch_size=bsp.get("bsp_max_export_batch_size", 512)))
        self._tracer = self._provider.get_tracer(TRACER_NAME)
        self._propagator = TraceContextTextMapPropagator()
        # The core stamps with the steady clock (CLOCK_MONOTONIC); spans take wall time.
        self._offset = time.time_ns() - time.monotonic_ns()

    def export(self, record) -> None:
        """One finished trace (writer.Record) as spans."""
        stamps = sorted(record.timestamps, key=lambda s: s[1])
        if not stamps:
            return
        wall = {name: ns + self._offset for name, ns in stamps}
        parent = (self._propagator.extract({"traceparent": record.traceparent})
                  if record.traceparent else None)
        kind = otel_trace.SpanKind.SERVER
        root = self._tracer.start_span("InferRequest", context=parent, kind=kind,
                                       start_time=stamps[0][1] + self._offset)
        request = compute = None
        if "REQUEST_START" in wall:
            attributes = {"triton.model_name": record.model,
                          "triton.model_version": record.version,
                          "triton.trace_id": record.id, "triton.trace_parent_id": 0}
            if record.request_id:
                attributes["triton.request_id"] = record.request_id
            request = self._tracer.start_span(
                record.model, context=otel_trace.set_span_in_context(root), kind=kind,
                attributes=attributes, start_time=wall["REQUEST_START"])
        if request is not None and "COMPUTE_START" in wall:
            compute = self._tracer.start_span(
                "compute", context=otel_trace.set_span_in_context(request), kind=kind,
                start_time=wall["COMPUTE_START"])
        for name, ns in stamps:
            span = (compute if name in _COMPUTE and compute is not None else
                    request if name in _REQUEST and request is not None else root)
            span.add_event(name, timestamp=ns + self._offset)
        if compute is not None:
            compute.end(end_time=wall.get("COMPUTE_END", stamps[-1][1] + self._offset))
        if request is not None:
            request.end(end_time=wall.get("REQUEST_END", stamps[-1][1] + self._offset))
        root.end(end_time=stamps[-1][1] + self._offset)

    def shutdown(self) -> None:
        self._provider.shutdown()  # exports what the batch span processor still holds
