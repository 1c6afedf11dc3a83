"""The registered TorchServe models: versions, default versions, workers (core instances).

Each registered version owns its opened archive and, while it has workers, a ModelRunner whose
instances are TorchServeBackend objects: TorchServe's workers become instances of the core's
scheduler, and its batch_size/max_batch_delay become the core's dynamic batching. Scaling builds
the new runner first, swaps it in, then retires the old one, which answers every request it
accepted, so none is lost. Errors are TorchServe's: ApiError carries its status, exception type
and message, which the REST APIs write as TorchServe's error body.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pyserve.backends.base import InstanceSpec, ModelContext
from pyserve.backends.torchserve import (INPUT_NAME, OUTPUT_NAME, TorchServeBackend,
                                         placeholder_inputs)
from pyserve.config import normalize
from pyserve.datatypes import wire_name
from pyserve.errors import ServerError
from pyserve.lifecycle import ModelManager, ModelState, ModelVersion
from pyserve.protocol import pb
from pyserve.runner import ModelRunner
from pyserve.torchserve import metrics as ts_metrics
from pyserve.torchserve.archive import ArchiveError, Limits, ModelArchive, open_archive
from pyserve.torchserve.config import TorchServeOptions

log = logging.getLogger("pyserve")

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")
MAX_DOWNLOAD_BYTES = 16 * 1024 ** 3
NO_WORKER = ("Model \"{name}\" Version {version} has no worker to serve inference request. "
             "Please use scale workers API to add workers. If this is a sequence inference, "
             "please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize")


class ApiError(Exception):
    """A refusal as TorchServe words it: HTTP status, exception type name, message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}


def model_not_found(name: str) -> ApiError:
    return ApiError(404, "ModelNotFoundException", f"Model not found: {name}")


def version_not_found(name: str, version: str) -> ApiError:
    return ApiError(404, "ModelVersionNotFoundException",
                    f"Model version: {version} does not exist for model: {name}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestException", message)


@dataclass
class Worker:
    id: int
    start_time: str


@dataclass
class RegisteredVersion:
    name: str
    version: str
    url: str
    archive: ModelArchive
    runtime: str
    handler: str  # the register call's handler, overriding the manifest's ("" = manifest's)
    batch_size: int
    max_batch_delay: int  # ms
    response_timeout: int  # s
    startup_timeout: int  # s: a worker not loaded by then fails to start (<= 0: always)
    core_version: int  # the version's number in the core and over KServe v2
    min_workers: int = 0
    max_workers: int = 0
    runner: ModelRunner | None = None
    workers: list[Worker] = field(default_factory=list)
    loaded_at_startup: bool = False
    device_ids: list[int] = field(default_factory=list)  # deviceIds of a GPU model
    config: pb.ModelConfig | None = None  # the running workers' config
    placeholders: list = field(default_factory=list)  # what the TorchServe API submits
    restarting: asyncio.Task | None = None  # new workers replacing stuck ones
    load_times_ms: list[int] = field(default_factory=list)  # of the last workers started

    def model_config(self, instances: int) -> pb.ModelConfig:
        """The version's config for the core and the KServe v2 frontends: the archive's own
        config.pbtxt when it carries one (its tensors and batching), else one BYTES input
        `data` and one BYTES output per request, batched as batch_size/max_batch_delay say."""
        try:
            config = self.archive.config_pbtxt()
            if config is None:
                config = pb.ModelConfig(max_batch_size=max(self.batch_size, 1))
                config.input.add(name=INPUT_NAME, data_type="TYPE_STRING", dims=[1])
                config.output.add(name=OUTPUT_NAME, data_type="TYPE_STRING", dims=[1])
                if self.batch_size > 1:
                    config.dynamic_batching.max_queue_delay_microseconds = \
                        self.max_batch_delay * 1000
            config.name, config.backend = self.name, "torchserve"
            if self.handler:
                config.parameters["handler"].string_value = self.handler
            del config.instance_group[:]
            config.instance_group.add(count=instances, kind="KIND_CPU")
            return normalize(config, self.name)
        except ServerError as e:
            raise ApiError(400, "ModelException",
                           f"Invalid config.pbtxt in the archive: {e.message}") from None


