"""The PyTorch backend's config `parameters`, read as Triton's pytorch backend reads them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pyserve.backends import InstanceSpec, ModelContext, backend_class  # noqa: E402
from pyserve.config import normalize, parse_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.*


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def make_model(version_dir: Path, parameters: dict[str, str]) -> ModelContext:
    version_dir.mkdir(parents=True)
    torch.jit.script(Double()).save(str(version_dir / "model.pt"))
    text = ('platform: "pytorch_libtorch" max_batch_size: 4 '
            'input { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } '
            'output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } '
            + " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                       for k, v in parameters.items()))
    config = normalize(parse_config(text), "double", gpu_count=0)
    return ModelContext("double", 1, config, version_dir)


def instances(context: ModelContext, count: int = 2) -> list:
    return [backend_class("pytorch")(context, InstanceSpec(i, "CPU")) for i in range(count)]


@pytest.mark.parametrize("shared", [True, False])
def test_weight_sharing_loads_the_module_once_per_device(tmp_path, shared):
    context = make_model(tmp_path / "1", {"ENABLE_WEIGHT_SHARING": str(shared).lower()})
    first, second = instances(context)
    assert (first._module is second._module) == shared
    x = np.ones((1, 2), np.float32)
    for backend in (first, second):
        np.testing.assert_array_equal(backend.execute({"INPUT__0": x}, [1])["OUTPUT__0"], x * 2)
        backend.close()


class SwitchRecorder(torch.nn.Module):
    """Stands in for a TorchScript module: records the process-wide switches it runs under."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append((torch.backends.cudnn.enabled, torch._C._jit_texpr_fuser_enabled()))
        time.sleep(0.002)  # long enough for executions on other threads to overlap
        self.seen.append((torch.backends.cudnn.enabled, torch._C._jit_texpr_fuser_enabled()))
        return x * 2


def test_torch_switches_hold_for_each_execute_among_concurrent_models(tmp_path):
    """Triton's DISABLE_CUDNN / ENABLE_* switches are process-wide: a model that sets them
    runs alone under its values, others run under the process's, and the process's come back."""
    own = instances(make_model(tmp_path / "own" / "1", {"DISABLE_CUDNN": "true",
                                                        "ENABLE_TENSOR_FUSER": "false"}), 1)[0]
    plain = instances(make_model(tmp_path / "plain" / "1", {}), 1)[0]
    process = (torch.backends.cudnn.enabled, torch._C._jit_texpr_fuser_enabled())
    assert process[0]  # cuDNN is on by default, so `own` differs from the process
    seen = {own: [], plain: []}
    for backend in seen:
        backend._module, backend._dict_input = SwitchRecorder(seen[backend]), False

    def run(backend):
        for _ in range(50):
            backend.execute({"INPUT__0": np.ones((1, 2), np.float32)}, [1])

    threads = [threading.Thread(target=run, args=(b,)) for b in (own, plain, plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen[own]) == {(False, False)}
    assert set(seen[plain]) == {process}
    assert (torch.backends.cudnn.enabled, torch._C._jit_texpr_fuser_enabled()) == process
    own.close()
    plain.close()


def test_bad_boolean_fails_the_load(tmp_path):
    context = make_model(tmp_path / "1", {"ENABLE_WEIGHT_SHARING": "sometimes"})
    with pytest.raises(Exception, match="failed to convert 'sometimes' to a boolean value for "
                                        "parameter 'ENABLE_WEIGHT_SHARING'"):
        instances(context, 1)


def test_thread_counts_are_set_once_per_process_by_the_first_model(tmp_path):
    """torch's thread pools are process-wide, so this runs in a process of its own."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_pytorch_parameters import instances, make_model
        root = Path({str(tmp_path)!r})
        instances(make_model(root / "a" / "1", {{"INTRA_OP_THREAD_COUNT": "3",
                                                 "INTER_OP_THREAD_COUNT": "3"}}), 1)
        instances(make_model(root / "b" / "1", {{"INTRA_OP_THREAD_COUNT": "5"}}), 1)
        print(torch.get_num_threads(), torch.get_num_interop_threads())
    """)
    # Run from tmp_path: from the checkout, `import pyserve` would find the unbuilt sources.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "3"]  # neither torch's default nor the second's
