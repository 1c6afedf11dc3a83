"""Models another owner serves through the ModelManager (the TorchServe model store's
archives, `attach`): the repository API and polling leave them to that owner."""

from __future__ import annotations

import asyncio

import pytest

from pyserve.errors import ServerError
from pyserve.lifecycle import Model, ModelManager
from pyserve.options import ServerOptions


def test_external_models_are_not_loaded_unloaded_or_polled_away(tmp_path):
    async def scenario() -> None:
        manager = ModelManager(ServerOptions(model_repositories=[tmp_path]),
                               asyncio.get_running_loop())
        manager.models["archive"] = {"": Model("archive", wanted=True, external=True)}
        for call in (manager.load("archive"), manager.unload("archive")):
            with pytest.raises(ServerError, match="TorchServe's management API"):
                await call
        await manager.poll_once()  # not in the repository, yet not the repository's to drop
        assert manager.models["archive"][""].wanted

    asyncio.run(scenario())
