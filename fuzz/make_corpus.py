"""Seed inputs for pyserve's fuzz targets, made from requests like the tests send.

    python fuzz/make_corpus.py SEEDS_DIR                 # raw seeds, SEEDS_DIR/<target>/
    python fuzz/make_corpus.py SEEDS_DIR --merge BUILD   # and minimize them into fuzz/corpus/

--merge runs each target of BUILD (fuzz/CMakeLists.txt built with clang) with -merge=1 over
the seeds, adding to fuzz/corpus/<target>/ only the seeds that bring coverage it lacks (what
is committed); fuzz_config.py runs under the Python given by --python (atheris installed).

gRPC messages are serialized by pyserve.protocol's ModelInferRequest when pyserve imports here
(protobuf and the built descriptors), and by hand otherwise, with pyserve/protocol/wire.py's
varints and keys; HTTP bodies, TorchServe frames and configs are written out directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from pyserve_protos import load_wire, provide_descriptors  # noqa: E402

key, varint = load_wire().key, load_wire().varint
try:  # needs protobuf (and grpcio-tools when this checkout was not built)
    provide_descriptors()
    from pyserve.protocol import pb
except Exception:  # noqa: BLE001 - hand-built wire bytes only
    pb = None

TARGETS = ["fuzz_grpc_request", "fuzz_http_infer", "fuzz_predictions_frame", "fuzz_validate",
           "fuzz_config"]

# --- protobuf wire bytes, by hand ------------------------------------------------------------

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def field(number: int, data: bytes) -> bytes:
    return key(number, LENGTH) + varint(len(data)) + data


def int64(value: int) -> bytes:  # int32/int64 varints carry negatives in 64 bits
    return varint(value & 0xFFFFFFFFFFFFFFFF)


def param(value) -> bytes:  # InferParameter
    if isinstance(value, bool):
        return key(1, VARINT) + varint(int(value))
    if isinstance(value, int):
        return key(2, VARINT) + int64(value) if value < 2**63 else key(5, VARINT) + varint(value)
    if isinstance(value, float):
        return key(4, FIXED64) + struct.pack("<d", value)
    return field(3, value.encode())


def params(number: int, items: dict) -> bytes:  # map<string, InferParameter>
    return b"".join(field(number, field(1, k.encode()) + field(2, param(v)))
                    for k, v in items.items())


CONTENTS = {"bool": 1, "int": 2, "int64": 3, "uint": 4, "uint64": 5, "fp32": 6, "fp64": 7,
            "bytes": 8}


def contents(kind: str, values: list) -> bytes:  # InferTensorContents
    number = CONTENTS[kind]
    if kind == "bytes":
        return b"".join(field(number, v) for v in values)
    if kind == "fp32":
        packed = b"".join(struct.pack("<f", v) for v in values)
    elif kind == "fp64":
        packed = b"".join(struct.pack("<d", v) for v in values)
    else:
        packed = b"".join(int64(int(v)) for v in values)
    return field(number, packed)


def infer_request(model: str, inputs: list, outputs: list = (), raw: list = (),
                  parameters: dict | None = None, id: str = "", version: str = "") -> bytes:
    """inputs: (name, datatype, shape, {"params": {...}, "contents": (kind, values)})."""
    out = b""
    if model:
        out += field(1, model.encode())
    if version:
        out += field(2, version.encode())
    if id:
        out += field(3, id.encode())
    out += params(4, parameters or {})
    for name, datatype, shape, extra in inputs:
        tensor = field(1, name.encode()) + field(2, datatype.encode())
        if shape:
            tensor += field(3, b"".join(int64(d) for d in shape))
        tensor += params(4, extra.get("params", {}))
        if "contents" in extra:
            tensor += field(5, contents(*extra["contents"]))
        out += field(5, tensor)
    for name, extra in outputs:
        out += field(6, field(1, name.encode()) + params(2, extra))
    for data in raw:
        out += field(7, data)
    return out


def via_protobuf(message: bytes) -> bytes | None:
    """The same message as protobuf itself serializes it (canonical order, packing)."""
    if pb is None:
        return None
    return pb.ModelInferRequest.FromString(message).SerializeToString()


# --- tensor bytes ----------------------------------------------------------------------------

def i32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


def i64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def f16(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}e", *values)


def strings(*values: bytes) -> bytes:  # BYTES elements: u32 length + bytes
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# --- seeds -----------------------------------------------------------------------------------

def grpc_seeds() -> list[bytes]:
    """ModelInferRequests as the client tests send them (tests/integration/test_tritonclient.py
    and friends), and the refusals the codec words itself."""
    sixteen = list(range(16))
    return [
        # the "simple" example: two INT32 [1,16] inputs as raw_input_contents
        infer_request("simple", [("INPUT0", "INT32", [1, 16], {}), ("INPUT1", "INT32", [1, 16], {})],
                      outputs=[("OUTPUT0", {}), ("OUTPUT1", {})],
                      raw=[i32(*sixteen), i32(*[1] * 16)], id="42"),
        # typed contents of every kind
        infer_request("simple", [("INPUT0", "INT32", [1, 16], {"contents": ("int", sixteen)}),
                                 ("INPUT1", "INT32", [1, 16], {"contents": ("int", [-1] * 16)})]),
        infer_request("m", [("A", "FP32", [2], {"contents": ("fp32", [1.5, -2.0])}),
                            ("B", "FP64", [1], {"contents": ("fp64", [3.25])}),
                            ("C", "BOOL", [3], {"contents": ("bool", [1, 0, 1])}),
                            ("D", "UINT8", [2], {"contents": ("uint", [7, 255])}),
                            ("E", "INT64", [2], {"contents": ("int64", [-5, 2**40])}),
                            ("F", "UINT64", [1], {"contents": ("uint64", [2**63])}),
                            ("G", "INT8", [2], {"contents": ("int", [-128, 127])}),
                            ("H", "UINT16", [1], {"contents": ("uint", [65535])})],
                      version="1"),
        # BYTES as bytes_contents and as raw length-prefixed elements
        infer_request("strings", [("TEXT", "BYTES", [1, 2], {"contents": ("bytes", [b"hello", b"\xe2\x82\xac"])})],
                      outputs=[("OUT", {"binary_data": True})]),
        infer_request("strings", [("TEXT", "BYTES", [1, 2], {})], raw=[strings(b"a", b"bc")]),
        # request parameters: the server's and the model's
        infer_request("simple", [("INPUT0", "FP16", [1, 2], {})], raw=[f16(1.0, -0.5)],
                      parameters={"priority": 2, "timeout": 1000, "sequence_id": 7,
                                  "sequence_start": True, "binary_data_output": False,
                                  "custom": "value", "scale": 0.5, "big": 2**64 - 1}),
        # a repeated parameter key (the last wins) and one of no kind
        infer_request("simple", [], parameters={"priority": 1}) +
        params(4, {"priority": 3}) + field(4, field(1, b"empty")),
        # outputs: classification, shared memory (no region is registered)
        infer_request("simple", [("INPUT0", "INT32", [1, 4], {})], raw=[i32(4, 1, 3, 2)],
                      outputs=[("OUTPUT0", {"classification": 2}),
                               ("OUTPUT1", {"shared_memory_region": "out", "shared_memory_byte_size": 64,
                                            "shared_memory_offset": 0})]),
        infer_request("simple", [("INPUT0", "INT32", [1, 4],
                                  {"params": {"shared_memory_region": "in",
                                              "shared_memory_byte_size": 16}})]),
        infer_request("simple", [("INPUT0", "INT32", [1, 4], {"params": {"shared_memory_offset": 4}})]),
        # refusals: contents beside raw, the wrong contents for the datatype, missing raw data
        infer_request("simple", [("INPUT0", "INT32", [1, 2], {"contents": ("int", [1, 2])})],
                      raw=[i32(1, 2)]),
        infer_request("simple", [("INPUT0", "INT32", [1, 2], {"contents": ("fp32", [1.0, 2.0])})]),
        infer_request("simple", [("INPUT0", "INT32", [1, 2], {}), ("INPUT1", "INT32", [1, 2], {})],
                      raw=[i32(1, 2)]),
        # a typed-contents field given unpacked (one value per field)
        infer_request("m", []) + field(5, field(1, b"A") + field(2, b"INT32") + key(3, VARINT) +
                                       varint(2) + field(5, key(2, VARINT) + varint(5) +
                                                         key(2, VARINT) + varint(6))),
        b"",
    ]


def validate_seeds() -> list[bytes]:
    """Requests for the specs of fuzz_validate.cc, by gRPC and by JSON."""
    def inputs(batch: int, n: int, optional: bool) -> tuple[list, list]:
        tensors = [("INPUT0", "FP32", [batch, 4], {}), ("INPUT1", "BYTES", [batch, n], {}),
                   ("INPUT2", "INT32", [batch, 2, n], {})]
        raw = [f32(*[float(i % 5) for i in range(batch * 4)]),
               strings(*[b"s%d" % i for i in range(batch * n)]),
               i32(*range(batch * 2 * n))]
        if optional:
            tensors += [("INPUT3", "INT64", [batch, 1, 2], {}), ("INPUT4", "FP16", [batch, n], {})]
            raw += [i64(*range(batch * 2)), f16(*[0.5] * (batch * n))]
        return tensors, raw

    seeds = []
    for model, batch in (("fuzz", 1), ("fuzz", 2), ("fuzz", 3)):
        tensors, raw = inputs(batch, 2, batch != 1)
        seeds.append(infer_request(model, tensors, raw=raw, id=f"req{batch}",
                                   outputs=[("OUTPUT0", {"classification": 2}), ("OUTPUT2", {}),
                                            ("OUTPUT1", {})] if batch == 2 else []))
    # the non-batching spec: shapes without the batch dimension
    seeds.append(infer_request(
        "fuzz_nobatch",
        [("INPUT0", "FP32", [4], {}), ("INPUT1", "BYTES", [2], {}), ("INPUT2", "INT32", [2, 3], {}),
         ("INPUT4", "FP16", [2], {})],
        raw=[f32(3.0, 1.0, 4.0, 1.5), strings(b"x", b"yz"), i32(*range(6)), f16(1.0, 2.0)],
        outputs=[("OUTPUT4", {"classification": 1}), ("OUTPUT2", {})]))
    # typed contents
    seeds.append(infer_request(
        "fuzz", [("INPUT0", "FP32", [1, 4], {"contents": ("fp32", [1.0, 4.0, 2.0, 3.0])}),
                 ("INPUT1", "BYTES", [1, 1], {"contents": ("bytes", [b"one"])}),
                 ("INPUT2", "INT32", [1, 2, 1], {"contents": ("int", [5, -5])}),
                 ("INPUT3", "INT64", [1, 2, 2], {"contents": ("int64", [1, 2, 3, 4])})],
        outputs=[("OUTPUT0", {"classification": 3}), ("OUTPUT3", {"classification": 2})],
        parameters={"priority": 1}))
    # refusals the validator words: a wrong type, a wrong shape, a missing and an unknown input,
    # a batch too large, mismatched batch sizes, a short BYTES buffer, a duplicate input
    tensors, raw = inputs(1, 1, False)
    seeds.append(infer_request("fuzz", [("INPUT0", "INT32", [1, 4], {})] + tensors[1:], raw=raw))
    seeds.append(infer_request("fuzz", [("INPUT0", "FP32", [1, 5], {})] + tensors[1:], raw=raw))
    seeds.append(infer_request("fuzz", tensors[:2], raw=raw[:2]))
    seeds.append(infer_request("fuzz", tensors + [("EXTRA", "FP32", [1], {})], raw=raw + [f32(1.0)]))
    tensors9, raw9 = inputs(9, 1, False)
    seeds.append(infer_request("fuzz", tensors9, raw=raw9))
    seeds.append(infer_request("fuzz", tensors[:1] + [("INPUT1", "BYTES", [2, 1], {})] + tensors[2:],
                               raw=raw))
    seeds.append(infer_request("fuzz", tensors, raw=raw[:1] + [strings(b"abc")[:-1]] + raw[2:]))
    seeds.append(infer_request("fuzz", tensors + tensors[:1], raw=raw + raw[:1]))
    seeds.append(infer_request("fuzz", tensors, raw=raw, outputs=[("NOPE", {})]))
    # JSON (the HTTP decoder)
    seeds.append(json.dumps({
        "id": "j1", "parameters": {"priority": 1},
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]},
                   {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]},
                   {"name": "INPUT2", "datatype": "INT32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}},
                    {"name": "OUTPUT2"}]}, separators=(",", ":")).encode())
    return seeds


def http_seeds() -> list[bytes]:
    """KServe v2 bodies: the first line is Inference-Header-Content-Length ("" = absent)."""
    def compact(doc) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    def binary(doc, *chunks: bytes) -> bytes:
        header = compact(doc)
        return str(len(header)).encode() + b"\n" + header + b"".join(chunks)

    simple = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
                         {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}],
              "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": True}}]}
    return [
        b"\n" + compact(simple),
        compact({"id": "7", "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2],
                                        "data": [[1.5, 2.5], [-1e30, 0]]}]}),
        b"\n" + compact({"inputs": [
            {"name": "B", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "U8", "datatype": "UINT8", "shape": [1], "data": [255]},
            {"name": "I8", "datatype": "INT8", "shape": [1], "data": [-128]},
            {"name": "I16", "datatype": "INT16", "shape": [1], "data": [-32768]},
            {"name": "U16", "datatype": "UINT16", "shape": [1], "data": [65535]},
            {"name": "U32", "datatype": "UINT32", "shape": [1], "data": [4294967295]},
            {"name": "I64", "datatype": "INT64", "shape": [1], "data": [-9223372036854775808]},
            {"name": "U64", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]},
            {"name": "F64", "datatype": "FP64", "shape": [1], "data": [0.1]},
            {"name": "S", "datatype": "BYTES", "shape": [2], "data": ["text", "\u20ac"]}]}),
        binary({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 2],
                            "parameters": {"binary_data_size": 8}},
                           {"name": "INPUT1", "datatype": "BYTES", "shape": [1],
                            "parameters": {"binary_data_size": 9}}],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
                "parameters": {"binary_data_output": True}},
               i32(1, 2), strings(b"hello")),
        binary({"inputs": [{"name": "H", "datatype": "FP16", "shape": [2],
                            "parameters": {"binary_data_size": 4}}]}, f16(1.0, 2.0)),
        b"\n" + compact({"parameters": {"priority": 3, "timeout": 100, "sequence_id": 1,
                                        "sequence_start": True, "note": "x", "ratio": 0.5},
                         "inputs": [], "outputs": [{"name": "OUT", "parameters": {"classification": 3}}]}),
        b"\n" + compact({"inputs": [{"name": "I", "datatype": "INT32", "shape": [4],
                                     "parameters": {"shared_memory_region": "r",
                                                    "shared_memory_byte_size": 16,
                                                    "shared_memory_offset": 0}}],
                         "outputs": [{"name": "O", "parameters": {"shared_memory_region": "o",
                                                                  "shared_memory_byte_size": 16}}]}),
        # refusals left to the Python frontend
        b"\n" + compact({"inputs": [{"name": "I", "datatype": "INT32", "shape": [3], "data": [1, 2]}]}),
        b"\n" + compact({"inputs": [{"name": "I", "datatype": "FP16", "shape": [1], "data": [1.0]}]}),
        b"3\n" + b'{"a',
        # raw binary requests (header 0, or text atoi reads as 0): the body is the one input
        b"0\n" + f32(1.0, 2.0, 3.0),
        b"abc\nhello",
        b"0\n" + i32(1, 2, 3),
    ]


def predictions_seeds() -> list[bytes]:
    """A request line and headers, then intermediate frames and the final answer's element."""
    def frame(meta: dict, body: bytes) -> bytes:
        text = json.dumps(meta).encode()
        return struct.pack("<I", len(text)) + text + body

    def element(data: bytes) -> bytes:
        return struct.pack("<I", len(data)) + data

    auth = b"Authorization: Bearer fuzz-token\n"
    ok = frame({"status": 200, "phrase": "OK", "headers": {"Content-Type": "application/json",
                                                           "X-Extra": "1"},
                "started_ns": 12345}, b'{"result": 1}')
    return [
        b"POST /predictions/m\n" + auth + b"Content-Type: application/json\n\n" + element(ok),
        b"POST /predictions/m/1\n" + auth + b"User-Agent: test\n\n" + element(
            frame({"status": 503, "phrase": "Service Unavailable", "error": True}, b"handler failed")),
        b"POST /predictions/m\n" + auth + b"\n" +
        frame({"status": 200, "headers": {"content-type": "text/plain"}}, b"part one ") + b"|chunk|" +
        frame({"status": 200}, b"part two ") + b"|chunk|" + element(frame({"status": 200}, b"end")),
        b"POST /predictions/m\n" + auth + b"\n" + element(frame({"status": 200}, b"x" * 1100)),
        b"POST /predictions/m\n" + auth + b"\n" + element(b"\x05\x00\x00\x00[1,2]"),
        b"POST /predictions/m\nAuthorization: Bearer wrong\n\n" + element(ok),
        b"POST /predictions/m\n" + auth + b"Content-Type: multipart/form-data; boundary=x\n\n" + element(ok),
        b"POST /predictions/m\n" + auth + b"Content-Encoding: gzip\n\n" + element(ok),
        b"GET /predictions/m\n\n" + element(ok),
        b"POST /predictions/m/1/extra\n" + auth + b"\n" + element(ok),
        b"POST /predictions//1\n\n",
    ]


