"""What crosses the control pipe besides tensor descriptors: errors and request infos.

Errors travel as (module, class name, message, attributes) and come back as the same
exception type with the same attributes (a ServerError keeps its code, a TorchServe error its
HTTP status), whatever its constructor's signature.

Python objects a frontend attached to a request (a TorchServe request, say) travel by their
attributes; callables stay behind, since they cannot cross a process. The attributes the
model changed come back and are set on the original object.
"""

from __future__ import annotations

import copy
import importlib

from pyserve.backends.base import RequestInfo
from pyserve.errors import ErrorCode, ServerError

_PLAIN = (str, int, float, bool)


def portable_error(error: BaseException) -> tuple:
    if not isinstance(error, ServerError):
        error = ServerError(f"{type(error).__name__}: {error}", ErrorCode.INTERNAL)
    cls = type(error)
    return cls.__module__, cls.__qualname__, error.message, dict(vars(error))


def restore_error(portable: tuple) -> ServerError:
    module, name, message, attributes = portable
    try:
        cls = getattr(importlib.import_module(module), name)
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.__dict__.update(attributes)
        return error
    except Exception:  # noqa: BLE001 - a type this process cannot rebuild: keep the text
        return ServerError(message, attributes.get("code", ErrorCode.INTERNAL))


def detach_requests(infos: list[RequestInfo] | None) -> list[RequestInfo] | None:
    """Copies of `infos` that pickle: attached objects without their callables."""
    if infos is None:
        return None
    detached = []
    for info in infos:
        parameters = {key: value if isinstance(value, _PLAIN) else _without_callables(value)
                      for key, value in info.parameters.items()}
        detached.append(RequestInfo(info.id, parameters, list(info.requested_outputs),
                                    info.correlation_id, info.flags))
    return detached


def object_states(infos: list[RequestInfo] | None) -> list[dict]:
    """Child side, after execute: each request's attached objects' attributes, by key."""
    return [{key: dict(vars(value)) for key, value in info.parameters.items()
             if not isinstance(value, _PLAIN) and hasattr(value, "__dict__")}
            for info in infos or []]


def apply_object_states(infos: list[RequestInfo] | None, states: list[dict]) -> None:
    """Parent side: set what the model changed on the original objects (callables kept)."""
    for info, state in zip(infos or [], states):
        for key, attributes in state.items():
            target = info.parameters[key]
            target.__dict__.update({name: value for name, value in attributes.items()
                                    if not callable(getattr(target, name, None))})


def _without_callables(value):
    if not hasattr(value, "__dict__"):
        return value
    clone = copy.copy(value)
    for name, attribute in vars(value).items():
        if callable(attribute):
            setattr(clone, name, None)
    return clone
