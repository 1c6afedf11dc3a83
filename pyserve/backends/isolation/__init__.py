"""Process isolation on request: a model's instances in child processes.

`parameters { key: "isolation" value { string_value: "process" } }` in a Python model's or a
TorchServe handler's config runs each instance in a child process (host.py), with tensors
passed through shared memory (arena.py), as Triton's Python backend stub does; the default,
"none", runs the model in the server's process. A fault no `try` can catch (a segfault in a
native extension, os._exit, the OOM killer) then ends only the child: its batch fails, a new
child starts, and the model stays loaded.
"""

from __future__ import annotations

import os

from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

PARAMETER = "isolation"
MODES = ("none", "process")
CHILD_ENV = "PYSERVE_MODEL_PROCESS"  # set in every child, which runs its model in-process


def process_isolated(config: pb.ModelConfig) -> bool:
    """Whether the config asks for child processes (never inside a child itself)."""
    if PARAMETER not in config.parameters or os.environ.get(CHILD_ENV):
        return False
    mode = config.parameters[PARAMETER].string_value
    if mode not in MODES:
        raise ServerError(f"parameter '{PARAMETER}' of model '{config.name}' must be one of "
                          f"{', '.join(MODES)}, not '{mode}'", ErrorCode.INVALID_ARG)
    return mode == "process"


def isolated_instance(cls, model, instance):
    """An instance of backend `cls` in a child process."""
    if not getattr(cls, "isolatable", False):
        raise ServerError(f"model '{model.name}': backend '{model.config.backend}' cannot run "
                          f"in a child process (parameter '{PARAMETER}')",
                          ErrorCode.UNSUPPORTED)
    from pyserve.backends.isolation.host import ProcessIsolatedBackend

    return ProcessIsolatedBackend(cls, model, instance)


def auto_complete_in_child(cls, config: pb.ModelConfig, version_dir, options) -> pb.ModelConfig:
    """`cls.auto_complete_config` run in a short-lived child: completing a Python model's
    config imports its code, which must not happen in the server's process either."""
    from pyserve.backends.isolation.arena import Arena
    from pyserve.backends.isolation.host import ChildProcess

    arena = Arena.create(f"pyserve-{config.name}-config")
    try:
        child = ChildProcess(arena, f"model '{config.name}'")
        try:
            (completed,) = child.call(("auto_complete", f"{cls.__module__}:{cls.__qualname__}",
                                       config.SerializeToString(), version_dir, options),
                                      "completing its config")
        finally:
            child.stop()
    finally:
        arena.close()
    return pb.ModelConfig.FromString(completed)
