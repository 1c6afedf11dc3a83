"""Protobuf wire-format pieces for the messages pyserve assembles or splits itself, server
and client side (raw tensors stay out of protobuf's copies)."""

from __future__ import annotations

LENGTH_DELIMITED = 2
RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    return varint(field << 3 | wire_type)
