"""The PyTorch backend with a real server and tritonclient: TorchScript models made here with
torch.jit.script/trace, Triton's I/O naming rules (`<name>__<index>`, forward() argument names,
a Dict[str, Tensor] input, config order), FP16/BF16/BYTES, dynamic batching, load and execute
errors, a GPU instance where torch has CUDA, and an AOTInductor package where it compiles."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import batch_counts, send_concurrently, settled_statistics, start_server, tensor  # noqa: E402

Tensor = torch.Tensor
BATCHING = "max_batch_size: 8\ndynamic_batching { }"
pytestmark = [  # torch's own notices: torch.jit.* deprecation, torch.export's pytree
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


# --- models -------------------------------------------------------------------------------

class AddSub(torch.nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        return x + y, x - y


class NamedArgs(torch.nn.Module):
    """Arguments in the opposite order of the config, and an asymmetric result, so that a
    mapping by config order would give a different answer."""

    def forward(self, scale: Tensor, value: Tensor) -> Tensor:
        return value - 2 * scale


class DictInput(torch.nn.Module):
    def forward(self, inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        return inputs["alpha"] * 2 + inputs["beta"], inputs["alpha"] - inputs["beta"]


class Half(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x) * 2 + x


class BFloat(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2 + 1


class Upper(torch.nn.Module):
    def forward(self, words: List[str]) -> List[str]:
        return [word.upper() for word in words]


class DeviceProbe(torch.nn.Module):
    """Doubles its input and reports the device it ran on (-1 for the CPU)."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        device = torch.full([x.size(0), 1], x.get_device(), dtype=torch.int64, device=x.device)
        return x * 2, device


def io(kind: str, name: str, data_type: str, dims: str) -> str:
    return f'{kind} {{ name: "{name}" data_type: {data_type} dims: [ {dims} ] }}\n'


def write_model(repository: Path, name: str, module, config: str,
                platform: str = "pytorch_libtorch", filename: str = "model.pt") -> None:
    (repository / name / "1").mkdir(parents=True)
    if isinstance(module, (str, Path)):
        (repository / name / "1" / filename).write_bytes(Path(module).read_bytes())
    else:
        module.save(str(repository / name / "1" / filename))
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "{platform}"\n{config}')


ADD_SUB_CONFIG = (
    BATCHING + "\n"
    # Listed out of index order: the `__<index>` suffix, not the position, decides.
    + io("input", "INPUT__1", "TYPE_FP32", "4") + io("input", "INPUT__0", "TYPE_FP32", "4")
    + io("output", "OUTPUT__1", "TYPE_FP32", "4") + io("output", "OUTPUT__0", "TYPE_FP32", "4")
    + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")


def device_probe_config(kind: str) -> str:
    gpus = " gpus: [ 0 ]" if kind == "KIND_GPU" else ""
    return (BATCHING + "\n" + io("input", "INPUT__0", "TYPE_FP32", "3")
            + io("output", "OUTPUT__0", "TYPE_FP32", "3")
            + io("output", "DEVICE__1", "TYPE_INT64", "1")
            + f"instance_group [ {{ count: 1 kind: {kind}{gpus} }} ]\n")


def build_repository(repository: Path) -> None:
    write_model(repository, "add_sub", torch.jit.script(AddSub()), ADD_SUB_CONFIG)
    write_model(repository, "named_args", torch.jit.script(NamedArgs()),
                BATCHING + "\n" + io("input", "value", "TYPE_FP32", "3")
                + io("input", "scale", "TYPE_FP32", "3") + io("output", "result", "TYPE_FP32", "3"))
    write_model(repository, "dict_input", torch.jit.script(DictInput()),
                BATCHING + "\n" + io("input", "beta", "TYPE_INT32", "2")
                + io("input", "alpha", "TYPE_INT32", "2")
                + io("output", "combined", "TYPE_INT32", "2")
                + io("output", "difference", "TYPE_INT32", "2"))
    example = torch.zeros(2, 5, dtype=torch.float16)
    write_model(repository, "half", torch.jit.trace(Half(), example),
                BATCHING + "\n" + io("input", "INPUT__0", "TYPE_FP16", "5")
                + io("output", "OUTPUT__0", "TYPE_FP16", "5"))
    write_model(repository, "bfloat", torch.jit.script(BFloat()),
                BATCHING + "\n" + io("input", "INPUT__0", "TYPE_BF16", "3")
                + io("output", "OUTPUT__0", "TYPE_BF16", "3"))
    write_model(repository, "upper", torch.jit.script(Upper()),
                io("input", "WORDS", "TYPE_STRING", "-1") + io("output", "UPPER", "TYPE_STRING", "-1"))
    write_model(repository, "device_cpu", torch.jit.script(DeviceProbe()),
                device_probe_config("KIND_CPU"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("pytorch_repo")
    build_repository(repository)
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "pytorch.log")
    yield process
    process.stop()


def run_torch(module: torch.nn.Module, *arrays: np.ndarray):
    with torch.inference_mode():
        result = module(*[torch.from_numpy(np.array(a)) for a in arrays])
    results = result if isinstance(result, tuple) else (result,)
    return [r.numpy() for r in results]


# --- naming rules and data types -----------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
def test_named_index_inputs_and_outputs(client, batch):
    module, c = client
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 4)).astype(np.float32)
    y = rng.standard_normal((batch, 4)).astype(np.float32)
    result = c.infer("add_sub", [tensor(module, "INPUT__1", y, "FP32"),
                                 tensor(module, "INPUT__0", x, "FP32")])
    expected_sum, expected_diff = run_torch(AddSub(), x, y)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), expected_sum)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), expected_diff)


