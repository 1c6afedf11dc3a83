"""pyserve.protocol from this checkout for the fuzz scripts: pyserve compiles its protos at
build time (pyserve/protocol/_descriptors.py); a checkout that was not built gets them compiled
here (grpcio-tools) into a module of its own, so nothing is written into the checkout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOS = ("grpc_service.proto", "model_config.proto", "health.proto")


def provide_descriptors() -> None:
    """Puts this checkout first on sys.path and makes pyserve.protocol._descriptors importable."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    name = "pyserve.protocol._descriptors"
    if name in sys.modules or os.path.exists(os.path.join(ROOT, "pyserve", "protocol",
                                                          "_descriptors.py")):
        return
    protos = os.path.join(ROOT, "protos")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "_descriptors.py")
        subprocess.run([sys.executable, os.path.join(protos, "compile.py"), "--out", out,
                        *(os.path.join(protos, p) for p in PROTOS)], check=True)
        spec = importlib.util.spec_from_file_location(name, out)
        module = types.ModuleType(name)
        spec.loader.exec_module(module)
    sys.modules[name] = module


def load_wire():
    """pyserve/protocol/wire.py alone (plain Python: no protobuf, no numpy)."""
    path = os.path.join(ROOT, "pyserve", "protocol", "wire.py")
    spec = importlib.util.spec_from_file_location("pyserve_fuzz_wire", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
