"""ModelManager: which models and versions exist, their state and reason, and the runners that
serve the READY ones; loads, unloads and reloads them without a restart.

Loading (sessions, weights) runs on worker threads; every change of what is served happens on
the event loop, between requests. A reload builds the new runners while the old ones keep
serving, swaps them in, then retires the old ones: a retiring runner refuses nothing it
already accepted, and no request can reach it after the swap, so none is lost.

With --model-namespacing, each repository is a namespace (Triton's ModelIdentifier): models
of one name in several repositories load side by side, a request's name must be held by one
namespace only (Triton's "ambiguity" error otherwise), and an ensemble's step resolves to the
model of the ensemble's own repository first, else to the one namespace holding the name;
ensembles are reloaded when what their steps resolve to changes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from pyserve import _core, bls, devices, host_policy, rate_limit
from pyserve.backends import InstanceSpec, ModelContext, backend_class, create_instance
from pyserve.backends.base import instance_name
from pyserve.config import ConfigOptions, config_path, model_config, read_config_file
from pyserve.config.ensemble import composing_models, is_ensemble, validate_composition
from pyserve.errors import ErrorCode, ServerError
from pyserve.options import ServerOptions
from pyserve.protocol import pb
from pyserve.repository import (check_model_name, fingerprint, find_models, read_labels,
                                remove_upload, select_versions, version_dirs, write_upload)
from pyserve.repository.remote import open_repositories
from pyserve.runner import ModelRunner
from pyserve.warmup import warm_up

log = logging.getLogger("pyserve")

NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"


class ModelId(NamedTuple):
    """A model as Triton identifies it: its namespace (the repository's location with
    --model-namespacing; empty without it, and for models loaded from uploaded files) and
    its name."""
    namespace: str
    name: str

    def __str__(self) -> str:  # Triton's ModelIdentifier::str()
        return f"{self.namespace}::{self.name}" if self.namespace else self.name


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
    labels: dict[str, list[str]] = field(default_factory=dict)  # output name -> class labels


@dataclass
class Model:
    name: str
    namespace: str = ""  # see ModelId
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole failed to load, if it did
    wanted: bool = False  # asked to be loaded (and not unloaded since): counts for readiness
    fingerprint: tuple = ()  # of the files last loaded, for polling
    upload_dir: Path | None = None  # a temporary model directory made from uploaded files
    # Loaded and retired by another owner (the TorchServe model store), not by this manager.
    external: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def id(self) -> ModelId:
        return ModelId(self.namespace, self.name)

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.state == ModelState.READY]

    def ready(self) -> bool:
        return bool(self.versions) and all(
            v.state == ModelState.READY for v in self.versions.values())


class ModelManager:
    def __init__(self, options: ServerOptions, loop: asyncio.AbstractEventLoop,
                 gpu_count: int = 0) -> None:
        self._options = options
        self.server_id = options.server_id  # the server's name in its metadata (--id)
        # Remote repositories (s3://, gs://, as://) are served from local mirrors.
        self._remotes, self._repositories = open_repositories(
            options.model_repositories, options.repository_cache_dir)
        self._namespacing = options.model_namespacing
        # Each repository's namespace: its location as given, with namespacing.
        self._namespaces = {folder: str(location) if self._namespacing else ""
                            for folder, location in zip(self._repositories,
                                                        options.model_repositories)}
        self._loop = loop
        self._config_options = ConfigOptions(
            gpu_count=gpu_count, auto_complete=options.auto_complete_config,
            config_name=options.model_config_name,
            default_max_batch_size=options.default_max_batch_size)
        self._load_slots = asyncio.Semaphore(max(options.model_load_thread_count, 1))
        self._poller: asyncio.Task | None = None
        # name -> namespace -> Model (without namespacing, the one namespace is "").
        self.models: dict[str, dict[str, Model]] = {}
        # The READY versions and server readiness, for frontends that resolve requests and
        # answer probes in native code.
        self.table = _core.ModelTable()
        # The response cache, shared by the versions whose config enables it.
        self.response_cache = (_core.ResponseCache(options.response_cache_byte_size)
                               if options.response_cache_byte_size is not None else None)
        # --rate-limit=execution_count: the limiter every model's instances share.
        self.rate_limiter = (_core.RateLimiter(options.rate_limit_resources)
                             if options.rate_limit == "execution_count" else None)
        bls.attach(self)  # Python models' BLS calls reach these models
        self._draining = False
        self._readiness_changed()

    @property
    def draining(self) -> bool:
        """Set when shutdown begins: the server is not ready from then on."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self._readiness_changed()

    # --- startup, polling, shutdown ---------------------------------------------------------

    async def startup(self) -> list[str]:
        """Load what the control mode says to load; returns the names that failed."""
        mode = self._options.model_control_mode
        await self._sync_remote()
        if mode == "explicit":
            names = self._options.load_models
            if "*" in names:
                if len(names) > 1:
                    raise ServerError("Wildcard model name '*' must be the ONLY startup model "
                                      "if specified at all.")
                ids = list(self._found())
            else:
                ids = [i for name in names for i in self._ids_of(name)]
        else:
            ids = list(self._found())
        ordered, results = await self._load_in_waves(ids)
        await self._reresolve_ensembles()
        failed = []
        for model_id, result in zip(ordered, results):
            if isinstance(result, BaseException):
                failed.append(str(model_id))
                if not isinstance(result, ServerError):  # a bug, not a bad model: show it
                    log.error("failed to load '%s'", model_id, exc_info=result)
        if mode == "poll" and self._options.repository_poll_secs > 0:
            self._poller = asyncio.ensure_future(self._poll_forever())
        return failed

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._options.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - polling must go on
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load added and changed models, unload removed ones (poll mode)."""
        await self._sync_remote()
        found = self._found()
        loads = [i for i, dirs in found.items()
                 if self._model(i) is None or self._model(i).fingerprint != fingerprint(dirs)]
        # An ensemble that failed for want of a model is retried when that model changes.
        changed = {i.name for i in loads}
        loads += [model.id for model in self._all_models()
                  if model.id in found and model.id not in loads and model.reason
                  and set(self._static_composing(model.id)) & changed]
        unloads = [self._unload(model) for model in self._all_models()
                   if model.id not in found and model.wanted and not model.external]
        results = await asyncio.gather(*unloads, return_exceptions=True)
        results += (await self._load_in_waves(loads))[1]
        await self._reresolve_ensembles()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ServerError):
                raise result

    async def shutdown(self) -> None:
        """Stop polling, then unload every model: each runner answers what it accepted."""
        if self._poller is not None:
            self._poller.cancel()
        await asyncio.gather(*(self._unload(model) for model in list(self._all_models())
                               if not model.external), return_exceptions=True)
        for remote in self._remotes:
            remote.close()

    async def _sync_remote(self, model: str | None = None) -> None:
        """Bring the mirrors of remote repositories in step with their stores."""
        for remote in self._remotes:
            await asyncio.to_thread(remote.sync, model)

    # --- models and their namespaces --------------------------------------------------------

    def _all_models(self) -> Iterator[Model]:
        return (model for spaces in self.models.values() for model in spaces.values())

    def _model(self, model_id: ModelId) -> Model | None:
        return self.models.get(model_id.name, {}).get(model_id.namespace)

    def _found(self) -> dict[ModelId, list[Path]]:
        """Every model of the repositories and its folders (several: a name in two
        repositories without namespacing, which refuses to load)."""
        found: dict[ModelId, list[Path]] = {}
        for name, dirs in find_models(self._repositories).items():
            for model_dir in dirs:
                model_id = ModelId(self._namespaces[model_dir.parent], name)
                found.setdefault(model_id, []).append(model_dir)
        return found

    def _located(self, name: str) -> dict[str, list[Path]]:
        """namespace -> the folders of `name` in the repositories of that namespace."""
        located: dict[str, list[Path]] = {}
        for repository in self._repositories:
            if (repository / name).is_dir():
                located.setdefault(self._namespaces[repository], []).append(repository / name)
        return located

    def _ids_of(self, name: str) -> list[ModelId]:
        """What loading `name` loads: the model in each namespace holding it (Triton polls
        them all), or the one known without files (which then fails to load)."""
        return [ModelId(namespace, name) for namespace in self._located(name)] or [
            ModelId(namespace, name) for namespace in self.models.get(name, {"": None})]

    def _known(self, name: str) -> dict[str, Model]:
        """namespace -> model, for the models of `name` that count (Triton's global map): with
        namespacing, those asked to be loaded and not unloaded since."""
        spaces = self.models.get(name, {})
        if not self._namespacing:
            return spaces
        return {namespace: model for namespace, model in spaces.items() if model.wanted}

    def find(self, name: str) -> Model | None:
        """The model a request naming `name` reaches, or None."""
        try:
            return self._resolve(name)
        except ServerError:
            return None

    def _resolve(self, name: str) -> Model:
        """The model a request naming `name` reaches, or Triton's refusal."""
        if not self._namespacing:
            model = self.models.get(name, {}).get("")
            if model is None:
                raise ServerError(f"Request for unknown model: '{name}' is not found",
                                  ErrorCode.NOT_FOUND)
            return model
        known = list(self._known(name).values())
        if len(known) == 1:
            return known[0]
        if known:  # Triton's FindModelIdentifier
            raise ServerError(f"There are {len(known)} identifiers of model '{name}' in global "
                              "map, model namespace must be provided to resolve ambiguity.",
                              ErrorCode.INVALID_ARG)
        if name in self.models:  # known before, unloaded since
            raise ServerError(f"Identifier of model '{name}' is not found in global map",
                              ErrorCode.NOT_FOUND)
        raise ServerError(f"Request for unknown model: '{name}' is not found",
                          ErrorCode.INVALID_ARG)

    def _step_namespace(self, ensemble: ModelId, step: str,
                        holders: set[str] | None = None) -> str | None:
        """The namespace of the model an ensemble's step names (Triton's FindNode with fuzzy
        matching): the ensemble's own when it holds the name, else the one namespace that
        does; None when none or several do. `holders`: the namespaces to consider (default:
        the known models'). A model loaded from uploaded files (namespace "") is preferred by
        no ensemble: found only when its name is unique."""
        holders = set(self._known(step)) if holders is None else holders
        if ensemble.namespace in holders and (ensemble.namespace or not self._namespacing):
            return ensemble.namespace
        return next(iter(holders)) if len(holders) == 1 else None

    # --- load / unload ----------------------------------------------------------------------

    def check_control_allowed(self) -> None:
        if self._options.model_control_mode != "explicit":
            raise ServerError(NOT_ALLOWED, ErrorCode.UNAVAILABLE)

    async def load(self, name: str, config_override: pb.ModelConfig | None = None,
                   files: dict[str, bytes] | None = None, refresh: bool = True,
                   with_composing: bool = True) -> None:
        """Load or reload `name` (with namespacing, in every namespace holding it). The
        versions it serves now keep serving until their replacements are READY; a failure
        leaves them serving and raises ServerError. `refresh` first fetches the model's
        changed objects from remote repositories; `with_composing` loads an ensemble's models
        that are not loaded (startup has loaded them already, or failed to)."""
        check_model_name(name)
        self._check_not_external(name)
        if refresh and not files:
            await self._sync_remote(name)
        if not files and name not in self.models and not self._located(name):
            raise ServerError(f"failed to load '{name}', failed to poll from model repository")
        ids = [ModelId("", name)] if files else self._ids_of(name)
        results = await asyncio.gather(*(
            self._load(model_id, config_override, files, with_composing) for model_id in ids),
            return_exceptions=True)
        await self._reresolve_ensembles()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _load(self, model_id: ModelId, config_override: pb.ModelConfig | None = None,
                    files: dict[str, bytes] | None = None, with_composing: bool = True) -> None:
        name = model_id.name
        check_model_name(name)  # names from --load-model and ensembles' steps too
        self._check_not_external(name)
        model = self.models.setdefault(name, {}).setdefault(
            model_id.namespace, Model(name, model_id.namespace))
        async with model.lock:
            model.wanted = True
            self._publish(model)  # with namespacing, the name's holders changed
            upload_dir = None
            try:
                if files:
                    if config_override is None:
                        raise ServerError(f"failed to load '{name}': a 'config' parameter is "
                                          "required when model files are given")
                    upload_dir = write_upload(name, files)
                    model_dir, stamp = upload_dir, ()
                else:
                    dirs = self._located(name).get(model_id.namespace, [])
                    if not dirs:
                        raise ServerError(f"failed to load '{name}', failed to poll from model "
                                          "repository")
                    if len(dirs) > 1:
                        raise ServerError("model appears in two or more repositories")
                    model_dir, stamp = dirs[0], fingerprint(dirs)
                config = await asyncio.to_thread(contained, model_config, model_dir,
                                                 self._config_options, config_override)
                if is_ensemble(config):
                    await self._load_composing(config, model_id, with_composing)
                labels = read_labels(model_dir, config)
                available = version_dirs(model_dir)
                chosen = select_versions(config.version_policy, list(available))
                if not chosen:
                    raise ServerError(f"at least one version must be available under the "
                                      f"version policy of model '{name}'")
            except ServerError as e:
                remove_upload(upload_dir)
                log.error("failed to load '%s': %s", name, e.message)
                serving = model.ready_versions()
                for entry in serving:
                    entry.reason = f"reload failed, still serving the previous load: {e.message}"
                if not serving:
                    model.reason = e.message
                if e.message.startswith("failed to load"):
                    raise
                raise ServerError(f"failed to load '{name}': {e.message}", e.code) from None

            for version in chosen:
                entry = model.versions.get(version)
                if entry is None or entry.state != ModelState.READY:
                    model.versions[version] = ModelVersion(name, version, config)
            self._readiness_changed()
            results = await asyncio.gather(*(
                self._load_version(config, version, available[version], labels)
                for version in chosen),
                return_exceptions=True)

            retiring, failures = [], {}
            for version, result in zip(chosen, results):
                old = model.versions.get(version)
                if isinstance(result, BaseException):
                    message = result.message if isinstance(result, ServerError) else repr(result)
                    failures[version] = message
                    log.error("failed to load '%s' version %d: %s", name, version, message)
                    if old is not None and old.runner is not None:
                        old.reason = f"reload failed, still serving the previous load: {message}"
                    else:
                        model.versions[version] = ModelVersion(
                            name, version, config, None, ModelState.UNAVAILABLE, message)
                    continue
                if old is not None and old.runner is not None:
                    retiring.append(old.runner)
                    result.predecessor = old.runner
                model.versions[version] = ModelVersion(name, version, config, result,
                                                       ModelState.READY, labels=labels)
                log.info("successfully loaded '%s' version %d", name, version)
            if not failures:  # the new set of versions replaces the old one
                for version, entry in model.versions.items():
                    if version not in chosen and entry.runner is not None:
                        retiring.append(entry.runner)
                        entry.runner, entry.state, entry.reason = (
                            None, ModelState.UNAVAILABLE, "unloaded")
                if upload_dir is not None or model.upload_dir is not None:
                    remove_upload(model.upload_dir)
                    model.upload_dir = upload_dir
                model.fingerprint = stamp
                model.reason = ""
            else:
                remove_upload(upload_dir)
                model.reason = "; ".join(f"version {v}: {m}" for v, m in failures.items())
            self._publish(model)
            await _retire(retiring)
            for entry in model.versions.values():
                if entry.runner is not None:
                    entry.runner.inherit()
            if failures:
                raise ServerError(f"failed to load '{name}': {model.reason}")

    async def _load_version(self, config: pb.ModelConfig, version: int, version_dir: Path,
                            labels: dict[str, list[str]]) -> ModelRunner:
        retries = self._options.model_load_retry_count  # Triton's --model-load-retry-count
        while True:
            try:
                return await self._load_version_once(config, version, version_dir, labels)
            except ServerError as e:
                if retries == 0:
                    raise
                retries -= 1
                log.warning("failed to load '%s' version %d, retrying: %s", config.name,
                            version, e.message)

    async def _load_version_once(self, config: pb.ModelConfig, version: int,
                                 version_dir: Path,
                                 labels: dict[str, list[str]]) -> ModelRunner:
        async with self._load_slots:
            runner = await asyncio.to_thread(contained, self._create_runner, config, version,
                                             version_dir, labels)
        try:
            await warm_up(runner, config, version_dir)
        except BaseException:
            await _retire([runner])
            raise
        return runner

    def _create_runner(self, config: pb.ModelConfig, version: int, version_dir: Path,
                       labels: dict[str, list[str]]) -> ModelRunner:
        cache = self.response_cache if config.response_cache.enable else None
        summaries = self._options.metrics.summary_latencies
        if is_ensemble(config):  # cached at its top level, as in Triton
            return ModelRunner(config, version, [], [], self._loop, labels,
                               stop_timeout=self._options.model_unload_timeout_secs,
                               cache=cache, summaries=summaries, models=self.table)
        cls = backend_class(config.backend)
        context = ModelContext(config.name, version, config, version_dir)
        specs = instance_specs(config)
        policies = [host_policy.resolve(self._options.host_policies.get(spec.host_policy, {}))
                    for spec in specs]
        instances = []
        try:
            for spec, policy in zip(specs, policies):
                if spec.kind == "GPU":
                    devices.check_load_limit(instance_name(config, spec), spec.device_id,
                                             self._options.model_load_gpu_limits)
                with host_policy.applied(policy):
                    instances.append(create_instance(cls, context, spec))
            placement = [spec.device_id if spec.kind == "GPU" else -1 for spec in specs]
            return ModelRunner(config, version, instances, placement, self._loop, labels,
                               max_queue_size=self._options.default_max_queue_size,
                               stop_timeout=self._options.model_unload_timeout_secs,
                               host_policies=policies, cache=cache, summaries=summaries,
                               rate_limiter=self.rate_limiter,
                               rate_limits=rate_limit.instance_limits(config, specs),
                               model_dir=version_dir.parent)
        except BaseException:
            for backend in instances:
                backend.close()
            raise

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop serving every version of `name` (with namespacing, in every namespace);
        requests in flight finish first. With `unload_dependents`, an ensemble's composing
        models are unloaded after it (Triton's UnloadModelAndDependents)."""
        self._check_not_external(name)
        await asyncio.gather(*(self._unload(model, unload_dependents)
                               for model in list(self.models.get(name, {}).values())))
        await self._reresolve_ensembles()

    async def _unload(self, model: Model, unload_dependents: bool = False) -> None:
        composing = []
        if unload_dependents:  # the models its steps were resolved to
            composing = [ModelId(step.model_namespace, step.model_name)
                         for v in model.versions.values()
                         if v.config is not None and is_ensemble(v.config)
                         for step in v.config.ensemble_scheduling.step]
        async with model.lock:
            model.wanted = False
            retiring = []
            for entry in model.versions.values():
                if entry.runner is not None:
                    retiring.append(entry.runner)
                    entry.state = ModelState.UNLOADING
            self._publish(model)
            await _retire(retiring)
            for entry in model.versions.values():
                entry.runner, entry.state, entry.reason = None, ModelState.UNAVAILABLE, "unloaded"
            remove_upload(model.upload_dir)
            model.upload_dir = None
            model.fingerprint = ()
            if retiring:
                log.info("successfully unloaded '%s'", model.id)
        for dependent in dict.fromkeys(composing):
            upstream = self._model(dependent)
            if upstream is not None and upstream is not model:
                await self._unload(upstream, unload_dependents=True)

    # --- ensembles --------------------------------------------------------------------------

    def _static_composing(self, model_id: ModelId) -> list[str]:
        """The models `model_id` composes, from its config file as it is on disk ([] for a
        model that is not an ensemble or whose config does not read)."""
        for model_dir in self._located(model_id.name).get(model_id.namespace, [])[:1]:
            try:
                config = read_config_file(config_path(model_dir, self._options.model_config_name))
            except ServerError:
                return []
            return composing_models(config) if is_ensemble(config) else []
        model = self._model(model_id)
        configs = [v.config for v in model.versions.values() if v.config] if model else []
        return composing_models(configs[-1]) if configs and is_ensemble(configs[-1]) else []

    async def _load_in_waves(self, ids: list[ModelId]) -> tuple[list[ModelId], list]:
        """Loads `ids`, ensembles after the models they compose: the models in the order
        loaded, and each one's result (None or its exception)."""
        ordered, results = [], []
        for wave in self._load_waves(ids):
            results += await asyncio.gather(*(self._load(model_id, with_composing=False)
                                              for model_id in wave), return_exceptions=True)
            ordered += wave
        return ordered, results

    def _load_waves(self, ids: list[ModelId]) -> list[list[ModelId]]:
        """`ids` in waves, each after the models it composes; what a cycle holds comes last
        (and fails with Triton's text)."""
        holders: dict[str, set[str]] = {}
        for model_id in ids:
            holders.setdefault(model_id.name, set(self._known(model_id.name))).add(
                model_id.namespace)
        pending = {}
        for model_id in ids:
            steps = [ModelId(self._step_namespace(model_id, step, holders.get(step, set())),
                             step) for step in self._static_composing(model_id)]
            pending[model_id] = set(steps) & set(ids)
        waves: list[list[ModelId]] = []
        while pending:
            wave = [i for i, deps in pending.items() if not deps & pending.keys()]
            if not wave:
                waves.append(list(pending))
                break
            waves.append(wave)
            for i in wave:
                del pending[i]
        return waves

    def _cycle(self, model_id: ModelId) -> str | None:
        """Triton's circular dependency text when `model_id`'s ensembles lead back to it."""
        seen: set[ModelId] = set()

        def walk(current: ModelId) -> str | None:
            for step in self._static_composing(current):
                namespace = self._step_namespace(current, step)
                upstream = ModelId(namespace if namespace is not None else "", step)
                if upstream == model_id:
                    return (f"circular dependency between ensembles: {model_id} -> ... -> "
                            f"{current} -> {model_id}")
                if upstream not in seen:
                    seen.add(upstream)
                    found = walk(upstream)
                    if found:
                        return found
            return None

        return walk(model_id)

    async def _load_composing(self, config: pb.ModelConfig, model_id: ModelId,
                              load: bool) -> None:
        """Loads (with `load`) the composing models not loaded (an ensemble loaded by the API
        brings them, as Triton's does), resolves each step to its model's namespace (set in
        the config's steps, as Triton does) and checks the ensemble against their configs."""
        cycle = self._cycle(model_id)
        if cycle:
            raise ServerError(cycle, ErrorCode.INVALID_ARG)
        steps = composing_models(config)
        missing = sorted(m for m in steps if not self._known(m) and not self._located(m))
        if missing:
            raise ServerError(f"ensemble {model_id} contains models that are not available or "
                              f"ambiguous: {', '.join(missing)}", ErrorCode.INVALID_ARG)
        for step in steps:
            for step_id in self._ids_of(step):
                upstream = self._model(step_id)
                if upstream is None or (load and not upstream.ready_versions()):
                    try:
                        await self._load(step_id)
                    except ServerError:
                        pass  # its reason is reported below
        unresolved = sorted(m for m in steps if self._step_namespace(model_id, m) is None)
        if unresolved:
            raise ServerError(f"ensemble {model_id} contains models that are not available or "
                              f"ambiguous: {', '.join(unresolved)}", ErrorCode.INVALID_ARG)
        composing = {}
        name = config.name
        for step in config.ensemble_scheduling.step:
            step.model_namespace = self._step_namespace(model_id, step.model_name)
            model = self.models[step.model_name][step.model_namespace]
            ready = model.ready_versions()
            if not ready:
                text = (f"ensemble '{name}' depends on '{step.model_name}' which has no loaded "
                        "version.")
                if model.reason:
                    text += f" Model '{step.model_name}' loading failed with error: {model.reason}"
                raise ServerError(text, ErrorCode.INVALID_ARG)
            if step.model_version > 0 and all(v.version != step.model_version for v in ready):
                raise ServerError(f"ensemble '{name}' depends on '{step.model_name}' whose "
                                  f"required version {step.model_version} is not loaded.",
                                  ErrorCode.INVALID_ARG)
            composing[step.model_name] = ready[-1].config
        validate_composition(config, composing)

    async def _reresolve_ensembles(self) -> None:
        """With namespacing, reloads the loaded ensembles whose steps now resolve to a model
        of another namespace (one of the ensemble's own repository appeared, or the one it
        used went away), as Triton re-connects the ensembles a change of its models affects."""
        if not self._namespacing:
            return
        reloaded: set[ModelId] = set()
        while True:  # a round per level of ensembles of ensembles; each reloaded once
            stale = [model.id for model in self._all_models()
                     if model.wanted and not model.external and model.id not in reloaded
                     and self._resolved_elsewhere(model)]
            if not stale:
                return
            reloaded.update(stale)
            await asyncio.gather(*(self._load(model_id, with_composing=False)
                                   for model_id in stale), return_exceptions=True)

    def _resolved_elsewhere(self, model: Model) -> bool:
        """Whether a READY ensemble's steps resolve now to other models than it was loaded
        with."""
        ready = model.ready_versions()
        if not ready or not is_ensemble(ready[-1].config):
            return False
        return any(self._step_namespace(model.id, step.model_name) != step.model_namespace
                   for step in ready[-1].config.ensemble_scheduling.step)

    def _check_not_external(self, name: str) -> None:
        model = self.models.get(name, {}).get("")
        if model is not None and model.external:
            raise ServerError(f"model '{name}' is served from the TorchServe model store: "
                              "register and unregister it through TorchServe's management API",
                              ErrorCode.INVALID_ARG)

    def from_repository(self, name: str) -> bool:
        """Whether a model of the repositories (not another owner's) is called `name`."""
        return any(not model.external for model in self.models.get(name, {}).values())

    def attach(self, name: str, versions: list[ModelVersion]) -> None:
        """Serve READY versions whose runners another owner loads and retires (the TorchServe
        model store) on every frontend; an empty list stops serving them."""
        if self.from_repository(name):
            raise ServerError(f"model '{name}' is already served from the model repository",
                              ErrorCode.ALREADY_EXISTS)
        model = self.models.setdefault(name, {}).setdefault(
            "", Model(name, wanted=True, external=True))
        model.versions = {v.version: v for v in versions}
        self._publish(model)
        if not versions:
            del self.models[name]

    def _publish(self, model: Model) -> None:
        """Tell the core's model table which versions of `model` serve now: by name, and with
        namespacing in its namespace, where ensembles' steps find it; requests reach a name
        only while one namespace holds it."""
        ready = [v.runner.model for v in model.ready_versions()]
        if self._namespacing:
            if model.namespace:
                self.table.publish(model.name, ready, namespace=model.namespace)
            reached = self.find(model.name)
            ready = [v.runner.model for v in reached.ready_versions()] if reached else []
        self.table.publish(model.name, ready)
        self._readiness_changed()

    def _readiness_changed(self) -> None:
        """Called where a model's versions, its being wanted or draining change."""
        self.table.server_ready = self.all_ready()

    # --- lookups ----------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The READY version a request names (empty = the latest ready one), or Triton's error."""
        model = self._resolve(name)
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

    def ready_versions(self, name: str) -> list[ModelVersion]:
        """The READY versions of the model a request naming `name` reaches."""
        return self._resolve(name).ready_versions()

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServerError:
            return False
        return True

    def all_ready(self) -> bool:
        """Server readiness: never while draining; with strict readiness, every model asked
        for must be ready."""
        if self.draining:
            return False
        if not self._options.strict_readiness:
            return True
        return all(m.ready() for m in self._all_models() if m.wanted)

    def index(self, ready_only: bool = False) -> list[dict]:
        """RepositoryIndex: every model of the repositories and every version known (with
        namespacing, a name once per namespace holding it)."""
        entries = []
        known = {model.id: model for model in self._all_models()}
        for model_id in sorted(set(self._found()) | set(known), key=lambda i: (i.name, i)):
            name, model = model_id.name, known.get(model_id)
            if model is None or not model.versions:
                if not ready_only:
                    state = ModelState.UNAVAILABLE.value if model and model.reason else ""
                    entries.append({"name": name, "version": "", "state": state,
                                    "reason": model.reason if model else ""})
                continue
            for version, entry in sorted(model.versions.items()):
                if ready_only and entry.state != ModelState.READY:
                    continue
                entries.append({"name": name, "version": str(version),
                                "state": entry.state.value, "reason": entry.reason})
        return entries

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Triton's ModelStatistics entries: every loaded version of every model when `name`
        is empty, of one model when `version` is empty."""
        if name and name not in self.models:
            raise ServerError(f"requested model '{name}' is not available")
        if name and version:
            try:
                entries = [self.get(name, version)]
            except ServerError as e:
                if not e.message.startswith("Request for unknown model"):
                    raise
                raise ServerError(
                    f"requested model version is not available for model '{name}'") from None
        else:
            models = [self._resolve(name)] if name else self._all_models()
            entries = [v for m in models for v in m.ready_versions()]
        return [statistics_entry(entry) for entry in entries]

    def _serving(self) -> Iterator[tuple[dict[str, str], ModelVersion]]:
        """Each READY version with its metrics' labels (Triton's `namespace` label with
        namespacing)."""
        for model in self._all_models():
            for entry in model.ready_versions():
                labels = {"model": model.name, "version": str(entry.version)}
                if model.namespace:
                    labels["namespace"] = model.namespace
                yield labels, entry

    def latency_summaries(self, quantiles: list[float]) -> list[tuple[dict, bool, dict]]:
        """(labels, cached, the core's summaries of its latencies) per READY version."""
        return [(labels, v.runner.cached, v.runner.model.latency_summaries(quantiles))
                for labels, v in self._serving()]

    def metric_counts(self) -> list[tuple[dict, bool, dict[str, float]]]:
        """(labels, cached, its metrics' counters) per READY version."""
        return [(labels, v.runner.cached, v.runner.metric_counts())
                for labels, v in self._serving()]

    def inflight_count(self) -> int:
        """Requests accepted by the core and not yet answered, over every loaded version."""
        return sum(v.runner.inflight_count for m in self._all_models()
                   for v in m.versions.values() if v.runner)

    def pending_counts(self) -> list[tuple[dict[str, str], int]]:
        """(labels, requests queued and not yet executing) per READY version."""
        return [(labels, v.runner.pending_count) for labels, v in self._serving()]


async def _retire(runners: list[ModelRunner]) -> None:
    """Stop runners off the loop: each answers every request it accepted, then closes. A
    model failing to close is logged; the unload goes on."""
    results = await asyncio.gather(*(asyncio.to_thread(contained, r.stop) for r in runners),
                                   return_exceptions=True)
    for runner, result in zip(runners, results):
        if isinstance(result, BaseException):
            log.error("model '%s' version %d: closing failed: %s", runner.name, runner.version,
                      result)


def contained(function, *args):
    """Calls `function` (model code, on a worker thread) so that whatever it raises comes
    back as a ServerError. A model's SystemExit or KeyboardInterrupt must not reach the event
    loop: asyncio re-raises those two out of the loop, which would stop the server."""
    try:
        return function(*args)
    except ServerError:
        raise
    except BaseException as e:  # noqa: BLE001 - the model's fault, not the server's
        raise ServerError(f"{type(e).__name__}: {e}", ErrorCode.INTERNAL) from None


def statistics_entry(entry: ModelVersion) -> dict:
    """One ModelStatistics message as a dict (the HTTP JSON form; gRPC parses it)."""
    core = entry.runner.statistics()
    return {"name": entry.name, "version": str(entry.version), **core, "memory_usage": []}


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
    for group_index, group in enumerate(config.instance_group):
        devices = list(group.gpus) if group.kind == gpu_kind else [0]
        for device in devices:
            for _ in range(group.count):
                kind = "GPU" if group.kind == gpu_kind else "CPU"
                policy = group.host_policy or host_policy.default_name(kind, device)
                specs.append(InstanceSpec(len(specs), kind, device, policy, group_index))
    return specs
