"""Fuzz target (atheris) for pyserve's model configurations, as a model load reads them.

The input is a config.pbtxt, read from a file as the repository's is (read_config_file), or,
when it starts with '{', a load-API config override (parse_config_json). What parses goes
through what pyserve applies next (`normalize`: backend autofill, NormalizeModelConfig,
ValidateModelConfig, the name check, instance groups for 0 and 2 GPUs, ValidateModelIOConfig,
the warmup checks), and a config that passes must survive the HTTP config endpoint's JSON
(config_to_json) read back as an override, unchanged. A ServerError (ConfigError) is the
project's refusal; any other exception is a finding.

    python fuzz/fuzz_config.py [libFuzzer flags] [corpus dirs]   (pip install atheris)

pyserve is imported from this checkout. Its protos are compiled at build time; when the
checkout has no pyserve/protocol/_descriptors.py they are compiled here (grpcio-tools) into a
temporary module.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyserve_protos import provide_descriptors  # noqa: E402

provide_descriptors()
with atheris.instrument_imports(include=["pyserve.config", "pyserve.errors",
                                         "google.protobuf.text_format",
                                         "google.protobuf.json_format"]):
    # (the package's `model_config` is a function: the module is taken from sys.modules)
    mc = importlib.import_module("pyserve.config.model_config")
    from pyserve.errors import ServerError

WORK = tempfile.mkdtemp(prefix="pyserve-fuzz-config-")
CONFIG = os.path.join(WORK, "config.pbtxt")


def test_one_input(data: bytes) -> None:
    try:
        if data.lstrip().startswith(b"{"):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return  # the load API's JSON arrives as text (a proto string, an HTTP body)
            config = mc.parse_config_json(text)
        else:
            with open(CONFIG, "wb") as f:
                f.write(data)
            config = mc.read_config_file(Path(CONFIG))
    except ServerError:
        return
    name = config.name or "fuzz.identity"  # a name that names its backend, when it has none
    for gpus in (0, 2):
        try:
            normalized = mc.normalize(config, name, gpus)
        except ServerError:
            continue
        served = json.dumps(mc.config_to_json(normalized))
        back = mc.parse_config_json(served)
        if back != normalized:
            raise AssertionError(f"the config endpoint's JSON reads back as another config:\n"
                                 f"{normalized}\n---\n{back}")


def main() -> None:
    # libFuzzer's -merge and -fork run argv[0] again through the shell: name the interpreter
    # too, so that this works without the script being executable or atheris on PATH's python.
    argv = [f"{sys.executable} {os.path.abspath(__file__)}", *sys.argv[1:]]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
