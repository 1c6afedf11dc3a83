"""The KServe v2 / Triton gRPC frontend (grpc.aio), served at Triton's service paths.

Handlers are registered from the service descriptor of our private proto pool; every RPC of
Triton's service is declared, and those pyserve does not implement yet answer UNIMPLEMENTED.
ModelInfer and ModelStreamInfer take the raw request bytes so that tensors stay views.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from typing import AsyncIterator, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from pyserve import __version__, _core, logs, restricted, tracing
from pyserve.errors import ErrorCode, ServerError
from pyserve.frontends import codec
from pyserve.frontends.inference import (check_declared, grpc_sequence, load_parameters,
                                         model_metadata, run_inference, stream_inference)
from pyserve.frontends.shared_memory import (grpc_ref, input_block, no_classification,
                                             output_blocks)
from pyserve.lifecycle import ModelManager
from pyserve.protocol import HEALTH_SERVICE, INFERENCE_SERVICE, health, pb
from pyserve.runner import InputTensor

log = logging.getLogger("pyserve")

GRPC_STATUS = {
    ErrorCode.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.UNKNOWN: grpc.StatusCode.UNKNOWN,
}

SERVER_EXTENSIONS = ["classification", "model_repository", "model_repository(unload_dependents)",
                     "model_configuration", "system_shared_memory", "cuda_shared_memory",
                     "binary_tensor_data", "parameters", "statistics", "schedule_policy",
                     "logging", "trace"]
_INT32_MAX = 2**31 - 1


def _refusals(handler: Callable) -> Callable:
    """Turn a ServerError into the RPC's status with Triton's text."""
    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except ServerError as e:
            await context.abort(GRPC_STATUS[e.code], e.message)
    return wrapper


class InferenceServicer:
    """inference.GRPCInferenceService."""

    def __init__(self, manager: ModelManager,
                 shared_memory: _core.SharedMemoryRegistry | None = None,
                 header_pattern: str = "", infer_compression: str = "none") -> None:
        self._manager = manager
        # gRPC C++ picks the algorithm for a level among those the client accepts, gzip for
        # low and deflate above; grpc.aio takes the algorithm itself.
        self._compression = {"low": grpc.Compression.Gzip, "medium": grpc.Compression.Deflate,
                             "high": grpc.Compression.Deflate}.get(infer_compression)
        self._shared_memory = (shared_memory if shared_memory is not None
                               else _core.SharedMemoryRegistry())
        # --grpc-header-forward-pattern: metadata whose key it finds become request parameters.
        self._forward = re.compile(header_pattern) if header_pattern else None

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._manager.all_ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._manager.is_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self._manager.server_id, version=__version__,
                                         extensions=SERVER_EXTENSIONS)

    @_refusals
    async def LogSettings(self, request, context):
        """The logging extension; a value of another type than its setting's is ignored, as
        Triton ignores it."""
        kinds = {"log_info": "bool_param", "log_warning": "bool_param",
                 "log_error": "bool_param", "log_verbose_level": "uint32_param",
                 "log_format": "string_param", "log_file": "string_param"}
        changes = {key: getattr(value, kinds[key]) for key, value in request.settings.items()
                   if key in kinds and value.WhichOneof("parameter_choice") == kinds[key]}
        response = pb.LogSettingsResponse()
        for key, value in logs.update(changes).items():
            setattr(response.settings[key], kinds[key], value)
        return response

    @_refusals
    async def TraceSetting(self, request, context):
        """The trace extension: an empty value list clears a setting (back to the global
        one, or the command line's)."""
        settings = tracing.handle_settings(
            request.model_name, {key: list(value.value) for key, value in request.settings.items()},
            lambda name: self._manager.is_ready(name, ""))
        response = pb.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    @_refusals
    async def ModelMetadata(self, request, context):
        model = self._manager.get(request.name, request.version)
        versions = [str(v.version) for v in self._manager.ready_versions(request.name)]
        response = pb.ModelMetadataResponse()
        metadata = model_metadata(model, versions)
        response.name, response.platform = metadata["name"], metadata["platform"]
        response.versions.extend(metadata["versions"])
        for kind in ("inputs", "outputs"):
            for tensor in metadata[kind]:
                getattr(response, kind).add(**tensor)
        return response

    @_refusals
    async def ModelConfig(self, request, context):
        model = self._manager.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    @_refusals
    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        for entry in self._manager.statistics(request.name, request.version):
            json_format.ParseDict(entry, response.model_stats.add())
        return response

    @_refusals
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for entry in self._manager.index(ready_only=request.ready):
            response.models.add(**entry)
        return response

    @_refusals
    async def RepositoryModelLoad(self, request, context):
        self._manager.check_control_allowed()
        config, files = load_parameters(request.model_name,
                                        codec.parameters_dict(request.parameters))
        # Shielded: a client that goes away does not cut a load or unload short.
        await asyncio.shield(self._manager.load(request.model_name, config, files))
        return pb.RepositoryModelLoadResponse()

    @_refusals
    async def RepositoryModelUnload(self, request, context):
        self._manager.check_control_allowed()
        parameters = codec.parameters_dict(request.parameters)
        await asyncio.shield(self._manager.unload(
            request.model_name, bool(parameters.get("unload_dependents", False))))
        return pb.RepositoryModelUnloadResponse()

    @_refusals
    async def SystemSharedMemoryStatus(self, request, context):
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._shared_memory.status(request.name, "system"):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    @_refusals
    async def SystemSharedMemoryRegister(self, request, context):
        self._shared_memory.register_system(request.name, request.key, request.offset,
                                            request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_refusals
    async def SystemSharedMemoryUnregister(self, request, context):
        self._shared_memory.unregister(request.name, "system")
        return pb.SystemSharedMemoryUnregisterResponse()

    @_refusals
    async def CudaSharedMemoryStatus(self, request, context):
        response = pb.CudaSharedMemoryStatusResponse()
        for region in self._shared_memory.status(request.name, "cuda"):
            response.regions[region["name"]].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    @_refusals
    async def CudaSharedMemoryRegister(self, request, context):
        self._shared_memory.register_cuda(request.name, request.raw_handle, request.device_id,
                                          request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_refusals
    async def CudaSharedMemoryUnregister(self, request, context):
        self._shared_memory.unregister(request.name, "cuda")
        return pb.CudaSharedMemoryUnregisterResponse()

    @_refusals
    async def ModelInfer(self, request: bytes, context) -> bytes:
        if self._compression is not None:
            context.set_compression(self._compression)
            # grpc.aio applies a unary call's compression only with its initial metadata.
            await context.send_initial_metadata(())
        return await self._infer(request, self._forwarded(context),
                                 _metadata(context, "traceparent"))

    def _forwarded(self, context) -> dict:
        if self._forward is None:
            return {}
        return {key: value for key, value in context.invocation_metadata() or ()
                if isinstance(value, str) and self._forward.search(key)}

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context):
        """Each request runs as soon as it arrives; its responses (a decoupled model's, any
        number) go back as they come, each with `triton_final_response`. With the
        `triton_grpc_error: true` metadata, the first error ends the stream with its status."""
        if self._compression is not None:
            context.set_compression(self._compression)
        forwarded = self._forwarded(context)
        traceparent = _metadata(context, "traceparent")
        grpc_error = ("triton_grpc_error", "true") in (context.invocation_metadata() or ())
        responses: asyncio.Queue = asyncio.Queue()

        def failed(message: str, code: ErrorCode, request=None, final: bool = True) -> None:
            if grpc_error:
                responses.put_nowait(ServerError(message, code))
                return
            response = pb.ModelStreamInferResponse(error_message=message)
            if request is not None:  # a request's own error names it, as Triton's do
                infer = response.infer_response
                infer.model_name, infer.model_version, infer.id = request
                infer.parameters["triton_final_response"].bool_param = final
            responses.put_nowait(response.SerializeToString())

        async def one(raw: bytes) -> None:
            try:
                request, in_shm, arguments = self._decoded(raw, forwarded, traceparent)
                empty_final = _empty_final_response(request)
                model, answers = stream_inference(self._manager, *arguments)
                named = (model.name, str(model.version), request.id)
                async for outputs, error, final in answers:
                    if error is not None:
                        failed(error.message, error.code, named, final)
                    elif outputs is not None or empty_final:
                        responses.put_nowait(codec.encode_stream_response(self._encoded(
                            request, model, outputs or [], in_shm, final)))
            except ServerError as e:
                failed(e.message, e.code)
            except Exception as e:  # noqa: BLE001 - an answer for every message, or the stream hangs
                log.exception("ModelStreamInfer failed a request")
                failed(f"{type(e).__name__}: {e}", ErrorCode.INTERNAL)

        # Only the messages still running are kept: a long stream holds nothing per message.
        running: set[asyncio.Task] = set()

        async def read() -> None:
            async for raw in requests:
                task = asyncio.ensure_future(one(raw))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:  # nothing is added once the requests end
                await asyncio.wait(running)
            responses.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await responses.get()) is not None:
                if isinstance(response, ServerError):
                    await context.abort(GRPC_STATUS[response.code], response.message)
                yield response
        finally:  # the client went away (or an error ended the stream): queued work is dropped
            reader.cancel()
            for task in set(running):
                task.cancel()

    async def _infer(self, raw: bytes, forwarded: dict, traceparent: str = "") -> bytes:
        request, in_shm, arguments = self._decoded(raw, forwarded, traceparent)
        model, outputs = await run_inference(self._manager, *arguments)
        return self._encoded(request, model, outputs, in_shm)

    def _decoded(self, raw: bytes, forwarded: dict, traceparent: str) -> tuple:
        """The request message, its outputs in shared memory, and the arguments of
        run_inference (or stream_inference) for it."""
        request, raw_inputs = codec.split_infer_request(raw)
        check_declared(max(len(request.inputs), len(raw_inputs)), len(request.outputs),
                       len(request.parameters) + sum(len(t.parameters) for t in request.inputs)
                       + sum(len(o.parameters) for o in request.outputs),
                       (t.shape for t in request.inputs))
        inputs = _decode_inputs(request, raw_inputs, self._shared_memory)
        requested = [o.name for o in request.outputs]
        classification = {o.name: o.parameters["classification"].int64_param
                          for o in request.outputs if "classification" in o.parameters}
        in_shm = {o.name: ref for o in request.outputs if (ref := grpc_ref(o)) is not None}
        no_classification(in_shm, classification,
                          "output can't set both 'shared_memory_region' and 'classification'")
        arguments = (request.model_name, request.model_version, inputs, requested, request.id,
                     {**forwarded, **codec.parameters_dict(request.parameters)},
                     classification, output_blocks(self._shared_memory, in_shm), traceparent,
                     grpc_sequence(request.parameters))
        return request, in_shm, arguments

    @staticmethod
    def _encoded(request, model, outputs, in_shm: dict, final: bool | None = None) -> bytes:
        """A serialized ModelInferResponse; on a stream, with `triton_final_response`."""
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                         id=request.id)
        if final is not None:
            response.parameters["triton_final_response"].bool_param = final
        raw_outputs = []
        for output in outputs:
            response.outputs.add(name=output.name, datatype=output.datatype,
                                 shape=output.array.shape)
            # In shared memory: an empty entry keeps raw_output_contents aligned (as Triton).
            raw_outputs.append(b"" if output.name in in_shm
                               else codec.output_bytes(output.array, output.datatype))
        return codec.encode_infer_response(response, raw_outputs)


