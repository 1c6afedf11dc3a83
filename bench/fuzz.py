"""A mutation fuzzer for pyserve's inference paths: both protocols, both frontends.

Starts `pyserve serve` twice (native frontends, Python frontends) on 127.0.0.1 over the long-run
repository (bench/longrun.py) and sends `--requests` inputs in turn to the four targets
(native gRPC, native HTTP, Python gRPC, Python HTTP), one at a time:

- gRPC: ModelInfer and ModelStreamInfer messages as raw bytes through grpc's generic calls
  (identity serializers), made from valid requests by semantic changes (huge declared shapes,
  wrong datatypes, mismatched data, odd names, parameters and outputs) and framing-aware wire
  changes (fields duplicated, dropped, inserted; lengths and varints corrupted at any depth);
- HTTP: infer bodies in JSON and in the binary tensor extension (Inference-Header-Content-Length),
  plain or gzip/deflate-encoded, changed the same way, plus text changes (deep nesting,
  duplicate keys, odd numbers, bad UTF-8), wrong or huge header lengths, gzip bombs, random
  headers and paths, sent over a raw socket.

Every `--valid-every`th input is a valid request whose answer is checked. Findings:
- crash: the server process exited (it is restarted and the run goes on);
- hang: no answer within `--deadline` seconds;
- wrong: a valid request's answer differs from the reference, a response's id is not the
  request's, or a changed request the server accepted got an answer other than the one its
  inputs (as protobuf/json read them) give;
- internal: HTTP 500 or gRPC UNKNOWN/INTERNAL, i.e. an error nobody turned into a refusal.
Each finding's input is written under `--out` (a .json description and the raw .bin body);
`--replay FILE.json` sends one again to a fresh server. Same `--seed`, same inputs.

    python bench/fuzz.py [--requests 40000] [--seed 1] [--out fuzz-findings]
    python bench/fuzz.py --replay fuzz-findings/00123-native-grpc-crash.json
"""

from __future__ import annotations

import argparse
import base64
import functools
import gzip
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longrun  # noqa: E402
import mutate  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"
OTHER_RPCS = ["ModelMetadata", "ModelConfig", "ModelStatistics", "ModelReady",
              "RepositoryIndex", "ServerMetadata", "RepositoryModelLoad"]
TARGETS = [("native", "grpc"), ("native", "http"), ("python", "grpc"), ("python", "http")]


@dataclass
class Input:
    """One thing sent: what a replay needs, and what its answer should be."""
    protocol: str  # grpc | http
    kind: str  # valid | mutated
    rpc: str = "ModelInfer"  # gRPC method, or "ModelStreamInfer"
    messages: list[bytes] = field(default_factory=list)  # gRPC: one, or a stream's
    valid_ids: dict[str, longrun.Case] = field(default_factory=dict)  # stream: id -> case
    path: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    case: longrun.Case | None = None

    def describe(self) -> dict:
        if self.protocol == "grpc":
            return {"protocol": "grpc", "rpc": self.rpc,
                    "messages": [base64.b64encode(m).decode() for m in self.messages]}
        return {"protocol": "http", "path": self.path, "headers": self.headers}


@dataclass
class Outcome:
    finding: str | None = None  # crash | hang | wrong | internal
    detail: str = ""
    status: str = ""


# --- making inputs ---------------------------------------------------------------------------

def grpc_input(rng: random.Random, nprng, reference, valid: bool) -> Input:
    stream = rng.random() < 0.25
    if stream:
        messages, cases = [], {}
        for j in range(rng.randint(1, 4)):
            case = longrun.make_case(nprng, reference)
            message_valid = valid or rng.random() < 0.4
            request_id = f"s{rng.getrandbits(48):x}-{j}"
            request = longrun.grpc_request(case, request_id, typed=rng.random() < 0.2)
            if message_valid:
                cases[request_id] = case
                messages.append(request.SerializeToString())
            else:
                messages.append(mutated_grpc_message(request, rng))
        return Input("grpc", "valid" if valid else "mutated", "ModelStreamInfer", messages,
                     valid_ids=cases)
    case = longrun.make_case(nprng, reference)
    request = longrun.grpc_request(case, f"u{rng.getrandbits(48):x}", typed=rng.random() < 0.2)
    if valid:
        return Input("grpc", "valid", messages=[request.SerializeToString()], case=case)
    rpc = "ModelInfer" if rng.random() < 0.95 else rng.choice(OTHER_RPCS)
    return Input("grpc", "mutated", rpc, [mutated_grpc_message(request, rng)])


