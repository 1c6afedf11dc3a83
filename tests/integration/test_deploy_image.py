"""The container images: the Dockerfiles pass hadolint and have what a serving image needs, and
what the image relies on works outside a container: its HEALTHCHECK command, and its entrypoint
run as a non-root user under tini as PID 1, where SIGTERM must reach pyserve and end in a clean
drain. No registry is reachable from here: .ci/image builds the CPU image on a Debian root made
from the package mirror, and the last test runs it where podman and mmdebstrap can."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, OUTSIDE, ROOT, start_server

DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*"))
NON_ROOT_UID = 65534  # nobody: the image's own user (1000) need not exist here
BIN = Path(sys.executable).parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def base_image(reference: str, steps: list[tuple[str, str]]) -> str:
    """A FROM's image with the default of a build argument (ARG before the first FROM) put in:
    the bases are build arguments, so that a digest can be pinned at build time."""
    defaults = {}
    for keyword, arguments in steps:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], reference)


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments)


def hadolint() -> str:
    path = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip("hadolint is not installed: pip install 'pyserve[test-deploy]'")
    return path


def test_there_is_a_cpu_and_a_cuda_image():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_a_careless_dockerfile(tmp_path):
    """The lint above can fail: the same linter refuses an unpinned, root-running image."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y tini\n"
                        "RUN pip install pyserve\nCMD pyserve serve\n")
    result = subprocess.run([hadolint(), "--no-color", str(careless)], capture_output=True,
                            text=True)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3025"):
        assert rule in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_has_what_a_serving_image_needs(dockerfile):
    steps = instructions(dockerfile)
    bases = [base_image(args.split()[0], steps) for keyword, args in steps if keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: the wheel is built in a stage of its own"
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {base}"
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    keywords = dict(final)  # the last of each instruction in the runtime stage
    assert "--from=build" in " ".join(a for k, a in final if k == "COPY")
    # Both native frontends are built (or the build fails) and import in the runtime stage.
    assert all(f"PYSERVE_NATIVE_{p}=ON" in " ".join(a for _, a in steps) for p in ("GRPC", "HTTP"))
    assert "import pyserve._grpc_server, pyserve._http_server" in " ".join(
        a for k, a in final if k == "RUN")
    user = keywords["USER"].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    healthcheck = keywords["HEALTHCHECK"]
    assert "/v2/health/ready" in " ".join(a for k, a in final if k == "ENV")
    assert "PYSERVE_HEALTH_URL" in healthcheck
    entrypoint = exec_form(keywords["ENTRYPOINT"])
    assert entrypoint[0].endswith("tini") and entrypoint[-1] == "pyserve"
    assert exec_form(keywords["CMD"])[0] == "serve"
    assert set(keywords["EXPOSE"].split()) == {"8000", "8001", "8002"}
    assert keywords.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"


def healthcheck_command(dockerfile: Path) -> list[str]:
    """The HEALTHCHECK's exec-form command, run with this machine's Python."""
    arguments = dict(instructions(dockerfile))["HEALTHCHECK"]
    command = exec_form(arguments[arguments.index("CMD") + 3:].strip())
    assert command[0] == "/opt/pyserve/bin/python"
    return [sys.executable, *command[1:]]


def test_healthcheck_follows_readiness(tmp_path):
    command = healthcheck_command(DOCKERFILES[0])
    assert healthcheck_command(DOCKERFILES[1]) == command
    server = start_server([EXAMPLES], tmp_path / "server.log", "--drain-grace-secs", "3")

    def check() -> int:
        env = {**os.environ,
               "PYSERVE_HEALTH_URL": f"http://{server.http_url}/v2/health/ready"}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    try:
        assert check() == 0
        os.kill(server.process.pid, signal.SIGTERM)  # draining: not ready, still listening
        time.sleep(0.5)
        assert server.process.poll() is None and check() != 0
        server.process.wait(30)
        assert check() != 0  # nothing listening
    finally:
        server.stop()


def _pid1_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("tini", "unshare", "setpriv")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages tini and util-linux)")
    probe = subprocess.run([tools["unshare"], "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    if os.geteuid() != 0:
        pytest.skip("switching to a non-root user needs root")
    return tools


def _ns_pids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(n) for n in line.split()[1:]]
    return []


def _children(pid: int) -> list[int]:
    try:
        return [int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_entrypoint_as_non_root_under_tini_as_pid1():
    """The image's ENTRYPOINT and CMD as the container runs them: tini as PID 1 of its own PID
    namespace, pyserve as a non-root user on a repository it cannot write. SIGTERM to PID 1
    must reach pyserve, which drains and exits 0; tini passes the status on."""
    tools = _pid1_tools()
    steps = dict(instructions(DOCKERFILES[0]))
    entrypoint, cmd = exec_form(steps["ENTRYPOINT"]), exec_form(steps["CMD"])
    assert entrypoint[0] == "/usr/bin/tini" and cmd[:2] == ["serve", "--model-repository"]

    # A root-owned repository that others may read but not write, as a read-only mount is.
    base = Path(tempfile.mkdtemp(prefix="pyserve-image-", dir=OUTSIDE))
    try:
        base.chmod(0o755)
        repository = base / "models"
        shutil.copytree(EXAMPLES / "simple", repository / "simple")
        for path in [repository, *repository.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        log_path = base / "server.log"
        log = open(log_path, "w")
        log_path.chmod(0o666)
        # The non-root user gets no write access anywhere; CAP_DAC_READ_SEARCH only lets it
        # read this machine's Python, which lives under /root (in the image: /opt/pyserve).
        command = [tools["unshare"], "--pid", "--fork", "--mount-proc", "--kill-child",
                   tools["setpriv"], f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}",
                   "--clear-groups", "--inh-caps=+dac_read_search",
                   "--ambient-caps=+dac_read_search",
                   tools["tini"], *entrypoint[1:-1], str(BIN / entrypoint[-1]),
                   *cmd[:2], str(repository), "--host", "127.0.0.1", "--grpc-port", "0",
                   "--http-port", "0", "--metrics-port", "0", "--exit-timeout-secs", "10"]
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(base), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                                   env=env)
        log.close()
        try:
            deadline = time.monotonic() + 60
            while "Started Metrics Service" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            (tini,) = _children(process.pid)
            assert _ns_pids(tini)[-1] == 1  # PID 1 in its namespace
            (pyserve,) = _children(tini)
            assert Path(f"/proc/{pyserve}").stat().st_uid == NON_ROOT_UID
            status = Path(f"/proc/{pyserve}/status").read_text()
            assert re.search(rf"^Uid:\s+{NON_ROOT_UID}\s", status, re.M)
            port = re.search(r"Started HTTPService at [^:]+:(\d+)", log_path.read_text())[1]
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
            os.kill(tini, signal.SIGTERM)
            assert process.wait(30) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        text = log_path.read_text()
        assert "shutting down" in text and "pyserve stopped" in text
        assert not any(p.stat().st_mode & stat.S_IWOTH for p in repository.rglob("*"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_cpu_image_builds_starts_and_answers():
    """.ci/image, end to end: a Debian root made with mmdebstrap from the package mirror as
    the base (no registry is reachable), the CPU image built on it with podman, started on the
    examples' repository, one tritonclient request over HTTP and gRPC, then SIGTERM and a
    clean drain. Minutes on a cold cache; skipped (exit 77) where no builder can run."""
    result = subprocess.run([str(ROOT / ".ci" / "image")], capture_output=True, text=True,
                            timeout=2400)
    if result.returncode == 77:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, (result.stdout[-6000:], result.stderr[-6000:])
    assert "the container answered over HTTP" in result.stdout
    assert "built, answered and drained" in result.stdout
