"""The gRPC protocol: calls built as (RPC, request message, decoder), and two transports
(grpcio's sync channel, and grpc.aio) that carry them.

Messages come from pyserve's private descriptor pool (`pyserve.protocol`), so this client
runs in one process with tritonclient. One channel per client: HTTP/2 multiplexes every call,
so the connection is reused and kept alive (`keepalive_ms`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import grpc
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass

from pyserve.client._request import InferRequest
from pyserve.client._shm import filled_view
from pyserve.client._tensors import from_bytes, from_json_data
from pyserve.client._types import (IndexEntry, InferResult, ModelMetadata, ModelStatistics,
                                   RegionStatus, ServerMetadata, TensorMetadata)
from pyserve.client.errors import InferenceServerError
from pyserve.protocol import INFERENCE_SERVICE, pb, wire

SERVICE = "/inference.GRPCInferenceService/"
_INT32_MAX = 2**31 - 1
_UINT64_KEYS = frozenset({"priority"})  # reserved keys tritonclient sends as uint64_param
_COMPRESSION = {None: grpc.Compression.NoCompression, "none": grpc.Compression.NoCompression,
                "gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


@dataclass(slots=True)  # not frozen: that costs 0.2 us per call, in every infer
class GrpcCall:
    rpc: str
    request: Any  # a message, or its wire bytes for the RPCs in PRESERIALIZED
    decode: Callable[[Any], Any]


# RPCs whose GrpcCall carries the request's wire bytes (see serialize_infer)
PRESERIALIZED = frozenset({"ModelInfer"})


def _identity(response):
    return response


# ------------------------------------------------------------------------------- parameters

def set_parameters(target, values: Mapping[str, Any]) -> None:
    """Fill a map<string, InferParameter> from Python values."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if key in _UINT64_KEYS:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise TypeError(f"parameter '{key}': unsupported type {type(value).__name__}")


def get_parameters(source) -> dict[str, Any]:
    out = {}
    for key, parameter in source.items():
        which = parameter.WhichOneof("parameter_choice")
        out[key] = getattr(parameter, which) if which else None
    return out


def _trace_settings(response) -> dict[str, Any]:
    """Shaped as Triton's HTTP answer, so that both protocols return the same dict:
    trace_level a list, every other setting one string."""
    return {key: list(setting.value) if key == "trace_level"
            else (setting.value[0] if len(setting.value) == 1 else list(setting.value))
            for key, setting in response.settings.items()}


# ------------------------------------------------------------------------------------ infer

def encode_infer(request: InferRequest):
    message = pb.ModelInferRequest(model_name=request.model, model_version=request.version,
                                   id=request.id)
    if request.parameters:
        set_parameters(message.parameters, request.parameters)
    raw = []
    for tensor in request.inputs:
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.shm is not None:
            _set_shm(entry.parameters, tensor.shm)
        else:
            raw.append(tensor.data)
    message.raw_input_contents.extend(raw)
    for output in request.outputs:
        entry = message.outputs.add(name=output.name)
        if output.shm is not None:
            _set_shm(entry.parameters, output.shm)
        if output.parameters:
            set_parameters(entry.parameters, output.parameters)
    return message


def _set_shm(target, ref) -> None:
    region, offset, byte_size = ref
    target["shared_memory_region"].string_param = region
    target["shared_memory_byte_size"].int64_param = byte_size
    if offset:
        target["shared_memory_offset"].int64_param = offset


_RAW_INPUT_KEY = wire.key(wire.RAW_INPUT_CONTENTS)
_RAW_INPUT_PREFIXES = [_RAW_INPUT_KEY + bytes([n]) for n in range(128)]  # one-byte lengths
_TEMPLATES_MAX = 1024
_templates: dict[tuple, tuple[bytes, bytes]] = {}


def _length_prefix(n: int) -> bytes:
    return _RAW_INPUT_PREFIXES[n] if n < 128 else _RAW_INPUT_KEY + wire.varint(n)


