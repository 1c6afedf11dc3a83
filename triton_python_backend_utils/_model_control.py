"""`pb_utils.load_model`, `unload_model` and `is_model_ready`: a model controlling the
repository of the server it runs in (the server's ModelManager, attached at start-up). Loads
and unloads run on the server's event loop; the calling thread (a model's initialize or
execute) waits for them, as Triton's stub does."""

from __future__ import annotations

import asyncio
import threading

_server: tuple | None = None  # (ModelManager, its event loop)
_lock = threading.Lock()


def attach(manager, loop: asyncio.AbstractEventLoop) -> None:
    global _server
    with _lock:
        _server = (manager, loop)


def _manager_and_loop():
    from triton_python_backend_utils import TritonModelException

    if _server is None:
        raise TritonModelException("model control is not available: the model does not run "
                                   "in a pyserve server")
    manager, loop = _server
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise TritonModelException("model control cannot wait on the server's event loop")
    return manager, loop


def _wait(coroutine, loop):
    from pyserve.errors import ServerError
    from triton_python_backend_utils import TritonModelException

    try:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    except ServerError as e:
        raise TritonModelException(e.message) from None


def load_model(model_name: str, config: str = "", files: dict | None = None) -> None:
    """Load (or reload) `model_name`; `config` is a JSON ModelConfig, `files` maps
    "file:<version>/<path>" to the file's bytes (the load API's parameters)."""
    from pyserve.errors import ServerError
    from pyserve.frontends.inference import load_parameters
    from triton_python_backend_utils import TritonModelException

    manager, loop = _manager_and_loop()
    parameters = dict(files or {})
    if config:
        parameters["config"] = config
    try:
        override, contents = load_parameters(model_name, parameters)
    except ServerError as e:
        raise TritonModelException(e.message) from None
    _wait(manager.load(model_name, override, contents or None), loop)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    manager, loop = _manager_and_loop()
    _wait(manager.unload(model_name, unload_dependents), loop)


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    manager, loop = _manager_and_loop()

    async def ready():
        return manager.is_ready(model_name, str(model_version))

    return _wait(ready(), loop)
