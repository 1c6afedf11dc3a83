"""Model repositories in object storage, served from a local mirror.

Triton copies a remote repository to a local folder and loads from there; so does pyserve. A
RemoteRepository keeps one folder in step with one repository URL: `sync()` lists the objects,
downloads the new and changed ones (each to a temporary name, then renamed, so a model being
loaded never reads half a file) and deletes what the store no longer holds. The rest of the
server sees a local repository: polling notices a changed object because its file changed.

The repository index lists the store's model folders, not only the mirror's: in explicit mode a
model uploaded after startup is listed before its first load (`model_names`).

The mirror lives in the cache directory when one is given (`--repository-cache-dir`, or
Triton's TRITON_AWS_MOUNT_DIRECTORY / TRITON_GCS_MOUNT_DIRECTORY / TRITON_AZURE_MOUNT_DIRECTORY),
where a restart finds it and downloads only what changed; else in a temporary folder removed at
shutdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from pyserve.errors import ServerError
from pyserve.repository.stores import Location, Store, is_remote, open_store, parse

log = logging.getLogger("pyserve")

MOUNT_VARIABLES = {"s3": "TRITON_AWS_MOUNT_DIRECTORY", "gs": "TRITON_GCS_MOUNT_DIRECTORY",
                   "as": "TRITON_AZURE_MOUNT_DIRECTORY"}
_MANIFEST = ".pyserve-mirror.json"
# The index lists the store at most this often, and waits this long for an answer before it
# shows the names last known: the index is answered on the event loop.
_NAMES_FRESH_SECS = 1.0
_NAMES_TIMEOUT_SECS = 5.0
# Mirror folder -> its repository, for find_models.
_MIRRORS: dict[Path, RemoteRepository] = {}


def mirror_of(folder: Path) -> RemoteRepository | None:
    return _MIRRORS.get(Path(folder))


class RemoteRepository:
    def __init__(self, location: Location, store: Store, cache_dir: Path | None) -> None:
        self.location = location
        self._store = store
        self._lock = threading.Lock()
        self._temporary = cache_dir is None
        if cache_dir is None:
            self.local_dir = Path(tempfile.mkdtemp(prefix="pyserve-repository-"))
        else:
            self.local_dir = Path(cache_dir) / _folder_name(location)
            self.local_dir.mkdir(parents=True, exist_ok=True)
        self._stamps: dict[str, str] = self._read_manifest()
        self._names: tuple[float, set[str]] = (float("-inf"), set())  # (listed at, names)
        self._lister: ThreadPoolExecutor | None = None
        _MIRRORS[self.local_dir] = self

    def sync(self, model: str | None = None) -> list[str]:
        """Bring the mirror (or one model's folder of it) in step with the store; returns the
        relative paths written or deleted. Raises ServerError when the store cannot be read."""
        scope = f"{model}/" if model else ""
        with self._lock:
            try:
                remote = self._list(self.location.prefix + scope)
            except ServerError:
                raise
            except Exception as e:  # noqa: BLE001 - every client has its own exceptions
                raise ServerError(f"failed to poll from model repository "
                                  f"'{self.location.url}': {e}") from None
            if not model:
                folders = {relative.split("/", 1)[0] for relative in remote if "/" in relative}
                self._names = (time.monotonic(), folders)
            changed = []
            for relative, stamp in sorted(remote.items()):
                target = self.local_dir / relative
                if self._stamps.get(relative) == stamp and target.is_file():
                    continue
                self._download(self.location.prefix + relative, target)
                self._stamps[relative] = stamp
                changed.append(relative)
            for relative in [r for r in self._stamps if r.startswith(scope) and r not in remote]:
                (self.local_dir / relative).unlink(missing_ok=True)
                del self._stamps[relative]
                changed.append(relative)
            if changed:
                _remove_empty_dirs(self.local_dir, keep=self.local_dir)
                self._write_manifest()
                log.info("model repository '%s': %d object(s) updated in %s",
                         self.location.url, len(changed), self.local_dir)
            return changed

    def model_names(self) -> set[str]:
        """The model folders the store holds now. Listed at most once a second (a full sync
        counts); when the store fails or does not answer in time, the names last known."""
        listed_at, folders = self._names
        if time.monotonic() - listed_at >= _NAMES_FRESH_SECS:
            if self._lister is None:
                self._lister = ThreadPoolExecutor(1, thread_name_prefix="ps-repo-list")
            listing = self._lister.submit(self._store.folders, self.location.prefix)
            try:
                folders = listing.result(timeout=_NAMES_TIMEOUT_SECS)
                self._names = (time.monotonic(), folders)
            except Exception as e:  # noqa: BLE001 - every client has its own exceptions
                log.warning("model repository '%s': listing its models failed, the index shows "
                            "the models last listed: %s", self.location.url,
                            e or type(e).__name__)
        return {name for name in folders if name and not name.startswith(".")}

    def close(self) -> None:
        _MIRRORS.pop(self.local_dir, None)
        if self._lister is not None:
            self._lister.shutdown(wait=False, cancel_futures=True)
        if self._temporary:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def _list(self, prefix: str) -> dict[str, str]:
        """Relative path -> stamp of the objects under prefix; folder markers and keys that
        would land outside the mirror are skipped."""
        found = {}
        for key, stamp in self._store.list(prefix).items():
            relative = key[len(self.location.prefix):]
            if not relative or relative.endswith("/"):
                continue
            parts = PurePosixPath(relative).parts
            if relative.startswith("/") or ".." in parts or parts[0] == _MANIFEST:
                log.warning("model repository '%s': skipping object '%s'", self.location.url, key)
                continue
            found[relative] = stamp
        return found

    def _download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
        os.close(handle)
        try:
            self._store.download(key, Path(partial))
            os.replace(partial, target)
        except BaseException as e:
            Path(partial).unlink(missing_ok=True)
            if isinstance(e, Exception):
                raise ServerError(f"failed to download '{key}' from model repository "
                                  f"'{self.location.url}': {e}") from None
            raise

    def _read_manifest(self) -> dict[str, str]:
        try:
            stamps = json.loads((self.local_dir / _MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in stamps.items() if (self.local_dir / k).is_file()}

    def _write_manifest(self) -> None:
        path = self.local_dir / _MANIFEST
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self._stamps, indent=0, sort_keys=True))
        os.replace(partial, path)


def _folder_name(location: Location) -> str:
    """A stable, readable folder name per repository URL."""
    readable = re.sub(r"[^0-9A-Za-z.\-]+", "_", f"{location.scheme}_{location.bucket}")
    return f"{readable}_{hashlib.sha256(location.url.encode()).hexdigest()[:12]}"


def _remove_empty_dirs(root: Path, keep: Path) -> None:
    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        path = Path(directory)
        if path != keep and not any(path.iterdir()):
            path.rmdir()


def open_repositories(locations: list, cache_dir: Path | None = None,
                      environ: dict[str, str] | None = None,
                      ) -> tuple[list[RemoteRepository], list[Path]]:
    """The remote repositories among `locations`, and the local folder of every location in
    order (a remote one's mirror stands in for it)."""
    environ = os.environ if environ is None else environ
    remotes, folders = [], []
    for entry in locations:
        if not is_remote(entry):
            folders.append(Path(entry))
            continue
        location = parse(entry)
        mount = environ.get(MOUNT_VARIABLES[location.scheme])
        remote = RemoteRepository(location, open_store(location),
                                  cache_dir or (Path(mount) if mount else None))
        remotes.append(remote)
        folders.append(remote.local_dir)
    return remotes, folders