def _empty_final_response(request) -> bool:
    """Triton's triton_enable_empty_final_response request parameter (a bool)."""
    if "triton_enable_empty_final_response" not in request.parameters:
        return False
    value = request.parameters["triton_enable_empty_final_response"]
    if value.WhichOneof("parameter_choice") != "bool_param":
        raise ServerError("invalid value type for 'triton_enable_empty_final_response' "
                          "parameter, expected bool_param.")
    return value.bool_param


def _decode_inputs(request, raw_inputs: list, shared_memory: _core.SharedMemoryRegistry
                   ) -> list[InputTensor]:
    model = request.model_name
    inputs = []
    raw_index = 0  # raw_input_contents skips the inputs in shared memory
    for tensor in request.inputs:
        ref = grpc_ref(tensor)
        if ref is not None:
            if tensor.HasField("contents"):
                raise ServerError(f"unexpected 'content' provided when using shared memory for "
                                  f"input tensor '{tensor.name}' for model '{model}'")
            data = input_block(shared_memory, ref)
        elif raw_inputs:
            if tensor.HasField("contents"):
                raise ServerError(f"contents field must not be specified when using "
                                  f"raw_input_contents for '{tensor.name}' for model '{model}'")
            if raw_index >= len(raw_inputs):
                raise ServerError(f"unable to find data for input tensor '{tensor.name}' for "
                                  f"model '{model}' in request.")
            data = raw_inputs[raw_index]
            raw_index += 1
        else:
            data = codec.contents_to_bytes(tensor, model)
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return inputs


