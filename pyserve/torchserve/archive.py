"""Model archives as torch-model-archiver writes them, opened safely.

Three formats: `default`/`zip-store` (a zip, `.mar`), `tgz` (`NAME.tar.gz` whose members lie
under `NAME/`) and `no-archive` (a directory). Each holds `MAR-INF/MANIFEST.json`. Archives are
untrusted input: members may not leave the extraction directory (absolute paths, `..`, links),
and the number of members and their total extracted size are capped, so a zip bomb fails the
load instead of filling the disk.
"""

from __future__ import annotations

import json
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pyserve.config.model_config import CONFIG_FILENAME, read_config_file
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

MANIFEST = "MAR-INF/MANIFEST.json"
DEFAULT_MAX_EXTRACTED_BYTES = 16 * 1024 ** 3
DEFAULT_MAX_MEMBERS = 100_000


class ArchiveError(ServerError):
    """A `.mar` that cannot be read; TorchServe answers these with 400 (ModelException)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.INVALID_ARG)


@dataclass(frozen=True)
class Limits:
    max_extracted_bytes: int = DEFAULT_MAX_EXTRACTED_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS


@dataclass
class Manifest:
    """MAR-INF/MANIFEST.json; `raw` is the whole document (handlers see it as context.manifest)."""

    raw: dict = field(default_factory=dict)

    @property
    def model(self) -> dict:
        return self.raw.setdefault("model", {})

    @property
    def model_name(self) -> str:
        return self.model.get("modelName", "")

    @property
    def version(self) -> str:
        return str(self.model.get("modelVersion") or "1.0")

    @property
    def handler(self) -> str:
        return self.model.get("handler", "")

    @property
    def runtime(self) -> str:
        return self.raw.get("runtime", "python")

    @property
    def config_file(self) -> str:
        return self.model.get("configFile", "")

    @property
    def requirements_file(self) -> str:
        return self.model.get("requirementsFile", "")


@dataclass
class ModelArchive:
    """An opened archive: its files lie in `model_dir` (extracted, or the no-archive directory
    itself); `cleanup()` removes what extraction made."""

    source: Path
    model_dir: Path
    manifest: Manifest
    extracted_to: Path | None = None  # the temporary directory extraction made

    def cleanup(self) -> None:
        if self.extracted_to is not None:
            shutil.rmtree(self.extracted_to, ignore_errors=True)

    def model_yaml(self) -> dict:
        """The model-config YAML named by the manifest's configFile ({} when there is none)."""
        name = self.manifest.config_file
        if not name:
            return {}
        return read_model_yaml(_inside(self.model_dir, name))

    def config_pbtxt(self) -> pb.ModelConfig | None:
        """The archive's own config.pbtxt (an extra file) for the KServe v2 view, or None."""
        path = self.model_dir / CONFIG_FILENAME
        if not path.is_file():
            return None
        return read_config_file(path)


def open_archive(source: Path, work_dir: Path | None = None,
                 limits: Limits = Limits()) -> ModelArchive:
    """Open a `.mar` zip, a `.tar.gz` or a no-archive directory; extract archives into a fresh
    directory under `work_dir` (the system's temporary directory when None)."""
    source = Path(source)
    if source.is_dir():
        return ModelArchive(source, source, read_manifest(source))
    if not source.is_file():
        raise ArchiveError(f"Model archive not found: {source.name}")
    target = Path(tempfile.mkdtemp(prefix="pyserve-mar-", dir=work_dir)) / "model"
    try:
        if zipfile.is_zipfile(source):
            _extract_zip(source, target, limits)
            model_dir = target
        elif tarfile.is_tarfile(source):
            _extract_tar(source, target, limits)
            model_dir = _tar_model_dir(target)
        else:
            raise ArchiveError(f"{source.name} is not a model archive (zip, tar.gz or directory)")
        return ModelArchive(source, model_dir, read_manifest(model_dir), target.parent)
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST
    if not path.is_file():
        # TorchServe accepts archives without a manifest (it then needs a handler from the
        # request); so do we, with an empty one.
        return Manifest({"runtime": "python", "model": {}})
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"Invalid MANIFEST.json: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model", {}), dict):
        raise ArchiveError("Invalid MANIFEST.json: expected an object with a 'model' object")
    return Manifest(raw)


def read_model_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise ArchiveError("reading model-config YAML needs PyYAML: pip install pyyaml") from None
    if not path.is_file():
        raise ArchiveError(f"model config file {path.name} named by the manifest is missing")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ArchiveError(f"invalid model config YAML {path.name}: {e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ArchiveError(f"model config YAML {path.name} must be a mapping")
    return loaded


def _member_path(root: Path, name: str) -> Path:
    """Where a member named `name` goes under `root`, refusing any path that leaves it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ArchiveError(f"archive member '{name}' points outside the archive")
    return _inside(root, str(pure))


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ArchiveError(f"'{relative}' points outside the archive")
    return path


def _extract_zip(source: Path, target: Path, limits: Limits) -> None:
    with zipfile.ZipFile(source) as archive:
        members = archive.infolist()
        _check_counts(len(members), sum(m.file_size for m in members), limits)
        target.mkdir(parents=True)
        written = 0
        for member in members:
            path = _member_path(target, member.filename)
            mode = member.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"archive member '{member.filename}' is a link")
            if member.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            # Sizes in the zip's directory can lie: count what is really written.
            with archive.open(member) as reader, open(path, "wb") as writer:
                while chunk := reader.read(1 << 20):
                    written += len(chunk)
                    if written > limits.max_extracted_bytes:
                        raise ArchiveError(_too_large(limits))
                    writer.write(chunk)


def _extract_tar(source: Path, target: Path, limits: Limits) -> None:
    with tarfile.open(source) as archive:
        members = archive.getmembers()
        _check_counts(len(members), sum(m.size for m in members if m.isfile()), limits)
        target.mkdir(parents=True)
        for member in members:
            path = _member_path(target, member.name)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                path.parent.mkdir(parents=True, exist_ok=True)
                reader = archive.extractfile(member)
                with reader, open(path, "wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
            else:
                raise ArchiveError(f"archive member '{member.name}' is not a file or directory")


def _tar_model_dir(target: Path) -> Path:
    """torch-model-archiver's tgz puts everything under `<model name>/`."""
    if (target / MANIFEST).is_file():
        return target
    entries = [p for p in target.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


def _check_counts(members: int, size: int, limits: Limits) -> None:
    if members > limits.max_members:
        raise ArchiveError(f"archive has {members} members, more than the limit of "
                           f"{limits.max_members}")
    if size > limits.max_extracted_bytes:
        raise ArchiveError(_too_large(limits))


def _too_large(limits: Limits) -> str:
    return f"archive extracts to more than the limit of {limits.max_extracted_bytes} bytes"
