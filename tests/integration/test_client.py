"""pyserve.client against a real pyserve server: every method over gRPC and HTTP, sync and
asyncio; numeric, BYTES and BF16 tensors; errors with the server's codes; deadlines, headers,
compression, retries, streams, shared memory and use from many threads."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, free_port, start_server
from pyserve.client import (AsyncClient, Client, InferenceServerError, InferResult, Request,
                            SharedMemoryRegion)

SIMPLE = EXAMPLES / "simple"

BATCHED_CONFIG = """
backend: "python"
max_batch_size: 8
input [ {inputs} ]
output [ {outputs} ]
dynamic_batching {{ }}
"""

# identity over BYTES, BF16 and a handful of numeric types, plus the upper-cased strings
TYPES_MODEL = '''
import numpy as np
import pyserve


@pyserve.batched
def infer(inputs):
    words = inputs["WORDS"]
    upper = np.array([w.decode().upper().encode() for w in words.reshape(-1)],
                     dtype=np.object_).reshape(words.shape)
    out = {"UPPER": upper}
    for name in ("WORDS", "HALF", "DOUBLE", "I8", "U64", "FLAG", "BRAIN"):
        out[name + "_OUT"] = inputs[name]
    return out
'''
TYPES = {"WORDS": "TYPE_STRING", "HALF": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "I8": "TYPE_INT8",
         "U64": "TYPE_UINT64", "FLAG": "TYPE_BOOL", "BRAIN": "TYPE_BF16"}

SLOW_MODEL = '''
import time
import pyserve


@pyserve.batched
def infer(inputs):
    time.sleep(float(inputs["SECONDS"].reshape(-1)[0]))
    return {"OUT": inputs["SECONDS"]}
'''

DECOUPLED_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
"""

DECOUPLED_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            for i in range(count):
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("INDEX", np.array([i], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def _io(kind: str, name: str, data_type: str) -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: [ -1 ] }}'