def test_forward_argument_names(client):
    module, c = client
    value = np.array([[10, 20, 30], [1, 2, 3]], dtype=np.float32)
    scale = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    result = c.infer("named_args", [tensor(module, "value", value, "FP32"),
                                    tensor(module, "scale", scale, "FP32")])
    (expected,) = run_torch(NamedArgs(), scale, value)
    np.testing.assert_array_equal(result.as_numpy("result"), expected)


def test_dict_input_keys(client):
    module, c = client
    alpha = np.array([[5, 7]], dtype=np.int32)
    beta = np.array([[1, 2]], dtype=np.int32)
    result = c.infer("dict_input", [tensor(module, "alpha", alpha, "INT32"),
                                    tensor(module, "beta", beta, "INT32")])
    with torch.inference_mode():
        combined, difference = DictInput()({"alpha": torch.from_numpy(alpha),
                                            "beta": torch.from_numpy(beta)})
    np.testing.assert_array_equal(result.as_numpy("combined"), combined.numpy())
    np.testing.assert_array_equal(result.as_numpy("difference"), difference.numpy())
    assert result.as_numpy("combined").dtype == np.int32


def test_fp16_traced_model(client):
    module, c = client
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    result = c.infer("half", [tensor(module, "INPUT__0", x, "FP16")])
    (expected,) = run_torch(Half(), x)
    got = result.as_numpy("OUTPUT__0")
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_bf16_travels_as_raw_bits(client):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    module, c = client
    x = np.array([[1.5, -2.25, 3.0], [0.5, 8.0, -1.0]], dtype=ml_dtypes.bfloat16)
    result = c.infer("bfloat", [tensor(module, "INPUT__0", x, "BF16")])
    expected = BFloat()(torch.from_numpy(x.view(np.int16)).view(torch.bfloat16))
    got = np.asarray(result.as_numpy("OUTPUT__0"))
    np.testing.assert_array_equal(got.view(np.uint16),
                                  expected.view(torch.int16).numpy().view(np.uint16))


def test_bytes_as_list_of_str(client):
    module, c = client
    words = np.array([b"triton", b"torch", b"serve"], dtype=np.object_)
    result = c.infer("upper", [tensor(module, "WORDS", words, "BYTES")])
    assert list(result.as_numpy("UPPER")) == [b"TRITON", b"TORCH", b"SERVE"]


