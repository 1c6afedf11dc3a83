"""pyserve against TorchServe 0.12 itself: the same `.mar`, TorchServe's inference API, `hey`.

What it measures
    One archive, made here with torch-model-archiver: a small TorchScript MLP (FP32 64 -> 64 ->
    10) behind a custom handler that decodes each request's JSON list, runs the batch through
    the model and returns one list per request; its model-config.yaml asks for --workers
    workers, batchSize --batch-size and maxBatchDelay --max-batch-delay ms. Both servers load
    it from the same model store at startup:
        TorchServe  `torchserve --start --foreground` (the torchserve 0.12 wheel, Java 17+): a
                    Java frontend and one Python worker process per worker.
        pyserve     `pyserve torchserve` with the same flags: one process, predictions
                    served by the native HTTP frontend, each worker an instance of the
                    core's scheduler running the handler once per batch.
    `hey` (Debian's package) posts the JSON body to POST /predictions/mlp for --duration
    seconds at each concurrency, as the raw body and (--bodies) as the part named `data` of a
    multipart/form-data body (what `requests.post(files=...)` and perf_analyzer's torchserve
    service kind send); per run: requests/s, p50 and p99 latency, non-200 answers,
    and the server's CPU time per request (utime+stime of the server and all its
    descendants over the run, divided by the requests answered): far less noisy than
    throughput on a shared machine. perf_analyzer's torchserve service kind would do, but
    above concurrency 1 it fails every request ("Timer not set correctly").

    Rounds are interleaved: each round runs every concurrency and body on both servers back to back,
    the order alternating by round. A figure is the median over rounds; a ratio is the median
    of the per-round ratios. Resident memory is read once both servers are warm: VmRSS summed
    over pyserve's process, and over TorchServe's Java frontend and its worker processes.

How to run (needs `torchserve`, `torch-model-archiver` (pip install ".[torchserve]"), java
17+ (apt-get install -y openjdk-17-jre-headless) and hey (apt-get install -y hey))
    python bench/vs_torchserve.py                       # c = 1, 8; 3 rounds of 10 s runs
    python bench/vs_torchserve.py --rounds 1 --duration 3 --concurrency 8   # smoke
    python bench/vs_torchserve.py --json out.json

Client and servers share the machine's cores; compare the ratios of one run, never a figure with
one taken on another machine or day.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_triton import _median, cpu_seconds, descendants, free_port, log  # noqa: E402

HANDLER = '''
import json

import torch


class MlpHandler:
    def initialize(self, context):
        torch.set_num_threads(1)
        self.model = torch.jit.load(f"{context.system_properties['model_dir']}/mlp.pt")
        self.model.eval()

    def handle(self, data, context):
        if data is None:
            return None
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            rows.append(json.loads(value) if isinstance(value, (bytes, bytearray, str)) else value)
        with torch.inference_mode():
            out = self.model(torch.tensor(rows, dtype=torch.float32))
        return [r.tolist() for r in out]
'''
SERVERS = ("pyserve", "torchserve")
_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_PERCENTILE = re.compile(r"(\d+)% in ([\d.]+) secs")
_HEY_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")


def make_store(store: Path, work: Path, workers: int, batch_size: int, delay_ms: int) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    torch.jit.script(model).save(str(work / "mlp.pt"))
    (work / "handler.py").write_text(HANDLER)
    (work / "model-config.yaml").write_text(
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch_size}\n"
        f"maxBatchDelay: {delay_ms}\n")
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([shutil.which("torch-model-archiver") or "torch-model-archiver",
                    "--model-name", "mlp", "--version", "1.0",
                    "--serialized-file", str(work / "mlp.pt"),
                    "--handler", str(work / "handler.py"),
                    "--config-file", str(work / "model-config.yaml"),
                    "--export-path", str(store), "--force"], check=True, capture_output=True)


class Server:
    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.port = free_port()
        directory = root / kind
        directory.mkdir()
        (directory / "config.properties").write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{free_port()}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n")
        flags = ["--start", "--foreground", "--ncs", "--model-store", str(root / "store"),
                 "--models", "mlp=mlp.mar", "--ts-config", "config.properties",
                 "--disable-token-auth"]
        if kind == "torchserve":
            command = [shutil.which("torchserve") or "torchserve", *flags]
        else:
            exe = shutil.which("pyserve")
            command = ([exe] if exe else [sys.executable, "-m", "pyserve.cli"]) + [
                "torchserve", *flags, "--allow-grpc", "false", "--allow-http", "false",
                "--allow-metrics", "false"]
        self.log_path = directory / "server.log"
        with open(self.log_path, "w") as out:
            # A session of its own: stop() signals the whole group (TorchServe's Java
            # frontend and workers).
            self.process = subprocess.Popen(command, cwd=directory, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/mlp"

    def wait_ready(self, body: bytes, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                request = urllib.request.Request(self.url, data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as reply:
                    if reply.status == 200 and len(json.loads(reply.read())) == 10:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        sys.exit(f"{self.kind} did not become ready:\n{tail}")

    def rss_mib(self) -> float:
        """VmRSS summed over the server's processes: for TorchServe the Java frontend and its
        workers, not the `torchserve` launcher that waits on them."""
        pids = descendants(self.process.pid)
        if self.kind == "torchserve":
            pids = pids[1:]
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(match.group(1)) if match else 0
        return total / 1024

    def processes(self) -> int:
        return len(descendants(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


BOUNDARY = "pyserve-bench-boundary"
CONTENT_TYPES = {"raw": "application/json",
                 "multipart": f"multipart/form-data; boundary={BOUNDARY}"}


def body_files(work: Path, body: bytes) -> dict[str, Path]:
    """The request body of each kind, in a file for hey."""
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; "
                 f"filename=\"input.json\"\r\nContent-Type: application/json\r\n\r\n"
                 ).encode() + body + f"\r\n--{BOUNDARY}--\r\n".encode()
    files = {"raw": work / "input.json", "multipart": work / "input.multipart"}
    files["raw"].write_bytes(body)
    files["multipart"].write_bytes(multipart)
    return files


def hey(server: Server, body_file: Path, concurrency: int, duration: float,
        content_type: str = CONTENT_TYPES["raw"]) -> dict:
    command = ["hey", "-z", f"{duration}s", "-c", str(concurrency), "-m", "POST",
               "-T", content_type, "-D", str(body_file), server.url]
    cpu_before = cpu_seconds(server.process.pid)
    output = subprocess.run(command, capture_output=True, text=True,
                            timeout=duration + 120).stdout
    cpu = cpu_seconds(server.process.pid) - cpu_before
    statuses = {int(code): int(count) for code, count in _HEY_STATUS.findall(output)}
    percentiles = {int(p): float(s) * 1000 for p, s in _HEY_PERCENTILE.findall(output)}
    match = _HEY_RPS.search(output)
    if not match or not statuses:
        return {"error": output.strip()[-500:]}
    answered = sum(statuses.values())
    return {"infer_per_s": float(match.group(1)), "p50_ms": percentiles.get(50),
            "p99_ms": percentiles.get(99), "errors": answered - statuses.get(200, 0),
            "cpu_us_per_request": round(cpu / answered * 1e6, 1) if answered else None}


def summarize(runs: list[dict], cells: list[tuple[str, int]]) -> list[dict]:
    rows = []
    for body, c in cells:
        by_round: dict[int, dict] = {}
        for run in runs:
            if (run["body"], run["concurrency"]) == (body, c) and "error" not in run:
                by_round.setdefault(run["round"], {})[run["server"]] = run
        row = {"body": body, "concurrency": c}
        for kind in SERVERS:
            for key in ("infer_per_s", "p50_ms", "p99_ms", "cpu_us_per_request"):
                row[f"{kind}_{key}"] = _median([r[kind].get(key) for r in by_round.values()
                                                if kind in r])
        pairs = [r for r in by_round.values() if len(r) == 2]
        row["throughput_ratio"] = _median([r["pyserve"]["infer_per_s"]
                                           / r["torchserve"]["infer_per_s"] for r in pairs])
        row["p99_ratio"] = _median([r["pyserve"]["p99_ms"] / r["torchserve"]["p99_ms"]
                                    for r in pairs])
        rows.append(row)
    return rows


def _fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], memory: dict) -> str:
    lines = ["| body | c | pyserve infer/s | TorchServe infer/s | ratio | pyserve p50 / p99 ms | "
             "TorchServe p50 / p99 ms | p99 ratio | CPU µs/req pyserve / TorchServe |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['body']} | {r['concurrency']} | {_fmt(r['pyserve_infer_per_s'])} | "
            f"{_fmt(r['torchserve_infer_per_s'])} | {_fmt(r['throughput_ratio'], 2)}x | "
            f"{_fmt(r['pyserve_p50_ms'], 1)} / {_fmt(r['pyserve_p99_ms'], 1)} | "
            f"{_fmt(r['torchserve_p50_ms'], 1)} / {_fmt(r['torchserve_p99_ms'], 1)} | "
            f"{_fmt(r['p99_ratio'], 2)} | {_fmt(r['pyserve_cpu_us_per_request'])} / "
            f"{_fmt(r['torchserve_cpu_us_per_request'])} |")
    lines.append("")
    lines.append(f"Resident memory with the model loaded at {memory['workers']} workers: "
                 f"pyserve {memory['pyserve']:.0f} MiB in {memory['pyserve_processes']} "
                 f"process(es), TorchServe {memory['torchserve']:.0f} MiB in "
                 f"{memory['torchserve_processes'] - 1} (Java frontend + workers); "
                 f"ratio {memory['pyserve'] / memory['torchserve']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8",
                        help="comma-separated concurrencies (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per hey run (default: %(default)s)")
    parser.add_argument("--bodies", default="raw,multipart",
                        help="request bodies: raw, multipart (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=2, metavar="MS")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells = [(body, c) for c in concurrencies for body in args.bodies.split(",")]
    for tool, hint in (("hey", "apt-get install -y hey"), ("java", "apt-get install -y "
                       "openjdk-17-jre-headless"), ("torchserve", "pip install '.[torchserve]'")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: {hint}")

    root = Path(tempfile.mkdtemp(prefix="pyserve-vs-torchserve-"))
    work = root / "work"
    work.mkdir()
    make_store(root / "store", work, args.workers, args.batch_size, args.max_batch_delay)
    body = json.dumps([0.5] * 64).encode()
    files = body_files(work, body)
    servers = {}
    try:
        for kind in SERVERS:
            servers[kind] = Server(kind, root)
        for server in servers.values():
            server.wait_ready(body)
            hey(server, files["raw"], 8, 2)  # warm-up
        memory = {"workers": args.workers}
        for kind, server in servers.items():
            memory[kind] = server.rss_mib()
            memory[f"{kind}_processes"] = server.processes()
        log(f"resident memory: {memory}")
        runs = []
        for round_index in range(args.rounds):
            for body_kind, c in cells:
                order = SERVERS if round_index % 2 == 0 else SERVERS[::-1]
                for kind in order:
                    run = hey(servers[kind], files[body_kind], c, args.duration,
                              CONTENT_TYPES[body_kind])
                    run.update(server=kind, body=body_kind, concurrency=c, round=round_index)
                    runs.append(run)
                    log(f"round {round_index + 1} {body_kind} c={c} {kind}: {run}")
    finally:
        for server in servers.values():
            server.stop()
    rows = summarize(runs, cells)
    print(markdown(rows, memory))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": rows, "memory": memory},
                                        indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