def config_seeds() -> list[bytes]:
    """The repository's own config.pbtxt files, and load-API overrides (JSON)."""
    texts = [p.read_bytes() for p in sorted(ROOT.glob("tests/fixtures/**/*.pbtxt"))]
    texts += [p.read_bytes() for p in sorted(ROOT.glob("examples/**/config.pbtxt"))]
    overrides = [
        {"name": "fuzz.identity", "backend": "identity", "max_batch_size": 8,
         "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1, 4],
                    "reshape": {"shape": [-1, 2, 2]}}],
         "output": [{"name": "OUTPUT0", "data_type": "type_fp32", "dims": ["4"]}],
         "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": "100",
                              "priority_levels": 2, "default_priority_level": 1,
                              "priority_queue_policy": {"2": {"timeout_action": "delay"}}},
         "instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}]},
        {"name": "seq.identity", "backend": "identity", "max_batch_size": 4,
         "sequence_batching": {"control_input": [
             {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START",
                                            "int32_false_true": [0, 1]}]},
             {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID",
                                             "data_type": "TYPE_UINT64"}]}],
             "oldest": {"preferred_batch_size": [2]}},
         "model_warmup": [{"name": "w", "batch_size": 2,
                           "inputs": {"START": {"data_type": "TYPE_INT32", "dims": [1],
                                                "zero_data": True}}}]},
        {"name": "ens", "platform": "ensemble", "ensemble_scheduling": {"step": [
            {"model_name": "a", "model_version": -1, "input_map": {"x": "IN"},
             "output_map": {"y": "OUT"}}]}},
        {"unknown_field": 1},
    ]
    return texts + [json.dumps(o).encode() for o in overrides]


