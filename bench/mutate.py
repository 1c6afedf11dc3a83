"""Mutations for bench/fuzz.py: of protobuf wire bytes (framing-aware: fields duplicated,
dropped, inserted, lengths and varints corrupted at any depth), of ModelInferRequest messages
(huge declared shapes, wrong datatypes, mismatched tensor data, odd names and parameters), of
KServe v2 JSON bodies (the same, plus deep nesting, duplicate keys, odd numbers) and of bytes
(bit flips, truncation, insertion). Every choice comes from the `random.Random` passed in, so a
seed gives the same inputs again."""

from __future__ import annotations

import json
import random

from pyserve.errors import ServerError
from pyserve.frontends.codec import _read_varint  # the server's own, for the wire
from pyserve.protocol.wire import varint

EXTREME_DIMS = [0, -1, -2, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -2**63]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES", "", "int32", "FP32\x00", "STRING",
             "X" * 300]
NAMES = ["", "simple", "simple/../simple", "../etc/passwd", "a\x00b", "x" * 5000, "INPUT0",
         "INPUT1", "OUTPUT0", "image", "mnist_cnn", "identity_bytes", "add_sub_python",
         "\u00e9\u4e2d", "%2e%2e", " simple"]
VERSIONS = ["", "1", "0", "-1", "2", "01", "1 ", "abc", "99999999999999999999", "1\x00"]
PARAMETER_KEYS = ["sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                  "binary_data_size", "binary_data_output", "classification",
                  "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size",
                  "binary_data", "headers", "random_key", ""]
BIG_INTS = [0, -1, 1, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1]


def random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


# --- bytes -----------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    op = rng.randrange(5)
    if op == 0 and data:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1 and data:  # truncation
        del data[rng.randrange(len(data)):]
    elif op == 2:  # insertion
        at = rng.randint(0, len(data))
        data[at:at] = random_bytes(rng, rng.choice([1, 4, 16, 256]))
    elif op == 3 and data:  # a run overwritten with an interesting byte
        at = rng.randrange(len(data))
        byte = bytes([rng.choice([0, 0x7F, 0x80, 0xFF])])
        data[at:at + rng.randint(1, 16)] = byte * rng.randint(1, 16)
    elif data:  # a slice repeated
        at = rng.randrange(len(data))
        chunk = data[at:at + rng.randint(1, 64)]
        data[at:at] = chunk * rng.randint(1, 50)
    return bytes(data)


# --- protobuf wire format --------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    return varint(value & ((1 << 64) - 1))  # negative numbers as protobuf sends them


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return _read_varint(memoryview(data), pos)
    except ServerError:
        raise ValueError("bad varint") from None


def parse_fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, payload) of each field; ValueError if not a message."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field 0")
        if wire == 0:
            start = pos
            _, pos = read_varint(data, pos)
        elif wire == 1:
            start, pos = pos, pos + 8
        elif wire == 5:
            start, pos = pos, pos + 4
        elif wire == 2:
            length, start = read_varint(data, pos)
            pos = start + length
        else:
            raise ValueError("group or bad wire type")
        if pos > len(data):
            raise ValueError("truncated")
        fields.append((number, wire, data[start:pos]))
    return fields


def encode_field(number: int, wire: int, payload: bytes, length: int | None = None) -> bytes:
    key = encode_varint(number << 3 | wire)
    if wire == 2:
        return key + encode_varint(len(payload) if length is None else length) + payload
    return key + payload


def mutate_wire(data: bytes, rng: random.Random, depth: int = 0) -> bytes:
    """One framing-aware change somewhere in a protobuf message; the enclosing lengths are
    recomputed, so the change lands where it was meant to."""
    try:
        fields = parse_fields(data)
    except ValueError:
        return mutate_bytes(data, rng)
    if not fields:
        return encode_field(rng.randint(1, 20), rng.choice([0, 2]), b"\x01")
    i = rng.randrange(len(fields))
    number, wire, payload = fields[i]
    encoded = [encode_field(*f) for f in fields]
    nested = wire == 2 and depth < 4 and rng.random() < 0.6
    if nested:
        try:
            parse_fields(payload)
        except ValueError:
            nested = False
    op = "nest" if nested else rng.choice(["dup", "drop", "length", "varint", "payload",
                                            "insert", "swap", "wire"])
    if op == "nest":
        encoded[i] = encode_field(number, wire, mutate_wire(payload, rng, depth + 1))
    elif op == "dup":
        encoded.insert(i, encoded[i] if rng.random() < 0.5 else encode_field(
            number, wire, mutate_bytes(payload, rng) if wire == 2 else payload))
    elif op == "drop":
        del encoded[i]
    elif op == "length" and wire == 2:
        wrong = rng.choice([0, 1, len(payload) - 1, len(payload) + 1, len(payload) * 2,
                            2**31 - 1, 2**31, 2**32, 2**63, 2**64 - 1])
        encoded[i] = encode_field(number, wire, payload, length=max(wrong, 0))
    elif op == "varint":
        encoded[i] = encode_varint(number << 3) + encode_varint(rng.choice(BIG_INTS))
    elif op == "payload" and wire == 2:
        encoded[i] = encode_field(number, wire, mutate_bytes(payload, rng))
    elif op == "insert":
        extra_wire = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        extra = encode_varint(rng.randint(1, 2**29 - 1) << 3 | extra_wire) + random_bytes(
            rng, rng.choice([0, 1, 4, 8, 16]))
        encoded.insert(rng.randint(0, len(encoded)), extra)
    elif op == "swap" and len(encoded) > 1:
        j = rng.randrange(len(encoded))
        encoded[i], encoded[j] = encoded[j], encoded[i]
    else:  # the same payload under another wire type
        encoded[i] = encode_varint(number << 3 | rng.choice([0, 1, 2, 5])) + payload
    return b"".join(encoded)


