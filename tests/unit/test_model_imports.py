"""A model's directory is importable from the thread that opened it, and sys.path is left alone
(another thread's import walking sys.path must never see an entry vanish under it)."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest

from pyserve.model_imports import model_directory


@pytest.fixture
def two_directories(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    for directory in (outer, inner):
        directory.mkdir()
        (directory / "pyserve_test_sibling.py").write_text(f"WHERE = {directory.name!r}\n")
    (outer / "pyserve_test_outer_only.py").write_text("WHERE = 'outer'\n")
    yield outer, inner
    for name in ("pyserve_test_sibling", "pyserve_test_outer_only"):
        sys.modules.pop(name, None)


def test_siblings_import_while_open_and_sys_path_is_untouched(two_directories):
    outer, _ = two_directories
    path_before = list(sys.path)
    with model_directory(outer):
        assert sys.path == path_before
        assert importlib.import_module("pyserve_test_sibling").WHERE == "outer"
    sys.modules.pop("pyserve_test_sibling")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pyserve_test_sibling")


def test_the_innermost_directory_comes_first(two_directories):
    outer, inner = two_directories
    with model_directory(outer), model_directory(inner):
        assert importlib.import_module("pyserve_test_sibling").WHERE == "inner"
        assert importlib.import_module("pyserve_test_outer_only").WHERE == "outer"


def test_other_threads_do_not_see_the_directory(two_directories):
    outer, _ = two_directories
    seen = []

    def other_thread():
        try:
            importlib.import_module("pyserve_test_outer_only")
            seen.append("imported")
        except ModuleNotFoundError:
            seen.append("not found")

    with model_directory(outer):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert seen == ["not found"]


def test_builtin_modules_are_not_shadowed(tmp_path):
    (tmp_path / "xxsubtype.py").write_text("raise AssertionError('shadowed')\n")
    if "xxsubtype" not in sys.builtin_module_names:
        pytest.skip("this Python has xxsubtype as no built-in")
    sys.modules.pop("xxsubtype", None)  # a built-in example module nothing else uses
    with model_directory(tmp_path):
        assert importlib.import_module("xxsubtype").__spec__.origin == "built-in"
