"""model_warmup: the requests a model version runs before it is marked READY."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyserve.datatypes import NUMPY_DTYPE, serialize_bytes, wire_name
from pyserve.errors import ServerError
from pyserve.protocol import pb
from pyserve.runner import InputTensor, ModelRunner


async def warm_up(runner: ModelRunner, config: pb.ModelConfig, version_dir: Path) -> None:
    """Run the config's model_warmup requests; a failure fails the load."""
    for warmup in config.model_warmup:
        inputs = []
        for name, spec in warmup.inputs.items():
            datatype = wire_name(spec.data_type)
            shape = ([max(warmup.batch_size, 1)] if config.max_batch_size > 0 else []) + list(spec.dims)
            inputs.append(InputTensor(name, datatype, shape,
                                      _warmup_data(spec, datatype, shape, version_dir)))
        for _ in range(max(warmup.count, 1)):
            try:
                await runner.infer(inputs)
            except ServerError as e:
                raise ServerError(f"model warmup '{warmup.name}' failed: {e.message}") from None


def _warmup_data(spec, datatype: str, shape: list[int], version_dir: Path) -> bytes:
    count = int(np.prod(shape)) if shape else 1
    choice = spec.WhichOneof("input_data_type")
    if choice == "input_data_file":
        path = (version_dir.parent / "warmup" / spec.input_data_file).resolve()
        if not path.is_relative_to((version_dir.parent / "warmup").resolve()):
            raise ServerError(f"warmup input file '{spec.input_data_file}' is outside the "
                              "model's warmup directory")
        return path.read_bytes()
    if datatype == "BYTES":  # random data on strings falls back to zeros, as in Triton
        return serialize_bytes(np.array([b"\0"] * count, dtype=np.object_))
    dtype = NUMPY_DTYPE[datatype]
    if choice == "random_data":
        rng = np.random.default_rng()
        if dtype.kind == "f":
            return rng.random(count).astype(dtype).tobytes()
        return rng.integers(0, 2, count).astype(dtype).tobytes()
    return np.zeros(count, dtype=dtype).tobytes()
