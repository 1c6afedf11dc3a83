"""The TensorFlow backend with a real server and tritonclient: SavedModels made here with
tf.Module + tf.function(input_signature=...) + tf.saved_model.save, served by signature key;
FP32/FP16/BF16/INT/UINT/BOOL/BYTES, TF_SIGNATURE_DEF, auto-complete from the signature (also
through the server, with no config.pbtxt), dynamic batching, and load errors.

Two servers in all (TensorFlow's import is slow): one in explicit mode for everything but
batching, and one with a held batcher (TRITONSERVER_DELAY_SCHEDULER)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import batch_counts, send_concurrently, settled_statistics, start_server, tensor  # noqa: E402
from pyserve.config import ConfigOptions, model_config, parse_config  # noqa: E402

BATCHING = "max_batch_size: 8\ndynamic_batching { }"
ONE_CPU = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"


# --- models -------------------------------------------------------------------------------

class AddSub(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None, 4], tf.float32)])
    def serve(self, INPUT0, INPUT1):
        return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}


class Words(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, TEXT):
        return {"UPPER": tf.strings.upper(TEXT), "SAME": tf.identity(TEXT)}


class Types(tf.Module):
    """One input and one output per data type; each output depends on its input only."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float16),
                                  tf.TensorSpec([None, 3], tf.bfloat16),
                                  tf.TensorSpec([None, 3], tf.int8),
                                  tf.TensorSpec([None, 3], tf.uint16),
                                  tf.TensorSpec([None, 3], tf.int64),
                                  tf.TensorSpec([None, 3], tf.bool)])
    def serve(self, half, bfloat, small, unsigned, wide, flag):
        return {"half_out": half * 2 + 1, "bfloat_out": bfloat * 2 + 1,
                "small_out": small * 2, "unsigned_out": unsigned + 7,
                "wide_out": wide * 1000, "flag_out": tf.logical_not(flag)}


