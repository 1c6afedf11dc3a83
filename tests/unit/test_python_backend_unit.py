"""The Python backend and pb_utils on their own: request splitting, results, helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import triton_python_backend_utils as pb_utils
from pyserve.backends import InstanceSpec, ModelContext, backend_class
from pyserve.config import normalize, parse_config
from pyserve.errors import ErrorCode, ServerError

# Records what it is handed; fails requests whose first value is negative; passes inputs through.
RECORDING_MODEL = '''
import triton_python_backend_utils as pb_utils

seen = []
finalized = []


class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        seen.append([r.get_input_tensor_by_name("X").as_numpy() for r in requests])
        responses = []
        for r in requests:
            x = r.get_input_tensor_by_name("X").as_numpy()
            if x.reshape(-1)[0] < 0:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("negative", pb_utils.TritonError.NOT_FOUND)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return responses

    def finalize(self):
        finalized.append(True)
'''


def _backend(tmp_path: Path, code: str, max_batch_size: int = 8):
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(code))
    config = normalize(parse_config(
        f'backend: "python" max_batch_size: {max_batch_size} '
        'input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }] '
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }]'), "m")
    return backend_class("python")(ModelContext("m", 1, config, version_dir), InstanceSpec(0, "CPU"))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def test_batch_is_split_into_views(tmp_path):
    backend = _backend(tmp_path, RECORDING_MODEL)
    batch = _read_only(np.arange(12, dtype=np.float32).reshape(6, 2))
    results = backend.execute({"X": batch}, [1, 2, 3])
    (views,) = type(backend._model).execute.__globals__["seen"]
    assert [v.shape[0] for v in views] == [1, 2, 3]
    assert all(np.shares_memory(v, batch) and not v.flags.writeable for v in views)
    for result, (start, end) in zip(results, [(0, 1), (1, 3), (3, 6)]):
        np.testing.assert_array_equal(result["Y"], batch[start:end])
    backend.close()



def test_single_request_is_handed_over_without_copies(tmp_path):
    backend = _backend(tmp_path, RECORDING_MODEL, max_batch_size=0)
    data = _read_only(np.ones((3, 2), np.float32))
    (result,) = backend.execute({"X": data}, [1])
    assert result["Y"] is data


def test_error_response_and_codes(tmp_path):
    backend = _backend(tmp_path, RECORDING_MODEL)
    batch = _read_only(np.array([[1, 1], [-1, 1]], np.float32))
    ok, failed = backend.execute({"X": batch}, [1, 1])
    assert isinstance(ok, dict)
    assert isinstance(failed, ServerError) and failed.message == "negative"
    assert failed.code == ErrorCode.NOT_FOUND


def test_finalize_and_initialize_args(tmp_path):
    backend = _backend(tmp_path, RECORDING_MODEL)
    model = backend._model
    assert model.args["model_instance_name"] == "m_0"
    assert model.args["model_version"] == "1" and model.args["model_name"] == "m"
    finalized = type(model).finalize.__globals__["finalized"]
    backend.close()
    assert finalized == [True]


def test_module_without_a_model_is_refused(tmp_path):
    with pytest.raises(ServerError, match="TritonPythonModel or exactly one function"):
        _backend(tmp_path, "x = 1\n")


def test_import_error_names_the_file(tmp_path):
    with pytest.raises(ServerError, match="error importing model.py: ZeroDivisionError"):
        _backend(tmp_path, "1 / 0\n")


def test_type_helpers():
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.dtype(np.object_)) == 13
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.triton_to_numpy_type(10) is np.float16
    assert pb_utils.Tensor("t", np.zeros(2, np.int64)).triton_dtype() == 9
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("t", np.array(["a"]))


def test_model_config_helper():
    config = pb_utils.ModelConfig('{"name": "m", "max_batch_size": 0, "input": [], "output": []}')
    config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [2]})
    config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [2]})  # same: no change
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32"):
        config.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": [2]})
    with pytest.raises(ValueError, match="contains property other than"):
        config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [2], "x": 1})
    config.set_max_batch_size(4)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": False})
    assert config.as_dict()["input"] == [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}]
    assert config.as_dict()["max_batch_size"] == 4 and config.as_dict()["dynamic_batching"] == {}


def test_request_surface():
    tensor = pb_utils.Tensor("A", np.ones(2, np.float32))
    request = pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=["B"])
    assert pb_utils.get_input_tensor_by_name(request, "A") is tensor
    assert request.correlation_id() == 0 and request.parameters() == "{}"
    with pytest.raises(NotImplementedError, match="decoupled"):
        request.get_response_sender()
    response = pb_utils.InferenceResponse(output_tensors=[tensor])
    assert pb_utils.get_output_tensor_by_name(response, "A") is tensor
    assert not response.has_error()
    error = pb_utils.TritonError("boom")
    assert error.code() == pb_utils.TritonError.INTERNAL and error.message() == "boom"


# --- DLPack and BF16 (Triton's contract: BF16 crosses through DLPack, never numpy) -----------

def test_read_only_input_goes_to_torch_without_a_copy():
    torch = pytest.importorskip("torch")
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    data.flags.writeable = False  # as request inputs are
    tensor = torch.utils.dlpack.from_dlpack(pb_utils.Tensor._wrap("X", data).to_dlpack())
    assert tensor.data_ptr() == data.ctypes.data
    np.testing.assert_array_equal(tensor.numpy(), data)


def test_bf16_tensor_refuses_numpy_and_round_trips_through_dlpack():
    torch = pytest.importorskip("torch")
    values = torch.tensor([[1.5, -2.25], [3.0, 1e-3]], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    bits.flags.writeable = False
    t = pb_utils.Tensor._wrap("X", bits, 14)
    with pytest.raises(pb_utils.TritonModelException, match="bf16 and cannot be converted"):
        t.as_numpy()
    seen = torch.utils.dlpack.from_dlpack(t.to_dlpack())
    assert seen.dtype == torch.bfloat16 and torch.equal(seen, values)
    back = pb_utils.Tensor.from_dlpack("Y", torch.utils.dlpack.to_dlpack(seen * 2))
    assert back.triton_dtype() == 14
    np.testing.assert_array_equal(back._array, (values * 2).view(torch.int16).numpy().view(np.uint16))


def test_tensor_from_ml_dtypes_bfloat16_and_raw_bits():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([0.5, -8.0], ml_dtypes.bfloat16)
    t = pb_utils.Tensor("Y", values)
    assert t.triton_dtype() == 14
    np.testing.assert_array_equal(t._array, values.view(np.uint16))
    assert pb_utils.Tensor("Y", values.view(np.int16), 14)._array.dtype == np.uint16
    with pytest.raises(pb_utils.TritonModelException, match="2-byte"):
        pb_utils.Tensor("Y", np.zeros(2, np.float32), 14)


def test_from_dlpack_of_a_bare_capsule_and_of_numpy():
    torch = pytest.importorskip("torch")
    capsule = torch.utils.dlpack.to_dlpack(torch.arange(4, dtype=torch.int32))
    t = pb_utils.Tensor.from_dlpack("Y", capsule)
    assert t.triton_dtype() == 8 and t.as_numpy().tolist() == [0, 1, 2, 3]
    assert pb_utils.Tensor.from_dlpack("Y", np.ones(3, np.float64)).triton_dtype() == 12
