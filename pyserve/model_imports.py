"""Imports from a model's own directory, for the thread that loads or runs the model.

A model's code imports the files next to it (`import utils`), as Triton and TorchServe allow
by putting the model's directory on sys.path. Here many models load and run on threads of one
process, and sys.path is shared: a directory taken out of sys.path while another thread walks
it makes that walk skip an entry, so an unrelated import fails (seen: `No module named
'_multiprocessing'` while another model loaded). Instead, one finder sits in sys.meta_path,
just before the path finder (so the standard library's built-in modules still come first),
and searches only the directories the current thread has opened with `model_directory`.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import threading
from pathlib import Path

_opened = threading.local()  # .directories: the current thread's, innermost last


class _ModelDirectoryFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        directories = getattr(_opened, "directories", None)
        if not directories or path is not None:  # submodules follow their package's __path__
            return None
        return importlib.machinery.PathFinder.find_spec(name, directories[::-1], target)

    @staticmethod
    def invalidate_caches():
        pass


def _install() -> None:
    # Inserted (never removed): an insert makes a concurrent walk of sys.meta_path see one
    # finder twice at worst, never skip one.
    for index, finder in enumerate(sys.meta_path):
        if finder is importlib.machinery.PathFinder:
            sys.meta_path.insert(index, _ModelDirectoryFinder)
            return
    sys.meta_path.append(_ModelDirectoryFinder)


_install()


@contextlib.contextmanager
def model_directory(directory: Path | str):
    """While open, this thread's `import name` finds `name` in `directory` before sys.path."""
    directories = _opened.__dict__.setdefault("directories", [])
    directories.append(str(directory))
    try:
        yield
    finally:
        directories.pop()
