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


@pytest.mark.skipif(NEWMAN is None, reason="needs newman (npm install -g newman)")
@pytest.mark.parametrize("frontend", ["native", "python"])
def test_torchserve_management_collection(tmp_path, frontend):
    if frontend == "native" and not _native_available():
        pytest.skip("pyserve was built without the native HTTP frontend")
    for name in STAND_INS:
        make_mar(tmp_path / "store", name, {"echo.py": ECHO}, handler="echo.py",
                 work=tmp_path / "src" / name)
    # api_utils.trigger_management_tests' config.properties, on ports of the test's own
    process = TorchServeProcess(
        tmp_path, "disable_token_authorization=true\nenable_model_api=true\n"
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n"
        "metrics_address=http://127.0.0.1:0\nmodel_store=store\n",
        "--http-frontend", frontend)
    report = tmp_path / "newman.json"
    try:
        run = subprocess.run(
            [NEWMAN, "run", "-e", str(COLLECTIONS / "environment.json"),
             str(COLLECTIONS / "management_api_test_collection.json"),
             "-d", str(COLLECTIONS / "management_data.json"),
             "--env-var", "hostname=127.0.0.1",
             "--env-var", f"mgmt-port={process.ports['management']}",
             "--env-var", f"pred-port={process.ports['inference']}",
             "--env-var", f"metric-port={process.ports['metrics']}",
             "--reporters", "cli,json", "--reporter-json-export", str(report),
             "--reporter-cli-no-banner"],
            capture_output=True, text=True, timeout=600)
    finally:
        process.stop()
    stats = json.loads(report.read_text())["run"]["stats"]["assertions"]
    assert (stats["total"], stats["failed"]) == (82, 0), run.stdout[-6000:]
