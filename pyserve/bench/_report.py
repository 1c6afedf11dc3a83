"""Results out: a table on stdout, --json, --csv, --plot, and --compare ratios."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pyserve.bench._run import LevelResult


def _level(r: LevelResult) -> str:
    return f"c={r.concurrency}" if r.concurrency is not None else f"r={r.request_rate:g}/s"


def _us(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(results: list[LevelResult]) -> str:
    head = (f"{'level':>9} {'infer/s':>9} {'avg ms':>7} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'stable':>6} | {'queue us':>8} "
            f"{'in us':>6} {'infer us':>8} {'out us':>6} {'server us':>9} | {'gen cpu us/req':>14}")
    lines = [head]
    for r in results:
        lines.append(
            f"{_level(r):>9} {r.throughput:>9.1f} {r.avg_ms:>7.2f} {r.p50_ms:>7.2f} "
            f"{r.p90_ms:>7.2f} {r.p95_ms:>7.2f} {r.p99_ms:>7.2f} {r.errors:>6} "
            f"{'yes' if r.stable else 'NO':>6} | {_us(r.server_queue_us):>8} "
            f"{_us(r.server_compute_input_us):>6} {_us(r.server_compute_infer_us):>8} "
            f"{_us(r.server_compute_output_us):>6} {_us(r.server_request_us):>9} | "
            f"{r.client_cpu_us_per_request:>14.0f}")
    return "\n".join(lines)


def compare_table(base: list[LevelResult], other: list[LevelResult]) -> str:
    lines = [f"{'level':>9} {'infer/s A':>10} {'infer/s B':>10} {'B/A':>6} "
             f"{'p99 A':>7} {'p99 B':>7} {'B/A':>6}"]
    for a, b in zip(base, other):
        lines.append(f"{_level(a):>9} {a.throughput:>10.1f} {b.throughput:>10.1f} "
                     f"{b.throughput / a.throughput if a.throughput else 0:>6.2f} "
                     f"{a.p99_ms:>7.2f} {b.p99_ms:>7.2f} "
                     f"{b.p99_ms / a.p99_ms if a.p99_ms else 0:>6.2f}")
    return "\n".join(lines)


def write_json(path: Path, results: list[LevelResult]) -> None:
    Path(path).write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")


def write_csv(path: Path, results: list[LevelResult]) -> None:
    rows = [r.as_dict() for r in results]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["url"])
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, series: dict[str, list[LevelResult]]) -> None:
    """p50 and p99 latency against throughput, one pair of lines per server."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("pyserve bench --plot needs matplotlib: pip install 'pyserve[bench]'")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, results in series.items():
        x = [r.throughput for r in results]
        line, = axes.plot(x, [r.p99_ms for r in results], marker="o", label=f"{label} p99")
        axes.plot(x, [r.p50_ms for r in results], marker=".", linestyle="--",
                  color=line.get_color(), label=f"{label} p50")
        for r in results:
            axes.annotate(_level(r), (r.throughput, r.p99_ms), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_xlabel("throughput (infer/s)")
    axes.set_ylabel("latency (ms)")
    axes.grid(True, alpha=0.3)
    # Beside the axes: with many series (a tune sweep) a legend inside would cover the points.
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