class TwoSignatures(tf.Module):
    """`serving_default` doubles, `triple` triples: TF_SIGNATURE_DEF picks."""

    def __init__(self):
        super().__init__()
        self.scale = tf.Variable(3.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def double(self, x):
        return {"y": x * 2}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def triple(self, x):
        return {"y": x * self.scale}


class AutoModel(tf.Module):
    """No config.pbtxt: everything comes from the signature (keys differ from arg names)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32, name="values"),
                                  tf.TensorSpec([None, 2, 2], tf.float32, name="matrix")])
    def serve(self, a, b):
        return {"total": tf.reduce_sum(a, axis=1, keepdims=True),
                "scaled": b * 0.5}


class NoBatch(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([3], tf.float64)])
    def serve(self, x):
        return {"y": x + 1}


def save(module: tf.Module, directory: Path, signatures=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(directory),
                        signatures=signatures or {"serving_default": module.serve})
    return directory


def io(kind: str, name: str, data_type: str, dims: str) -> str:
    return f'{kind} {{ name: "{name}" data_type: {data_type} dims: [ {dims} ] }}\n'


def write_model(repository: Path, name: str, module: tf.Module, config: str | None,
                signatures=None) -> Path:
    save(module, repository / name / "1" / "model.savedmodel", signatures)
    if config is not None:
        (repository / name / "config.pbtxt").write_text(
            f'platform: "tensorflow_savedmodel"\n{config}')
    return repository / name


ADD_SUB_CONFIG = (BATCHING + "\n" + io("input", "INPUT0", "TYPE_FP32", "4")
                  + io("input", "INPUT1", "TYPE_FP32", "4")
                  + io("output", "OUTPUT0", "TYPE_FP32", "4")
                  + io("output", "OUTPUT1", "TYPE_FP32", "4") + ONE_CPU)

TYPES = [("half", "TYPE_FP16"), ("bfloat", "TYPE_BF16"), ("small", "TYPE_INT8"),
         ("unsigned", "TYPE_UINT16"), ("wide", "TYPE_INT64"), ("flag", "TYPE_BOOL")]


def build_repository(repository: Path) -> None:
    write_model(repository, "add_sub", AddSub(), ADD_SUB_CONFIG)
    write_model(repository, "words", Words(),
                io("input", "TEXT", "TYPE_STRING", "-1") + io("output", "UPPER", "TYPE_STRING", "-1")
                + io("output", "SAME", "TYPE_STRING", "-1") + ONE_CPU)
    write_model(repository, "types", Types(),
                BATCHING + "\n" + "".join(io("input", n, t, "3") for n, t in TYPES)
                + "".join(io("output", f"{n}_out", t, "3") for n, t in TYPES) + ONE_CPU)
    two = TwoSignatures()
    write_model(repository, "triple", two,
                BATCHING + "\n" + io("input", "x", "TYPE_FP32", "2")
                + io("output", "y", "TYPE_FP32", "2") + ONE_CPU
                + 'parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "triple" } }\n'
                + 'parameters { key: "TF_NUM_INTER_THREADS" value: { string_value: "0" } }\n',
                signatures={"serving_default": two.double, "triple": two.triple})
    write_model(repository, "auto", AutoModel(), None)
    # Load errors
    write_model(repository, "wrong_type", AddSub(),
                ADD_SUB_CONFIG.replace('"OUTPUT1" data_type: TYPE_FP32', '"OUTPUT1" data_type: TYPE_FP64'))
    write_model(repository, "wrong_name", AddSub(),
                ADD_SUB_CONFIG.replace('"INPUT1"', '"INPUT9"'))
    write_model(repository, "wrong_dims", AddSub(),
                ADD_SUB_CONFIG.replace('"OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ]',
                                       '"OUTPUT0" data_type: TYPE_FP32 dims: [ 5 ]'))
    write_model(repository, "wrong_signature", AddSub(),
                ADD_SUB_CONFIG
                + 'parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "nope" } }\n')


GOOD_MODELS = ["add_sub", "words", "types", "triple", "auto"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("tf_repo")
    build_repository(repository)
    loads = [f"--load-model={name}" for name in GOOD_MODELS]
    process = start_server([repository], tmp_path_factory.mktemp("logs") / "tensorflow.log",
                           "--model-control-mode", "explicit", *loads, timeout=180)
    yield process
    process.stop()


def run_tf(module: tf.Module, signature: str = "serve", **arrays) -> dict[str, np.ndarray]:
    result = getattr(module, signature)(**{k: tf.constant(v) for k, v in arrays.items()})
    return {k: v.numpy() for k, v in result.items()}


# --- inference ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
def test_add_sub_matches_tensorflow(client, batch):
    module, c = client
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 4)).astype(np.float32)
    y = rng.standard_normal((batch, 4)).astype(np.float32)
    result = c.infer("add_sub", [tensor(module, "INPUT0", x, "FP32"),
                                 tensor(module, "INPUT1", y, "FP32")])
    expected = run_tf(AddSub(), INPUT0=x, INPUT1=y)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])


def test_strings_travel_as_bytes(client):
    module, c = client
    words = np.array([b"triton", b"tensor flow", b"", "\u00e9t\u00e9".encode()], dtype=np.object_)
    result = c.infer("words", [tensor(module, "TEXT", words, "BYTES")])
    expected = run_tf(Words(), TEXT=words)
    assert list(result.as_numpy("UPPER")) == list(expected["UPPER"])
    assert list(result.as_numpy("UPPER"))[:2] == [b"TRITON", b"TENSOR FLOW"]
    assert list(result.as_numpy("SAME")) == list(words)


def test_data_types(client):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    module, c = client
    arrays = {
        "half": np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -8.5]], np.float16),
        "bfloat": np.array([[1.5, -2.25, 3.0], [0.5, 8.0, -1.0]], ml_dtypes.bfloat16),
        "small": np.array([[1, -2, 60], [-64, 0, 5]], np.int8),
        "unsigned": np.array([[0, 1, 65000], [7, 8, 9]], np.uint16),
        "wide": np.array([[1, -2, 3_000_000], [0, 5, -6]], np.int64),
        "flag": np.array([[True, False, True], [False, False, True]]),
    }
    wire = dict(zip((n for n, _ in TYPES), ["FP16", "BF16", "INT8", "UINT16", "INT64", "BOOL"]))
    result = c.infer("types", [tensor(module, name, arrays[name], wire[name]) for name in arrays])
    expected = run_tf(Types(), **arrays)
    for name in arrays:
        got = np.asarray(result.as_numpy(f"{name}_out"))
        want = expected[f"{name}_out"]
        if name == "bfloat":
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want)


def test_signature_def_parameter_picks_the_signature(client):
    module, c = client
    x = np.array([[1, 2], [3, 4]], np.float32)
    result = c.infer("triple", [tensor(module, "x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 3)


def test_metadata_and_config(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        metadata = c.get_model_metadata("add_sub")
        assert metadata.platform == "tensorflow_savedmodel"
        config = c.get_model_config("add_sub").config
        assert config.backend == "tensorflow"
        assert config.default_model_filename == "model.savedmodel"


# --- auto-complete --------------------------------------------------------------------------

def test_auto_complete_through_the_server(server):
    with httpclient.InferenceServerClient(server.http_url) as c:
        metadata = c.get_model_metadata("auto")
        assert metadata["platform"] == "tensorflow_savedmodel"
        assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
            "values": ("INT32", [-1, 3]), "matrix": ("FP32", [-1, 2, 2])}
        assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
            "total": ("INT32", [-1, 1]), "scaled": ("FP32", [-1, 2, 2])}
        config = c.get_model_config("auto")
        assert config["max_batch_size"] == 4
        assert config["dynamic_batching"]["preferred_batch_size"] == [4]
        values = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
        matrix = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
        result = c.infer("auto", [tensor(httpclient, "values", values, "INT32"),
                                  tensor(httpclient, "matrix", matrix, "FP32")])
        expected = run_tf(AutoModel(), a=values, b=matrix)
        np.testing.assert_array_equal(result.as_numpy("total"), expected["total"])
        np.testing.assert_array_equal(result.as_numpy("scaled"), expected["scaled"])


def test_auto_complete_config_gives_triton_form(tmp_path):
    """The whole config pipeline on a model with no config.pbtxt, CPU only."""
    model_dir = write_model(tmp_path, "auto", AutoModel(), None)
    config = model_config(model_dir, ConfigOptions())
    expected = parse_config(
        'name: "auto" platform: "tensorflow_savedmodel" backend: "tensorflow" '
        'max_batch_size: 4 '
        'input { name: "values" data_type: TYPE_INT32 dims: [ 3 ] } '
        'input { name: "matrix" data_type: TYPE_FP32 dims: [ 2, 2 ] } '
        'output { name: "total" data_type: TYPE_INT32 dims: [ 1 ] } '
        'output { name: "scaled" data_type: TYPE_FP32 dims: [ 2, 2 ] } '
        'dynamic_batching { preferred_batch_size: [ 4 ] } '
        'default_model_filename: "model.savedmodel" ')
    assert config.max_batch_size == expected.max_batch_size
    key = lambda ios: sorted((i.name, i.data_type, list(i.dims)) for i in ios)  # noqa: E731
    assert key(config.input) == key(expected.input)
    assert key(config.output) == key(expected.output)
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert (config.platform, config.backend, config.default_model_filename) == (
        "tensorflow_savedmodel", "tensorflow", "model.savedmodel")
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_CPU, 2)]

    # default-max-batch-size, a given max_batch_size, and an explicit scheduler.
    assert model_config(model_dir, ConfigOptions(default_max_batch_size=16)).max_batch_size == 16
    (model_dir / "config.pbtxt").write_text("max_batch_size: 1")
    one = model_config(model_dir, ConfigOptions())
    assert one.max_batch_size == 1 and not one.HasField("dynamic_batching")


def test_auto_complete_rules(tmp_path):
    from pyserve.backends.tensorflow import TensorFlowBackend

    version = tmp_path / "1"
    save(NoBatch(), version / "model.savedmodel")
    base = parse_config('name: "nobatch" platform: "tensorflow_savedmodel" '
                        'backend: "tensorflow"')
    config = TensorFlowBackend.auto_complete_config(base, version, ConfigOptions())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]

    base.max_batch_size = 2
    with pytest.raises(Exception, match="configuration specified max-batch 2 but model "
                                        "signature does not support batching"):
        TensorFlowBackend.auto_complete_config(base, version, ConfigOptions())

    # Listed outputs are completed; unlisted ones stay out. Dims that include the batch
    # dimension hint that the model does not batch.
    batching = tmp_path / "2"
    save(AutoModel(), batching / "model.savedmodel")
    listed = parse_config('name: "auto" platform: "tensorflow_savedmodel" '
                          'output { name: "scaled" }')
    config = TensorFlowBackend.auto_complete_config(listed, batching, ConfigOptions())
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("scaled", 11, [2, 2])]
    assert len(config.input) == 2 and config.max_batch_size == 4
    hinted = parse_config('name: "auto" input { name: "values" dims: [ -1, 3 ] }')
    config = TensorFlowBackend.auto_complete_config(hinted, batching, ConfigOptions())
    assert config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("values", 8, [-1, 3])]


# --- load errors ----------------------------------------------------------------------------

def load_error(server, model: str) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        with pytest.raises(InferenceServerException) as error:
            c.load_model(model)
        assert not c.is_model_ready(model)
    return str(error.value)


def test_output_type_mismatch_fails_the_load(server):
    assert ("unable to load model 'wrong_type', configuration expects datatype TYPE_FP64 for "
            "output 'OUTPUT1', model provides TYPE_FP32") in load_error(server, "wrong_type")


def test_unknown_input_name_fails_the_load(server):
    assert ("unexpected inference input 'INPUT9', allowed inputs are: INPUT0, INPUT1"
            in load_error(server, "wrong_name"))


def test_dims_mismatch_fails_the_load(server):
    assert ("tensor 'OUTPUT0': the model expects 2 dimensions (shape [-1,4]) but the model "
            "configuration specifies 2 dimensions" in load_error(server, "wrong_dims"))


def test_missing_signature_fails_the_load(server):
    assert "has no signature 'nope'" in load_error(server, "wrong_signature")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU")
def test_gpu_instance_without_a_gpu_is_a_clear_error(tmp_path):
    """Called directly: on a machine with no GPU the server refuses KIND_GPU before any
    backend runs, so only a GPU machine with tensorflow-cpu reaches this message."""
    from pyserve.backends import InstanceSpec, ModelContext, backend_class
    from pyserve.errors import ServerError

    model_dir = write_model(tmp_path, "add_sub", AddSub(), ADD_SUB_CONFIG)
    context = ModelContext("add_sub", 1, model_config(model_dir, ConfigOptions()), model_dir / "1")
    backend = backend_class("tensorflow")(context, InstanceSpec(0, "CPU"))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(backend.execute({"INPUT0": x, "INPUT1": x}, [2])["OUTPUT0"], x * 2)
    backend.close()
    with pytest.raises(ServerError, match="asks for a GPU instance but TensorFlow .* sees no GPU"):
        backend_class("tensorflow")(context, InstanceSpec(0, "GPU", 0))


# --- dynamic batching -----------------------------------------------------------------------

def test_dynamic_batcher_batches_and_splits(tmp_path):
    """The batcher is held until three requests are queued, so they run as one batch of 4;
    each request still gets the result of its own rows."""
    repository = tmp_path / "repo"
    write_model(repository, "add_sub", AddSub(), ADD_SUB_CONFIG)
    server = start_server([repository], tmp_path / "batching.log", timeout=180,
                          env={"TRITONSERVER_DELAY_SCHEDULER": "3"})
    try:
        sent = []
        for index, rows in enumerate((1, 2, 1)):
            x = np.full((rows, 4), 10.0 * (index + 1), dtype=np.float32) + np.arange(
                4 * rows, dtype=np.float32).reshape(rows, 4)
            sent.append((x, np.full((rows, 4), float(index), dtype=np.float32)))
        model = AddSub()
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            results = send_concurrently(c, "add_sub", [
                [tensor(grpcclient, "INPUT0", x, "FP32"), tensor(grpcclient, "INPUT1", y, "FP32")]
                for x, y in sent])
            stats = settled_statistics(c, "add_sub", settled=3)
        for (x, y), (result, error) in zip(sent, results):
            assert error is None, error
            expected = run_tf(model, INPUT0=x, INPUT1=y)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])
        assert stats.inference_stats.success.count == 3
        assert batch_counts(stats) == {4: 1}
    finally:
        server.stop()
