"""`pyserve bench` against a real server: every level reported, JSON/CSV written, server-side
breakdown present, perf_analyzer's input-data format read, --compare ratios printed."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import OUTSIDE, ROOT
from pyserve.bench._load import native_available

BENCH = [sys.executable, "-m", "pyserve.cli", "bench", "-q", "-p", "300", "--max-trials", "4"]


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=OUTSIDE)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bench_levels_json_and_csv(example_server, tmp_path, protocol):
    url = (example_server.grpc_url if protocol == "grpc"
           else f"http://{example_server.http_url}")
    out, table = tmp_path / "out.json", tmp_path / "out.csv"
    done = bench("-m", "simple", "-u", url, "--concurrency", "1,3", "--json", str(out),
                 "--csv", str(table))
    assert done.returncode == 0, done.stderr
    levels = json.loads(out.read_text())
    assert [level["concurrency"] for level in levels] == [1, 3]
    for level in levels:
        assert level["protocol"] == protocol
        assert level["throughput"] > 10 and level["errors"] == 0
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["server_compute_infer_us"] > 0 and level["server_request_us"] > 0
        assert level["client_cpu_us_per_request"] > 0
        assert 3 <= level["windows"] <= 4
        # the server counted what the generator counted (read around the same windows; a
        # loose bound, the reads trail the windows' ends on a busy machine)
        assert level["server_throughput"] == pytest.approx(level["throughput"], rel=0.5)
        assert level["generator"] == ("native" if native_available(protocol) else "python")
    assert levels[1]["processes"] == (1 if native_available(protocol)
                                      else max(1, min(3, (os.cpu_count() or 1) // 2)))
    rows = list(csv.DictReader(table.open()))
    assert [r["concurrency"] for r in rows] == ["1", "3"]
    assert "c=3" in done.stdout and "infer/s" in done.stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bench_python_generator(example_server, tmp_path, protocol):
    """The generator of builds without gRPC C++ / cpp-httplib, chosen explicitly."""
    url = (example_server.grpc_url if protocol == "grpc"
           else f"http://{example_server.http_url}")
    out = tmp_path / "py.json"
    done = bench("-m", "simple", "-u", url, "--concurrency", "2", "--generator", "python",
                 "--json", str(out))
    assert done.returncode == 0, done.stderr
    (level,) = json.loads(out.read_text())
    assert level["generator"] == "python" and level["errors"] == 0 and level["throughput"] > 10


def test_bench_native_generator_request_rate_over_http(example_server, tmp_path):
    if not native_available("http"):
        pytest.skip("pyserve was built without the native HTTP load generator")
    out = tmp_path / "rate.json"
    done = bench("-m", "simple", "-u", f"http://{example_server.http_url}", "--request-rate",
                 "300", "--generator", "native", "--json", str(out), "-p", "1000")
    assert done.returncode == 0, done.stderr
    (level,) = json.loads(out.read_text())
    assert level["generator"] == "native"
    assert level["throughput"] == pytest.approx(300, rel=0.15)


def test_bench_core_needs_a_source_checkout(tmp_path):
    done = bench("--core", "--source", str(tmp_path))
    assert done.returncode != 0 and "no bench/core_bench.py under" in done.stderr
    done = bench("-u", "127.0.0.1:1")
    assert done.returncode != 0 and "-m/--model is required" in done.stderr


def test_bench_core_runs_the_microbenchmarks():
    done = bench("--core", "--source", str(ROOT), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "overhead  Python no-op executor" in done.stdout


def test_bench_request_rate_and_input_file(example_server, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [
        {"INPUT0": list(range(16)), "INPUT1": {"content": [1] * 16, "shape": [16]}},
        {"INPUT0": [0] * 16, "INPUT1": [0] * 16}]}))
    out = tmp_path / "rate.json"
    # one-second windows: a rate is only as steady as the shared machine's scheduling
    done = bench("-m", "simple", "-u", example_server.grpc_url, "--request-rate", "200",
                 "--input-data", str(data), "--json", str(out), "-p", "1000")
    assert done.returncode == 0, done.stderr
    (level,) = json.loads(out.read_text())
    assert level["request_rate"] == 200 and level["concurrency"] is None
    assert level["throughput"] == pytest.approx(200, rel=0.15)


def test_bench_streaming_and_compare(example_server, tmp_path):
    out = tmp_path / "cmp.json"
    done = bench("-m", "simple", "-u", example_server.grpc_url, "--streaming",
                 "--compare", example_server.grpc_url, "--json", str(out),
                 "--plot", str(tmp_path / "cmp.png"))
    assert done.returncode == 0, done.stderr
    levels = json.loads(out.read_text())
    assert [level["url"] for level in levels] == [example_server.grpc_url] * 2
    assert all(level["throughput"] > 10 for level in levels)
    assert "B/A" in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_streaming_needs_grpc(example_server):
    done = bench("-m", "simple", "-u", f"http://{example_server.http_url}", "--streaming")
    assert done.returncode != 0 and "--streaming needs gRPC" in done.stderr


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_bench_reports_errors(example_server, tmp_path, streaming):
    done = bench("-m", "simple", "-u", example_server.grpc_url, "--shape", "INPUT0:8",
                 *(["--streaming"] if streaming else []), "--json", str(tmp_path / "e.json"))
    assert done.returncode == 1
    (level,) = json.loads((tmp_path / "e.json").read_text())
    assert level["errors"] > 0 and level["throughput"] == 0


def test_bench_unknown_model_fails_cleanly(example_server):
    done = bench("-m", "nope", "-u", example_server.grpc_url)
    assert done.returncode != 0
    assert "Request for unknown model: 'nope' is not found" in done.stderr
