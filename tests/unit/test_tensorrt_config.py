"""Triton's TensorRT configuration rules over an engine's description (EngineInfo): the
auto-complete, the checks at load and each instance's optimization profile. The description
is what pyserve reads from a real engine; here it is written out, so the rules are checked
on machines without TensorRT or a GPU (tests/integration/test_tensorrt_backend.py runs them
against real engines where it can)."""

from __future__ import annotations

import re

import pytest

from pyserve.backends.tensorrt_config import (EngineInfo, EngineTensor, auto_complete,
                                              check_config, check_profile, instance_profile,
                                              returned_outputs)
from pyserve.config import parse_config
from pyserve.errors import ServerError
from pyserve.protocol import pb

TYPES = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type


def add_sub_engine(*largest_batches: int) -> EngineInfo:
    """INPUT0/INPUT1 FP32 [-1, 4] -> OUTPUT0/OUTPUT1, one profile per largest batch."""
    profiles = tuple((n, 4) for n in largest_batches)
    return EngineInfo((
        EngineTensor("INPUT0", True, "TYPE_FP32", (-1, 4), profile_max=profiles),
        EngineTensor("INPUT1", True, "TYPE_FP32", (-1, 4), profile_max=profiles),
        EngineTensor("OUTPUT0", False, "TYPE_FP32", (-1, 4)),
        EngineTensor("OUTPUT1", False, "TYPE_FP32", (-1, 4)),
    ), num_profiles=len(profiles))


def config(text: str = "") -> pb.ModelConfig:
    return parse_config('name: "m"\nplatform: "tensorrt_plan"\n' + text)


def io(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, TYPES.values_by_number[t.data_type].name, list(t.dims)) for t in tensors]


def test_empty_config_is_completed_from_the_engine():
    out = auto_complete(config(), add_sub_engine(8))
    assert out.max_batch_size == 8 and out.HasField("dynamic_batching")
    assert io(out.input) == [("INPUT0", "TYPE_FP32", [4]), ("INPUT1", "TYPE_FP32", [4])]
    assert io(out.output) == [("OUTPUT0", "TYPE_FP32", [4]), ("OUTPUT1", "TYPE_FP32", [4])]


def test_max_batch_size_comes_from_the_profiles_the_instance_groups_use():
    engine = add_sub_engine(8, 2, 16)
    assert auto_complete(config(), engine).max_batch_size == 8  # profile 0 by default
    grouped = config('instance_group [ { kind: KIND_GPU profile: [ "1" ] },'
                     ' { kind: KIND_GPU profile: [ "2" ] } ]')
    assert auto_complete(grouped, engine).max_batch_size == 16
    with pytest.raises(ServerError, match="optimization profile '3' is not one of the engine's 3"):
        auto_complete(config('instance_group [ { kind: KIND_GPU profile: [ "3" ] } ]'), engine)


def test_max_batch_size_beyond_the_engine_is_refused():
    with pytest.raises(ServerError, match="configuration specified max-batch 16 but TensorRT "
                                          "engine only supports max-batch 8"):
        auto_complete(config("max_batch_size: 16"), add_sub_engine(8))
    kept = auto_complete(config("max_batch_size: 4"), add_sub_engine(8))
    assert kept.max_batch_size == 4 and kept.HasField("dynamic_batching")


def test_config_dims_hint_whether_the_model_batches():
    full = 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]'
    out = auto_complete(config(full), add_sub_engine(8))
    assert out.max_batch_size == 0 and not out.HasField("dynamic_batching")
    assert io(out.output) == [("OUTPUT0", "TYPE_FP32", [-1, 4]), ("OUTPUT1", "TYPE_FP32", [-1, 4])]
    mixed = ('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] },'
             ' { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    with pytest.raises(ServerError, match="contradicting each other in terms of whether "
                                          "batching is supported"):
        auto_complete(config(mixed), add_sub_engine(8))


def test_batching_hint_on_an_engine_without_a_batch_dimension_is_refused():
    static = EngineInfo((EngineTensor("X", True, "TYPE_FP16", (3, 4), profile_max=((3, 4),)),
                         EngineTensor("Y", False, "TYPE_FP16", (3, 4))))
    out = auto_complete(config(), static)
    assert out.max_batch_size == 0 and io(out.input) == [("X", "TYPE_FP16", [3, 4])]
    with pytest.raises(ServerError, match="hints for dynamic batching but the underlying "
                                          "engine doesn't support batching"):
        auto_complete(config('input [ { name: "X" data_type: TYPE_FP16 dims: [ 4 ] } ]'), static)


def test_listed_tensors_keep_what_they_set_and_get_the_rest():
    out = auto_complete(config('input [ { name: "INPUT1" } ]\n'
                               'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]'),
                        add_sub_engine(8))
    assert io(out.input) == [("INPUT1", "TYPE_FP32", [4])]
    assert io(out.output) == [("OUTPUT0", "TYPE_FP32", [-1])]
    with pytest.raises(ServerError, match="binding for 'NOPE' not found in the model."):
        auto_complete(config('output [ { name: "NOPE" } ]'), add_sub_engine(8))


def test_a_scalar_per_row_gets_dims_one_and_an_empty_reshape():
    engine = EngineInfo((EngineTensor("X", True, "TYPE_INT64", (-1,), profile_max=((32,),)),
                         EngineTensor("Y", False, "TYPE_BF16", (-1,))))
    out = auto_complete(config(), engine)
    assert out.max_batch_size == 32
    assert io(out.output) == [("Y", "TYPE_BF16", [1])] and out.output[0].HasField("reshape")


