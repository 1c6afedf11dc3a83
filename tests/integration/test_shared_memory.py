"""Triton's shared-memory extensions against real pyserve servers, native and Python frontends:
tritonclient's system shared memory utilities over gRPC and HTTP (inputs and outputs in
regions, mixed with tensors on the wire, BYTES), pyserve.client's regions (sync and async),
every refusal with Triton's texts, regions unregistered while a request still uses them, and
CUDA shared memory where a GPU is present."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import (InferenceServerException, serialize_byte_tensor,
                               serialized_byte_size)

from conftest import EXAMPLES, FRONTENDS, OUTSIDE, native_frontends_built, start_server
from pyserve.client import AsyncClient, Client
from pyserve.devices import gpu_count

WORDS_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "WORDS" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] } ]
"""
WORDS_MODEL = '''
import numpy as np
import pyserve


@pyserve.batched
def infer(inputs):
    words = inputs["WORDS"]
    return {"UPPER": np.array([w.upper() for w in words.reshape(-1)],
                              dtype=np.object_).reshape(words.shape)}
'''
# Sleeps for SECONDS, then returns it: its input is read after the sleep.
SLOW_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "SECONDS" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
# The slow model leaves this file when it starts on a request.
SLOW_STARTED = OUTSIDE / f"pyserve-shm-slow-{os.getpid()}"
SLOW_MODEL = f'''
import time
from pathlib import Path

import pyserve


@pyserve.batched
def infer(inputs):
    Path("{SLOW_STARTED}").touch()
    time.sleep(float(inputs["SECONDS"].reshape(-1)[0]))
    return {{"OUT": inputs["SECONDS"] * 2}}
'''