def test_cpu_instance_runs_on_cpu(client):
    module, c = client
    x = np.ones((2, 3), dtype=np.float32)
    result = c.infer("device_cpu", [tensor(module, "INPUT__0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("DEVICE__1"), [[-1], [-1]])


def test_model_metadata_reports_platform(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        metadata = c.get_model_metadata("add_sub")
        assert metadata.platform == "pytorch_libtorch"
        config = c.get_model_config("add_sub").config
        assert config.backend == "pytorch"


# --- dynamic batching -----------------------------------------------------------------------

def test_dynamic_batcher_batches_and_splits(tmp_path):
    """The batcher is held until three requests are queued, so they run as one batch of 4;
    each request still gets the result of its own rows."""
    repository = tmp_path / "repo"
    write_model(repository, "add_sub", torch.jit.script(AddSub()), ADD_SUB_CONFIG)
    server = start_server([repository], tmp_path / "batching.log",
                          env={"TRITONSERVER_DELAY_SCHEDULER": "3"})
    try:
        sent = []
        for index, rows in enumerate((1, 2, 1)):
            x = np.full((rows, 4), 10.0 * (index + 1), dtype=np.float32) + np.arange(
                4 * rows, dtype=np.float32).reshape(rows, 4)
            sent.append((x, np.full((rows, 4), float(index), dtype=np.float32)))
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            results = send_concurrently(c, "add_sub", [
                [tensor(grpcclient, "INPUT__0", x, "FP32"), tensor(grpcclient, "INPUT__1", y, "FP32")]
                for x, y in sent])
            stats = settled_statistics(c, "add_sub", settled=3)
        for (x, y), (result, error) in zip(sent, results):
            assert error is None, error
            expected_sum, expected_diff = run_torch(AddSub(), x, y)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), expected_sum)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), expected_diff)
        assert stats.inference_stats.success.count == 3
        assert batch_counts(stats) == {4: 1}
    finally:
        server.stop()


# --- errors ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("pytorch_errors")
    two_in = io("input", "INPUT__0", "TYPE_FP32", "4") + io("input", "INPUT__1", "TYPE_FP32", "4")
    write_model(repository, "wrong_count", torch.jit.script(AddSub()),
                BATCHING + "\n" + io("input", "INPUT__0", "TYPE_FP32", "4")
                + io("output", "OUTPUT__0", "TYPE_FP32", "4"))
    write_model(repository, "wrong_type", torch.jit.script(AddSub()),
                BATCHING + "\n" + two_in + io("output", "OUTPUT__0", "TYPE_FP64", "4"))
    write_model(repository, "missing_output", torch.jit.script(AddSub()),
                BATCHING + "\n" + two_in + io("output", "OUTPUT__5", "TYPE_FP32", "4"))
    (repository / "not_torchscript" / "1").mkdir(parents=True)
    (repository / "not_torchscript" / "1" / "model.pt").write_bytes(b"not a model")
    (repository / "not_torchscript" / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch"\n' + BATCHING + "\n" + two_in
        + io("output", "OUTPUT__0", "TYPE_FP32", "4"))
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "errors.log",
                           "--model-control-mode", "explicit")
    yield process
    process.stop()


def load_error(server, model: str) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        with pytest.raises(InferenceServerException) as error:
            c.load_model(model)
        assert not c.is_model_ready(model)
    return str(error.value)


def infer_error(server, model: str) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.load_model(model)
        x = np.ones((1, 4), dtype=np.float32)
        with pytest.raises(InferenceServerException) as error:
            c.infer(model, [tensor(grpcclient, "INPUT__0", x, "FP32"),
                            tensor(grpcclient, "INPUT__1", x, "FP32")])
    return str(error.value)


def test_input_count_mismatch_fails_the_load(explicit_server):
    assert ("unable to load model 'wrong_count', configuration expects 1 inputs, model "
            "provides 2") in load_error(explicit_server, "wrong_count")


def test_file_that_is_not_torchscript_fails_the_load(explicit_server):
    assert "failed to load model 'not_torchscript'" in load_error(explicit_server, "not_torchscript")


def test_output_type_mismatch_fails_the_request(explicit_server):
    assert ("configuration expects datatype TYPE_FP64 for output 'OUTPUT__0', model provides "
            "TYPE_FP32") in infer_error(explicit_server, "wrong_type")


def test_output_index_out_of_range_fails_the_request(explicit_server):
    message = infer_error(explicit_server, "missing_output")
    assert ("The output OUTPUT__5 in the model configuration refers to an output index which "
            "doesn't exist. This model has 2 outputs") in message


# --- GPU ------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA device here")
def test_gpu_instance_runs_on_its_gpu(tmp_path):
    repository = tmp_path / "repo"
    write_model(repository, "device_gpu", torch.jit.script(DeviceProbe()),
                device_probe_config("KIND_GPU"))
    server = start_server([repository], tmp_path / "gpu.log")
    try:
        for module, url in ((grpcclient, server.grpc_url), (httpclient, server.http_url)):
            with module.InferenceServerClient(url) as c:
                x = np.arange(6, dtype=np.float32).reshape(2, 3)
                result = c.infer("device_gpu", [tensor(module, "INPUT__0", x, "FP32")])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x * 2)
                np.testing.assert_array_equal(result.as_numpy("DEVICE__1"), [[0], [0]])
    finally:
        server.stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA device here")
