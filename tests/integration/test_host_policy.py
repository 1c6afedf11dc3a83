"""--host-policy: the CPU cores and NUMA node of an instance's threads (the one that loads it
and the worker that runs it), by the policy its instance group names or the default one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import FRONTENDS, start_server

pytestmark = pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")

REPORTER = '''
import ctypes
import os

import numpy as np
import triton_python_backend_utils as pb_utils

libc = ctypes.CDLL(None, use_errno=True)
SYS_get_mempolicy = 239  # x86_64


def placement():
    """This thread's CPUs, and its memory policy's mode and node mask."""
    mode, mask = ctypes.c_int(), ctypes.c_ulong()
    assert libc.syscall(SYS_get_mempolicy, ctypes.byref(mode), ctypes.byref(mask), 64, 0, 0) == 0
    return sorted(os.sched_getaffinity(0)), mode.value, mask.value


class TritonPythonModel:
    def initialize(self, args):
        self.loaded = placement()

    def execute(self, requests):
        responses = []
        for _ in requests:
            cpus, mode, mask = placement()
            loaded_cpus, loaded_mode, loaded_mask = self.loaded
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("CPUS", np.array(cpus, dtype=np.int32)),
                pb_utils.Tensor("LOADED_CPUS", np.array(loaded_cpus, dtype=np.int32)),
                pb_utils.Tensor("MEMORY", np.array([mode, mask, loaded_mode, loaded_mask],
                                                   dtype=np.int64))]))
        return responses
'''

CONFIG = '''name: "{name}"
backend: "python"
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "CPUS" data_type: TYPE_INT32 dims: [ -1 ] }},
         {{ name: "LOADED_CPUS" data_type: TYPE_INT32 dims: [ -1 ] }},
         {{ name: "MEMORY" data_type: TYPE_INT64 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 {policy} }} ]
'''
MPOL_DEFAULT, MPOL_BIND = 0, 2


def _write(repository, name, policy=""):
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.py").write_text(REPORTER)
    (repository / name / "config.pbtxt").write_text(CONFIG.format(name=name, policy=policy))


def _placement(client, name):
    x = grpcclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.zeros(1, dtype=np.int32))
    result = client.infer(name, [x])
    return (list(result.as_numpy("CPUS")), list(result.as_numpy("LOADED_CPUS")),
            list(result.as_numpy("MEMORY")))


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("host-policy")
    _write(root / "repository", "pinned", 'host_policy: "pinned"')
    _write(root / "repository", "by_default")
    _write(root / "repository", "unnamed", 'host_policy: "nobody_set_this"')
    process = start_server([root / "repository"], root / "server.log",
                           "--grpc-frontend", request.param, "--http-frontend", request.param,
                           "--host-policy", "pinned,cpu-cores=1",
                           "--host-policy", "pinned,numa-node=0",
                           "--host-policy", "cpu,cpu-cores=0")
    yield process
    process.stop()


def test_a_named_policy_pins_cores_and_binds_memory(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cpus, loaded_cpus, memory = _placement(client, "pinned")
    assert cpus == [1] and loaded_cpus == [1]
    assert memory == [MPOL_BIND, 1, MPOL_BIND, 1]  # node 0, at run time and at load


def test_cpu_instances_take_the_cpu_policy_by_default(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cpus, loaded_cpus, memory = _placement(client, "by_default")
    assert cpus == [0] and loaded_cpus == [0]
    assert memory[0] == MPOL_DEFAULT and memory[2] == MPOL_DEFAULT


def test_a_policy_nobody_set_changes_nothing(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cpus, _, memory = _placement(client, "unnamed")
    assert cpus == sorted(os.sched_getaffinity(0))
    assert memory[0] == MPOL_DEFAULT


def test_a_value_that_does_not_parse_fails_the_load(tmp_path):
    _write(tmp_path / "repository", "pinned", 'host_policy: "pinned"')
    process = start_server([tmp_path / "repository"], tmp_path / "server.log",
                           "--model-control-mode", "explicit",
                           "--host-policy", "pinned,cpu-cores=one")
    try:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        with pytest.raises(InferenceServerException,
                           match="Parsing 'cpu-cores' value: Can't parse 'one' to integer"):
            client.load_model("pinned")
        assert client.is_server_live()
    finally:
        process.stop()