def _write_model(root: Path, name: str, config: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    (root / name / "1" / "model.py").write_text(model_py)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client_repo")
    shutil.copytree(SIMPLE, root / "simple")
    shutil.copytree(SIMPLE, root / "spare")
    (root / "spare" / "config.pbtxt").write_text(
        (SIMPLE / "config.pbtxt").read_text().replace('"simple"', '"spare"'))
    inputs = ", ".join(_io("input", n, t) for n, t in TYPES.items())
    outputs = ", ".join([_io("output", "UPPER", "TYPE_STRING")]
                        + [_io("output", n + "_OUT", t) for n, t in TYPES.items()])
    _write_model(root, "types", BATCHED_CONFIG.format(inputs=inputs, outputs=outputs), TYPES_MODEL)
    _write_model(root, "slow", BATCHED_CONFIG.format(inputs=_io("input", "SECONDS", "TYPE_FP32"),
                                                     outputs=_io("output", "OUT", "TYPE_FP32")),
                 SLOW_MODEL)
    _write_model(root, "decoupled", DECOUPLED_CONFIG, DECOUPLED_MODEL)
    process = start_server([root], tmp_path_factory.mktemp("logs") / "client_server.log",
                           "--model-control-mode", "explicit", "--load-model", "simple",
                           "--load-model", "types", "--load-model", "slow",
                           "--strict-readiness", "false")
    yield process
    process.stop()


def url_of(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else f"http://{server.http_url}"


class SyncApi:
    """A Client, called as is."""

    def __init__(self, url: str, **options) -> None:
        self.client = Client(url, **options)

    def __getattr__(self, name):
        return getattr(self.client, name)

    def stream_list(self, *args, **kwargs) -> list:
        return list(self.client.stream(*args, **kwargs))

    def close(self) -> None:
        self.client.close()


class AsyncApi:
    """An AsyncClient on an event loop of its own; each call runs to completion."""

    def __init__(self, url: str, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(url, **options)

    def __getattr__(self, name):
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def stream_list(self, *args, **kwargs) -> list:
        async def collect():
            return [r async for r in self.client.stream(*args, **kwargs)]
        return self.loop.run_until_complete(collect())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


MODES = [("grpc", SyncApi), ("http", SyncApi), ("grpc", AsyncApi), ("http", AsyncApi)]
IDS = ["grpc-sync", "http-sync", "grpc-async", "http-async"]


@pytest.fixture(params=MODES, ids=IDS)
def api(request, server):
    protocol, kind = request.param
    client = kind(url_of(server, protocol))
    client.protocol_name = protocol
    yield client
    client.close()


def simple_inputs(batch: int = 1, offset: int = 0) -> dict[str, np.ndarray]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16) + offset
    return {"INPUT0": a, "INPUT1": np.ones_like(a)}


# ------------------------------------------------------------------- health and metadata

def test_health_and_metadata(api):
    assert api.is_server_live() is True
    assert api.is_model_ready("simple") is True
    assert api.is_model_ready("simple", 1) is True
    assert api.is_model_ready("no_such_model") is False
    assert api.is_model_ready("spare") is False  # in the repository, not loaded
    meta = api.server_metadata()
    assert meta.name == "triton" and "statistics" in meta.extensions
    model = api.model_metadata("simple")
    assert model.name == "simple" and model.versions == ["1"]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in model.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    assert [t.name for t in model.outputs] == ["OUTPUT0", "OUTPUT1"]


def test_model_config(api):
    config = api.model_config("simple")
    assert config.name == "simple" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert list(config.input[0].dims) == [16]
    assert type(config).__name__ == "ModelConfig"


# ------------------------------------------------------------------------------- inference

def test_infer_numeric(api):
    inputs = simple_inputs(batch=3)
    result = api.infer("simple", inputs, request_id="req-7")
    assert isinstance(result, InferResult) and isinstance(result, dict)
    assert set(result) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(result["OUTPUT0"], inputs["INPUT0"] + 1)
    np.testing.assert_array_equal(result["OUTPUT1"], inputs["INPUT0"] - 1)
    assert result["OUTPUT0"].dtype == np.int32 and result["OUTPUT0"].shape == (3, 16)
    assert (result.model_name, result.model_version, result.id) == ("simple", "1", "req-7")
    only = api.infer("simple", inputs, outputs=["OUTPUT1"], version=1)
    assert list(only) == ["OUTPUT1"]


def test_infer_bytes_and_other_types(api):
    import ml_dtypes

    words = np.array([[b"hello", "w\u00f6rld", b""]], dtype=np.object_)
    inputs = {
        "WORDS": words,
        "HALF": np.array([[1.5, -2.25, 0]], dtype=np.float16),
        "DOUBLE": np.array([[1e300, -1.0, 0.5]]),
        "I8": np.array([[-128, 0, 127]], dtype=np.int8),
        "U64": np.array([[2**64 - 1, 0, 7]], dtype=np.uint64),
        "FLAG": np.array([[True, False, True]]),
        "BRAIN": np.array([[1.0, -3.5, 256.0]], dtype=ml_dtypes.bfloat16),
    }
    result = api.infer("types", inputs)
    assert result["WORDS_OUT"].dtype == np.object_
    assert result["WORDS_OUT"].tolist() == [[b"hello", "w\u00f6rld".encode(), b""]]
    assert result["UPPER"].tolist() == [[b"HELLO", "W\u00d6RLD".encode(), b""]]
    for name, array in inputs.items():
        if name != "WORDS":
            out = result[name + "_OUT"]
            assert out.dtype == array.dtype, name
            np.testing.assert_array_equal(out, array)


def test_infer_numpy_string_arrays_are_bytes(api):
    base = {n: np.zeros((1, 1), dtype=d) for n, d in
            (("HALF", np.float16), ("DOUBLE", np.float64), ("I8", np.int8), ("U64", np.uint64),
             ("FLAG", np.bool_))}
    base["BRAIN"] = np.zeros((1, 1), dtype=np.uint16)
    result = api.infer("types", {"WORDS": np.array([["abc"]]), **base},
                       datatypes={"BRAIN": "BF16"}, outputs=["UPPER"])
    assert result["UPPER"].tolist() == [[b"ABC"]]


def test_request_parameters_priority_and_timeout_are_accepted(api):
    result = api.infer("simple", simple_inputs(), parameters={"custom": "x", "n": 3, "f": 0.5},
                       priority=1, timeout=5_000_000)
    np.testing.assert_array_equal(result["OUTPUT0"], simple_inputs()["INPUT0"] + 1)


# ---------------------------------------------------------------------------------- errors

def test_errors_carry_the_servers_status_and_text(api):
    http = api.protocol_name == "http"
    with pytest.raises(InferenceServerError) as info:
        api.infer("no_such_model", simple_inputs())
    assert info.value.status == "NOT_FOUND"  # as Triton 2.51 answers it
    assert info.value.message == "Request for unknown model: 'no_such_model' is not found"
    assert info.value.http_status == (404 if http else None)
    with pytest.raises(InferenceServerError) as info:
        api.infer("simple", simple_inputs(batch=9))
    assert info.value.status == "INVALID_ARGUMENT"
    assert "inference request batch-size must be <= 8 for 'simple'" in info.value.message
    with pytest.raises(InferenceServerError) as info:
        api.infer("simple", {"INPUT0": np.zeros((1, 3), np.int32),
                             "INPUT1": np.zeros((1, 3), np.int32)})
    assert "unexpected shape for input 'INPUT0' for model 'simple'" in info.value.message
    with pytest.raises(InferenceServerError) as info:
        api.model_metadata("no_such_model")
    assert "no_such_model" in info.value.message
    assert info.value.status in ("INVALID_ARGUMENT", "NOT_FOUND")


def test_deadline(api):
    start = time.monotonic()
    with pytest.raises(InferenceServerError) as info:
        api.infer("slow", {"SECONDS": np.array([[1.5]], dtype=np.float32)}, client_timeout=0.2)
    assert info.value.status == "DEADLINE_EXCEEDED"
    assert time.monotonic() - start < 1.2
    result = api.infer("slow", {"SECONDS": np.array([[0.0]], dtype=np.float32)},
                       client_timeout=10)
    assert result["OUT"].tolist() == [[0.0]]


def test_unsupported_settings_apis_raise_the_servers_error(api):
    extensions = api.server_metadata().extensions
    if "logging" in extensions:
        settings = api.get_log_settings()
        assert "log_info" in settings
    else:
        with pytest.raises(InferenceServerError) as info:
            api.get_log_settings()
        assert info.value.status in ("UNIMPLEMENTED", "NOT_FOUND")
    if "trace" in extensions:
        assert "trace_level" in api.get_trace_settings()
    else:
        with pytest.raises(InferenceServerError):
            api.update_trace_settings({"trace_rate": "10"})


# ------------------------------------------------------------------------------ statistics

def test_statistics(api):
    before = {s.name: s for s in api.statistics()}
    assert "simple" in before
    for _ in range(3):
        api.infer("simple", simple_inputs(batch=2))
    deadline = time.monotonic() + 10
    while True:
        (after,) = api.statistics("simple")
        delta = after - before["simple"]
        if delta.inference_stats.success.count >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (after.name, after.version) == ("simple", "1")
    assert delta.inference_stats.success.count == 3
    assert delta.inference_count == 6
    assert delta.inference_stats.compute_infer.ns > 0
    assert delta.inference_stats.compute_infer.mean_us > 0
    assert sum(b.compute_infer.count for b in delta.batch_stats) == delta.execution_count


# ---------------------------------------------------------------------- model repository

def test_repository_index_load_unload(api):
    index = {e.name: e for e in api.repository_index()}
    assert index["simple"].state == "READY"
    assert "spare" in index and index["spare"].state != "READY"
    assert {e.name for e in api.repository_index(ready=True)} >= {"simple", "types"}
    assert "spare" not in {e.name for e in api.repository_index(ready=True)}

    config = {"name": "spare", "platform": "onnxruntime_onnx", "max_batch_size": 4,
              "input": [{"name": n, "data_type": "TYPE_INT32", "dims": [16]}
                        for n in ("INPUT0", "INPUT1")],
              "output": [{"name": n, "data_type": "TYPE_INT32", "dims": [16]}
                         for n in ("OUTPUT0", "OUTPUT1")]}
    api.load_model("spare", config=config,
                   files={"1/model.onnx": (SIMPLE / "1" / "model.onnx").read_bytes()})
    try:
        assert api.is_model_ready("spare")
        assert api.model_config("spare").max_batch_size == 4
        np.testing.assert_array_equal(api.infer("spare", simple_inputs(batch=4))["OUTPUT0"],
                                      simple_inputs(batch=4)["INPUT0"] + 1)
        with pytest.raises(InferenceServerError) as info:
            api.infer("spare", simple_inputs(batch=5))
        assert "batch-size must be <= 4" in info.value.message
    finally:
        api.unload_model("spare")
    assert not api.is_model_ready("spare")
    assert {e.name: e for e in api.repository_index()}["spare"].state == "UNAVAILABLE"


def test_load_failure_is_an_error(api):
    with pytest.raises(InferenceServerError) as info:
        api.load_model("no_such_model")
    assert info.value.status in ("INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL")


# --------------------------------------------------------------------------------- streams

def test_stream_requests_in_order_with_ids(api):
    requests = [Request(simple_inputs(offset=i), request_id=f"r{i}") for i in range(4)]
    results = api.stream_list("simple", requests)
    assert sorted(r.id for r in results) == ["r0", "r1", "r2", "r3"]
    for result in results:
        offset = int(result.id[1:])
        np.testing.assert_array_equal(result["OUTPUT0"], simple_inputs(offset=offset)["INPUT0"] + 1)


def test_stream_errors_are_raised_or_yielded(api):
    good, bad = simple_inputs(), {"INPUT0": np.zeros((1, 3), np.int32)}
    results = api.stream_list("simple", [good, bad, good], raise_errors=False)
    errors = [r for r in results if isinstance(r, InferenceServerError)]
    assert len(results) == 3 and len(errors) == 1
    assert "INPUT" in errors[0].message
    with pytest.raises(InferenceServerError):
        api.stream_list("simple", [bad])


def test_stream_sequence_flags(api):
    # `simple` has no sequence batcher; the flags must still reach the server well-formed
    results = api.stream_list("simple", [simple_inputs(offset=i) for i in range(3)],
                              sequence_id=42)
    assert len(results) == 3


def test_stream_decoupled_model(api):
    if api.protocol_name == "http":
        pytest.skip("decoupled responses need the gRPC stream")
    try:
        api.load_model("decoupled")
    except InferenceServerError as e:
        if "not supported" in e.message or e.status == "UNIMPLEMENTED":
            pytest.skip(f"the server does not serve decoupled models yet: {e.message}")
        raise
    try:
        results = api.stream_list("decoupled", [{"COUNT": np.array([3], np.int32)}])
        indexes = [r["INDEX"].tolist() for r in results if "INDEX" in r]
        assert indexes == [[0], [1], [2]]
    finally:
        api.unload_model("decoupled")


# --------------------------------------------------------------------- transport options

@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compression_and_headers(server, protocol, compression):
    inputs = simple_inputs(batch=8)
    with Client(url_of(server, protocol), compression=compression,
                headers={"X-Team": "blue"}) as client:
        result = client.infer("simple", inputs, headers={"Authorization": "Bearer t"})
        np.testing.assert_array_equal(result["OUTPUT0"], inputs["INPUT0"] + 1)
        assert client.is_server_ready(headers={"x-extra": "1"})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_unavailable_and_retried_when_asked(protocol):
    port = free_port()
    url = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"
    with Client(url, client_timeout=2) as client:
        with pytest.raises(InferenceServerError) as info:
            client.is_server_live()
        assert info.value.status == "UNAVAILABLE"
    with Client(url, client_timeout=2, retries=3, retry_backoff=0.2) as client:
        start = time.monotonic()
        with pytest.raises(InferenceServerError):
            client.is_server_live()
        # three waits: 0.1-0.2, 0.2-0.4 and 0.4-0.8 seconds
        assert time.monotonic() - start >= 0.7


def test_retries_leave_other_errors_alone(server):
    with Client(server.grpc_url, retries=5, retry_backoff=1.0) as client:
        start = time.monotonic()
        with pytest.raises(InferenceServerError):
            client.infer("no_such_model", simple_inputs())
        assert time.monotonic() - start < 0.9


def test_retry_reaches_a_server_that_comes_up(tmp_path):
    """A client with retries outlives the few seconds a server takes to start."""
    port = free_port()
    result: dict = {}

    def call():
        with Client(f"127.0.0.1:{port}", retries=12, retry_backoff=0.25,
                    retry_max_backoff=1.0, client_timeout=2) as client:
            try:
                result["live"] = client.is_server_live()
            except InferenceServerError as e:
                result["error"] = e

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    process = start_server([EXAMPLES], tmp_path / "late.log", "--grpc-port", str(port))
    try:
        thread.join(60)
    finally:
        process.stop()
    assert result == {"live": True}


# --------------------------------------------------------------------- threads and asyncio

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_client_shared_by_threads(server, protocol):
    errors: list = []
    with Client(url_of(server, protocol)) as client:
        def work(worker: int):
            try:
                for i in range(30):
                    inputs = simple_inputs(offset=worker * 1000 + i)
                    out = client.infer("simple", inputs)
                    np.testing.assert_array_equal(out["OUTPUT0"], inputs["INPUT0"] + 1)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_concurrent_calls(server, protocol):
    async def main():
        async with AsyncClient(url_of(server, protocol)) as client:
            results = await asyncio.gather(*[client.infer("simple", simple_inputs(offset=i))
                                             for i in range(32)])
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result["OUTPUT0"],
                                              simple_inputs(offset=i)["INPUT0"] + 1)
    asyncio.run(main())


def test_torch_tensors_as_inputs(server):
    torch = pytest.importorskip("torch")
    with Client(server.grpc_url) as client:
        a = torch.arange(16, dtype=torch.int32).reshape(1, 16)
        result = client.infer("simple", {"INPUT0": a, "INPUT1": torch.ones_like(a)})
        np.testing.assert_array_equal(result["OUTPUT0"], a.numpy() + 1)


# ---------------------------------------------------------------------------- shared memory

def test_shared_memory_region_views():
    region = SharedMemoryRegion("views", 4096)
    try:
        assert os.path.exists("/dev/shm" + region.key)
        a = region.ndarray((2, 16), np.int32)
        b = region.ndarray(16, np.float32)
        a[:] = 7
        assert region.locate(a) == (0, 128)
        assert region.locate(b) == (128, 64)
        assert region.locate(np.zeros(4)) is None
        assert region.locate(a[:, ::2]) is None  # not contiguous
        assert (region.buffer[:128].view(np.int32) == 7).all()
        with pytest.raises(ValueError):
            region.ndarray(4096, np.int32)
    finally:
        region.close()
    assert not os.path.exists("/dev/shm" + region.key)


def test_shared_memory_with_server(api):
    supported = "system_shared_memory" in api.server_metadata().extensions
    if not supported:
        before = set(os.listdir("/dev/shm"))
        with pytest.raises(InferenceServerError) as info:
            api.client.shared_memory("inputs", 4096).__enter__() if isinstance(api, SyncApi) \
                else api.loop.run_until_complete(api.client.shared_memory("inputs", 4096).__aenter__())
        assert info.value.status in ("UNIMPLEMENTED", "NOT_FOUND")
        assert set(os.listdir("/dev/shm")) == before  # the region was not left behind
        pytest.skip("the server lacks the system_shared_memory extension")
    if isinstance(api, AsyncApi):
        pytest.skip("covered by the sync client")
    with api.client.shared_memory("io", 4096) as region:
        a = region.ndarray((1, 16), np.int32)
        a[:] = np.arange(16)
        ones = region.ndarray((1, 16), np.int32)
        ones[:] = 1
        out = region.ndarray((1, 16), np.int32)
        result = api.infer("simple", {"INPUT0": a, "INPUT1": ones},
                           outputs={"OUTPUT0": out})
        np.testing.assert_array_equal(out, np.arange(16).reshape(1, 16) + 1)
        assert result["OUTPUT0"].base is not None
        assert [s.name for s in api.system_shared_memory_status()] == ["io"]