MODULES = {"grpc": grpcclient, "http": httpclient}


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    if request.param == "native" and not native_frontends_built():
        pytest.skip("pyserve was built without the native frontends")
    root = tmp_path_factory.mktemp("shm_repo")
    shutil.copytree(EXAMPLES / "simple", root / "simple")
    for name, config, model in (("words", WORDS_CONFIG, WORDS_MODEL),
                                ("slow", SLOW_CONFIG, SLOW_MODEL)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(model)
    process = start_server([root], tmp_path_factory.mktemp("logs") / "shm_server.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param)
    yield process
    process.stop()


@pytest.fixture(params=["grpc", "http"])
def triton(request, server):
    """(tritonclient module, client) with no regions registered before or after."""
    module = MODULES[request.param]
    url = server.grpc_url if request.param == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    client.unregister_system_shared_memory()
    yield module, client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def regions():
    """Creates POSIX shared memory objects (tritonclient's utilities); destroys them after."""
    handles = []

    def create(name: str, byte_size: int):
        key = f"/pyserve_test_{secrets.token_hex(4)}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        handles.append(handle)
        return handle, key
    yield create
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


def status_of(module, client) -> dict:
    status = client.get_system_shared_memory_status()
    if module is grpcclient:
        return {name: (r.key, r.offset, r.byte_size) for name, r in status.regions.items()}
    return {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status}


def refusal(call) -> tuple[str, str]:
    """(status, message) of a refused tritonclient call."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), caught.value.message()


def code(module, grpc_code: str, http_status: int) -> str:
    return f"StatusCode.{grpc_code}" if module is grpcclient else str(http_status)


def shm_input(module, name, shape, datatype, region, byte_size, offset=0):
    tensor = module.InferInput(name, shape, datatype)
    tensor.set_shared_memory(region, byte_size, offset=offset)
    return tensor


def shm_output(module, name, region, byte_size, offset=0):
    output = module.InferRequestedOutput(name)
    output.set_shared_memory(region, byte_size, offset=offset)
    return output


def wire_input(module, name, array, datatype="INT32"):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_serves(module, client):
    result = client.infer("simple", [wire_input(module, "INPUT0", A),
                                     wire_input(module, "INPUT1", B)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


# ---------------------------------------------------------------------- the control plane

def test_extensions_listed(triton):
    module, client = triton
    metadata = client.get_server_metadata()
    extensions = metadata.extensions if module is grpcclient else metadata["extensions"]
    assert {"system_shared_memory", "cuda_shared_memory"} <= set(extensions)


def test_register_status_unregister(triton, regions):
    module, client = triton
    _, key = regions("a", 4096)
    client.register_system_shared_memory("a", key, 1024, offset=512)
    client.register_system_shared_memory("b", key, 4096)
    assert status_of(module, client) == {"a": (key, 512, 1024), "b": (key, 0, 4096)}
    one = client.get_system_shared_memory_status("a")
    assert (one.regions["a"].byte_size if module is grpcclient else one[0]["byte_size"]) == 1024

    assert refusal(lambda: client.register_system_shared_memory("a", key, 16)) == (
        code(module, "ALREADY_EXISTS", 400), "shared memory region 'a' already in manager")
    assert refusal(lambda: client.register_system_shared_memory("c", key, 4000, offset=100)) == (
        code(module, "INVALID_ARGUMENT", 400),
        "failed to register shared memory region 'c': invalid args")
    assert refusal(lambda: client.register_system_shared_memory("d", "/pyserve_none", 16)) == (
        code(module, "INTERNAL", 500), "Unable to open shared memory region: '/pyserve_none'")
    assert refusal(lambda: client.get_system_shared_memory_status("zzz")) == (
        code(module, "NOT_FOUND", 404), "Unable to find system shared memory region: 'zzz'")
    assert client.get_cuda_shared_memory_status() is not None  # none registered: empty
    assert refusal(lambda: client.get_cuda_shared_memory_status("a")) == (
        code(module, "NOT_FOUND", 404),
        "The region named 'a' is registered as system shared memory, not CUDA shared memory")

    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("never_registered")  # not an error, as Triton
    assert status_of(module, client) == {"b": (key, 0, 4096)}
    client.unregister_system_shared_memory()
    assert status_of(module, client) == {}
    assert_serves(module, client)


# -------------------------------------------------------------------------- the data path

def test_inputs_and_outputs_in_regions(triton, regions):
    module, client = triton
    inputs, in_key = regions("in", 256)
    outputs, out_key = regions("out", 256)
    shm.set_shared_memory_region(inputs, [A, B])
    client.register_system_shared_memory("in", in_key, 256)
    client.register_system_shared_memory("out", out_key, 256)

    result = client.infer(
        "simple", [shm_input(module, "INPUT0", [1, 16], "INT32", "in", 64),
                   shm_input(module, "INPUT1", [1, 16], "INT32", "in", 64, offset=64)],
        outputs=[shm_output(module, "OUTPUT0", "out", 64),
                 shm_output(module, "OUTPUT1", "out", 64, offset=128)])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs, np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(outputs, np.int32, [1, 16], offset=128), A - B)
    response = result.get_response()
    if module is grpcclient:  # described, no data: an empty raw entry each (as Triton)
        assert [(o.name, list(o.shape), dict(o.parameters)) for o in response.outputs] == [
            ("OUTPUT0", [1, 16], {}), ("OUTPUT1", [1, 16], {})]
        assert list(response.raw_output_contents) == [b"", b""]
    else:
        assert response["outputs"] == [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]}]


def test_regions_mixed_with_the_wire(triton, regions):
    module, client = triton
    handle, key = regions("io", 4096)
    shm.set_shared_memory_region(handle, [B], offset=1000)
    client.register_system_shared_memory("io", key, 4096)
    # INPUT0 on the wire, INPUT1 in the region; OUTPUT1 into the region, OUTPUT0 on the wire.
    result = client.infer(
        "simple", [wire_input(module, "INPUT0", A),
                   shm_input(module, "INPUT1", [1, 16], "INT32", "io", 64, offset=1000)],
        outputs=[module.InferRequestedOutput("OUTPUT0"),
                 shm_output(module, "OUTPUT1", "io", 64, offset=2048)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=2048), A - B)
    # Reversed: INPUT0 in the region (the raw contents skip it), INPUT1 on the wire.
    shm.set_shared_memory_region(handle, [A], offset=0)
    result = client.infer(
        "simple", [shm_input(module, "INPUT0", [1, 16], "INT32", "io", 64),
                   wire_input(module, "INPUT1", B)],
        outputs=[shm_output(module, "OUTPUT0", "io", 64, offset=3000),
                 module.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=3000), A + B)


def test_bytes_in_regions(triton, regions):
    module, client = triton
    words = np.array([[b"shared", b"memory", b""]], dtype=np.object_)
    serialized = serialize_byte_tensor(words)
    size = serialized_byte_size(serialized)
    handle, key = regions("words", 4096)
    shm.set_shared_memory_region(handle, [serialized])
    client.register_system_shared_memory("words", key, 4096)
    client.infer("words", [shm_input(module, "WORDS", [1, 3], "BYTES", "words", size)],
                 outputs=[shm_output(module, "UPPER", "words", 1024, offset=2048)])
    upper = shm.get_contents_as_numpy(handle, np.object_, [1, 3], offset=2048)
    assert upper.tolist() == [[b"SHARED", b"MEMORY", b""]]


# ----------------------------------------------------------------------------- refusals

def test_refusals(triton, regions):
    module, client = triton
    handle, key = regions("small", 128)
    shm.set_shared_memory_region(handle, [A, B])
    client.register_system_shared_memory("small", key, 128)
    both = lambda region="small", size=64, offset=64: [  # noqa: E731
        shm_input(module, "INPUT0", [1, 16], "INT32", "small", 64),
        shm_input(module, "INPUT1", [1, 16], "INT32", region, size, offset)]
    invalid = code(module, "INVALID_ARGUMENT", 400)

    assert refusal(lambda: client.infer("simple", both(region="nope"))) == (
        code(module, "NOT_FOUND", 404), "Unable to find shared memory region: 'nope'")
    assert refusal(lambda: client.infer("simple", both(size=128))) == (
        invalid, "Invalid offset + byte size for shared memory region: 'small'")
    assert refusal(lambda: client.infer("simple", both(offset=128))) == (
        invalid, "Invalid offset for shared memory region: 'small'")
    status, message = refusal(lambda: client.infer("simple", both(size=32)))
    assert status == invalid and "INPUT1" in message and "byte size" in message
    # An output region too small for the result: INTERNAL, as Triton.
    assert refusal(lambda: client.infer(
        "simple", both(), outputs=[shm_output(module, "OUTPUT0", "small", 32)])) == (
        code(module, "INTERNAL", 500),
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should "
        "be at least 64 bytes to hold the results")
    classified = shm_output(module, "OUTPUT0", "small", 64)  # tritonclient refuses to ask
    if module is grpcclient:
        classified._output.parameters["classification"].int64_param = 2
    else:
        classified._parameters["classification"] = 2
    status, message = refusal(lambda: client.infer("simple", both(), outputs=[classified]))
    assert status == invalid
    assert message.lower() == "output can't set both 'shared_memory_region' and 'classification'"

    client.unregister_system_shared_memory("small")
    assert refusal(lambda: client.infer("simple", both())) == (
        code(module, "NOT_FOUND", 404), "Unable to find shared memory region: 'small'")
    assert_serves(module, client)


def test_grpc_parameter_refusals(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        no_size = wire_input(grpcclient, "INPUT0", A)
        no_size._input.parameters["shared_memory_region"].string_param = "r"
        no_size._raw_content = None
        status, message = refusal(lambda: client.infer(
            "simple", [no_size, wire_input(grpcclient, "INPUT1", B)]))
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert message == ("'shared_memory_byte_size' must be specified along with "
                           "'shared_memory_region' parameter for tensor 'INPUT0'")
        orphan = wire_input(grpcclient, "INPUT0", A)
        orphan._input.parameters["shared_memory_offset"].int64_param = 8
        assert refusal(lambda: client.infer(
            "simple", [orphan, wire_input(grpcclient, "INPUT1", B)]))[1] == (
            "'shared_memory_offset' can not be specified without 'shared_memory_region' "
            "parameter for tensor 'INPUT0'")
        assert_serves(grpcclient, client)
    finally:
        client.close()


def test_http_parameter_refusals(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        both = wire_input(httpclient, "INPUT0", A)
        both._parameters["shared_memory_region"] = "r"
        both._parameters["shared_memory_byte_size"] = 64
        status, message = refusal(lambda: client.infer(
            "simple", [both, wire_input(httpclient, "INPUT1", B)]))
        assert status == "400"
        assert message == ("Input must set only one of the following fields: 'data', "
                           "'binary_data_size' in 'parameters', 'shared_memory_region' in "
                           "'parameters'. But set 'binary_data_size' 'shared_memory_region'")
        binary = shm_output(httpclient, "OUTPUT0", "r", 64)
        binary._parameters["binary_data"] = True
        assert refusal(lambda: client.infer(
            "simple", [wire_input(httpclient, "INPUT0", A), wire_input(httpclient, "INPUT1", B)],
            outputs=[binary]))[1] == (
            "Output can't set both 'shared_memory_region' and 'binary_data'")
        assert_serves(httpclient, client)
    finally:
        client.close()


# -------------------------------------------------------------------------- lifetimes

def test_unregister_while_a_request_reads_the_region(server, triton, regions):
    """The request keeps its regions mapped: unregistering them mid-request neither faults
    the server nor loses the request."""
    module, client = triton
    handle, key = regions("slow", 64)
    shm.set_shared_memory_region(handle, [np.array([[0.5]], dtype=np.float32)])
    client.register_system_shared_memory("slow", key, 64)
    result: dict = {}

    def send() -> None:  # a client of its own: tritonclient.http's stay on their thread
        url = server.grpc_url if module is grpcclient else server.http_url
        try:
            with module.InferenceServerClient(url) as sender:
                result["value"] = sender.infer(
                    "slow", [shm_input(module, "SECONDS", [1, 1], "FP32", "slow", 4)],
                    outputs=[shm_output(module, "OUT", "slow", 4, offset=32)])
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    SLOW_STARTED.unlink(missing_ok=True)
    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 30
    while not SLOW_STARTED.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the model is sleeping on the request
    client.unregister_system_shared_memory("slow")
    thread.join(30)
    assert not thread.is_alive()
    SLOW_STARTED.unlink(missing_ok=True)
    assert "error" not in result, result.get("error")
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [1, 1], offset=32), [[1.0]])
    assert status_of(module, client) == {}
    assert_serves(module, client)


# --------------------------------------------------------------------- pyserve.client

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pyserve_client_regions(server, protocol):
    url = server.grpc_url if protocol == "grpc" else f"http://{server.http_url}"
    with Client(url) as client, client.shared_memory("io", 1 << 16) as region:
        a, b = region.ndarray((2, 16), np.int32), region.ndarray((2, 16), np.int32)
        a[:], b[:] = np.arange(32).reshape(2, 16), 5
        total = region.ndarray((2, 16), np.int32)
        result = client.infer("simple", {"INPUT0": a, "INPUT1": b},
                              outputs={"OUTPUT0": total, "OUTPUT1": None})
        np.testing.assert_array_equal(total, a + b)
        assert np.shares_memory(result["OUTPUT0"], total)  # the region, not a copy
        np.testing.assert_array_equal(result["OUTPUT1"], a - b)
        assert [s.name for s in client.system_shared_memory_status()] == ["io"]
    assert not any(f.startswith(region.key[1:]) for f in os.listdir("/dev/shm"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pyserve_async_client_regions(server, protocol):
    url = server.grpc_url if protocol == "grpc" else f"http://{server.http_url}"

    async def run() -> None:
        client = AsyncClient(url)
        try:
            async with client.shared_memory("aio", 4096) as region:
                a = region.ndarray((1, 16), np.int32)
                a[:] = 7
                out = region.ndarray((1, 16), np.int32)
                await client.infer("simple", {"INPUT0": a, "INPUT1": a},
                                   outputs={"OUTPUT0": out})
                np.testing.assert_array_equal(out, np.full((1, 16), 14))
            assert await client.system_shared_memory_status() == []
        finally:
            await client.close()
    asyncio.run(run())


# ------------------------------------------------------------------------- pyserve bench

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bench_with_system_shared_memory(server, tmp_path, protocol):
    url = server.grpc_url if protocol == "grpc" else f"http://{server.http_url}"
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "pyserve.cli", "bench", "-q", "-p", "1000",
                           "--max-trials", "4", "-m", "simple", "-u", url, "--concurrency", "2",
                           "--shared-memory", "system", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=OUTSIDE)
    assert done.returncode == 0, done.stderr
    [level] = json.loads(out.read_text())
    assert level["errors"] == 0 and level["requests"] > 0  # rates are bench tests' business
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert len(client.get_system_shared_memory_status().regions) == 0  # unregistered


def test_bench_requests_carry_references_only(server):
    from pyserve.bench._run import BenchOptions, prepare

    from pyserve.protocol import pb

    options = BenchOptions(model="simple", url=server.grpc_url, batch_size=4,
                           shared_memory="system")
    with ExitStack() as cleanup:
        _, [payload] = prepare(options, options.url, cleanup)
        with Client(server.grpc_url) as client:
            [region] = client.system_shared_memory_status()
        assert region.name.startswith("pyserve_bench_")
        request = pb.ModelInferRequest.FromString(payload.grpc)
        assert not request.raw_input_contents  # not a tensor byte on the wire
        for tensor in [*request.inputs, *request.outputs]:
            assert tensor.parameters["shared_memory_region"].string_param == region.name
        assert [t.parameters["shared_memory_byte_size"].int64_param for t in request.outputs] == [
            4 * 16 * 4, 4 * 16 * 4]


# -------------------------------------------------------------------------------- CUDA

def test_cuda_shared_memory(triton):
    """CUDA IPC regions (tritonclient's cuda_shared_memory): inputs copied device->host,
    outputs host->device. Skips without a GPU."""
    module, client = triton
    if gpu_count() == 0:
        pytest.skip("CUDA shared memory needs a GPU")
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
        handle = cudashm.create_shared_memory_region("gpu", 256, 0)
    except Exception as e:  # noqa: BLE001 - no GPU, no driver, or no cuda-python
        pytest.skip(f"CUDA shared memory is not available here: {e}")
    try:
        cudashm.set_shared_memory_region(handle, [A, B])
        client.register_cuda_shared_memory("gpu", cudashm.get_raw_handle(handle), 0, 256)
        client.infer("simple", [shm_input(module, "INPUT0", [1, 16], "INT32", "gpu", 64),
                                shm_input(module, "INPUT1", [1, 16], "INT32", "gpu", 64, 64)],
                     outputs=[shm_output(module, "OUTPUT0", "gpu", 64, offset=128)])
        np.testing.assert_array_equal(
            cudashm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=128), A + B)
        client.unregister_cuda_shared_memory("gpu")
    finally:
        cudashm.destroy_shared_memory_region(handle)
