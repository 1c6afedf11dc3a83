"""The child process of an isolated model instance (Triton's Python backend stub, in Python).

Started by the server (host.py) with `main([CONNECTION_FD, ARENA_FD])`; serves one instance:
("init", "module:Class", model name, version, serialized config, version directory,
InstanceSpec), then any number of ("execute", input descriptors, end, batch sizes, request
infos), then ("close",). ("auto_complete", ...) serves a config completion instead. Every
reply is ("ok", ...) or ("error", portable error). A model's exception, SystemExit included,
fails only the batch; the process ends when the server closes it or goes away.
"""

from __future__ import annotations

import importlib
import logging
import os
from multiprocessing.connection import Connection

from pyserve.backends.base import ModelContext
from pyserve.backends.isolation.arena import Arena
from pyserve.backends.isolation.messages import object_states, portable_error
from pyserve.errors import ErrorCode, ServerError
from pyserve.protocol import pb

log = logging.getLogger("pyserve")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s model process {os.getpid()}: "
                               "%(message)s")
    _first_for_the_oom_killer()
    connection, arena = Connection(int(argv[0])), Arena(int(argv[1]))
    backend = None
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return  # the server has gone
        kind, args = message[0], message[1:]
        if kind == "execute":
            connection.send(_execute(backend, arena, *args))
        elif kind == "init":
            reply = _call(_load, *args)
            if reply[0] == "error":
                connection.send(reply)
                return
            backend = reply[1]
            connection.send(("ok",))
        elif kind == "auto_complete":
            connection.send(_call(_auto_complete, *args))
        elif kind == "close":
            if backend is not None:
                _call(backend.close)
            connection.send(("ok",))
            return


def _first_for_the_oom_killer() -> None:
    """A model that runs away with memory should cost its own process, not the server."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _call(function, *args) -> tuple:
    try:
        return "ok", function(*args)
    except BaseException as e:  # noqa: BLE001 - the model's fault goes back as the reply
        return "error", portable_error(e)


def _backend_class(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _load(target: str, name: str, version: int, config: bytes, version_dir, instance):
    model = ModelContext(name, version, pb.ModelConfig.FromString(config), version_dir)
    return _backend_class(target)(model, instance)


def _auto_complete(target: str, config: bytes, version_dir, options) -> bytes:
    completed = _backend_class(target).auto_complete_config(
        pb.ModelConfig.FromString(config), version_dir, options)
    return completed.SerializeToString()


def _execute(backend, arena: Arena, descriptors, end: int, batch_sizes, infos) -> tuple:
    inputs = arena.read(descriptors, end)
    try:
        result = backend.execute(inputs, batch_sizes, infos)
        if isinstance(result, dict):
            outputs, written = arena.write(result, end)
            payload = ("batch", outputs)
        elif isinstance(result, list):
            items, written = [], end
            for item in result:
                if isinstance(item, dict):
                    outputs, written = arena.write(item, written)
                    items.append(("outputs", outputs))
                elif isinstance(item, BaseException):
                    items.append(("error", portable_error(item)))
                else:
                    items.append(("error", portable_error(ServerError(
                        f"model '{backend.model.name}' returned {type(item).__name__} for a "
                        "request", ErrorCode.INTERNAL))))
            payload = ("requests", items)
        else:
            raise ServerError(f"model '{backend.model.name}' returned "
                              f"{type(result).__name__}, not a dict of outputs",
                              ErrorCode.INTERNAL)
    except BaseException as e:  # noqa: BLE001 - even SystemExit fails only this batch
        return "error", portable_error(e)
    return "ok", payload, written, object_states(infos)
