"""Ensembles (`platform: "ensemble"`): Triton's checks of `ensemble_scheduling` with its texts.

`validate_data_flow` is ValidateEnsembleSchedulingConfig's graph part (every tensor produced
once, every output written, nothing unused), made when the config is read;
`validate_composition` is ValidateEnsembleConfig, made once the composing models are loaded
(every step's tensors exist in its model, every input mapped once, types and shapes agree, a
step reads tensors of one decoupled lineage only); an ensemble with a decoupled step becomes
decoupled itself, as in Triton.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pyserve.config.model_config import ConfigError
from pyserve.protocol import pb

ENSEMBLE_PLATFORM = "ensemble"


def is_ensemble(config: pb.ModelConfig) -> bool:
    return config.HasField("ensemble_scheduling")


def composing_models(config: pb.ModelConfig) -> list[str]:
    """The models an ensemble's steps call, each once, in step order."""
    return list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


def core_steps(config: pb.ModelConfig) -> list[tuple[str, int, dict[str, str], dict[str, str],
                                                     str]]:
    """The steps as the core's EnsembleScheduler takes them (the namespace each step was
    resolved in with --model-namespacing, else empty)."""
    return [(step.model_name, step.model_version, dict(step.input_map), dict(step.output_map),
             step.model_namespace) for step in config.ensemble_scheduling.step]


@dataclass(eq=False)
class _Tensor:
    name: str
    is_output: bool = False
    ready: bool = False
    prev: list[_Tensor] = field(default_factory=list)
    next: list[_Tensor] = field(default_factory=list)


def _graph(config: pb.ModelConfig) -> dict[str, _Tensor]:
    """Triton's BuildEnsembleGraph: each step links its input tensors to its output tensors."""
    name = config.name
    tensors: dict[str, _Tensor] = {}
    for index, step in enumerate(config.ensemble_scheduling.step):
        for attribute in ("model_name", "input_map", "output_map"):
            if not getattr(step, attribute):
                raise ConfigError(
                    f"must specify '{attribute}' in step {index} of ensemble '{name}'")
        produced = []
        for tensor_name in step.output_map.values():
            tensor = tensors.get(tensor_name)
            if tensor is not None and tensor.is_output:
                raise ConfigError(f"ensemble tensor '{tensor_name}' can appear in an output map "
                                  f"only once for ensemble '{name}' step {index}")
            if tensor is None:
                tensor = tensors[tensor_name] = _Tensor(tensor_name)
            tensor.is_output = True
            produced.append(tensor)
        for tensor_name in step.input_map.values():  # map keys are unique: no double mapping
            tensor = tensors.setdefault(tensor_name, _Tensor(tensor_name))
            for output in produced:
                output.prev.append(tensor)
                tensor.next.append(output)
    return tensors


def validate_data_flow(config: pb.ModelConfig) -> None:
    """The data-flow checks of Triton's ValidateEnsembleSchedulingConfig."""
    name = config.name
    tensors = _graph(config)
    queue: deque[_Tensor] = deque()
    for model_input in config.input:
        tensor = tensors.get(model_input.name)
        if tensor is None:
            raise ConfigError(
                f"ensemble input '{model_input.name}' for ensemble {name}' is not used")
        tensor.ready = True
        queue.append(tensor)
    while queue:
        for following in queue.popleft().next:
            if not following.ready and all(t.ready for t in following.prev):
                following.ready = True
                queue.append(following)
    outputs = set()
    for model_output in config.output:
        tensor = tensors.get(model_output.name)
        if tensor is None:
            raise ConfigError(
                f"ensemble output '{model_output.name}' for ensemble {name}' is not used")
        if not tensor.ready:
            raise ConfigError(_not_written(tensor, model_output.name, name))
        outputs.add(tensor.name)
    for tensor in tensors.values():
        if tensor.name not in outputs and (not tensor.ready or not tensor.next):
            raise ConfigError(f"ensemble tensor '{tensor.name}' is unused in ensemble '{name}'")


def _not_written(tensor: _Tensor, output: str, ensemble: str) -> str:
    """Triton's text, naming the first not-ready tensor upstream of the output."""
    message = f"output '{output}' for ensemble '{ensemble}' is not written"
    last, prev, seen = tensor, tensor.prev, set()
    while prev:
        candidates, prev = prev, []
        for node in candidates:
            if not node.ready and node.name not in seen:
                seen.add(node.name)
                last, prev = node, node.prev
                break
    if last is not tensor:
        message += f": at least one of its depending tensors, '{last.name}', is not connected"
    return message


# --- against the composing models' configs (ValidateEnsembleConfig) -------------------------

