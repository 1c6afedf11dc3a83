"""Triton's checks of `ensemble_scheduling`, with its texts: the data flow when the config is
read, the composing models' configs once they are loaded."""

from __future__ import annotations

import pytest

from pyserve.config import ConfigError, parse_config
from pyserve.config.ensemble import core_steps, validate_composition, validate_data_flow
from pyserve.config.model_config import validate_model_config, normalize_model_config

IO = ('input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
      'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')


def ensemble(steps: str, io: str = IO, max_batch_size: int = 8):
    return parse_config(f'name: "e"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
                        f'{io}ensemble_scheduling {{ step [ {steps} ] }}')


def step(model: str, inputs: dict, outputs: dict, version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


CHAIN = step("m1", {"x": "A"}, {"y": "mid"}) + ", " + step("m2", {"x": "mid"}, {"y": "OUT"})


def model(name: str, input_type: str = "TYPE_FP32", dims: str = "4", max_batch_size: int = 8,
          inputs: str = "x"):
    ios = "".join(f'input {{ name: "{i}" data_type: {input_type} dims: [ {dims} ] }}\n'
                  for i in inputs.split(","))
    return parse_config(f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
                        f'{ios}output {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }}\n')


def test_a_valid_chain_passes_and_becomes_core_steps():
    config = ensemble(CHAIN)
    normalize_model_config(config)
    validate_model_config(config)
    validate_composition(config, {"m1": model("m1"), "m2": model("m2")})
    config.ensemble_scheduling.step[1].model_namespace = "/repo"  # resolved by the shell
    assert core_steps(config) == [("m1", -1, {"x": "A"}, {"y": "mid"}, ""),
                                  ("m2", -1, {"x": "mid"}, {"y": "OUT"}, "/repo")]


@pytest.mark.parametrize("steps, io, text", [
    (step("m1", {"x": "A"}, {"y": "mid"}), IO,
     "ensemble output 'OUT' for ensemble e' is not used"),
    (step("m1", {"x": "A"}, {"y": "OUT"}) + ", " + step("m2", {"x": "A"}, {"y": "OUT"}), IO,
     "ensemble tensor 'OUT' can appear in an output map only once for ensemble 'e' step 1"),
    (step("m1", {"x": "A"}, {"y": "OUT"}) + ", " + step("m2", {"x": "A"}, {"y": "spare"}), IO,
     "ensemble tensor 'spare' is unused in ensemble 'e'"),
    (step("m1", {"x": "B"}, {"y": "OUT"}), IO,
     "ensemble input 'A' for ensemble e' is not used"),
    (step("m1", {"x": "A", "z": "loop"}, {"y": "OUT"}) + ", "
     + step("m2", {"x": "OUT"}, {"y": "loop"}), IO,
     "output 'OUT' for ensemble 'e' is not written"),  # a cycle: Triton names no tensor
    (step("m1", {"x": "A", "z": "ghost"}, {"y": "OUT"}), IO,
     "output 'OUT' for ensemble 'e' is not written: at least one of its depending tensors, "
     "'ghost', is not connected"),
    ('{ model_name: "m1" input_map { key: "x" value: "A" } }', IO,
     "must specify 'output_map' in step 0 of ensemble 'e'"),
])
def test_data_flow_errors_have_tritons_text(steps, io, text):
    with pytest.raises(ConfigError) as failed:
        validate_data_flow(ensemble(steps, io))
    assert failed.value.message == text


@pytest.mark.parametrize("composing, text", [
    ({"m1": model("m1", inputs="q"), "m2": model("m2")},
     "in ensemble e, ensemble tensor A is mapping to non-existing input x in model m1"),
    ({"m1": model("m1", inputs="x,extra"), "m2": model("m2")},
     "in ensemble e, input extra in model m1 is not mapped to any ensemble tensors"),
    ({"m1": model("m1", input_type="TYPE_INT32"), "m2": model("m2")},
     "in ensemble e, ensemble tensor A: inconsistent data type: TYPE_FP32 is inferred from "
     "model e while TYPE_INT32 is inferred from model m1"),
    ({"m1": model("m1", dims="5"), "m2": model("m2")},
     "in ensemble e, ensemble tensor A: inconsistent shape: [-1,4] is inferred from model e "
     "while [-1,5] is inferred from model m1"),
    ({"m1": model("m1", max_batch_size=2), "m2": model("m2")},
     "ensemble e allows maximum batch size 8, but it contains model m1 which only allows "
     "maximum batch size to be 2"),
])
def test_composition_errors_have_tritons_text(composing, text):
    with pytest.raises(ConfigError) as failed:
        validate_composition(ensemble(CHAIN), composing)
    assert failed.value.message == text


def test_a_non_batching_step_in_a_batching_ensemble_matches_by_full_shape():
    """Triton compares [-1, 4] (the ensemble's, batch included) with a non-batching model's
    dims [-1, 4]."""
    validate_composition(ensemble(CHAIN), {"m1": model("m1", dims="-1, 4", max_batch_size=0),
                                           "m2": model("m2")})
