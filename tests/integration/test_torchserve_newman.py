"""TorchServe 0.12's own management API collection (test/postman, run by newman as TorchServe's
ts_scripts/api_utils.py runs it) against `pyserve torchserve`. The collection registers the
model zoo's archives by file name from the model store; small stand-in archives of those names
take their place (the collection checks status codes, not predictions), so no network is
needed. Its other collections need the zoo's real models, inputs and expected outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT  # noqa: E402
from torchserve_archives import make_mar  # noqa: E402
from test_torchserve_server import ECHO, TorchServeProcess, _native_available  # noqa: E402

COLLECTIONS = ROOT / "tests" / "fixtures" / "torchserve_postman"
STAND_INS = ("squeezenet1_1", "mnist", "densenet161", "resnet-152-batch", "resnet-18")
NEWMAN = os.environ.get("NEWMAN") or shutil.which("newman")


def _stand_ins(store: Path, work: Path) -> None:
    for name in STAND_INS:
        make_mar(store, name, {"echo.py": ECHO}, handler="echo.py", work=work / name)


def _newman(collection: str, report: Path, variables: dict, *extra: str,
            cwd: Path | None = None) -> tuple[dict, str]:
    """(the run's assertion counts, newman's output tail)."""
    command = [NEWMAN, "run", "-e", str(COLLECTIONS / "environment.json"),
               str(COLLECTIONS / collection), "--reporters", "cli,json",
               "--reporter-json-export", str(report), "--reporter-cli-no-banner", *extra]
    for key, value in variables.items():
        command += ["--env-var", f"{key}={value}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    return json.loads(report.read_text())["run"]["stats"]["assertions"], run.stdout[-6000:]


@pytest.mark.skipif(NEWMAN is None, reason="needs newman (npm install -g newman)")
@pytest.mark.parametrize("frontend", ["native", "python"])
def test_torchserve_management_collection(tmp_path, frontend):
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    _stand_ins(tmp_path / "store", tmp_path / "src")
    # api_utils.trigger_management_tests' config.properties, on ports of the test's own
    process = TorchServeProcess(
        tmp_path, "disable_token_authorization=true\nenable_model_api=true\n"
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n"
        "metrics_address=http://127.0.0.1:0\nmodel_store=store\n",
        "--http-frontend", frontend)
    try:
        stats, output = _newman(
            "management_api_test_collection.json", tmp_path / "newman.json",
            {"hostname": "127.0.0.1", "mgmt-port": process.ports["management"],
             "pred-port": process.ports["inference"], "metric-port": process.ports["metrics"]},
            "-d", str(COLLECTIONS / "management_data.json"))
    finally:
        process.stop()
    assert (stats["total"], stats["failed"]) == (82, 0), output


@pytest.mark.skipif(NEWMAN is None, reason="needs newman (npm install -g newman)")
@pytest.mark.parametrize("frontend", ["native", "python"])
def test_torchserve_https_collection(tmp_path, frontend):
    """api_utils.trigger_https_tests: TorchServe's test/resources/config.properties (its sample
    1024-bit key and certificate; without install_py_dep_per_model=true, which pyserve
    refuses), newman --insecure as TorchServe runs it."""
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    _stand_ins(tmp_path / "store", tmp_path / "src")
    resources = tmp_path / "resources"
    resources.mkdir()
    for name in ("key.pem", "certs.pem"):
        shutil.copy(COLLECTIONS / name, resources / name)
    kitten = tmp_path / "examples" / "image_classifier" / "kitten.jpg"
    kitten.parent.mkdir(parents=True)
    kitten.write_bytes(b"a kitten")  # the stand-in handler echoes it
    process = TorchServeProcess(
        tmp_path, "inference_address=https://127.0.0.1:0\n"
        "management_address=https://127.0.0.1:0\nmetrics_address=https://127.0.0.1:0\n"
        "private_key_file=resources/key.pem\ncertificate_file=resources/certs.pem\n"
        "disable_token_authorization=true\nenable_model_api=true\nmodel_store=store\n",
        "--http-frontend", frontend, scheme="https")
    try:
        assert "1024-bit RSA key" in process.log_path.read_text()
        work = tmp_path / "work"  # the collection's file is ../examples/image_classifier/
        work.mkdir()
        stats, output = _newman(
            "https_test_collection.json", tmp_path / "newman.json",
            {"hostname": "127.0.0.1", "sec-mgmt-port": process.ports["management"],
             "sec-pred-port": process.ports["inference"],
             "sec-metric-port": process.ports["metrics"]},
            "--insecure", "--working-dir", str(work), cwd=work)
    finally:
        process.stop()
    assert (stats["total"], stats["failed"]) == (9, 0), output


@pytest.mark.skipif(NEWMAN is None, reason="needs newman (npm install -g newman)")
@pytest.mark.parametrize("frontend", ["native", "python"])
@pytest.mark.parametrize("collection,envelope", [("kf_https_test_collection.json", "kserve"),
                                                 ("kfv2_https_test_collection.json",
                                                  "kservev2")])
def test_torchserve_kserve_https_collections(tmp_path, collection, envelope, frontend):
    """api_utils.trigger_https_tests_kf and _kfv2: test/resources/config_kf(v2).properties,
    TorchServe's KServe MNIST requests through its envelopes, an MNIST-style archive (the
    collections check status codes)."""
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    envelopes = pytest.importorskip("test_torchserve_envelopes")
    import torch

    work = tmp_path / "src"
    work.mkdir()
    torch.jit.script(envelopes.Digits()).save(str(work / "mnist.pt"))
    make_mar(tmp_path / "store", "mnist", {"mnist_handler.py": envelopes.MNIST_HANDLER,
                                           "mnist.pt": (work / "mnist.pt").read_bytes()},
             handler="mnist_handler.py", serialized_file="mnist.pt", work=work)
    resources = tmp_path / "resources"
    resources.mkdir()
    for name in ("key.pem", "certs.pem"):
        shutil.copy(COLLECTIONS / name, resources / name)
    shutil.copytree(COLLECTIONS / "kf_request_json",
                    tmp_path / "kubernetes" / "kserve" / "kf_request_json")
    process = TorchServeProcess(
        tmp_path, "inference_address=https://127.0.0.1:0\n"
        "management_address=https://127.0.0.1:0\nmetrics_address=https://127.0.0.1:0\n"
        "private_key_file=resources/key.pem\ncertificate_file=resources/certs.pem\n"
        f"service_envelope={envelope}\ndisable_token_authorization=true\n"
        "enable_model_api=true\nmodel_store=store\n", "--http-frontend", frontend,
        scheme="https")
    try:
        cwd = tmp_path / "work"  # the requests are ../kubernetes/kserve/kf_request_json/...
        cwd.mkdir()
        stats, output = _newman(
            collection, tmp_path / "newman.json",
            {"hostname": "127.0.0.1", "sec-mgmt-port": process.ports["management"],
             "sec-pred-port": process.ports["inference"],
             "sec-metric-port": process.ports["metrics"]},
            "--insecure", "--working-dir", str(cwd), cwd=cwd)
    finally:
        process.stop()
    assert (stats["total"], stats["failed"]) == (10, 0), output