# --- ModelInferRequest -----------------------------------------------------------------------

def set_parameter(parameters, key: str, rng: random.Random) -> None:
    choice = rng.randrange(5)
    if choice == 0:
        parameters[key].bool_param = rng.random() < 0.5
    elif choice == 1:
        parameters[key].int64_param = rng.choice(BIG_INTS[:8]) if rng.random() < 0.8 else -1
    elif choice == 2:
        parameters[key].string_param = rng.choice(NAMES)
    elif choice == 3:
        parameters[key].double_param = rng.choice([0.0, -1.0, 1e300, float("nan"), 0.5])
    else:
        parameters[key].uint64_param = rng.choice([0, 1, 2**64 - 1])


def mutate_request(request, rng: random.Random) -> None:
    """One semantic change to a ModelInferRequest (tritonclient's message), in place."""
    op = rng.randrange(12)
    tensor = request.inputs[rng.randrange(len(request.inputs))] if request.inputs else None
    if op == 0 and tensor is not None:  # a huge or odd declared shape
        shape = list(tensor.shape)
        how = rng.randrange(3)
        if how == 0 and shape:
            shape[rng.randrange(len(shape))] = rng.choice(EXTREME_DIMS)
        elif how == 1:
            shape = [rng.choice([2**20, 2**31, 2**40])] * rng.randint(2, 4)
        else:
            shape = shape + [1] * rng.choice([1, 8, 64, 1000]) if rng.random() < 0.5 else []
        del tensor.shape[:]
        tensor.shape.extend(shape)
    elif op == 1 and tensor is not None:
        tensor.datatype = rng.choice(DATATYPES)
    elif op == 2 and request.raw_input_contents:  # raw data of another size
        i = rng.randrange(len(request.raw_input_contents))
        raw = request.raw_input_contents[i]
        request.raw_input_contents[i] = rng.choice([b"", raw[:-1], raw + b"\x00", raw * 2,
                                                    raw[: len(raw) // 2], mutate_bytes(raw, rng)])
    elif op == 3:  # raw entries added or removed
        if request.raw_input_contents and rng.random() < 0.5:
            del request.raw_input_contents[rng.randrange(len(request.raw_input_contents))]
        else:
            request.raw_input_contents.append(random_bytes(rng, rng.choice([0, 4, 64, 4096])))
    elif op == 4 and tensor is not None:  # typed contents beside, or instead of, raw ones
        contents = tensor.contents
        kind = rng.randrange(5)
        values = rng.randint(0, 70)
        if kind == 0:
            contents.int_contents.extend(rng.randint(-2**31, 2**31 - 1) for _ in range(values))
        elif kind == 1:
            contents.fp32_contents.extend(rng.random() for _ in range(values))
        elif kind == 2:
            contents.bytes_contents.extend(random_bytes(rng, rng.randint(0, 8))
                                           for _ in range(values))
        elif kind == 3:
            contents.int64_contents.extend(rng.choice(BIG_INTS[:8]) for _ in range(values))
        else:
            contents.bool_contents.extend(rng.random() < 0.5 for _ in range(values))
        if rng.random() < 0.5:
            del request.raw_input_contents[:]
    elif op == 5:
        request.model_name = rng.choice(NAMES)
    elif op == 6:
        request.model_version = rng.choice(VERSIONS)
    elif op == 7:
        target = request.parameters if tensor is None or rng.random() < 0.5 else tensor.parameters
        set_parameter(target, rng.choice(PARAMETER_KEYS), rng)
    elif op == 8:  # requested outputs: unknown, duplicated, classification
        output = request.outputs.add(name=rng.choice(["OUTPUT0", "OUTPUT1", "logits", "nope",
                                                      ""]))
        if rng.random() < 0.5:
            output.parameters["classification"].int64_param = rng.choice(
                [0, 1, 3, 10, 11, -1, 2**31, 2**63 - 1])
        if rng.random() < 0.3:
            request.outputs.add(name=output.name)
    elif op == 9 and tensor is not None:  # an input repeated, renamed or dropped
        how = rng.randrange(3)
        if how == 0:
            request.inputs.add().CopyFrom(tensor)
        elif how == 1:
            tensor.name = rng.choice(NAMES)
        else:
            request.inputs.remove(tensor)
    elif op == 10:
        request.id = rng.choice(["", "x" * 100000, "\u00e9", "a\x00b"])
    else:  # everything emptied but the name
        del request.inputs[:]
        if rng.random() < 0.5:
            del request.raw_input_contents[:]


# --- JSON bodies -----------------------------------------------------------------------------

def odd_json_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2**63, 2**64, 1e308, -1.5, "", "x" * 1000, [], {},
                       [[[[1]]]], {"a": 1}, "\u0000", [None] * 10])


def mutate_json(document: dict, rng: random.Random) -> dict:
    """One semantic change to an infer body's JSON (a copy)."""
    document = json.loads(json.dumps(document))
    inputs = document.get("inputs") or [{}]
    entry = inputs[rng.randrange(len(inputs))]
    op = rng.randrange(10)
    if op == 0:
        shape = list(entry.get("shape", [1]))
        if shape and rng.random() < 0.6:
            shape[rng.randrange(len(shape))] = rng.choice(EXTREME_DIMS + [1.5, "2", None, 2**64])
        else:
            shape = [rng.choice([2**20, 2**31, 2**40])] * rng.randint(2, 4)
        entry["shape"] = shape
    elif op == 1:
        entry["datatype"] = rng.choice(DATATYPES + [5, None])
    elif op == 2 and "data" in entry:
        data = entry["data"]
        how = rng.randrange(4)
        if how == 0:
            entry["data"] = data[:-1]
        elif how == 1:
            entry["data"] = data + data
        elif how == 2 and data:
            data[rng.randrange(len(data))] = odd_json_value(rng)
        else:
            entry["data"] = odd_json_value(rng)
    elif op == 3:
        parameters = entry.setdefault("parameters", {}) if rng.random() < 0.5 else \
            document.setdefault("parameters", {})
        if isinstance(parameters, dict):
            parameters[rng.choice(PARAMETER_KEYS)] = odd_json_value(rng)
    elif op == 4:
        entry[rng.choice(["name", "datatype", "shape", "data", "parameters"])] = \
            odd_json_value(rng)
    elif op == 5:
        document[rng.choice(["inputs", "outputs", "id", "parameters"])] = odd_json_value(rng)
    elif op == 6:
        document["outputs"] = [{"name": rng.choice(["OUTPUT0", "logits", "nope", ""]),
                                "parameters": {"classification": rng.choice(
                                    [0, 1, 3, -1, 2**31, 2**63 - 1]),
                                    "binary_data": rng.random() < 0.5}}
                               for _ in range(rng.randint(1, 3))]
    elif op == 7:
        inputs.append(json.loads(json.dumps(entry)))
        document["inputs"] = inputs
    elif op == 8:
        entry.pop(rng.choice(["name", "datatype", "shape", "data"]), None)
    else:
        entry["name"] = rng.choice(NAMES)
    return document


def mutate_json_text(text: bytes, rng: random.Random) -> bytes:
    """Changes a JSON parser sees: deep nesting, duplicate keys, odd numbers, bad UTF-8."""
    op = rng.randrange(6)
    if op == 0:  # nesting deep enough to overflow a recursive parser's stack
        depth = rng.choice([1000, 100000, 1000000])
        return text.replace(b'"data": ', b'"data": ' + b"[" * depth, 1)
    if op == 1:
        return text.replace(b'{"name"', b'{"name": "INPUT1", "name"', 1)
    if op == 2:
        number = rng.choice([b"1e400", b"-0", b"123456789012345678901234567890", b"NaN",
                             b"Infinity", b"0x10", b"1.", b"-", b"1e-400"])
        return text.replace(b"[", b"[" + number + b", ", 1)
    if op == 3:
        return text.replace(b'"', b'"\xff\xfe', 1)
    if op == 4:
        return text + rng.choice([b"}", b"garbage", b"\x00", b" " * 1000])
    return mutate_bytes(text, rng)