class HealthServicer:
    """grpc.health.v1.Health: SERVING once every model is ready."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def Check(self, request, context):
        status = health.HealthCheckResponse.ServingStatus
        serving = self._manager.all_ready()
        return health.HealthCheckResponse(status=status.Value("SERVING" if serving else "NOT_SERVING"))


def _metadata(context, key: str) -> str:
    return next((value for k, value in context.invocation_metadata() or () if k == key), "")


async def _unimplemented(request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this RPC is not implemented by pyserve yet")


_RAW = {"ModelInfer", "ModelStreamInfer"}  # handlers that take and return serialized bytes


def _parsed(behaviour, message_class):
    """The request parsed in the handler, so that bytes that are not one are refused with
    INVALID_ARGUMENT (a failing grpc deserializer answers UNKNOWN)."""
    async def handle(request: bytes, context):
        try:
            message = message_class.FromString(request)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"failed to parse request: {e}")
        return await behaviour(message, context)
    return handle


class _DelayedContext:
    """A call's context whose refusal (abort, which answers at once) waits `seconds` first."""

    def __init__(self, context, seconds: int) -> None:
        self._context, self._seconds = context, seconds

    async def abort(self, code, details: str = ""):
        await asyncio.sleep(self._seconds)
        await self._context.abort(code, details)

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def _delayed(behaviour, seconds: float):
    """The answer written `seconds` after the call ran, refusals included, as Triton's test
    builds do (TRITONSERVER_SERVER_DELAY_GRPC_RESPONSE_SEC, for qa/L0_client_timeout)."""
    async def handle(request, context):
        response = await behaviour(request, _DelayedContext(context, seconds))
        await asyncio.sleep(seconds)
        return response
    return handle