def seeds() -> dict[str, list[bytes]]:
    grpc = grpc_seeds()
    validate = validate_seeds()
    for message in list(grpc):
        canonical = via_protobuf(message)
        if canonical is not None and canonical != message:
            grpc.append(canonical)
    return {"fuzz_grpc_request": grpc + [m for m in validate if not m.startswith(b"{")],
            "fuzz_http_infer": http_seeds(),
            "fuzz_predictions_frame": predictions_seeds(),
            "fuzz_validate": validate,
            "fuzz_config": config_seeds()}


def write(out: Path) -> None:
    for target, inputs in seeds().items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{target}: {len(inputs)} seeds in {folder}")


def merge(out: Path, build: Path, python: str) -> None:
    for target in TARGETS:
        corpus = HERE / "corpus" / target
        corpus.mkdir(parents=True, exist_ok=True)
        if target == "fuzz_config":
            command = [python, str(HERE / "fuzz_config.py")]
        else:
            command = [str(build / target)]
        subprocess.run(command + ["-merge=1", str(corpus), str(out / target)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the raw seeds, one folder per target")
    parser.add_argument("--merge", type=Path, metavar="BUILD",
                        help="minimize the seeds into fuzz/corpus/ with the targets of BUILD")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python (with atheris) that runs fuzz_config.py for --merge")
    args = parser.parse_args()
    write(args.out)
    if args.merge:
        merge(args.out, args.merge, args.python)


if __name__ == "__main__":
    main()