def serialize_infer(request: InferRequest) -> bytes:
    """`encode_infer(request).SerializeToString()`, byte for byte, for less CPU.

    Requests of one layout (model, version, input names, types and shapes, outputs) differ
    only in id, parameters and tensor bytes, so the layout's fields are serialized once and
    cached. The message is the concatenation, in field order, of: model_name and
    model_version | id and parameters | inputs and outputs | each raw_input_contents entry.
    Requests with tensors in shared memory or output parameters take encode_infer."""
    inputs, outputs = request.inputs, request.outputs
    tensors = tuple([(t.name, t.datatype, t.shape) for t in inputs if t.data is not None])
    names = tuple([o.name for o in outputs if o.shm is None and not o.parameters])
    if len(tensors) < len(inputs) or len(names) < len(outputs):
        return encode_infer(request).SerializeToString()
    key = (request.model, request.version, tensors, names)
    template = _templates.get(key)
    if template is None:
        template = _template(request)
        if len(_templates) >= _TEMPLATES_MAX:  # layouts beyond that: start over
            _templates.clear()
        _templates[key] = template
    head, layout = template
    parts = [head]
    if request.id or request.parameters:
        middle = pb.ModelInferRequest(id=request.id)
        if request.parameters:
            set_parameters(middle.parameters, request.parameters)
        parts.append(middle.SerializeToString())
    parts.append(layout)
    for tensor in inputs:
        parts.append(_length_prefix(len(tensor.data)))
        parts.append(tensor.data)
    return b"".join(parts)


def _template(request: InferRequest) -> tuple[bytes, bytes]:
    head = pb.ModelInferRequest(model_name=request.model, model_version=request.version)
    layout = pb.ModelInferRequest()
    for tensor in request.inputs:
        layout.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    for output in request.outputs:
        layout.outputs.add(name=output.name)
    return head.SerializeToString(), layout.SerializeToString()


def decode_infer(response, shm_outputs: Mapping | None = None) -> InferResult:
    parameters = get_parameters(response.parameters) if response.parameters else {}
    result = InferResult(model_name=response.model_name, model_version=response.model_version,
                         id=response.id, parameters=parameters,
                         final=bool(parameters.get("triton_final_response", True)))
    tensors, raw = response.outputs, response.raw_output_contents
    count = len(tensors)
    if count == len(raw) and not shm_outputs:
        # Every output has its raw entry: index both (iterating upb containers costs more),
        # and read the shape as a list slice (tuple() of a repeated field is 4x slower).
        for index in range(count):
            tensor = tensors[index]
            result[tensor.name] = from_bytes(raw[index], tensor.datatype, tensor.shape[:])
        return result
    direct = count == len(raw)  # else raw entries skip outputs in shm
    raw_index = 0
    for index, tensor in enumerate(tensors):
        shape = tuple(tensor.shape)
        if shm_outputs and tensor.name in shm_outputs:  # no data: it is in the region (Triton)
            result[tensor.name] = filled_view(shm_outputs[tensor.name], shape)
            continue
        if direct:
            result[tensor.name] = from_bytes(raw[index], tensor.datatype, shape)
        elif raw_index < len(raw):
            result[tensor.name] = from_bytes(raw[raw_index], tensor.datatype, shape)
            raw_index += 1
        else:
            result[tensor.name] = _typed_contents(tensor, shape)
    return result


_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _typed_contents(tensor, shape):
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise InferenceServerError(f"output '{tensor.name}' has no data", "INTERNAL")
    return from_json_data(list(getattr(tensor.contents, field)), tensor.datatype, shape)


def decode_stream(response, shm_outputs=None) -> InferResult:
    if response.error_message:
        raise InferenceServerError(response.error_message, "INTERNAL")
    return decode_infer(response.infer_response, shm_outputs)


# ----------------------------------------------------------------------------- other calls