def test_gpu_batches_run_on_the_cores_device_buffers(tmp_path):
    """Concurrent requests batched on a GPU instance: the module computes on the inputs the
    core copied to the device (on its stream), FP32 and BF16, with per-request results."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    repository = tmp_path / "repo"
    gpu = "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n"
    slow_batching = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n"
    write_model(repository, "add_sub_gpu", torch.jit.script(AddSub()),
                ADD_SUB_CONFIG.replace("KIND_CPU", "KIND_GPU gpus: [ 0 ]"))
    write_model(repository, "bfloat_gpu", torch.jit.script(BFloat()),
                slow_batching + io("input", "INPUT__0", "TYPE_BF16", "3")
                + io("output", "OUTPUT__0", "TYPE_BF16", "3") + gpu)
    server = start_server([repository], tmp_path / "gpu.log")
    rng = np.random.default_rng(7)
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            pairs = [(rng.standard_normal((1, 4)).astype(np.float32),
                      rng.standard_normal((1, 4)).astype(np.float32)) for _ in range(8)]
            answers = send_concurrently(c, "add_sub_gpu", [
                [tensor(grpcclient, "INPUT__0", x, "FP32"), tensor(grpcclient, "INPUT__1", y, "FP32")]
                for x, y in pairs])
            for (x, y), (result, error) in zip(pairs, answers):
                assert error is None
                expected_sum, expected_diff = run_torch(AddSub(), x, y)
                np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected_sum, rtol=1e-6)
                np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), expected_diff, rtol=1e-6)

            rows = [rng.standard_normal((1, 3)).astype(ml_dtypes.bfloat16) for _ in range(6)]
            answers = send_concurrently(c, "bfloat_gpu", [
                [tensor(grpcclient, "INPUT__0", row, "BF16")] for row in rows])
            for row, (result, error) in zip(rows, answers):
                assert error is None
                expected = BFloat()(torch.from_numpy(row.view(np.int16)).view(torch.bfloat16))
                got = np.asarray(result.as_numpy("OUTPUT__0")).view(np.uint16)
                np.testing.assert_array_equal(got, expected.view(torch.int16).numpy().view(np.uint16))
            stats = settled_statistics(c, "bfloat_gpu", len(rows))
            assert max(batch_counts(stats)) > 1  # the rows were batched on the device
    finally:
        server.stop()


# --- AOTInductor ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aoti_package(tmp_path_factory) -> Path:
    try:
        from torch._inductor import aoti_compile_and_package
    except ImportError as e:
        pytest.skip(f"this torch has no AOTInductor packaging: {e}")
    # Inductor compiles the package with the C++ compiler it finds; where there is one, a
    # failure to compile is a failure, not a skip.
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++") if c):
        pytest.skip("AOTInductor needs a C++ compiler (g++ or clang++) and none is installed")
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    example = (torch.randn(2, 4), torch.randn(2, 4))
    batch = torch.export.Dim("batch", min=1, max=8)
    exported = torch.export.export(AddSub(), example, dynamic_shapes=({0: batch}, {0: batch}))
    aoti_compile_and_package(exported, package_path=str(path))
    return path


def test_aoti_package(tmp_path, aoti_package):
    repository = tmp_path / "repo"
    write_model(repository, "add_sub_aoti", aoti_package, ADD_SUB_CONFIG,
                platform="torch_aoti", filename="model.pt2")
    server = start_server([repository], tmp_path / "aoti.log")
    try:
        for module, url in ((grpcclient, server.grpc_url), (httpclient, server.http_url)):
            with module.InferenceServerClient(url) as c:
                x = np.arange(12, dtype=np.float32).reshape(3, 4)
                y = np.full((3, 4), 0.5, dtype=np.float32)
                result = c.infer("add_sub_aoti", [tensor(module, "INPUT__0", x, "FP32"),
                                                  tensor(module, "INPUT__1", y, "FP32")])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x + y)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), x - y)
    finally:
        server.stop()
