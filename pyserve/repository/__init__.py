"""Model repositories on disk: which models exist, and which of their versions to serve."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb
from pyserve.repository.remote import mirror_of


def find_models(repositories: list[Path]) -> dict[str, list[Path]]:
    """Model name -> the directories that hold it, one per repository it appears in. For the
    mirror of a remote repository, the models its store holds now count too (their folders
    appear once a sync fetches them)."""
    found: dict[str, list[Path]] = {}
    for repository in repositories:
        repository = Path(repository)
        names = {entry.name for entry in repository.iterdir()
                 if entry.is_dir() and not entry.name.startswith(".")}
        mirror = mirror_of(repository)
        if mirror is not None:
            names |= mirror.model_names()
        for name in sorted(names):
            found.setdefault(name, []).append(repository / name)
    return found


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric version directories; other names and names with a leading zero are ignored."""
    versions = {}
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0"):
            versions[int(entry.name)] = entry
    return versions


def select_versions(policy: pb.ModelVersionPolicy, available: list[int]) -> list[int]:
    """The versions a ModelVersionPolicy asks to serve, ascending."""
    ordered = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-max(count, 1):] if ordered else []


def read_labels(model_dir: Path, config: pb.ModelConfig) -> dict[str, list[str]]:
    """The label files the config's outputs name (one label per line), by output name."""
    labels = {}
    for output in config.output:
        if not output.label_filename:
            continue
        path = (model_dir / output.label_filename).resolve()
        if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
            raise ServerError(f"failed to open label file '{output.label_filename}' of output "
                              f"'{output.name}' in model directory '{model_dir}'")
        labels[output.name] = path.read_text().splitlines()
    return labels


NAME_MAX = 255  # bytes in one file name (Linux)
PATH_MAX = 4096  # bytes in a path


def check_model_name(name: str) -> None:
    """Refuses, before any filesystem call, a model name that is not one directory name."""
    encoded = name.encode("utf-8", "surrogateescape")
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ServerError(f"invalid model name {name!r}: a model name is one directory name, "
                          "without '/', '\\' or NUL, and not '.' or '..'")
    if len(encoded) > NAME_MAX:
        raise ServerError(f"invalid model name '{name[:40]}...': longer than {NAME_MAX} bytes")


def _check_upload_path(key: str, relative: str) -> None:
    """Refuses a `file:` load parameter's path that is not <version>/<path> inside the model
    directory, before any filesystem call. A file name past NAME_MAX gets Triton's answer."""
    parts = relative.split("/")
    if (not relative or "\0" in relative or relative.startswith("/") or len(parts) < 2
            or any(part in ("", ".", "..") for part in parts)
            or len(relative.encode("utf-8", "surrogateescape")) > PATH_MAX):
        raise ServerError(f"invalid file path {relative[:200]!r} in load parameter "
                          f"{key[:200]!r}: it must be <version>/<path> inside the model directory, "
                          f"without '..', empty parts or NUL, at most {PATH_MAX} bytes")
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in parts):
        raise ServerError(f"failed to poll from model repository: a file name in load parameter "
                          f"'{key[:60]}...' is longer than {NAME_MAX} bytes", ErrorCode.INTERNAL)


def write_upload(name: str, files: dict[str, bytes]) -> Path:
    """A temporary model directory holding the uploaded files; a path that would land
    outside it ('..', absolute paths, links) is refused and nothing is written."""
    check_model_name(name)
    for key in files:
        _check_upload_path(key, key[len("file:"):])
    root = Path(tempfile.mkdtemp(prefix="pyserve-upload-")) / name
    root.mkdir()
    try:
        targets = {}
        for key, data in files.items():
            relative = key[len("file:"):]
            target = (root / relative).resolve()
            if not target.is_relative_to(root.resolve()):
                raise ServerError(f"invalid file path '{relative}' in load parameter '{key}'")
            targets[target] = data
        for target, data in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except BaseException:
        remove_upload(root)
        raise
    return root


def remove_upload(upload_dir: Path | None) -> None:
    if upload_dir is not None:
        shutil.rmtree(upload_dir.parent, ignore_errors=True)


def fingerprint(dirs: list[Path]) -> tuple:
    """What polling compares: every file's path, size and modification time."""
    entries = []
    for directory in dirs:
        for root, _, names in os.walk(directory):
            for file_name in names:
                path = Path(root) / file_name
                try:
                    stat = path.stat()
                except OSError:
                    continue
                entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))