class GrpcProtocol:
    """Builds each call of the API as a GrpcCall."""

    name = "grpc"

    @staticmethod
    def live():
        return GrpcCall("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)

    @staticmethod
    def ready():
        return GrpcCall("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)

    @staticmethod
    def model_ready(model: str, version: str):
        return GrpcCall("ModelReady", pb.ModelReadyRequest(name=model, version=version),
                        lambda r: r.ready)

    @staticmethod
    def server_metadata():
        return GrpcCall("ServerMetadata", pb.ServerMetadataRequest(),
                        lambda r: ServerMetadata(r.name, r.version, list(r.extensions)))

    @staticmethod
    def model_metadata(model: str, version: str):
        def decode(r):
            def tensors(items):
                return [TensorMetadata(t.name, t.datatype, list(t.shape)) for t in items]
            return ModelMetadata(r.name, list(r.versions), r.platform, tensors(r.inputs),
                                 tensors(r.outputs))
        return GrpcCall("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version),
                        decode)

    @staticmethod
    def model_config(model: str, version: str):
        return GrpcCall("ModelConfig", pb.ModelConfigRequest(name=model, version=version),
                        lambda r: r.config)

    @staticmethod
    def statistics(model: str, version: str):
        def decode(r):
            return [ModelStatistics.from_json(json_format.MessageToDict(
                s, preserving_proto_field_name=True)) for s in r.model_stats]
        return GrpcCall("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version),
                        decode)

    @staticmethod
    def repository_index(ready: bool):
        return GrpcCall("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready),
                        lambda r: [IndexEntry(m.name, m.version, m.state, m.reason)
                                   for m in r.models])

    @staticmethod
    def load(model: str, config: str | None, files: Mapping[str, bytes] | None):
        request = pb.RepositoryModelLoadRequest(model_name=model)
        if config is not None:
            request.parameters["config"].string_param = config
        for path, content in (files or {}).items():
            request.parameters[f"file:{path}"].bytes_param = content
        return GrpcCall("RepositoryModelLoad", request, lambda r: None)

    @staticmethod
    def unload(model: str, unload_dependents: bool):
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        request.parameters["unload_dependents"].bool_param = unload_dependents
        return GrpcCall("RepositoryModelUnload", request, lambda r: None)

    @staticmethod
    def trace_settings(model: str, settings: Mapping[str, Any] | None):
        request = pb.TraceSettingRequest(model_name=model)
        for key, value in (settings or {}).items():
            entry = request.settings[key]
            if value is not None:
                entry.value.extend([str(v) for v in value] if isinstance(value, (list, tuple))
                                   else [str(value)])
        return GrpcCall("TraceSetting", request, _trace_settings)

    @staticmethod
    def log_settings(settings: Mapping[str, Any] | None):
        request = pb.LogSettingsRequest()
        for key, value in (settings or {}).items():
            entry = request.settings[key]
            if isinstance(value, bool):
                entry.bool_param = value
            elif isinstance(value, int):
                entry.uint32_param = value
            else:
                entry.string_param = str(value)

        def decode(r):
            return {k: getattr(v, v.WhichOneof("parameter_choice"))
                    if v.WhichOneof("parameter_choice") else None for k, v in r.settings.items()}
        return GrpcCall("LogSettings", request, decode)

    @staticmethod
    def shm_register(name: str, key: str, byte_size: int, offset: int):
        return GrpcCall("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=byte_size), lambda r: None)

    @staticmethod
    def shm_unregister(name: str):
        return GrpcCall("SystemSharedMemoryUnregister",
                        pb.SystemSharedMemoryUnregisterRequest(name=name), lambda r: None)

    @staticmethod
    def shm_status(name: str):
        return GrpcCall("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name=name),
                        lambda r: [RegionStatus(s.name, s.key, s.offset, s.byte_size)
                                   for s in r.regions.values()])

    @staticmethod
    def infer(request: InferRequest):
        shm_outputs = request.shm_outputs
        return GrpcCall("ModelInfer", serialize_infer(request),
                        lambda r: decode_infer(r, shm_outputs))


def config_json(config) -> str | None:
    """A load's config override as the JSON text Triton takes (dict, str or ModelConfig)."""
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, Mapping):
        return json.dumps(config)
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


# ----------------------------------------------------------------------------- transports

def _error(e: grpc.RpcError) -> InferenceServerError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return InferenceServerError(details or str(code), code.name if code else "UNKNOWN")


def channel_options(keepalive_ms: int, extra: Iterable = ()) -> list[tuple[str, Any]]:
    options = [("grpc.max_send_message_length", _INT32_MAX),
               ("grpc.max_receive_message_length", _INT32_MAX)]
    if keepalive_ms:
        options += [("grpc.keepalive_time_ms", keepalive_ms),
                    ("grpc.keepalive_timeout_ms", 20000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0)]
    return options + list(extra)


def _serializers(rpc: str):
    """(request serializer, response deserializer); None (bytes as they are) for requests
    that come serialized."""
    method = INFERENCE_SERVICE.methods_by_name[rpc]
    request_class = GetMessageClass(method.input_type)
    return (None if rpc in PRESERIALIZED else request_class.SerializeToString,
            GetMessageClass(method.output_type).FromString)


class GrpcTransport:
    """grpcio's sync channel. Thread-safe: one channel serves every thread."""

    def __init__(self, target: str, *, credentials=None, compression: str | None = None,
                 keepalive_ms: int = 30000, channel_args: Iterable = ()) -> None:
        options = channel_options(keepalive_ms, channel_args)
        self.channel = (grpc.secure_channel(target, credentials, options=options)
                        if credentials is not None else grpc.insecure_channel(target, options=options))
        self.compression = _COMPRESSION[compression]
        self._methods: dict[str, Any] = {}

    def method(self, rpc: str):
        method = self._methods.get(rpc)
        if method is None:
            method = self.channel.unary_unary(SERVICE + rpc, *_serializers(rpc))
            self._methods[rpc] = method
        return method

    def raw_method(self, rpc: str):
        """The RPC taking and returning serialized bytes (for load generators)."""
        return self.channel.unary_unary(SERVICE + rpc)

    def call(self, call: GrpcCall, timeout: float | None, metadata):
        try:
            return call.decode(self.method(call.rpc)(call.request, timeout=timeout,
                                                     metadata=metadata,
                                                     compression=self.compression))
        except grpc.RpcError as e:
            raise _error(e) from None

    def stream(self, requests: Iterator, timeout: float | None, metadata) -> Iterator:
        stream = self.channel.stream_stream(
            SERVICE + "ModelStreamInfer",  # messages come serialized (serialize_infer)
            response_deserializer=pb.ModelStreamInferResponse.FromString)
        responses = stream(requests, timeout=timeout, metadata=metadata,
                           compression=self.compression)
        try:
            yield from responses
        except grpc.RpcError as e:
            raise _error(e) from None
        finally:
            responses.cancel()

    def close(self) -> None:
        self.channel.close()


class AioGrpcTransport:
    """grpc.aio's channel, opened on first use inside the running event loop."""

    def __init__(self, target: str, *, credentials=None, compression: str | None = None,
                 keepalive_ms: int = 30000, channel_args: Iterable = ()) -> None:
        self._target, self._credentials = target, credentials
        self._options = channel_options(keepalive_ms, channel_args)
        self.compression = _COMPRESSION[compression]
        self._channel = None
        self._methods: dict[str, Any] = {}

    @property
    def channel(self):
        if self._channel is None:
            self._channel = (
                grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(self._target, options=self._options))
        return self._channel

    def method(self, rpc: str):
        method = self._methods.get(rpc)
        if method is None:
            method = self.channel.unary_unary(SERVICE + rpc, *_serializers(rpc))
            self._methods[rpc] = method
        return method

    async def call(self, call: GrpcCall, timeout: float | None, metadata):
        try:
            return call.decode(await self.method(call.rpc)(call.request, timeout=timeout,
                                                           metadata=metadata,
                                                           compression=self.compression))
        except grpc.RpcError as e:
            raise _error(e) from None

    async def stream(self, requests, timeout: float | None, metadata):
        stream = self.channel.stream_stream(
            SERVICE + "ModelStreamInfer",  # messages come serialized (serialize_infer)
            response_deserializer=pb.ModelStreamInferResponse.FromString)
        call = stream(requests, timeout=timeout, metadata=metadata, compression=self.compression)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as e:
            raise _error(e) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
