"""Builds .mar archives for the TorchServe tests: with the real torch-model-archiver when it is
installed (pyserve[torchserve]), else by writing the same zip layout directly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

HAVE_ARCHIVER = importlib.util.find_spec("model_archiver") is not None
_ARCHIVER = ("import sys; from model_archiver.model_packaging import generate_model_archive; "
             "sys.exit(generate_model_archive())")


def make_mar(export: Path, name: str, files: dict[str, str | bytes], handler: str,
             version: str = "1.0", serialized_file: str = "", model_file: str = "",
             config_file: str = "", archive_format: str = "default",
             work: Path | None = None) -> Path:
    """Write `files` into a scratch folder, then archive them as torch-model-archiver would;
    `handler`, `serialized_file`, `model_file` and `config_file` name entries of `files` (or a
    built-in handler name); every other file goes in as an extra file."""
    work = work or export.parent / f"src-{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    for filename, content in files.items():
        path = work / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    named = {handler, serialized_file, model_file, config_file}
    extras = [str(work / f) for f in files if f not in named]
    export.mkdir(parents=True, exist_ok=True)
    if HAVE_ARCHIVER:
        handler_arg = str(work / handler) if handler in files else handler
        args = [sys.executable, "-c", _ARCHIVER, "--model-name", name, "--version", version,
                "--handler", handler_arg, "--export-path", str(export),
                "--archive-format", archive_format, "--force"]
        if serialized_file:
            args += ["--serialized-file", str(work / serialized_file)]
        if model_file:
            args += ["--model-file", str(work / model_file)]
        if config_file:
            args += ["--config-file", str(work / config_file)]
        if extras:
            args += ["--extra-files", ",".join(extras)]
        subprocess.run(args, check=True, capture_output=True)
    else:
        if archive_format != "default":
            raise RuntimeError("without torch-model-archiver only the default format is made")
        manifest = {"createdOn": "01/01/2026 00:00:00", "runtime": "python",
                    "model": {"modelName": name, "handler": Path(handler).name,
                              "modelVersion": version},
                    "archiverVersion": "0.12.0"}
        for key, value in (("serializedFile", serialized_file), ("modelFile", model_file),
                           ("configFile", config_file)):
            if value:
                manifest["model"][key] = value
        with zipfile.ZipFile(export / f"{name}.mar", "w", zipfile.ZIP_DEFLATED) as archive:
            for filename in files:
                archive.write(work / filename, Path(filename).name)
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
    suffix = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}[archive_format]
    return export / f"{name}{suffix}"