def test_load_checks_name_the_mismatch():
    engine = add_sub_engine(8)
    complete = auto_complete(config(), engine)
    check_config(complete, engine)  # consistent: no error
    cases = [
        (complete, 'input [ { name: "INPUT0" data_type: TYPE_FP16 dims: [ 4 ] } ]',
         "'INPUT0' is TYPE_FP16 in the configuration but TYPE_FP32 in the engine"),
        (complete, 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 5 ] } ]',
         "has dims [5] in the configuration but [4] in the engine"),
        (complete, 'input [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
         "configuration input 'OUTPUT0' is not an input of the engine"),
    ]
    for base, replacement, message in cases:
        broken = pb.ModelConfig()
        broken.CopyFrom(base)
        del broken.input[:]
        broken.MergeFrom(parse_config(replacement))
        broken.input.add().CopyFrom(base.input[1])
        with pytest.raises(ServerError, match=re.escape(message)):
            check_config(broken, engine)
    missing = pb.ModelConfig()
    missing.CopyFrom(complete)
    del missing.input[1]
    with pytest.raises(ServerError, match=r"the engine's inputs \['INPUT1'\] are missing"):
        check_config(missing, engine)
    static = EngineInfo((EngineTensor("X", True, "TYPE_FP32", (3, 4), profile_max=((3, 4),)),
                         EngineTensor("Y", False, "TYPE_FP32", (3, 4))))
    batched = config('max_batch_size: 2\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
                     'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    with pytest.raises(ServerError, match="has no dynamic batch dimension"):
        check_config(batched, static)


def test_each_instance_uses_the_first_profile_of_its_group():
    groups = config('instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] profile: [ "1", "0" ] },'
                    ' { count: 1 kind: KIND_GPU } ]')
    # The first group holds 2 instances on each of 2 GPUs: instances 0-3; then instance 4.
    assert [instance_profile(groups, i, 2) for i in range(5)] == [1, 1, 1, 1, 0]
    engine = add_sub_engine(8, 2)
    check_profile(config("max_batch_size: 2"), engine, 1)
    with pytest.raises(ServerError, match="max_batch_size 4 is larger than optimization profile 1 "
                                          r"allows \(2\)"):
        check_profile(config("max_batch_size: 4"), engine, 1)


def accumulator_engine(state_type: str = "TYPE_FP32") -> EngineInfo:
    """The engine tests/integration/test_tensorrt_backend.py builds: INPUT, START (a control)
    and INPUT_STATE [-1, 1] -> OUTPUT and OUTPUT_STATE [-1, 1]."""
    largest = ((4, 1),)
    return EngineInfo((
        EngineTensor("INPUT", True, "TYPE_FP32", (-1, 1), profile_max=largest),
        EngineTensor("START", True, "TYPE_FP32", (-1, 1), profile_max=largest),
        EngineTensor("INPUT_STATE", True, state_type, (-1, 1), profile_max=largest),
        EngineTensor("OUTPUT", False, "TYPE_FP32", (-1, 1)),
        EngineTensor("OUTPUT_STATE", False, state_type, (-1, 1)),
    ))


SEQUENCE = """max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
sequence_batching {
  control_input [ { name: "START"
                    control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ]
  %s
}
"""
STATE = ('state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" '
         'data_type: TYPE_FP32 dims: [ 1 ] } ]')


def test_control_and_state_tensors_are_engine_bindings_the_core_feeds():
    engine = accumulator_engine()
    sequence = config(SEQUENCE % STATE)
    check_config(sequence, engine)  # START and INPUT_STATE are fed by the sequence batcher
    # The state output comes back from every execution, though clients never asked for it.
    assert returned_outputs(sequence) == ["OUTPUT", "OUTPUT_STATE"]
    # An engine state input the config does not declare as a state is fed by no one.
    with pytest.raises(ServerError, match=r"the engine's inputs \['INPUT_STATE'\] are missing"):
        check_config(config(SEQUENCE % ""), engine)


def test_auto_complete_leaves_the_sequence_batchers_tensors_out_of_the_client_io():
    unlisted = "\n".join(line for line in (SEQUENCE % STATE).splitlines()
                          if not line.startswith(("input", "output")))
    out = auto_complete(config(unlisted), accumulator_engine())
    assert io(out.input) == [("INPUT", "TYPE_FP32", [1])]
    assert io(out.output) == [("OUTPUT", "TYPE_FP32", [1])]
    assert not out.HasField("dynamic_batching")  # the sequence batcher batches


@pytest.mark.parametrize("state,message", [
    ('state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 '
     'dims: [ 1 ] } ]',
     "state input 'INPUT_STATE' is TYPE_INT32 in the configuration but TYPE_FP32 in the engine"),
    ('state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_FP32 '
     'dims: [ 2 ] } ]',
     "state input 'INPUT_STATE' has dims [2] in the configuration but [1] in the engine"),
    ('state [ { input_name: "INPUT_STATE" output_name: "NEW_STATE" data_type: TYPE_FP32 '
     'dims: [ 1 ] } ]',
     "configuration state output 'NEW_STATE' is not an output of the engine (it has "
     "['OUTPUT', 'OUTPUT_STATE'])"),
    ('state [ { input_name: "INPUT_STATE" output_name: "INPUT" data_type: TYPE_FP32 '
     'dims: [ 1 ] } ]',
     "configuration state output 'INPUT' is not an output of the engine"),
])
def test_state_bindings_must_match_the_engine(state, message):
    with pytest.raises(ServerError, match=re.escape(message)):
        check_config(config(SEQUENCE % state), accumulator_engine())


def test_control_bindings_must_match_the_engine():
    int_start = config((SEQUENCE % STATE).replace("fp32_false_true", "int32_false_true"))
    with pytest.raises(ServerError, match=re.escape(
            "control input 'START' is TYPE_INT32 in the configuration but TYPE_FP32")):
        check_config(int_start, accumulator_engine())
