"""The "pytorch" backend's registry entry: a missing torch is a load error naming the extra."""

from __future__ import annotations

import sys

import pytest

from pyserve.backends import backend_class
from pyserve.errors import ErrorCode, ServerError


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    monkeypatch.delitem(sys.modules, "pyserve.backends.pytorch", raising=False)
    with pytest.raises(ServerError) as error:
        backend_class("pytorch")
    assert error.value.code == ErrorCode.UNAVAILABLE
    assert "pip install 'pyserve[torch]'" in error.value.message
    assert "(torch)" in error.value.message


def test_pytorch_backend_class():
    pytest.importorskip("torch")
    from pyserve.backends.pytorch import PyTorchBackend

    assert backend_class("pytorch") is PyTorchBackend


@pytest.mark.parametrize("name, index", [
    ("INPUT__0", 0), ("OUTPUT__12", 12), ("a__b__3", None), ("x__", 0), ("plain", None),
    ("IN__1x", None),
])
def test_named_index(name, index):
    pytest.importorskip("torch")
    from pyserve.backends.pytorch import _named_index

    assert _named_index(name) == index
