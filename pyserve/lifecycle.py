"""ModelManager: which model versions exist, their state and reason, and the runners that
serve the READY ones. Frontends look models up here with Triton's rules and error texts."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyserve.backends import InstanceSpec, ModelContext, backend_class
from pyserve.config import load_config, normalize
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb
from pyserve.repository import find_models, select_versions, version_dirs
from pyserve.runner import ModelRunner

log = logging.getLogger("pyserve")


class ModelState(str, enum.Enum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass
class ModelVersion:
    name: str
    version: int
    config: pb.ModelConfig | None = None
    runner: ModelRunner | None = None
    state: ModelState = ModelState.LOADING
    reason: str = ""


@dataclass
class Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole could not be loaded

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.state == ModelState.READY]


class ModelManager:
    def __init__(self, repositories: list[Path], loop: asyncio.AbstractEventLoop,
                 gpu_count: int = 0, load_threads: int = 4) -> None:
        self._repositories = [Path(r) for r in repositories]
        self._loop = loop
        self._gpu_count = gpu_count
        self._load_slots = asyncio.Semaphore(max(load_threads, 1))
        self.models: dict[str, Model] = {}

    async def load_all(self) -> None:
        """Load every model of the repositories (model control mode "none")."""
        loads = []
        for name, dirs in find_models(self._repositories).items():
            model = self.models.setdefault(name, Model(name))
            if len(dirs) > 1:
                model.reason = "model appears in two or more repositories"
                log.error("failed to load '%s': %s", name, model.reason)
                continue
            loads.append(self._load_model(model, dirs[0]))
        await asyncio.gather(*loads)

    async def _load_model(self, model: Model, model_dir: Path) -> None:
        try:
            config = normalize(load_config(model_dir), model.name, self._gpu_count)
            available = version_dirs(model_dir)
            chosen = select_versions(config.version_policy, list(available))
            if not chosen:
                raise ServerError(f"at least one version must be available under the version "
                                  f"policy of model '{model.name}'")
        except ServerError as e:
            model.reason = e.message
            log.error("failed to load '%s': %s", model.name, e.message)
            return
        await asyncio.gather(*(self._load_version(model, config, v, available[v]) for v in chosen))

    async def _load_version(self, model: Model, config: pb.ModelConfig, version: int,
                            version_dir: Path) -> None:
        entry = model.versions[version] = ModelVersion(model.name, version, config)
        async with self._load_slots:
            try:
                entry.runner = await asyncio.to_thread(self._create_runner, config, version,
                                                       version_dir)
            except Exception as e:  # noqa: BLE001 - any load failure leaves the server running
                message = e.message if isinstance(e, ServerError) else f"{type(e).__name__}: {e}"
                entry.state, entry.reason = ModelState.UNAVAILABLE, message
                log.error("failed to load '%s' version %d: %s", model.name, version, message)
                return
        entry.state = ModelState.READY
        log.info("successfully loaded '%s' version %d", model.name, version)

    def _create_runner(self, config: pb.ModelConfig, version: int, version_dir: Path) -> ModelRunner:
        cls = backend_class(config.backend)
        context = ModelContext(config.name, version, config, version_dir)
        specs = instance_specs(config)
        instances = []
        try:
            for spec in specs:
                instances.append(cls(context, spec))
            devices = [spec.device_id if spec.kind == "GPU" else -1 for spec in specs]
            return ModelRunner(config, version, instances, devices, self._loop)
        except BaseException:
            for backend in instances:
                backend.close()
            raise

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The READY version a request names (empty = the latest ready one), or Triton's error."""
        model = self.models.get(name)
        if model is None:
            raise ServerError(f"Request for unknown model: '{name}' is not found")
        if not version:
            ready = model.ready_versions()
            if not ready:
                raise ServerError(
                    f"Request for unknown model: '{name}' has no available versions",
                    ErrorCode.NOT_FOUND)
            return ready[-1]
        number = parse_version(version)
        entry = model.versions.get(number)
        if entry is None:
            raise ServerError(f"Request for unknown model: '{name}' version {number} is not found",
                              ErrorCode.NOT_FOUND)
        if entry.state != ModelState.READY:
            raise ServerError(
                f"Request for unknown model: '{name}' version {number} is not at ready state",
                ErrorCode.UNAVAILABLE)
        return entry

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServerError:
            return False
        return True

    def all_ready(self) -> bool:
        return all(m.ready_versions() and not m.reason for m in self.models.values())

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Triton's ModelStatistics entries: every loaded version of every model when `name`
        is empty, of one model when `version` is empty."""
        if name and name not in self.models:
            raise ServerError(f"Request for unknown model: '{name}' is not found")
        if name and version:
            entries = [self.get(name, version)]
        else:
            models = [self.models[name]] if name else self.models.values()
            entries = [v for m in models for v in m.ready_versions()]
        return [statistics_entry(entry) for entry in entries]

    def inflight_count(self) -> int:
        return sum(v.runner.inflight_count for m in self.models.values()
                   for v in m.versions.values() if v.runner)

    def unload_all(self) -> None:
        """Stop every runner; each finishes the requests it accepted first."""
        for model in self.models.values():
            for entry in model.versions.values():
                if entry.runner is not None:
                    entry.state = ModelState.UNLOADING
                    entry.runner.stop()
                    entry.runner = None
                    entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"


_NO_DURATION = {"count": 0, "ns": 0}


def statistics_entry(entry: ModelVersion) -> dict:
    """One ModelStatistics message as a dict (the HTTP JSON form; gRPC parses it)."""
    core = entry.runner.statistics()
    core["inference_stats"].update(cache_hit=_NO_DURATION, cache_miss=_NO_DURATION)
    return {"name": entry.name, "version": str(entry.version), **core,
            "memory_usage": [], "response_stats": {}}


def parse_version(version: str) -> int:
    try:
        number = int(version)
    except ValueError:
        raise ServerError(
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0") from None
    if number < 1:
        raise ServerError(f"invalid model version specified '{version}' , version should be an "
                          "integral value > 0")
    return number


def instance_specs(config: pb.ModelConfig) -> list[InstanceSpec]:
    """Triton's placement: `count` instances per group, on each listed GPU for GPU groups."""
    gpu_kind = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")
    specs: list[InstanceSpec] = []
    for group in config.instance_group:
        devices = list(group.gpus) if group.kind == gpu_kind else [0]
        for device in devices:
            for _ in range(group.count):
                kind = "GPU" if group.kind == gpu_kind else "CPU"
                specs.append(InstanceSpec(len(specs), kind, device))
    return specs