def mutated_grpc_message(request, rng: random.Random) -> bytes:
    how = rng.randrange(3)
    if how != 1:
        for _ in range(rng.randint(1, 3)):
            mutate.mutate_request(request, rng)
    data = request.SerializeToString()
    if how != 0:
        data = mutate.mutate_wire(data, rng) if rng.random() < 0.7 else mutate.mutate_bytes(
            data, rng)
    return data


def http_input(rng: random.Random, nprng, reference, valid: bool) -> Input:
    case = longrun.make_case(nprng, reference, text=True)
    binary = rng.random() < 0.5
    body, header_length = longrun.http_body(case, f"h{rng.getrandbits(48):x}", binary)
    headers = [("Content-Type", "application/json")]
    path = f"/v2/models/{case.model}/infer"
    if rng.random() < 0.2:
        path = f"/v2/models/{case.model}/versions/1/infer"
    encoding = rng.choice([None, None, None, "gzip", "deflate"])
    if valid:
        if header_length is not None:
            headers.append(("Inference-Header-Content-Length", str(header_length)))
        body = encode_body(body, encoding, headers)
        return Input("http", "valid", path=path, headers=headers, body=body, case=case)

    op = rng.randrange(8)
    if op <= 2:  # the JSON document
        if header_length is None:
            document = json.loads(body)
            body = json.dumps(mutate.mutate_json(document, rng)).encode()
        else:
            document = json.loads(body[:header_length])
            header = json.dumps(mutate.mutate_json(document, rng)).encode()
            body, header_length = header + body[header_length:], len(header)
    elif op == 3:  # the JSON text
        if header_length is None:
            body = mutate.mutate_json_text(body, rng)
        else:
            header = mutate.mutate_json_text(body[:header_length], rng)
            body, header_length = header + body[header_length:], len(header)
    elif op == 4:  # bytes anywhere
        body = mutate.mutate_bytes(body, rng)
    if header_length is not None or rng.random() < 0.1:
        value = str(header_length or len(body))
        if op == 5 or rng.random() < 0.1:
            value = rng.choice(["0", "-1", str(len(body)), str(len(body) + 1), "1", "abc", "",
                                str(2**63), str(2**64), " 5", "1e3", str(len(body) // 2)])
        headers.append(("Inference-Header-Content-Length", value))
    if op == 6:
        body = encode_body(body, encoding or "gzip", headers, broken=True, rng=rng)
    else:
        body = encode_body(body, encoding, headers)
    if op == 7:
        path, headers = odd_request_line(path, headers, rng)
    return Input("http", "mutated", path=path, headers=headers, body=body)


def encode_body(body: bytes, encoding: str | None, headers: list, broken: bool = False,
                rng: random.Random | None = None) -> bytes:
    if encoding is None:
        return body
    if broken:
        how = rng.randrange(4)
        headers.append(("Content-Encoding", encoding))
        if how == 0:
            return gzip_bomb()
        if how == 1:  # says compressed, is not
            return body
        if how == 2:  # truncated stream
            packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
            return packed[: len(packed) // 2]
        return mutate.mutate_bytes(gzip.compress(body), rng)
    headers.append(("Content-Encoding", encoding))
    return gzip.compress(body) if encoding == "gzip" else zlib.compress(body)


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of zeros in a few hundred KiB."""
    return gzip.compress(b"\x00" * (256 << 20), compresslevel=9)


def odd_request_line(path: str, headers: list, rng: random.Random) -> tuple[str, list]:
    how = rng.randrange(5)
    if how == 0:
        path = rng.choice(["/v2/models//infer", "/v2/models/simple/versions//infer",
                           "/v2/models/simple/versions/-1/infer",
                           "/v2/models/simple/versions/99999999999999999999/infer",
                           "/v2/models/%2e%2e/infer", "/v2/models/" + "a" * 10000 + "/infer",
                           "/v2/models/simple/infer?x=" + "%" * 100, "/v2/models/\xe9/infer"])
    elif how == 1:
        headers.append((rng.choice(["X-Random", "Content-Type", "Accept-Encoding", "Expect",
                                    "Inference-Header-Content-Length", "Transfer-Encoding"]),
                        rng.choice(["", "gzip", "100-continue", "application/octet-stream",
                                    "x" * 8000, "identity", "chunked, gzip"])))
    elif how == 2:
        headers.extend((f"X-H{i}", "v") for i in range(rng.choice([10, 100, 1000])))
    elif how == 3:
        headers = [(k, v) for k, v in headers if k != "Content-Type"]
    else:
        headers.append(("Content-Type", rng.choice(["text/plain", "multipart/form-data",
                                                     "application/json; charset=latin-1"])))
    return path, headers


# --- sending ---------------------------------------------------------------------------------

def send_grpc(channel, item: Input, deadline: float) -> tuple[str, list[bytes], str]:
    """(status code name, response messages, details)."""
    if item.rpc == "ModelStreamInfer":
        call = channel.stream_stream(SERVICE + item.rpc)
        responses = []
        try:
            for response in call(iter(item.messages), timeout=deadline):
                responses.append(response)
            return "OK", responses, ""
        except grpc.RpcError as e:
            return e.code().name, responses, e.details() or ""
    call = channel.unary_unary(SERVICE + item.rpc)
    try:
        return "OK", [call(item.messages[0], timeout=deadline)], ""
    except grpc.RpcError as e:
        return e.code().name, [], e.details() or ""


def send_http(port: int, item: Input, deadline: float) -> tuple[int, dict, bytes]:
    """(status, headers, body) over a fresh connection; raw, so that any header goes out."""
    lines = [f"POST {item.path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             f"Content-Length: {len(item.body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in item.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as sock:
        sock.settimeout(deadline)
        try:
            sock.sendall(head + item.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        response = http.client.HTTPResponse(sock)
        response.begin()
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = response.read()
    encoding = headers.get("content-encoding", "")
    if encoding in ("gzip", "deflate") and body:  # the server honoured Accept-Encoding
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else 0)
    return response.status, headers, body


# --- judging answers -------------------------------------------------------------------------

class Judge:
    def __init__(self, reference: longrun.Reference) -> None:
        self.reference = reference
        self.notes = Counter()

    def grpc(self, item: Input, status: str, responses: list, details: str) -> Outcome:
        from tritonclient.grpc import service_pb2

        if status == "DEADLINE_EXCEEDED":
            return Outcome("hang", f"no answer in time ({item.rpc})", status)
        if status in ("UNKNOWN", "INTERNAL") and item.rpc != "RepositoryModelLoad":
            return Outcome("internal", details[:500], status)
        if item.rpc == "ModelStreamInfer":
            return self._stream(item, status, responses, details)
        if item.kind == "valid":
            if status != "OK":
                return Outcome("wrong", f"valid request refused: {status} {details[:300]}",
                               status)
            response = service_pb2.ModelInferResponse.FromString(responses[0])
            return self._compare(item.case.expected, longrun.grpc_outputs(response), status)
        if status == "OK" and item.rpc == "ModelInfer":
            try:
                service_pb2.ModelInferResponse.FromString(responses[0])
            except Exception as e:  # noqa: BLE001
                return Outcome("wrong", f"a response protobuf cannot parse: {e}", status)
        if status == "OK" and item.rpc == "ModelInfer":
            return self._accepted_grpc(item.messages[0], responses[0], status)
        return Outcome(status=status)

    def _stream(self, item: Input, status: str, responses: list, details: str) -> Outcome:
        from tritonclient.grpc import service_pb2

        try:
            parsed = [service_pb2.ModelStreamInferResponse.FromString(r) for r in responses]
        except Exception as e:  # noqa: BLE001 - protobuf's parser refuses the server's bytes
            return Outcome("wrong", f"a stream response protobuf cannot parse: {e}", status)
        if status == "OK" and len(parsed) != len(item.messages):
            return Outcome("wrong", f"stream ended OK with {len(parsed)} answers to "
                                    f"{len(item.messages)} messages", status)
        answered = {r.infer_response.id: r for r in parsed if not r.error_message}
        for request_id, case in item.valid_ids.items():
            if status != "OK" and request_id not in answered:
                continue  # the stream was ended by another message's refusal
            if request_id not in answered:
                errors = [r.error_message for r in parsed if r.error_message]
                return Outcome("wrong", f"valid stream message {request_id} not answered: "
                                        f"{errors[:2]}", status)
            problem = longrun.same_answer(case.expected,
                                          longrun.grpc_outputs(answered[request_id].infer_response))
            if problem:
                return Outcome("wrong", f"stream message {request_id}: {problem}", status)
        if item.kind == "valid" and status != "OK":
            return Outcome("wrong", f"valid stream refused: {status} {details[:300]}", status)
        return Outcome(status=status)

    def _compare(self, expected, got, status) -> Outcome:
        problem = longrun.same_answer(expected, got)
        return Outcome("wrong", problem, status) if problem else Outcome(status=status)

    def _accepted_grpc(self, message: bytes, answer: bytes, status: str) -> Outcome:
        """A changed request the server answered: its answer must be what its inputs give."""
        from tritonclient.grpc import service_pb2

        try:
            request = service_pb2.ModelInferRequest.FromString(message)
        except Exception:  # noqa: BLE001 - protobuf's own parser refuses it
            self.notes["accepted a message protobuf refuses"] += 1
            return Outcome(status=status)
        response = service_pb2.ModelInferResponse.FromString(answer)
        if response.id != request.id:
            return Outcome("wrong", f"id {response.id[:50]!r} for request id "
                                    f"{request.id[:50]!r}", status)
        try:
            inputs = {}
            for i, tensor in enumerate(request.inputs):
                if tensor.name in inputs:
                    raise ValueError("input repeated")
                if request.raw_input_contents:
                    raw = request.raw_input_contents[i]
                else:
                    raw = typed_contents(tensor)
                inputs[tensor.name] = longrun.array_from_raw(tensor.datatype, list(tensor.shape),
                                                             raw)
            expected = self.reference.outputs(request.model_name, inputs)
        except Exception:  # noqa: BLE001 - the reference cannot read it: not judged
            self.notes["accepted, not judged"] += 1
            return Outcome(status=status)
        if request.outputs:
            if any(o.parameters for o in request.outputs):
                self.notes["accepted, not judged"] += 1
                return Outcome(status=status)
            expected = {o.name: expected[o.name] for o in request.outputs if o.name in expected}
        return self._compare(expected, longrun.grpc_outputs(response), status)

    def http(self, item: Input, status: int, headers: dict, body: bytes) -> Outcome:
        if status == 500:
            return Outcome("internal", body[:500].decode("utf-8", "replace"), str(status))
        if item.kind == "valid":
            if status != 200:
                return Outcome("wrong", f"valid request refused: {status} {body[:300]!r}",
                               str(status))
            length = headers.get("inference-header-content-length")
            return self._compare(item.case.expected,
                                 longrun.http_outputs(body, int(length) if length else None),
                                 str(status))
        if status == 200:
            try:
                length = headers.get("inference-header-content-length")
                longrun.http_outputs(body, int(length) if length else None)
            except Exception as e:  # noqa: BLE001
                return Outcome("wrong", f"200 with an unreadable body: {e}", str(status))
        return Outcome(status=str(status))


def typed_contents(tensor) -> bytes:
    contents = tensor.contents
    table = {"INT32": (contents.int_contents, np.int32), "FP32": (contents.fp32_contents,
                                                                  np.float32)}
    if tensor.datatype == "BYTES":
        return longrun.serialize_bytes(np.array(list(contents.bytes_contents), dtype=object))
    if tensor.datatype not in table:
        raise ValueError("not judged")
    values, dtype = table[tensor.datatype]
    for other in ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                  "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"):
        if getattr(contents, other) and getattr(contents, other) is not values:
            raise ValueError("contents of another type")
    return np.array(list(values), dtype=dtype).tobytes()


# --- the run ---------------------------------------------------------------------------------

class Servers:
    """One pyserve per frontend, restarted after a crash."""

    def __init__(self, repository: Path, logs: Path) -> None:
        self.repository, self.logs = repository, logs
        self.processes: dict[str, longrun.ServerProcess] = {}
        self.channels: dict[str, grpc.Channel] = {}
        self.starts = Counter()

    def get(self, frontend: str) -> longrun.ServerProcess:
        server = self.processes.get(frontend)
        if server is None or server.process.poll() is not None:
            self.starts[frontend] += 1
            log = self.logs / f"{frontend}-{self.starts[frontend]}.log"
            server = self.processes[frontend] = longrun.start(self.repository, log, frontend)
            self.channels[frontend] = grpc.insecure_channel(
                server.grpc_url, options=[("grpc.max_send_message_length", -1),
                                          ("grpc.max_receive_message_length", -1)])
        return server

    def alive(self, frontend: str) -> bool:
        return self.processes[frontend].process.poll() is None

    def stop(self) -> None:
        for channel in self.channels.values():
            channel.close()
        for server in self.processes.values():
            server.stop()


def make_input(seed: int, index: int, protocol: str, valid: bool, reference) -> Input:
    rng = random.Random(f"{seed}:{index}")
    nprng = np.random.default_rng([seed, index])
    if protocol == "grpc":
        return grpc_input(rng, nprng, reference, valid)
    return http_input(rng, nprng, reference, valid)


def run_one(servers: Servers, judge: Judge, frontend: str, item: Input,
            deadline: float) -> Outcome:
    server = servers.get(frontend)
    try:
        if item.protocol == "grpc":
            outcome = judge.grpc(item, *send_grpc(servers.channels[frontend], item, deadline))
        else:
            outcome = judge.http(item, *send_http(server.http_port, item, deadline))
    except (socket.timeout, TimeoutError):
        outcome = Outcome("hang", "no HTTP answer in time")
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        outcome = Outcome(None, f"{type(e).__name__}: {e}", "connection")
    if outcome.status == "connection":  # a dropped connection: did the server die of it?
        try:
            server.process.wait(2)
        except subprocess.TimeoutExpired:
            pass
    if not servers.alive(frontend):
        code = server.process.wait()
        return Outcome("crash", f"server exited with {code}; {outcome.detail}", outcome.status)
    return outcome


def signature(frontend: str, protocol: str, outcome: Outcome) -> str:
    """A finding's kind: where, what, and its text without numbers, ids and quoted names."""
    text = re.sub(r"'[^']*'|[0-9a-f]{6,}|\d+", "#", outcome.detail)
    return f"{frontend}-{protocol}-{outcome.finding}: {' '.join(text.split())[:100]}"


def save(out: Path, index: int, frontend: str, item: Input, outcome: Outcome,
         seed: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{index:05d}-{frontend}-{item.protocol}-{outcome.finding}"
    description = {"index": index, "seed": seed, "frontend": frontend, "kind": item.kind,
                   "finding": outcome.finding, "status": outcome.status,
                   "detail": outcome.detail, **item.describe()}
    if item.protocol == "http":
        (out / f"{stem}.bin").write_bytes(item.body)
        description["body_file"] = f"{stem}.bin"
    (out / f"{stem}.json").write_text(json.dumps(description, indent=1))
    return out / f"{stem}.json"


def load_saved(path: Path) -> tuple[str, Input]:
    description = json.loads(path.read_text())
    if description["protocol"] == "grpc":
        item = Input("grpc", description["kind"], description["rpc"],
                     [base64.b64decode(m) for m in description["messages"]])
    else:
        item = Input("http", description["kind"], path=description["path"],
                     headers=[tuple(h) for h in description["headers"]],
                     body=(path.parent / description["body_file"]).read_bytes())
    if item.kind == "valid":
        item.kind = "mutated"  # the saved file carries no expected answer
    return description["frontend"], item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first input index (to resume)")
    parser.add_argument("--valid-every", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=15.0,
                        help="seconds an input may take before it counts as a hang")
    parser.add_argument("--frontends", default="native,python")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--keep", type=int, default=5,
                        help="inputs saved per kind of finding (the rest are counted)")
    parser.add_argument("--replay", type=Path, help="send one saved input again")
    args = parser.parse_args()

    repository, reference = longrun.prepare("pyserve-fuzz-")
    servers = Servers(repository, args.out / "logs")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    judge = Judge(reference)
    try:
        if args.replay:
            frontend, item = load_saved(args.replay)
            outcome = run_one(servers, judge, frontend, item, args.deadline)
            print(f"{args.replay.name}: status {outcome.status}, finding {outcome.finding}, "
                  f"{outcome.detail}")
            return
        targets = [(f, p) for f, p in TARGETS if f in args.frontends.split(",")
                   and p in args.protocols.split(",")]
        findings, statuses, started = Counter(), Counter(), time.monotonic()
        for index in range(args.start, args.start + args.requests):
            frontend, protocol = targets[index % len(targets)]
            valid = (index // len(targets)) % args.valid_every == 0
            item = make_input(args.seed, index, protocol, valid, reference)
            outcome = run_one(servers, judge, frontend, item, args.deadline)
            statuses[f"{frontend}-{protocol}-{item.kind}:{outcome.status}"] += 1
            if outcome.finding:
                kind = signature(frontend, protocol, outcome)
                findings[kind] += 1
                if findings[kind] <= args.keep:
                    path = save(args.out, index, frontend, item, outcome, args.seed)
                    print(f"[{index}] {kind} -> {path}", flush=True)
            if (index + 1) % 1000 == 0:
                print(f"{index + 1 - args.start} inputs, {time.monotonic() - started:.0f} s, "
                      f"{sum(findings.values())} findings", flush=True)
        print(json.dumps({"inputs": args.requests, "seed": args.seed,
                          "seconds": round(time.monotonic() - started, 1),
                          "findings": dict(findings), "server_starts": dict(servers.starts),
                          "notes": dict(judge.notes),
                          "statuses": dict(sorted(statuses.items()))}, indent=1))
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
