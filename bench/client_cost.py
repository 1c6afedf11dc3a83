"""pyserve.client's own CPU time per request against tritonclient's, on the same calls.

What it measures
    One `pyserve serve` (free ports on 127.0.0.1) with `simple` (INT32 [16] + [16] -> two INT32
    [16]) and `echo_bytes` (BYTES [16] -> the same, a Python model made here). For each call,
    each library runs in a process of its own (the server in another): after a warm-up it
    makes N sequential requests and reports its process CPU time (user + system, every thread:
    grpcio's included) divided by N. A call is the whole user-side round trip:
    numpy arrays in, the request built, sent, answered and every output decoded to numpy
    (tritonclient: InferInput + set_data_from_numpy per request, as_numpy on each output;
    binary outputs over HTTP for both, as pyserve.client asks for by default).

    Calls: infer numeric and BYTES x sync gRPC, sync HTTP, async gRPC, async HTTP.
    Rounds are interleaved (the library order alternates); each cell reports the medians over
    rounds of both figures and of the per-round ratio pyserve.client / tritonclient (the
    target: 1.0 or below).

    python bench/client_cost.py [--rounds 3] [--requests 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CALLS = [("grpc", "sync"), ("http", "sync"), ("grpc", "async"), ("http", "async")]
KINDS = ["numeric", "bytes"]
LIBRARIES = ["pyserve", "tritonclient"]


def request_of(kind: str):
    """(model, inputs as numpy, output names)."""
    import numpy as np

    if kind == "numeric":
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        return "simple", {"INPUT0": a, "INPUT1": a}, ["OUTPUT0", "OUTPUT1"]
    text = np.array([[f"token-{i}".encode() for i in range(16)]], dtype=np.object_)
    return "echo_bytes", {"TEXT": text}, ["ECHO"]


# ------------------------------------------------------------------- one library, one call

def _pyserve_call(protocol: str, mode: str, url: str, kind: str):
    from pyserve.client import AsyncClient, Client

    model, inputs, names = request_of(kind)
    client = (Client if mode == "sync" else AsyncClient)(url)
    if mode == "sync":
        def call():
            out = client.infer(model, inputs)
            assert len(out) == len(names)
        return call, client.close

    async def acall():
        out = await client.infer(model, inputs)
        assert len(out) == len(names)
    return acall, client.close


def _tritonclient_call(protocol: str, mode: str, url: str, kind: str):
    import importlib

    module = importlib.import_module(
        f"tritonclient.{protocol}" + (".aio" if mode == "async" else ""))
    from tritonclient.utils import np_to_triton_dtype

    model, inputs, names = request_of(kind)
    client = module.InferenceServerClient(url.split("//")[-1])

    def build():
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = ([module.InferRequestedOutput(n, binary_data=True) for n in names]
                   if protocol == "http" else None)
        return tensors, outputs

    if mode == "sync":
        def call():
            tensors, outputs = build()
            result = client.infer(model, tensors, outputs=outputs)
            assert all(result.as_numpy(n) is not None for n in names)
        return call, client.close

    async def acall():
        tensors, outputs = build()
        result = await client.infer(model, tensors, outputs=outputs)
        assert all(result.as_numpy(n) is not None for n in names)
    return acall, client.close


def measure(library: str, protocol: str, mode: str, url: str, kind: str, requests: int) -> dict:
    """In this process: warm up, then `requests` sequential calls; CPU and wall per request."""
    make = _pyserve_call if library == "pyserve" else _tritonclient_call

    async def run_async():
        call, close = make(protocol, mode, url, kind)
        for _ in range(requests // 10):
            await call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(requests):
            await call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result = close()
        if asyncio.iscoroutine(result):
            await result
        return cpu, wall

    if mode == "async":
        cpu, wall = asyncio.run(run_async())
    else:
        call, close = make(protocol, mode, url, kind)
        for _ in range(requests // 10):
            call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(requests):
            call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        close()
    return {"cpu_us": cpu / requests * 1e6, "wall_us": wall / requests * 1e6}


# ---------------------------------------------------------------------------------- driver

def _in_subprocess(library, protocol, mode, url, kind, requests) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", library, protocol, mode, url,
                          kind, str(requests)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{library} {protocol} {mode} {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", type=Path, metavar="OUT")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        library, protocol, mode, url, kind, requests = args.worker
        print(json.dumps(measure(library, protocol, mode, url, kind, int(requests))))
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import EXAMPLES, start_server, write_echo_bytes_model

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_echo_bytes_model(repo, "16")
        server = start_server([EXAMPLES, repo], Path(tmp) / "server.log")
        try:
            urls = {"grpc": server.grpc_url, "http": f"http://{server.http_url}"}
            for round_ in range(args.rounds):
                for protocol, mode in CALLS:
                    for kind in KINDS:
                        order = LIBRARIES if round_ % 2 == 0 else LIBRARIES[::-1]
                        cell = {"round": round_, "protocol": protocol, "mode": mode, "kind": kind}
                        for library in order:
                            cell[library] = _in_subprocess(library, protocol, mode,
                                                           urls[protocol], kind, args.requests)
                        cell["ratio"] = cell["pyserve"]["cpu_us"] / cell["tritonclient"]["cpu_us"]
                        runs.append(cell)
                        print(f"round {round_ + 1} {protocol} {mode} {kind}: pyserve "
                              f"{cell['pyserve']['cpu_us']:.0f} us, tritonclient "
                              f"{cell['tritonclient']['cpu_us']:.0f} us (ratio "
                              f"{cell['ratio']:.2f})", file=sys.stderr, flush=True)
        finally:
            server.stop()

    print(f"\nclient CPU time per request (µs), {args.requests} sequential requests per run, "
          f"{args.rounds} interleaved round(s), medians; ratio = pyserve.client / tritonclient\n")
    print(f"{'call':22} {'pyserve cpu':>11} {'triton cpu':>10} {'ratio':>6} "
          f"{'pyserve wall':>12} {'triton wall':>11}")
    summary = []
    for protocol, mode in CALLS:
        for kind in KINDS:
            cells = [r for r in runs if (r["protocol"], r["mode"], r["kind"]) == (protocol, mode, kind)]
            row = {"protocol": protocol, "mode": mode, "kind": kind,
                   "ratio": statistics.median(r["ratio"] for r in cells)}
            for library in LIBRARIES:
                for key in ("cpu_us", "wall_us"):
                    row[f"{library}_{key}"] = statistics.median(r[library][key] for r in cells)
            summary.append(row)
            print(f"{f'{protocol} {mode} {kind}':22} {row['pyserve_cpu_us']:>11.0f} "
                  f"{row['tritonclient_cpu_us']:>10.0f} {row['ratio']:>6.2f} "
                  f"{row['pyserve_wall_us']:>12.0f} {row['tritonclient_wall_us']:>11.0f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