class ModelStore:
    def __init__(self, options: TorchServeOptions, loop: asyncio.AbstractEventLoop,
                 envelope: str = "", manager: ModelManager | None = None) -> None:
        self.options = options
        self._loop = loop
        self._envelope = envelope
        self._manager = manager  # the KServe v2 frontends' models, where they run
        self.native = None  # the native inference API (pyserve.torchserve.native), once open
        self.models: dict[str, dict[str, RegisteredVersion]] = {}
        self.defaults: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._worker_ids = 9000
        self.startup_models: set[str] = set()

    # --- lookups ----------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> RegisteredVersion:
        versions = self.models.get(name)
        if not versions:
            raise model_not_found(name)
        chosen = version or self.defaults[name]
        entry = versions.get(chosen)
        if entry is None:
            raise version_not_found(name, chosen)
        return entry

    def runner(self, name: str, version: str | None = None) -> ModelRunner:
        entry = self.get(name, version)
        if entry.runner is None:
            raise ApiError(503, "ServiceUnavailableException",
                           NO_WORKER.format(name=name, version=entry.version))
        return entry.runner

    def healthy(self) -> bool:
        """TorchServe's ping: every model's default version runs its minimum of workers."""
        for name in self.models:
            entry = self.get(name)
            if len(entry.workers) < entry.min_workers:
                return False
        return True

    # --- register / scale / unregister ------------------------------------------------------

    async def register(self, url: str, model_name: str = "", handler: str = "",
                       runtime: str = "", batch_size: int | None = None,
                       max_batch_delay: int | None = None, response_timeout: int = -1,
                       startup_timeout: int = -1, startup: bool = False) -> RegisteredVersion:
        """Open the archive `url` names and register its version (no workers yet).
        batch_size/max_batch_delay None: the archive's model-config.yaml, else the
        config.properties `models` entry, else TorchServe's defaults (1, 100 ms); a value
        given wins over both, as in TorchServe. A timeout of -1 is the default's."""
        if runtime and runtime not in ("python", "python3", "LSP"):
            raise bad_request(f"Invalid RuntimeType value: {runtime}")
        if runtime and runtime.lower() not in ("python", "python3"):
            raise bad_request(f"runtime '{runtime}' is not supported by pyserve (python only)")
        source = await self._fetch(url)
        try:
            archive = await asyncio.to_thread(open_archive, source, self.options.work_dir,
                                              Limits())
        except ArchiveError as e:
            raise ApiError(400, "ModelException", e.message) from None
        try:
            name = model_name or archive.manifest.model_name or _stem(source)
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-.]*", name):
                raise ApiError(400, "ModelException", f"Invalid model name: {name}")
            version = archive.manifest.version
            if self._manager is not None and self._manager.from_repository(name):
                raise ApiError(409, "ConflictStatusException",
                               f"Model {name} is already served from the model repository")
            if archive.manifest.runtime.lower() not in ("python", "python3") and not runtime:
                raise bad_request(f"runtime '{archive.manifest.runtime}' of the archive is not "
                                  "supported by pyserve (python only)")
            yaml = await asyncio.to_thread(archive.model_yaml)
            if version in self.models.get(name, {}):
                raise ApiError(409, "ConflictStatusException",
                               f"Model version {version} is already registered for model "
                               f"{name}")
            settings = self._startup_settings(name, version)

            def chosen(key: str, given: int | None, default: int) -> int:
                if given is not None and not startup:
                    return given
                return int(yaml.get(key) or settings.get(key) or
                           (default if given is None else given))

            if startup_timeout == -1:
                startup_timeout = self.options.default_startup_timeout_s
            entry = RegisteredVersion(
                name=name, version=version, url=url, archive=archive,
                runtime=archive.manifest.runtime, handler=handler,
                batch_size=chosen("batchSize", batch_size, 1),
                max_batch_delay=chosen("maxBatchDelay", max_batch_delay, 100),
                response_timeout=int(yaml.get("responseTimeout")
                                     or settings.get("responseTimeout")
                                     or (response_timeout if response_timeout > 0
                                         else self.options.default_response_timeout_s)),
                startup_timeout=int(yaml.get("startupTimeout")
                                    or settings.get("startupTimeout") or startup_timeout),
                core_version=_version_number(version, self.models.get(name, {}).values()),
                loaded_at_startup=startup,
                device_ids=[int(d) for d in yaml.get("deviceIds") or []])
        except BaseException:
            archive.cleanup()
            raise
        self.models.setdefault(name, {})[version] = entry
        if name not in self.defaults or (startup and settings.get("defaultVersion")):
            self.defaults[name] = version
        if startup:
            self.startup_models.add(name)
            entry.max_workers = int(settings.get("maxWorkers") or yaml.get("maxWorkers") or 0)
        log.info("Model %s loaded.", name)
        return entry

    def _startup_settings(self, name: str, version: str) -> dict:
        """The config.properties `models` JSON entry for this version, if any."""
        versions = self.options.models.get(name) or {}
        return dict(versions.get(version) or {})

    async def scale(self, name: str, version: str | None, min_workers: int,
                    max_workers: int) -> RegisteredVersion:
        if max_workers < min_workers:
            raise bad_request("max_worker cannot be less than min_worker.")
        if name not in self.models:
            raise model_not_found(name)
        entry = self.get(name, version)
        lock = self._locks.setdefault(f"{name}/{entry.version}", asyncio.Lock())
        async with lock:
            entry.min_workers, entry.max_workers = min_workers, max(max_workers, min_workers)
            self._publish_health()
            # TorchServe starts workers up to min_worker, or stops those past max_worker.
            count = len(entry.workers)
            count = min_workers if count < min_workers else max(min(count, max_workers), 0)
            if count != len(entry.workers):
                await self._set_workers(entry, count)
            if max_workers < 0:
                # TorchServe stops every worker, then fails removing the one at index -1.
                raise ApiError(500, "IndexOutOfBoundsException",
                               "Index -1 out of bounds for length 0")
        return entry

    async def _set_workers(self, entry: RegisteredVersion, count: int) -> None:
        """Replace the version's runner by one with `count` instances (none for 0)."""
        old = entry.runner
        new = None
        if count > 0:
            new = await self._start_runner(entry, count)
        now = _now()
        entry.runner = new
        entry.workers = [Worker(self._next_worker_id(), now) for _ in range(count)]
        self._publish(entry.name)
        if new is not None and ts_metrics.FRONTEND is not None:
            for worker, load_ms in zip(entry.workers, entry.load_times_ms):
                ts_metrics.FRONTEND.update("WorkerLoadTime", (
                    f"W-{worker.id}-{entry.name}_{entry.version}", "Host"), float(load_ms))
        if old is not None:
            await asyncio.to_thread(old.stop)

    async def _start_runner(self, entry: RegisteredVersion, count: int) -> ModelRunner:
        """A runner with `count` workers, given up when loading takes past the version's
        startup timeout, as TorchServe's worker gives up waiting for its model to load (a
        runner that loads later is stopped)."""
        if entry.startup_timeout <= 0:
            raise ServerError(f"the workers did not load within startup_timeout "
                              f"({entry.startup_timeout} s)")
        creation = asyncio.ensure_future(asyncio.to_thread(self._create_runner, entry, count))
        try:
            return await asyncio.wait_for(asyncio.shield(creation), entry.startup_timeout)
        except asyncio.TimeoutError:
            creation.add_done_callback(_stop_late_runner)
            raise ServerError(f"the workers did not load within startup_timeout "
                              f"({entry.startup_timeout} s)") from None

    def restart_workers(self, entry: RegisteredVersion, stuck: ModelRunner) -> asyncio.Task | None:
        """TorchServe's answer to a handler past its response timeout: new workers replace
        the runner whose worker is stuck; requests wait for them (`entry.restarting`) rather
        than queue behind the stuck one. None when that runner is already being replaced."""
        if entry.runner is not stuck or entry.restarting is not None:
            return None
        entry.restarting = asyncio.ensure_future(self._restart(entry, stuck))
        self.publish_native(entry.name)  # its requests go to the shell, which waits
        return entry.restarting

    async def _restart(self, entry: RegisteredVersion, stuck: ModelRunner) -> None:
        lock = self._locks.setdefault(f"{entry.name}/{entry.version}", asyncio.Lock())
        try:
            async with lock:
                if entry.runner is not stuck:
                    return  # scaled or removed meanwhile
                log.error("model %s version %s: a handler exceeded the response timeout of "
                          "%d s; restarting its workers", entry.name, entry.version,
                          entry.response_timeout)
                count = len(entry.workers)
                entry.runner = await asyncio.to_thread(self._create_runner, entry, count)
                entry.workers = [Worker(self._next_worker_id(), _now()) for _ in range(count)]
                self._publish(entry.name)
        finally:
            entry.restarting = None
            self.publish_native(entry.name)
        # Its other requests finish on it; a thread of its own stops it, since the stuck
        # handler may never return.
        threading.Thread(target=stuck.stop, name="ps-ts-retire", daemon=True).start()

    def _create_runner(self, entry: RegisteredVersion, count: int) -> ModelRunner:
        config = entry.config = entry.model_config(count)
        entry.placeholders = placeholder_inputs(config)
        if self._envelope:
            config.parameters["envelope"].string_value = self._envelope
        context = ModelContext(entry.name, entry.core_version, config, entry.archive.model_dir)
        instances = []
        load_times: list[int] = []  # WorkerLoadTime of each, ms
        try:
            for index in range(count):
                spec = InstanceSpec(index, "CPU", 0)
                if entry.device_ids and _gpu_available():
                    spec = InstanceSpec(index, "GPU",
                                        entry.device_ids[index % len(entry.device_ids)])
                loading = time.perf_counter()
                instances.append(TorchServeBackend(context, spec))
                load_times.append(int((time.perf_counter() - loading) * 1000))
            entry.load_times_ms = load_times
            return ModelRunner(config, entry.core_version, instances, [-1] * count, self._loop)
        except BaseException:
            for backend in instances:
                backend.close()
            raise

    def _publish(self, name: str) -> None:
        """Tell the frontends which versions of `name` have workers now."""
        self.publish_native(name)
        if self._manager is None:
            return
        self._manager.attach(name, [
            ModelVersion(name, e.core_version, e.config, e.runner, ModelState.READY)
            for e in self.models.get(name, {}).values() if e.runner is not None])

    def publish_native(self, name: str) -> None:
        """The native inference API's versions of `name`: those with workers that are not
        restarting, under the generated config (an archive's own config.pbtxt has tensors
        the native path does not make)."""
        if self.native is None:
            return
        versions = self.models.get(name, {})
        served = {f"{name}/{version}": entry for version, entry in versions.items()
                  if entry.runner is not None and entry.restarting is None
                  and _generated(entry.config)}
        default = self.defaults.get(name)
        if f"{name}/{default}" in served:
            served[name] = served[f"{name}/{default}"]
        self.native.publish(name, {key: (entry.runner.model, entry.response_timeout)
                                   for key, entry in served.items()})
        self._publish_health()

    def _publish_health(self) -> None:
        """The native inference API's answer to /ping: healthy(), wherever it may change
        (workers started or stopped, a minimum set, a default version or a model changed)."""
        if self.native is not None:
            self.native.set_healthy(self.healthy())

    def _next_worker_id(self) -> int:
        self._worker_ids += 1
        return self._worker_ids - 1

    async def unregister(self, name: str, version: str | None) -> None:
        versions = self.models.get(name)
        if not versions:
            raise model_not_found(name)
        chosen = version or self.defaults[name]
        if chosen not in versions:
            raise version_not_found(name, chosen)
        if chosen == self.defaults[name] and len(versions) > 1:
            raise ApiError(403, "InvalidModelVersionException",
                           f"Cannot remove default version for model {name}")
        entry = versions.pop(chosen)
        if not versions:
            del self.models[name]
            del self.defaults[name]
            self.startup_models.discard(name)
        self._publish(name)
        await self._release(entry)
        log.info("Model %s unregistered.", name)

    async def _release(self, entry: RegisteredVersion) -> None:
        runner, entry.runner, entry.workers = entry.runner, None, []
        if runner is not None:
            await asyncio.to_thread(runner.stop)
        entry.archive.cleanup()

    def set_default(self, name: str, version: str) -> None:
        versions = self.models.get(name)
        if not versions:
            raise model_not_found(name)
        if version not in versions:  # ModelVersionedRefs.setDefaultVersion's words
            raise ApiError(404, "ModelVersionNotFoundException",
                           f"Model version {version} does not exist for model {name}")
        self.defaults[name] = version
        self.publish_native(name)

    async def shutdown(self) -> None:
        entries = [e for versions in self.models.values() for e in versions.values()]
        names = list(self.models)
        self.models.clear()
        self.defaults.clear()
        for name in names:
            self._publish(name)
        await asyncio.gather(*(self._release(e) for e in entries), return_exceptions=True)

    # --- archives ---------------------------------------------------------------------------

    async def _fetch(self, url: str) -> Path:
        """The archive's path: a file or directory in the model store, or a download into it.
        Refusals in ModelArchive.downloadModel's order and words."""
        if self.options.model_store is None:
            raise ApiError(404, "ModelNotFoundException", "Model store has not been configured.")
        if not url:
            raise ApiError(404, "ModelNotFoundException", "empty url")
        if ".." in url:
            raise ApiError(404, "ModelNotFoundException",
                           f"Relative path is not allowed in url: {url}")
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            self._check_allowed(url)
            return await asyncio.to_thread(self._download, url)
        if scheme == "file":
            self._check_allowed(url)
            url = urlsplit(url).path
        elif "://" in url:  # another scheme: TorchServe looks for no such file
            raise ApiError(404, "ModelNotFoundException", f"Model not found at: {url}")
        store = self.options.model_store
        if store is None:
            raise ApiError(404, "ModelNotFoundException", "Model store has not been configured.")
        if ".." in Path(url).parts:
            raise ApiError(404, "ModelNotFoundException",
                           f"Relative path is not allowed in url: {url}")
        path = (store / url).resolve()
        if path.parent != store.resolve() or not path.exists():
            raise ApiError(404, "ModelNotFoundException",
                           f"Model not found in model store: {url}")
        return path

    def _check_allowed(self, url: str) -> None:
        if not any(re.fullmatch(pattern, url, re.IGNORECASE)
                   for pattern in self.options.allowed_urls):
            raise ApiError(404, "ModelNotFoundException",
                           f"Given URL {url} does not match any allowed URL(s)")

    def _download(self, url: str) -> Path:
        store = self.options.model_store
        if store is None:
            raise ApiError(400, "ModelException", "Model store has not been configured.")
        name = Path(urlsplit(url).path).name
        if not name or name in (".", ".."):
            raise ApiError(400, "DownloadArchiveException", f"Invalid model url: {url}")
        target = store / name
        if target.exists():
            raise ApiError(500, "InternalServerException", f"Model file already exists {name}")
        partial = store / f".{name}.download"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, \
                    open(partial, "wb") as writer:
                written = 0
                while chunk := response.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_DOWNLOAD_BYTES:
                        raise ApiError(400, "DownloadArchiveException",
                                       f"Model archive at {url} is larger than "
                                       f"{MAX_DOWNLOAD_BYTES} bytes")
                    writer.write(chunk)
            partial.rename(target)
        except ApiError:
            partial.unlink(missing_ok=True)
            raise
        except OSError as e:
            partial.unlink(missing_ok=True)
            log.error("downloading %s failed: %s", url, e)
            raise ApiError(400, "DownloadArchiveException",
                           f"Failed to download archive from: {url}") from None
        return target

    def store_archives(self) -> list[Path]:
        """Every archive in the model store (load_models=all)."""
        store = self.options.model_store
        if store is None or not store.is_dir():
            return []
        found = []
        for entry in sorted(store.iterdir()):
            if entry.is_file() and entry.name.endswith(ARCHIVE_SUFFIXES):
                found.append(entry)
            elif entry.is_dir() and (entry / "MAR-INF" / "MANIFEST.json").is_file():
                found.append(entry)
        return found


def _version_number(version: str, taken) -> int:
    """A TorchServe version's number over KServe v2: "2" or "2.0" is 2; any other string, or
    a number already taken, gets the next number after the model's highest."""
    numbers = {e.core_version for e in taken}
    match = re.fullmatch(r"(\d+)(\.0+)?", version)
    if match and int(match.group(1)) > 0 and int(match.group(1)) not in numbers:
        return int(match.group(1))
    return max(numbers, default=0) + 1


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _gpu_available() -> bool:
    from pyserve.devices import gpu_count

    return gpu_count() > 0


def _stop_late_runner(creation: asyncio.Future) -> None:
    if not creation.cancelled() and creation.exception() is None:
        threading.Thread(target=creation.result().stop, name="ps-ts-late",
                         daemon=True).start()


def _generated(config) -> bool:
    """Whether `config` is the one model_config generates: a BYTES `data` input and output."""
    def tensors(group):
        return [(t.name, wire_name(t.data_type), list(t.dims)) for t in group]

    return (config is not None and config.max_batch_size > 0
            and tensors(config.input) == [(INPUT_NAME, "BYTES", [1])]
            and tensors(config.output) == [(OUTPUT_NAME, "BYTES", [1])])
