"""Python backend (`backend: "python"`, file `model.py`): models run in-process, zero-copy.

Two forms of model.py:

- Triton's: a `TritonPythonModel` class using `triton_python_backend_utils` (`initialize`,
  `execute(requests)` -> one InferenceResponse per request, `finalize`, and the optional
  staticmethod `auto_complete_config`). It runs unchanged; each request's inputs are numpy
  views of the batch (which, for a one-request batch, is the received bytes), never copies.
- pyserve's native one: a function marked `@pyserve.batched`, called once per batch with the
  batched inputs (see pyserve.model).

Unlike Triton, which runs every instance in its own stub process and copies tensors through
shared memory, the model runs on the instance's worker thread in the server process (the
config parameter "isolation": "process" asks for Triton's way: pyserve.backends.isolation).
Each instance imports model.py as its own fresh module (as Triton's one process per instance
would), so module state is not shared between instances or versions. Whatever the model
raises, BaseException included, fails only its load or its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import json
import logging
import sys
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from pyserve import _core, bls
from pyserve.backends.base import (Backend, BatchResult, InstanceSpec, ModelContext, RequestInfo,
                                   instance_name)
from pyserve.backends.isolation import auto_complete_in_child, process_isolated
from pyserve.config import config_to_json, parse_config_json
from pyserve.errors import ErrorCode, ServerError
from pyserve.model import is_batched
from pyserve.model_imports import model_directory
from pyserve.protocol import pb

log = logging.getLogger("pyserve")

_MODULE_IDS = itertools.count()
_IMPORT_LOCK = threading.Lock()  # sys.modules is process-wide
_RESCHEDULE = 2  # pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
_BF16 = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_name[
    "TYPE_BF16"].number


class PythonBackend(Backend):
    request_info = True  # model.py sees each request's id, parameters and requested outputs
    isolatable = True

    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        config = model.config
        # Decoupled: each request is answered through its response sender (any number of
        # responses, from any thread, during or after execute), and execute returns None.
        self._decoupled = config.model_transaction_policy.decoupled
        if self._decoupled and process_isolated(config):
            raise ServerError(
                f"model '{model.name}': decoupled models cannot run with the parameter "
                "isolation: process", ErrorCode.UNSUPPORTED)
        self._batching = config.max_batch_size > 0
        # Iterative sequences: a request released with RESCHEDULE runs again.
        self._iterative = config.sequence_batching.iterative_sequence
        self._instance_name = instance_name(config, instance)
        self._outputs = [output.name for output in config.output]
        # Implicit state (a pyserve extension): the state input arrives as an ordinary input,
        # and each response returns the state output, which is always asked for.
        self._state_outputs = [s.output_name for s in config.sequence_batching.state
                               if s.output_name not in self._outputs]
        self._bf16_inputs = {i.name for i in config.input if i.data_type == _BF16}
        self._model = None
        self._function = None
        self._caller = (model.name, model.version)  # BLS calls made by this instance's execute
        self._loop: asyncio.AbstractEventLoop | None = None  # runs `async def execute`
        module = _import_model(model.model_path, model.name, model.version_dir)
        model_class = getattr(module, "TritonPythonModel", None)
        if model_class is not None:
            self._model = model_class()
            initialize = getattr(self._model, "initialize", None)
            if initialize is not None:
                args = {
                    "model_config": json.dumps(config_to_json(config)),
                    "model_instance_kind": instance.kind,
                    "model_instance_name": self._instance_name,
                    "model_instance_device_id": str(instance.device_id),
                    "model_repository": str(model.version_dir.parent),
                    "model_version": str(model.version),
                    "model_name": model.name,
                }
                _call_model(model.name, "initialize", initialize, args,
                            version_dir=model.version_dir)
            self._execute_model = self._model.execute
            return
        functions = [value for value in vars(module).values() if is_batched(value)]
        if len(functions) != 1:
            found = "none" if not functions else ", ".join(f.__name__ for f in functions)
            raise ServerError(
                f"failed to load model '{model.name}': {model.model_path.name} must define "
                "class TritonPythonModel or exactly one function marked @pyserve.batched "
                f"(found {found})", ErrorCode.INVALID_ARG)
        self._function = functions[0]

    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list[RequestInfo] | None = None) -> BatchResult:
        if self._function is not None:
            return self._function(inputs)
        requests = self._requests(inputs, batch_sizes,
                                  requests or [RequestInfo() for _ in batch_sizes])
        try:
            with bls.calling_from(self._caller):
                responses = self._execute_model(requests)
                if inspect.iscoroutine(responses):  # `async def execute`
                    responses = self._event_loop().run_until_complete(responses)
        except BaseException as e:  # noqa: BLE001 - even SystemExit fails only its batch
            raise ServerError(
                f"Failed to process the request(s) for model instance '{self._instance_name}', "
                f"message: {type(e).__name__}: {e}", ErrorCode.INTERNAL) from None
        if self._decoupled:
            if responses is not None:
                raise ServerError(
                    f"Python model '{self._instance_name}' is using the decoupled mode and the "
                    "execute function must return None.", ErrorCode.INTERNAL)
            if all(r._release_flags != _RESCHEDULE for r in requests):
                return None
            return [self._rescheduled() if r._release_flags == _RESCHEDULE else None
                    for r in requests]
        return self._results(responses, requests)

    # Per request of every batch: objects made through pb_utils' fast paths (no checks, no
    # copies, no JSON until the model asks for it), as this is the backend's cost per request.
    def _requests(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                  infos: list[RequestInfo]) -> list:
        pb_utils = _pb_utils()
        wrap_tensor, received = pb_utils.Tensor._wrap, pb_utils.InferenceRequest._received
        name, version, outputs = self.model.name, self.model.version, self._outputs
        states = self._state_outputs
        bf16 = self._bf16_inputs
        sender = _response_sender_class() if self._decoupled else None

        def request(tensors, info: RequestInfo):
            own = info.response_sender
            return received(name, tensors, (info.requested_outputs or outputs) + states, info.id,
                            version, info.parameters, info.correlation_id, info.flags,
                            sender(own) if sender is not None and own is not None else None,
                            info.cancellation)

        def wrap(key: str, value: np.ndarray):
            return wrap_tensor(key, value, _BF16 if key in bf16 else None)

        if not self._batching or len(batch_sizes) == 1:
            return [request([wrap(k, v) for k, v in inputs.items()], infos[0])]
        requests, offset = [], 0
        for size, info in zip(batch_sizes, infos):
            end = offset + size
            # Basic slicing: views of the batch buffers, read-only like them.
            requests.append(request([wrap(k, v[offset:end]) for k, v in inputs.items()], info))
            offset = end
        return requests

    def _results(self, responses, requests: list) -> list:
        response_class = _pb_utils().InferenceResponse
        count = len(requests)
        if not isinstance(responses, (list, tuple)):
            raise ServerError(
                f"model '{self.model.name}': execute must return a list of InferenceResponse "
                f"(one per request), got {type(responses).__name__}", ErrorCode.INTERNAL)
        if len(responses) != count:
            raise ServerError(
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{count}, and "
                f"InferenceResponse(s) size is:{len(responses)}", ErrorCode.INTERNAL)
        results: list = []
        for request, response in zip(requests, responses):
            if request._release_flags == _RESCHEDULE:
                if response is not None:  # Triton's text, its typo included
                    raise ServerError(
                        "Expected a None object in the execute function return list for "
                        f"reschduled request, found type '{type(response)}'.", ErrorCode.INTERNAL)
                results.append(self._rescheduled())
                continue
            if not isinstance(response, response_class):
                results.append(ServerError(
                    f"model '{self.model.name}': execute returned {type(response).__name__} "
                    "where an InferenceResponse was expected", ErrorCode.INTERNAL))
                continue
            if response._error is not None:
                results.append(_server_error(response._error))
                continue
            # The raw arrays: BF16 outputs are uint16 bits, which as_numpy() would refuse.
            results.append({tensor._name: tensor._array for tensor in response._output_tensors})
        return results

    def _rescheduled(self):
        """The core's marker for a request to run again, where the model may reschedule."""
        if self._iterative:
            return _core.RESCHEDULE
        return ServerError("Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, "
                           "while the model is not configured to handle such a flag.",
                           ErrorCode.INVALID_ARG)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
        model, self._model = self._model, None
        finalize = getattr(model, "finalize", None)
        if finalize is not None:
            try:
                finalize()
            except BaseException as e:  # noqa: BLE001 - unloading goes on
                log.error("model '%s' version %d: finalize failed: %s: %s",
                          self.model.name, self.model.version, type(e).__name__, e)

    @staticmethod
    def auto_complete_config(config: pb.ModelConfig, version_dir: Path | None,
                             options: object) -> pb.ModelConfig:
        """Runs the model's `TritonPythonModel.auto_complete_config(auto_complete_model_config)`
        when it has one; otherwise the config is unchanged."""
        if version_dir is None:
            return config
        if process_isolated(config):  # importing model.py is running its code
            return auto_complete_in_child(PythonBackend, config, version_dir, options)
        path = version_dir / config.default_model_filename
        module = _import_model(path, config.name, version_dir)
        model_class = getattr(module, "TritonPythonModel", None)
        complete = getattr(model_class, "auto_complete_config", None)
        if complete is None:
            return config
        import triton_python_backend_utils as pb_utils

        helper = pb_utils.ModelConfig(json.dumps(config_to_json(config)))
        result = _call_model(config.name, "auto_complete_config", complete, helper,
                             version_dir=version_dir)
        completed = (result if result is not None else helper).as_dict()
        try:
            return parse_config_json(json.dumps(completed))
        except ServerError as e:
            raise ServerError(f"model '{config.name}': auto_complete_config produced an invalid "
                              f"configuration: {e.message}") from None