_DataType = pb.ModelInput.DESCRIPTOR.fields_by_name["data_type"].enum_type


@dataclass
class _Node:
    model: str
    data_type: int
    dims: list[int]
    full_dims: list[int]


def _node(model: str, batching: bool, data_type: int, dims) -> _Node:
    dims = list(dims)
    return _Node(model, data_type, dims, ([-1] if batching else []) + dims)


def _same_dims(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _dims_text(dims: list[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _consistent(known: _Node, new: _Node, prefix: str) -> None:
    if known.data_type != new.data_type:
        raise ConfigError(
            f"{prefix}inconsistent data type: {_DataType.values_by_number[known.data_type].name} "
            f"is inferred from model {known.model} while "
            f"{_DataType.values_by_number[new.data_type].name} is inferred from model "
            f"{new.model}")
    if not _same_dims(known.dims, new.dims) and not _same_dims(known.full_dims, new.full_dims):
        raise ConfigError(
            f"{prefix}inconsistent shape: {_dims_text(known.full_dims)} is inferred from model "
            f"{known.model} while {_dims_text(new.full_dims)} is inferred from model {new.model}")


def validate_composition(config: pb.ModelConfig, composing: dict[str, pb.ModelConfig]) -> None:
    """Triton's ValidateEnsembleConfig: `composing` holds each step model's served config.
    Marks `config` decoupled when one of its steps is."""
    name = config.name
    batching = config.max_batch_size > 0
    tensors: dict[str, _Node] = {}
    for io in (*config.input, *config.output):
        dims = io.reshape.shape if io.HasField("reshape") else io.dims
        tensors[io.name] = _node(name, batching, io.data_type, dims)
    for step in config.ensemble_scheduling.step:
        model = composing[step.model_name]
        if 0 < model.max_batch_size < config.max_batch_size:
            raise ConfigError(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {step.model_name} which only allows maximum batch size to be "
                f"{model.max_batch_size}")
        _validate_mapping(name, step, model, tensors)
    if _decoupled_flow(config, composing):
        config.model_transaction_policy.decoupled = True


def _decoupled_flow(config: pb.ModelConfig, composing: dict[str, pb.ModelConfig]) -> bool:
    """Whether a step is decoupled. Each response of a decoupled step runs the steps after it
    once, so a step may read only tensors of one lineage: the ensemble's inputs, or what one
    decoupled step's responses led to (Triton's labels, with its text)."""
    lineage = {model_input.name: 0 for model_input in config.input}
    lineages = 0
    pending = list(config.ensemble_scheduling.step)
    while step := next((s for s in pending if all(t in lineage for t in s.input_map.values())),
                       None):
        pending.remove(step)
        origins = {lineage[t] for t in step.input_map.values()}
        if len(origins) > 1:
            raise ConfigError(f"in ensemble {config.name}, step of model '{step.model_name}' "
                              "receives inputs originated from different decoupled models")
        if composing[step.model_name].model_transaction_policy.decoupled:
            lineages += 1
            origins = {lineages}
        own = origins.pop() if origins else 0
        for tensor in step.output_map.values():
            lineage[tensor] = own
    return lineages > 0


def _validate_mapping(ensemble: str, step, model: pb.ModelConfig,
                      tensors: dict[str, _Node]) -> None:
    step_name = step.model_name
    batching = model.max_batch_size > 0
    inputs = {i.name: i for i in model.input}
    for model_input, tensor in step.input_map.items():
        if model_input not in inputs:
            raise ConfigError(
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapping to non-existing "
                f"input {model_input} in model {step_name}")
    for model_input in model.input:
        tensor = step.input_map.get(model_input.name)
        if tensor is None:
            if model_input.optional:
                continue
            raise ConfigError(f"in ensemble {ensemble}, input {model_input.name} in model "
                              f"{step_name} is not mapped to any ensemble tensors")
        _merge(tensors, tensor, _node(step_name, batching, model_input.data_type,
                                      model_input.dims), ensemble)
    outputs = {o.name: o for o in model.output}
    for model_output, tensor in step.output_map.items():
        if model_output not in outputs:
            raise ConfigError(
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapped from non-existing "
                f"output {model_output} in model {step_name}")
        output = outputs[model_output]
        _merge(tensors, tensor, _node(step_name, batching, output.data_type, output.dims),
               ensemble)


def _merge(tensors: dict[str, _Node], tensor: str, node: _Node, ensemble: str) -> None:
    known = tensors.get(tensor)
    if known is None:
        tensors[tensor] = node
    else:
        _consistent(known, node, f"in ensemble {ensemble}, ensemble tensor {tensor}: ")
