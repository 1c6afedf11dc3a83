"""Sequence models: pyserve against Triton 2.51, side by side, with perf_analyzer's sequence mode.

What it measures
    One Triton `model.py` with `sequence_batching`, served unchanged by both servers (Triton's
    Python backend; pyserve's in-process one, its sequence batcher in the core): an accumulator
    (OUTPUT = the sum of the sequence's INPUTs so far, kept per CORRID, reset at START), with an
    INT32 START control and a UINT64 CORRID, max_batch_size 8, one CPU instance; as
    `seq_direct` (direct: 8 slots, max_queue_delay_microseconds 100) and as `seq_oldest`
    (oldest: max_candidate_sequences 64, preferred_batch_size 8, max_queue_delay_microseconds
    100). perf_analyzer 2.51 (gRPC, synchronous) runs --concurrency concurrent sequences of
    --sequence-length requests with integer correlation IDs, cell by cell (model x
    concurrency), pyserve then Triton, rounds interleaved: infer/s, p99 and each server's CPU
    time per request; a ratio is the median of the per-round ratios.

How to run (the venvs and helpers of bench/vs_triton.py; the default takes ~10 minutes)
    python bench/sequence.py                              # direct, oldest; c = 8, 64; 3 rounds
    python bench/sequence.py --models seq_direct --concurrency 8 --rounds 1   # smoke
Client and servers share the machine's cores: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_triton  # noqa: E402 - the perf_analyzer, Triton and process helpers

MODEL_PY = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().flat[0])
            total = value + (0 if start.flat[0] else self.sums.get(corrid, 0))
            self.sums[corrid] = total
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total)]))
        return responses
"""
STRATEGIES = {
    "seq_direct": "direct { max_queue_delay_microseconds: 100 }",
    "seq_oldest": ("oldest { max_candidate_sequences: 64 preferred_batch_size: [ 8 ] "
                   "max_queue_delay_microseconds: 100 }"),
}
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  {strategy}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def make_repositories(cache: Path) -> dict[str, Path]:
    repos = {}
    for kind in ("pyserve", "triton"):
        repo = cache / "repos" / f"{kind}-sequence"
        for name, strategy in STRATEGIES.items():
            (repo / name / "1").mkdir(parents=True, exist_ok=True)
            (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, strategy=strategy))
            (repo / name / "1" / "model.py").write_text(MODEL_PY)
        repos[kind] = repo
    return repos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(STRATEGIES))
    parser.add_argument("--concurrency", default="8,64")
    parser.add_argument("--sequence-length", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measurement-interval", type=int, default=3000)
    parser.add_argument("--stability-percentage", type=int, default=25)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--pyserve-args", default="")
    parser.add_argument("--triton-args", default="")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pyserve-bench")
    args = parser.parse_args()
    models = args.models.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cache = args.cache_dir.expanduser().resolve()
    tools = vs_triton.Tools(cache / "venvs", cache)
    pa = tools.perf_analyzer()
    repos = make_repositories(cache)
    scratch = cache / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    kinds = ("pyserve", "triton")
    servers = {kind: vs_triton.start_server(kind, models[0], repos, Path("-"), cache, args, tools)
               for kind in kinds}
    runs: dict[tuple, list[dict]] = {}
    try:
        for server in servers.values():
            for model in models:
                vs_triton.wait_ready(server, model)
        for round_index in range(args.rounds):
            for model in models:
                for c in concurrencies:
                    # A sequence ID range of its own per run: no ID meets a sequence still open.
                    first = 1 + 100000 * (round_index * 10 + concurrencies.index(c))
                    extra = ["--sequence-length", str(args.sequence_length),
                             "--sequence-id-range", f"{first}:{first + 99999}"]
                    for kind in kinds:
                        others = [s for k, s in servers.items() if k != kind]
                        record = vs_triton.run_cell(servers[kind], others, model, "grpc", c,
                                                    args.measurement_interval, None, pa, args,
                                                    scratch, extra)
                        runs.setdefault((model, c, kind), []).append(record)
                        vs_triton.log(f"round {round_index + 1} {model} c={c} {kind}: "
                                      f"{vs_triton._describe(record)}")
    finally:
        for server in servers.values():
            server.stop()
    print(f"\nsequences of {args.sequence_length} requests, medians of {args.rounds} rounds\n")
    print("| model | c | infer/s (pyserve / Triton) | pyserve/Triton | p99 ms (pyserve / Triton) "
          "| server CPU µs/request (pyserve / Triton) |")
    print("|---|---|---|---|---|---|")
    for model in models:
        for c in concurrencies:
            mine, theirs = runs[(model, c, "pyserve")], runs[(model, c, "triton")]
            ratios = [a["infer_per_s"] / b["infer_per_s"] for a, b in zip(mine, theirs)
                      if a.get("infer_per_s") and b.get("infer_per_s")]

            def med(records, key):
                values = [r[key] for r in records if r.get(key) is not None]
                return statistics.median(values) if values else float("nan")

            print(f"| {model} | {c} | {med(mine, 'infer_per_s'):,.0f} / "
                  f"{med(theirs, 'infer_per_s'):,.0f} | "
                  f"{statistics.median(ratios) if ratios else float('nan'):.2f}x | "
                  f"{med(mine, 'p99_ms'):.1f} / {med(theirs, 'p99_ms'):.1f} | "
                  f"{med(mine, 'cpu_us_per_request'):.0f} / {med(theirs, 'cpu_us_per_request'):.0f} |")


if __name__ == "__main__":
    main()
