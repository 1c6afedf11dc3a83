"""TorchServe backend (`backend: "torchserve"`): a `.mar` archive's handler, run in-process.

Each instance is one TorchServe "worker": its own import of the handler module, its own
handler object and Context, initialized once. The core forms the batch (batch_size and
max_batch_delay become max_batch_size and the dynamic batcher's delay); `execute` hands the
handler TorchServe's batch list, one dict per request, and turns the returned list into one
response per request. Failures follow TorchServe's worker: an exception fails the whole batch
with 503 "Prediction failed" (507 for MemoryError and CUDA errors, the PredictionException's
own code and message for those).

Requests arrive from TorchServe's inference API with their parts and headers attached
(pyserve.torchserve.request), from its native path with the body as the one BYTES element of
`data` and the headers as parameters (answered with a frame: status, headers and body), or
from the KServe v2 APIs as one BYTES element of the `data` input per row, which the handler
sees as {"data": bytes}.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from pyserve.backends.base import Backend, BatchResult, InstanceSpec, ModelContext, RequestInfo
from pyserve.config.model_config import CONFIG_FILENAME
from pyserve.datatypes import NUMPY_DTYPE, wire_name
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb
from pyserve.runner import InputTensor
from pyserve.torchserve.archive import read_manifest, read_model_yaml
from pyserve.torchserve.context import Context, MetricsCache, RequestProcessor
from pyserve.torchserve.handler import archive_imports, load_entry_point, new_namespace
from pyserve.torchserve import metrics as ts_metrics
from pyserve.torchserve import request as ts_request
from pyserve.torchserve.request import (NATIVE_HEADERS, NATIVE_PARTS, NATIVE_TOKEN,
                                        REQUEST_KEY, TorchServeError, TorchServeRequest,
                                        answer_frame, encode_output, native_request,
                                        parse_predict_message)

log = logging.getLogger("pyserve")

INPUT_NAME = "data"
OUTPUT_NAME = "output"
_KINDS = ("predict", "explain", "describe")
_EMPTY_BYTES_ELEMENT = b"\x00\x00\x00\x00"  # one BYTES element of length 0
_METRICS: dict[str, MetricsCache] = {}  # per model name, shared by its instances and versions


def metrics_for(model_name: str) -> MetricsCache:
    cache = _METRICS.get(model_name)
    if cache is None:
        cache = _METRICS.setdefault(model_name, MetricsCache(model_name))
    return cache


def all_metrics() -> list[MetricsCache]:
    return list(_METRICS.values())


def placeholder_inputs(config: pb.ModelConfig) -> list[InputTensor]:
    """What the TorchServe API submits for a request whose content travels attached to it:
    one element per input of the config, empty or zero."""
    tensors = []
    for tensor in config.input:
        shape = ([1] if config.max_batch_size > 0 else []) + [max(d, 1) for d in tensor.dims]
        count = int(np.prod(shape))
        datatype = wire_name(tensor.data_type)
        data = (_EMPTY_BYTES_ELEMENT * count if datatype == "BYTES"
                else bytes(count * NUMPY_DTYPE[datatype].itemsize))
        tensors.append(InputTensor(tensor.name, datatype, shape, data))
    return tensors


def _parameter(config, key: str, default: str = "") -> str:
    return config.parameters[key].string_value if key in config.parameters else default


class TorchServeBackend(Backend):
    request_info = True  # the TorchServe request travels in each RequestInfo's parameters
    isolatable = True  # parameter "isolation": "process" (pyserve.backends.isolation)

    def __init__(self, model: ModelContext, instance: InstanceSpec) -> None:
        super().__init__(model, instance)
        config = model.config
        model_dir = Path(model.version_dir)
        manifest = read_manifest(model_dir)
        handler = _parameter(config, "handler") or manifest.handler
        yaml_config = (read_model_yaml(model_dir / manifest.config_file)
                       if manifest.config_file else {})
        gpu = instance.device_id if instance.kind == "GPU" else None
        try:
            import ts

            server_version = ts.__version__
        except ImportError:
            server_version = "0.12.0"
        self._on_worker_thread = False  # set by the first execute, on the instance's thread
        # The archive's config.pbtxt: its outputs (name, numpy dtype, dims) and batching.
        self._tensors = None
        self._batched = config.max_batch_size > 0
        if (model_dir / CONFIG_FILENAME).is_file():
            self._tensors = [(o.name, NUMPY_DTYPE[wire_name(o.data_type)], list(o.dims))
                             for o in config.output]
        self._context = Context(model.name, str(model_dir), manifest.raw,
                                max(config.max_batch_size, 1), gpu, server_version,
                                True, metrics_for(model.name), yaml_config)
        self._namespace = new_namespace(model.name)
        with archive_imports(model_dir, self._namespace):
            self._entry, initialize, self._service = load_entry_point(
                model_dir, handler, model.name)
            envelope = _parameter(config, "envelope")
            if envelope:
                self._entry = _wrap_in_envelope(self._entry, envelope, model.name)
            try:
                initialize(self._context)
            except BaseException as e:  # noqa: BLE001 - the handler's failure is a load error
                log.exception("model '%s': handler initialize failed", model.name)
                raise ServerError(f"model '{model.name}': handler initialize failed: "
                                  f"{type(e).__name__}: {e}", ErrorCode.INVALID_ARG) from None

    def execute(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                requests: list[RequestInfo] | None = None) -> BatchResult:
        if not self._on_worker_thread:
            _adopt_torch_threads()
            self._on_worker_thread = True
        began = time.perf_counter_ns()
        infos = requests or [RequestInfo() for _ in batch_sizes]
        entries = self._entries(inputs, batch_sizes, infos)
        started = time.perf_counter_ns()
        tokens = []
        for _, request in entries:
            request.started_ns = started
            if request.token is not None:
                tokens.append(request.token)
        frontend = ts_request.native_frontend
        if tokens and frontend is not None:
            frontend.started(tokens)  # their response timeout counts from now
        failures: dict[int, Exception] = {}
        handling_ns = 0
        for kind in _KINDS:
            group = [(i, r) for i, r in entries if r.kind == kind]
            if group:
                handle_began = time.perf_counter_ns()
                error = self._handle([r for _, r in group])
                handling_ns += time.perf_counter_ns() - handle_began
                if error is not None:
                    for index, _ in group:
                        failures[index] = error
        results: list = []
        for index, size in enumerate(batch_sizes):
            mine = [r for i, r in entries if i == index]
            if mine and mine[0].token is not None:  # answered by the native inference API
                array = np.empty((1, 1), dtype=np.object_)
                array[0, 0] = answer_frame(mine[0], failures.get(index))
                results.append({OUTPUT_NAME: array})
            elif index in failures:
                results.append(failures[index])
            elif self._tensors is None:
                array = np.empty((len(mine), 1), dtype=np.object_)
                for row, request in enumerate(mine):
                    array[row, 0] = request.body
                results.append({OUTPUT_NAME: array})
            else:
                results.append(self._tensor_outputs(mine, size))
        frontend_metrics = ts_metrics.FRONTEND
        if frontend_metrics is not None:  # the batch's time outside the handler, in whole ms
            frontend_metrics.update("WorkerThreadTime", ("Host",), float(
                (time.perf_counter_ns() - began - handling_ns) // 1_000_000))
        return results

    def _entries(self, inputs: dict[str, np.ndarray], batch_sizes: list[int],
                 infos: list[RequestInfo]) -> list[tuple[int, TorchServeRequest]]:
        """One TorchServe request per row, with the index of the pyserve request it belongs
        to: the request the TorchServe API attached, or each row of a KServe v2 request, which
        the handler sees as {"data": bytes} (or, under the archive's config.pbtxt, as
        {input name: the row's array})."""
        entries: list[tuple[int, TorchServeRequest]] = []
        data = inputs.get(INPUT_NAME)
        data = data.reshape(-1) if data is not None else None
        offset = 0
        for index, (info, size) in enumerate(zip(infos, batch_sizes)):
            attached = info.parameters.get(REQUEST_KEY) if info.parameters else None
            token = info.parameters.get(NATIVE_TOKEN) if info.parameters else None
            if attached is not None:
                entries.append((index, attached))
            elif token is not None:
                entries.append((index, native_request(
                    bytes(data[offset]), info.id, token, info.parameters[NATIVE_HEADERS],
                    info.parameters.get(NATIVE_PARTS))))
            else:
                for row in range(offset, offset + size):
                    if self._tensors is None:
                        parameters = {"data": bytes(data[row]) if data is not None else b""}
                    elif self._batched:
                        parameters = {name: value[row] for name, value in inputs.items()}
                    else:
                        parameters = dict(inputs)
                    entries.append((index, TorchServeRequest(
                        parameters, {}, info.id or f"{index}:{row}",
                        tensors=self._tensors is not None)))
            offset += size
        return entries

    def _tensor_outputs(self, requests: list[TorchServeRequest], size: int) -> dict | Exception:
        """A KServe v2 request's outputs under the archive's config.pbtxt: each row's answer
        is {output name: array-like} (or the array itself for a single output). Requests
        from the TorchServe API get zeros: their answer is the body the handler made."""
        outputs = {}
        for name, dtype, dims in self._tensors:
            if not requests[0].tensors:
                shape = ([size] if self._batched else []) + [max(d, 1) for d in dims]
                outputs[name] = (np.full(shape, b"", dtype=np.object_)
                                 if dtype == np.object_ else np.zeros(shape, dtype))
                continue
            try:
                rows = [np.asarray(r.answer[name] if isinstance(r.answer, dict) else r.answer,
                                   dtype) for r in requests]
            except (KeyError, TypeError, ValueError) as e:
                return TorchServeError(f"handler answer has no valid output '{name}': "
                                       f"{type(e).__name__}: {e}", 500)
            outputs[name] = np.stack(rows) if self._batched else rows[0]
        return outputs

    def _handle(self, batch: list[TorchServeRequest]) -> Exception | None:
        """Run the handler on one batch, TorchServe's Service.predict; None when it answered."""
        context = self._context
        context.request_ids = {i: r.request_id for i, r in enumerate(batch)}
        context.request_processor = [RequestProcessor(r.headers) for r in batch]
        context.metrics.set_request_ids(context.request_ids)
        context.cl_socket = _StreamSocket(batch)
        start = time.time()
        try:
            returned = self._entry([r.parameters for r in batch], context)
        except MemoryError:
            log.error("model '%s': system out of memory", context.model_name, exc_info=True)
            return TorchServeError("Out of resources", 507)
        except BaseException as e:  # noqa: BLE001 - the handler's failure fails its batch
            if type(e).__name__ == "PredictionException" and hasattr(e, "error_code"):
                log.error("model '%s': prediction error", context.model_name, exc_info=True)
                return TorchServeError(str(getattr(e, "message", e)), int(e.error_code))
            if "CUDA" in str(e):
                log.error("model '%s': CUDA out of memory", context.model_name, exc_info=True)
                return TorchServeError("Out of resources", 507)
            log.warning("model '%s': invoking custom service failed", context.model_name,
                        exc_info=True)
            return TorchServeError("Prediction failed", 503)
        if not isinstance(returned, list):
            log.warning("model: %s, Invalid return type: %s.", context.model_name,
                        type(returned))
            return TorchServeError("Invalid model predict output", 503)
        if len(returned) != len(batch):
            log.warning("model: %s, number of batch response mismatched, expect: %d, got: %d.",
                        context.model_name, len(batch), len(returned))
            return TorchServeError("number of batch response mismatched", 503)
        context.metrics.add_time("PredictionTime", round((time.time() - start) * 1000, 2),
                                 None, "ms")
        try:
            bodies = [b"" if r.tensors else encode_output(v) for r, v in zip(batch, returned)]
        except TorchServeError as e:
            log.warning("model '%s': unable to serialize model output", context.model_name)
            return e
        for index, (request, body) in enumerate(zip(batch, bodies)):
            request.answer = returned[index]
            status, phrase = context.get_response_status(index)
            request.status = 200 if status is None else int(status)
            request.phrase = phrase or ""
            request.response_headers = dict(context.get_response_headers(index))
            request.response_headers.pop("ts_stream_next", None)
            request.body = body
        return None

    def close(self) -> None:
        service = self._service
        if service is not None and hasattr(service, "finalize"):
            try:
                service.finalize()
            except BaseException:  # noqa: BLE001 - unloading goes on
                log.exception("model '%s': handler finalize failed", self.model.name)


def _adopt_torch_threads() -> None:
    """Give this worker thread torch's intra-op thread count (what the handler's initialize
    set, e.g. torch.set_num_threads(1)). TorchServe runs initialize and handle on one thread;
    here handle runs on a thread torch did not start, whose OpenMP settings stay at their
    defaults until torch is asked: on a busy machine its ops then run 10-100x slower."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(torch.get_num_threads())


def _wrap_in_envelope(entry_point, envelope: str, model_name: str):
    """config.properties service_envelope: TorchServe's request envelope (kserve, kservev2)
    around the handler, as TorchServe's model loader puts it."""
    import importlib
    import inspect

    try:
        module = importlib.import_module(f"ts.torch_handler.request_envelope.{envelope}")
    except ImportError as e:
        raise ServerError(f"model '{model_name}': service_envelope '{envelope}' needs "
                          f"TorchServe's ts package: pip install 'pyserve[torchserve]' ({e})",
                          ErrorCode.UNAVAILABLE) from None
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__]
    return classes[0](entry_point).handle


class _StreamSocket:
    """context.cl_socket for one batch: send_intermediate_predict_response writes TorchServe's
    binary response here; each request's part goes to its chunk callback right away."""

    def __init__(self, batch: list[TorchServeRequest]) -> None:
        self._requests = {r.request_id: r for r in batch}

    def sendall(self, message: bytes) -> None:
        for request_id, content_type, status, phrase, headers, body in parse_predict_message(
                bytes(message)):
            request = self._requests.get(request_id)
            if request is None or request.on_chunk is None:
                continue  # not a streaming client (KServe v2): only the final response counts
            if content_type:
                headers = {**headers, "content-type": content_type}
            headers.pop("ts_stream_next", None)
            request.on_chunk(body, status, phrase, headers)
