"""An ensemble of two ONNX models: pyserve against Triton 2.51, and against the client-side chain.

What it measures
    The pipeline `pipeline` = `preprocess` (ONNX: UINT8 RAW [3, 64, 64] -> FP32 PIXELS, scaled and
    centred) then `classifier` (ONNX: a linear layer, PIXELS -> FP32 SCORES [100]), each with
    max_batch_size 16, dynamic_batching { max_queue_delay_microseconds: 100 } and one CPU instance.
    1. perf_analyzer 2.51 (gRPC, batch 1, synchronous) on the ensemble, pyserve then Triton 2.51
       in each cell (concurrency), rounds interleaved: infer/s per server, the ratio
       pyserve/Triton per round, and its median over rounds. Triton serves the same ONNX files
       through Python-backend steps calling onnxruntime (bench/vs_triton/triton_model.py; the
       `tritonserver` of nvidia-pytriton has no ONNX Runtime backend), as bench/vs_triton.py does.
    2. On pyserve, one Python client (tritonclient gRPC, one thread per concurrent request) sends
       the same inputs either to the ensemble or as the chain a client without ensembles runs:
       `preprocess`, then `classifier` with its result. Same client for both, so the ratio
       ensemble/chain (requests per second, median of interleaved rounds) is the server-side
       pipeline's gain: one round trip and no output/input copy through the client instead of two.

How to run (the venvs and helpers of bench/vs_triton.py; a default run takes ~6 minutes)
    python bench/ensemble.py                                 # c=1,16, 3 rounds
    python bench/ensemble.py --concurrency 16 --rounds 1     # smoke
Client and servers share the machine's cores: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_triton  # noqa: E402 - the perf_analyzer, Triton and process helpers

SIDE, CLASSES, MAX_BATCH = 64, 100, 16
STEP = """name: "{name}"
{platform}
max_batch_size: 16
input [ {{ name: "{input}" data_type: {input_type} dims: [ {input_dims} ] }} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {output_dims} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
ENSEMBLE = f"""name: "pipeline"
platform: "ensemble"
max_batch_size: 16
input [ {{ name: "RAW" data_type: TYPE_UINT8 dims: [ 3, {SIDE}, {SIDE} ] }} ]
output [ {{ name: "SCORES" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "preprocess" model_version: -1
     input_map {{ key: "RAW" value: "RAW" }} output_map {{ key: "PIXELS" value: "pixels" }} }},
  {{ model_name: "classifier" model_version: -1
     input_map {{ key: "PIXELS" value: "pixels" }} output_map {{ key: "SCORES" value: "SCORES" }} }}
] }}
"""


def onnx_models() -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, inputs, outputs, initializers):
        graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    image = ["batch", 3, SIDE, SIDE]
    preprocess = model(
        [helper.make_node("Cast", ["RAW"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Sub", ["f", "mean"], ["centred"]),
         helper.make_node("Mul", ["centred", "scale"], ["PIXELS"])],
        [helper.make_tensor_value_info("RAW", TensorProto.UINT8, image)],
        [helper.make_tensor_value_info("PIXELS", TensorProto.FLOAT, image)],
        [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
         numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")])
    rng = np.random.default_rng(0)
    classifier = model(
        [helper.make_node("Flatten", ["PIXELS"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["product"]),
         helper.make_node("Add", ["product", "b"], ["SCORES"])],
        [helper.make_tensor_value_info("PIXELS", TensorProto.FLOAT, image)],
        [helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(
            rng.standard_normal((3 * SIDE * SIDE, CLASSES)).astype(np.float32) * 0.01, "W"),
         numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")])
    return {"preprocess": preprocess, "classifier": classifier}


def make_repositories(cache: Path) -> dict[str, Path]:
    models = onnx_models()
    steps = {"preprocess": ("RAW", "TYPE_UINT8", f"3, {SIDE}, {SIDE}", "PIXELS",
                            f"3, {SIDE}, {SIDE}"),
             "classifier": ("PIXELS", "TYPE_FP32", f"3, {SIDE}, {SIDE}", "SCORES", str(CLASSES))}
    repos = {}
    for kind, platform in (("pyserve", 'platform: "onnxruntime_onnx"'),
                           ("triton", 'backend: "python"')):
        repo = cache / "repos" / f"{kind}-ensemble"
        shutil.rmtree(repo, ignore_errors=True)
        for name, (i, i_type, i_dims, o, o_dims) in steps.items():
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "1" / "model.onnx").write_bytes(models[name])
            (repo / name / "config.pbtxt").write_text(STEP.format(
                name=name, platform=platform, input=i, input_type=i_type, input_dims=i_dims,
                output=o, output_dims=o_dims))
            if kind == "triton":
                shutil.copy2(vs_triton.HERE / "triton_model.py", repo / name / "1" / "model.py")
        (repo / "pipeline" / "1").mkdir(parents=True)
        (repo / "pipeline" / "config.pbtxt").write_text(ENSEMBLE)
        repos[kind] = repo
    return repos


def client_load(url: str, concurrency: int, seconds: float, chain: bool) -> float:
    """Requests per second of `concurrency` threads, each sending one request at a time, over
    `seconds` after a warm-up second."""
    import tritonclient.grpc as grpcclient

    raw = np.random.default_rng(1).integers(0, 256, (1, 3, SIDE, SIDE), dtype=np.uint8)
    counts = [0] * concurrency
    ready = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            first = grpcclient.InferInput("RAW", list(raw.shape), "UINT8")
            first.set_data_from_numpy(raw)
            ready.wait()
            while not stop.is_set():
                if chain:
                    pixels = client.infer("preprocess", [first]).as_numpy("PIXELS")
                    second = grpcclient.InferInput("PIXELS", list(pixels.shape), "FP32")
                    second.set_data_from_numpy(pixels)
                    client.infer("classifier", [second]).as_numpy("SCORES")
                else:
                    client.infer("pipeline", [first]).as_numpy("SCORES")
                counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(1.0)  # warm-up, not counted
    before, begun = sum(counts), time.monotonic()
    time.sleep(seconds)
    done, elapsed = sum(counts), time.monotonic() - begun
    stop.set()
    for thread in threads:
        thread.join()
    return (done - before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measurement-interval", type=int, default=2000)
    parser.add_argument("--chain-seconds", type=float, default=4.0)
    parser.add_argument("--stability-percentage", type=int, default=25)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--pyserve-args", default="")
    parser.add_argument("--triton-args", default="")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pyserve-bench")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cache = args.cache_dir.expanduser().resolve()
    tools = vs_triton.Tools(cache / "venvs", cache)
    pa = tools.perf_analyzer()
    repos = make_repositories(cache)
    scratch = cache / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    servers = [vs_triton.start_server(kind, "pipeline", repos, Path("-"), cache, args, tools)
               for kind in ("pyserve", "triton")]
    try:
        for server in servers:
            vs_triton.wait_ready(server, "pipeline")
        ratios = {c: [] for c in concurrencies}
        figures = {(kind, c): [] for kind in ("pyserve", "triton", "ensemble", "chain")
                   for c in concurrencies}
        for round_index in range(args.rounds):
            for c in concurrencies:
                runs = {}
                for server in servers:
                    others = [s for s in servers if s is not server]
                    record = vs_triton.run_cell(server, others, "pipeline", "grpc", c,
                                                args.measurement_interval, None, pa, args, scratch)
                    runs[server.kind] = record.get("infer_per_s")
                    figures[(server.kind, c)].append(runs[server.kind])
                if runs["pyserve"] and runs["triton"]:
                    ratios[c].append(runs["pyserve"] / runs["triton"])
                url = servers[0].url("grpc")
                figures[("ensemble", c)].append(client_load(url, c, args.chain_seconds, False))
                figures[("chain", c)].append(client_load(url, c, args.chain_seconds, True))
                vs_triton.log(f"round {round_index + 1} c={c}: pyserve {runs['pyserve']} "
                              f"Triton {runs['triton']} infer/s (perf_analyzer); Python client: "
                              f"ensemble {figures[('ensemble', c)][-1]:.0f} chain "
                              f"{figures[('chain', c)][-1]:.0f} req/s")
    finally:
        for server in servers:
            server.stop()
    print("\n| c | pyserve infer/s | Triton infer/s | pyserve/Triton | ensemble req/s | "
          "chain req/s | ensemble/chain |")
    print("|---|---|---|---|---|---|---|")
    for c in concurrencies:
        med = {k: statistics.median([x for x in figures[(k, c)] if x]) for k in
               ("pyserve", "triton", "ensemble", "chain")}
        chain_ratio = statistics.median(
            e / ch for e, ch in zip(figures[("ensemble", c)], figures[("chain", c)]))
        print(f"| {c} | {med['pyserve']:.0f} | {med['triton']:.0f} | "
              f"{statistics.median(ratios[c]):.2f}x | {med['ensemble']:.0f} | {med['chain']:.0f} "
              f"| {chain_ratio:.2f}x |")


if __name__ == "__main__":
    main()