def _pb_utils() -> ModuleType:
    """triton_python_backend_utils, imported on first use (it imports numpy only)."""
    return sys.modules.get("triton_python_backend_utils") or importlib.import_module(
        "triton_python_backend_utils")


def _response_sender_class():
    from triton_python_backend_utils._response_sender import InferenceResponseSender

    return InferenceResponseSender


def _server_error(error) -> ServerError:
    code = getattr(error, "code", None)
    code_name = getattr(code(), "name", "INTERNAL") if callable(code) else "INTERNAL"
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    try:
        return ServerError(message, ErrorCode(code_name))
    except ValueError:
        return ServerError(message, ErrorCode.INTERNAL)


def _import_model(path: Path, model_name: str, version_dir: Path) -> ModuleType:
    """model.py as a fresh module with a unique name. Its directory is importable while it
    is imported, so that it can import the files next to it; those are taken out of
    sys.modules again, so two models' `utils.py` do not collide."""
    if not path.is_file():
        raise ServerError(f"unable to find '{path}' for model '{model_name}'", ErrorCode.NOT_FOUND)
    module_name = f"pyserve_python_model_{next(_MODULE_IDS)}_{_identifier(model_name)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    with _IMPORT_LOCK, _model_imports(version_dir):
        try:
            spec.loader.exec_module(module)
        except BaseException as e:  # noqa: BLE001 - any failure of the module, SystemExit too
            raise ServerError(f"failed to load model '{model_name}': error importing "
                              f"{path.name}: {type(e).__name__}: {e}", ErrorCode.INVALID_ARG) from None
    return module


def _call_model(model_name: str, what: str, function, *args, version_dir: Path):
    with _model_imports(version_dir):
        try:
            return function(*args)
        except BaseException as e:  # noqa: BLE001 - any failure of the user's code
            raise ServerError(f"failed to load model '{model_name}': {what} failed: "
                              f"{type(e).__name__}: {e}", ErrorCode.INVALID_ARG) from None


@contextlib.contextmanager
def _model_imports(directory: Path):
    """The model's directory importable from this thread; the modules imported from it leave
    sys.modules on exit."""
    before = set(sys.modules)
    try:
        with model_directory(directory):
            yield
    finally:
        prefix = str(directory).rstrip("/") + "/"
        for name in set(sys.modules) - before:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            if file.startswith(prefix):
                del sys.modules[name]


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