def _late(behaviour, seconds: float):
    """The call taken `seconds` after it arrived (TRITONSERVER_DELAY_GRPC_PROCESS, for
    qa/L0_request_cancellation): a client that cancels meanwhile has nothing computed."""
    async def handle(request, context):
        await asyncio.sleep(seconds)
        return await behaviour(request, context)
    return handle


def _env_int(name: str) -> int:
    """An environment variable of Triton's test builds, read as Triton reads it (atoi)."""
    number = re.match(r"\s*([+-]?[0-9]+)", os.environ.get(name, ""))
    return max(0, int(number.group(1))) if number else 0


def _handlers(service, servicer, delays: tuple[float, float] = (0, 0)) -> grpc.GenericRpcHandler:
    """`delays`: Triton's test builds' (0: none), in seconds: how long every answer but
    inference ones waits, and how long a ModelInfer call waits before it is taken."""
    delay, process_delay = delays
    handlers = {}
    for method in service.methods:
        raw = method.name in _RAW
        serialize = None if raw else GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name, None) or _unimplemented
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, response_serializer=serialize)
        else:
            if not raw:
                behaviour = _parsed(behaviour, GetMessageClass(method.input_type))
            if delay and not raw:
                behaviour = _delayed(behaviour, delay)
            if process_delay and method.name == "ModelInfer":
                behaviour = _late(behaviour, process_delay)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, response_serializer=serialize)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class _Restricted(grpc.aio.ServerInterceptor):
    """--grpc-restricted-protocol: a restricted method is refused without its header."""

    def __init__(self, methods: dict[str, tuple[str, str]]) -> None:
        self._methods = methods

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        required = self._methods.get(details.method)
        if handler is None or required is None or required in (details.invocation_metadata or ()):
            return handler

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, restricted.grpc_refusal(required[0]))

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


def create_grpc_server(manager: ModelManager, address: str,
                       max_message_size: int = _INT32_MAX,
                       channel_args: dict[str, int] | None = None,
                       tls: dict | None = None,
                       shared_memory: _core.SharedMemoryRegistry | None = None,
                       restricted_methods: dict[str, tuple[str, str]] | None = None,
                       header_pattern: str = "",
                       infer_compression: str = "none") -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server for the inference and health services; returns it and its bound port.
    `channel_args`: gRPC channel arguments (keepalive, "grpc.so_reuseport", ...); `tls`: PEM
    contents (server_cert, server_key, root_cert) and `mutual`, or None for plaintext;
    `restricted_methods`: {method path: (metadata key, value)} it must carry; `header_pattern`:
    metadata whose key it finds become inference request parameters; `infer_compression`:
    how inference responses are compressed (pyserve.options.COMPRESSION_LEVELS)."""
    interceptors = [_Restricted(restricted_methods)] if restricted_methods else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
        *(channel_args or {}).items(),
    ])
    # Read once: nothing to pay per call when unset.
    delays = (_env_int("TRITONSERVER_SERVER_DELAY_GRPC_RESPONSE_SEC"),
              _env_int("TRITONSERVER_DELAY_GRPC_PROCESS") / 1000)
    server.add_generic_rpc_handlers((
        _handlers(INFERENCE_SERVICE, InferenceServicer(manager, shared_memory, header_pattern,
                                                       infer_compression), delays),
        _handlers(HEALTH_SERVICE, HealthServicer(manager), delays),
    ))
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls["server_key"].encode(), tls["server_cert"].encode())],
            root_certificates=tls["root_cert"].encode() or None,
            require_client_auth=tls["mutual"])
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind the gRPC frontend to {address}")
    return server, port
