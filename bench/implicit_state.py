"""Implicit state kept in the core against the same state passed through the client: one
`pyserve serve` on 127.0.0.1 serves an ONNX accumulator twice, both sequence models (direct,
max_batch_size 8): `state_core` keeps its FP32 [--state-size] state with
sequence_batching.state, `state_client` takes it as an ordinary input and returns it, and the
client sends it back with the sequence's next request. --concurrency sequences run at once
(one tritonclient gRPC client and thread each, --length requests per sequence, then a new
one); the two models take turns for --rounds rounds, so drift hits both alike. Prints the
median throughput of each and the median of the per-round ratios.

    python bench/implicit_state.py [--concurrency 1,8] [--state-size 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import start_server  # noqa: E402

MODELS = ("state_core", "state_client")


def write_models(repository: Path, size: int) -> None:
    info = [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("INPUT_STATE", TensorProto.FLOAT, ["batch", size]),
            helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("OUTPUT_STATE", TensorProto.FLOAT, ["batch", size])]
    graph = helper.make_graph([helper.make_node("Add", ["INPUT_STATE", "INPUT"], ["OUTPUT_STATE"]),
                               helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
                              "accumulator", info[:2], info[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    tensor = 'data_type: TYPE_FP32 dims: [ {} ]'
    for name in MODELS:
        (repository / name / "1").mkdir(parents=True)
        onnx.save(model, str(repository / name / "1" / "model.onnx"))
        inputs = f'input {{ name: "INPUT" {tensor.format(1)} }}\n'
        outputs = f'output {{ name: "OUTPUT" {tensor.format(1)} }}\n'
        state = ""
        if name == "state_core":
            state = (f'state {{ input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" '
                     f'{tensor.format(size)} }}')
        else:
            inputs += f'input {{ name: "INPUT_STATE" {tensor.format(size)} }}\n'
            outputs += f'output {{ name: "OUTPUT_STATE" {tensor.format(size)} }}\n'
        (repository / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n{inputs}{outputs}'
            f'sequence_batching {{ {state} }}\n'
            'instance_group [ { kind: KIND_CPU count: 1 } ]\n')


def sequences(url: str, model: str, first_id: int, size: int, length: int, stop: threading.Event,
              counts: list, slot: int) -> None:
    value = grpcclient.InferInput("INPUT", [1, 1], "FP32")
    value.set_data_from_numpy(np.ones((1, 1), np.float32))
    wanted = [grpcclient.InferRequestedOutput("OUTPUT")]
    if model == "state_client":
        wanted.append(grpcclient.InferRequestedOutput("OUTPUT_STATE"))
    with grpcclient.InferenceServerClient(url) as client:
        sequence_id = first_id
        while not stop.is_set():
            state = np.zeros((1, size), np.float32)
            for step in range(length):
                inputs = [value]
                if model == "state_client":
                    passed = grpcclient.InferInput("INPUT_STATE", [1, size], "FP32")
                    passed.set_data_from_numpy(state)
                    inputs.append(passed)
                result = client.infer(model, inputs, outputs=wanted, sequence_id=sequence_id,
                                      sequence_start=step == 0, sequence_end=step == length - 1)
                if model == "state_client":
                    state = result.as_numpy("OUTPUT_STATE")
                counts[slot] += 1
            sequence_id += 1000


def rate(url: str, model: str, concurrency: int, size: int, length: int, seconds: float) -> float:
    stop, counts = threading.Event(), [0] * concurrency
    threads = [threading.Thread(target=sequences,
                                args=(url, model, 1 + k, size, length, stop, counts, k))
               for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(seconds / 4)  # warm up: connections, first sequences
    start_count, start = sum(counts), time.monotonic()
    time.sleep(seconds)
    done, elapsed = sum(counts) - start_count, time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--state-size", type=int, default=4096, help="FP32 elements")
    parser.add_argument("--length", type=int, default=20, help="requests per sequence")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per model and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        repository.mkdir()
        write_models(repository, args.state_size)
        server = start_server([repository], Path(tmp) / "server.log")
        try:
            print(f"state FP32[{args.state_size}], {args.length} requests per sequence, gRPC")
            print(f"{'c':>3} {'core /s':>10} {'client /s':>10} {'ratio':>7}")
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                rates = {model: [] for model in MODELS}
                for _ in range(args.rounds):
                    for model in MODELS:
                        rates[model].append(rate(server.grpc_url, model, concurrency,
                                                 args.state_size, args.length, args.seconds))
                ratios = [a / b for a, b in zip(rates["state_core"], rates["state_client"])]
                print(f"{concurrency:>3} {statistics.median(rates['state_core']):>10.0f} "
                      f"{statistics.median(rates['state_client']):>10.0f} "
                      f"{statistics.median(ratios):>6.2f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
