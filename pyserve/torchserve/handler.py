"""Finding and importing a TorchServe handler the way TorchServe's model loader does, with
each archive's modules kept apart.

A handler is `module[:function]`: a module of the archive (`handler.py`), a module on the
path, or a TorchServe built-in (`image_classifier`, ...) from the `ts` package of the
`torchserve` wheel. The module defines either a `handle(data, context)` function (called once
with data=None to initialize) or exactly one class with `handle` (and `initialize`).

TorchServe gives every worker its own process with the model directory on sys.path, so two
archives that both ship `handler.py` or `model.py` never meet. Here every archive loads in one
process: its directory is importable only while its handler is imported and initialized (by
that thread, see pyserve.model_imports), under a process-wide lock, and the modules it brought are then moved out of the plain names of
sys.modules (to `pyserve_torchserve.<namespace>.<name>`), so the next archive imports its own.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import logging
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

from pyserve.errors import ErrorCode, ServerError
from pyserve.model_imports import model_directory

log = logging.getLogger("pyserve")

BUILTIN_HANDLERS = ("image_classifier", "image_segmenter", "object_detector",
                    "text_classifier", "base_handler", "densenet_handler", "text_handler",
                    "vision_handler")
_IMPORT_LOCK = threading.RLock()
_NAMESPACES = itertools.count()


def new_namespace(model_name: str) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in model_name)
    return f"pyserve_torchserve.{safe}_{next(_NAMESPACES)}"


@contextlib.contextmanager
def archive_imports(model_dir: Path, namespace: str):
    """While open, `import name` finds the archive's own modules first; on exit they leave
    sys.modules' plain names (other archives' modules of the same names come back)."""
    model_dir = Path(model_dir).resolve()
    with _IMPORT_LOCK:
        local_names = _top_level_names(model_dir)
        hidden = {name: sys.modules.pop(name) for name in list(sys.modules)
                  if name.split(".")[0] in local_names}
        importlib.invalidate_caches()
        try:
            with model_directory(model_dir):
                yield
        finally:
            for name in list(sys.modules):
                module = sys.modules[name]
                if _is_under(module, model_dir):
                    del sys.modules[name]
                    sys.modules[f"{namespace}.{name}"] = module
            sys.modules.update(hidden)


def _top_level_names(model_dir: Path) -> set[str]:
    names = set()
    for entry in model_dir.iterdir():
        if entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
    return names


def _is_under(module: ModuleType, directory: Path) -> bool:
    path = getattr(module, "__file__", None)
    if not path:
        return False
    try:
        return directory in Path(path).resolve().parents
    except (OSError, ValueError):
        return False


def load_entry_point(model_dir: Path, handler: str, model_name: str
                     ) -> tuple[Callable, Callable, object | None]:
    """(entry_point(data, context), initialize(context), the handler object or None), the
    module imported with the archive's directory first on the path. Call initialize inside
    archive_imports too: handlers import the model's own files (model.py) while initializing."""
    if not handler:
        raise ServerError(f"model '{model_name}': the archive names no handler and none was "
                          "given (MANIFEST.json model.handler, or handler= on register)")
    module_name, _, function_name = handler.partition(":")
    if module_name.endswith(".py"):
        module_name = module_name[:-3]
    module_name = module_name.replace("\\", "/").split("/")[-1]
    module = _import_handler_module(Path(model_dir), module_name, handler, model_name)
    function_name = function_name or "handle"
    if hasattr(module, function_name) and not inspect.isclass(getattr(module, function_name)):
        entry_point = getattr(module, function_name)
        return entry_point, lambda context: entry_point(None, context), None
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if len(classes) != 1:
        raise ServerError(
            f"model '{model_name}': expected only one class in custom service code or a "
            f"function entry point {classes}")
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise ServerError(f"model '{model_name}': expect handle method in class "
                          f"{classes[0]}")
    initialize = getattr(service, "initialize", None) or (lambda context: None)
    return service.handle, initialize, service


def _import_handler_module(model_dir: Path, module_name: str, handler: str,
                           model_name: str) -> ModuleType:
    in_archive = ((model_dir / f"{module_name}.py").is_file()
                  or (model_dir / module_name / "__init__.py").is_file())
    if in_archive:
        try:
            return importlib.import_module(module_name)
        except BaseException as e:  # noqa: BLE001 - the handler's own import error (SystemExit too)
            raise ServerError(f"model '{model_name}': handler '{handler}' failed to import: "
                              f"{type(e).__name__}: {e}", ErrorCode.INVALID_ARG) from None
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise ServerError(f"model '{model_name}': handler '{handler}' failed to import: "
                              f"{e}") from None
    return _import_builtin(module_name, handler, model_name)


def _import_builtin(module_name: str, handler: str, model_name: str) -> ModuleType:
    try:
        import ts.torch_handler  # noqa: F401
    except ImportError:
        raise ServerError(
            f"model '{model_name}': handler '{handler}' is neither a module of the archive "
            "nor importable; TorchServe's built-in handlers need the ts package: "
            "pip install 'pyserve[torchserve]'", ErrorCode.UNAVAILABLE) from None
    try:
        return importlib.import_module(f"ts.torch_handler.{module_name}")
    except ModuleNotFoundError as e:
        if e.name == f"ts.torch_handler.{module_name}":
            raise ServerError(
                f"model '{model_name}': handler '{handler}' is not a module of the archive, "
                f"nor importable, nor a TorchServe built-in handler "
                f"({', '.join(BUILTIN_HANDLERS[:4])})") from None
        raise ServerError(_dependency_message(model_name, handler, e), ErrorCode.UNAVAILABLE
                          ) from None
    except BaseException as e:  # noqa: BLE001 - e.g. torchvision's ops failing to register
        raise ServerError(_dependency_message(model_name, handler, e), ErrorCode.UNAVAILABLE
                          ) from None


def _dependency_message(model_name: str, handler: str, error: BaseException) -> str:
    import torch

    hint = ""
    if handler == "text_classifier":
        hint = (" text_classifier needs torchtext, whose last release pins an older torch "
                f"than the {torch.__version__} installed here")
    elif "torchvision" in str(error) or getattr(error, "name", "") == "torchvision":
        hint = (f" the image handlers need a torchvision built for torch {torch.__version__} "
                "(pip install 'pyserve[torchserve]'); a torchvision built for another torch "
                "fails to register its operators")
    return (f"model '{model_name}': built-in handler '{handler}' cannot be used: "
            f"{type(error).__name__}: {error}.{hint}")
