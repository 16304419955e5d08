"""Plugins started outside the server (for CLI commands): their `startup` hooks run on a bare
app with no engine, so a command can use storage and the task store without dispatching."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State

from .config import Settings
from .errors import ConfigError
from .hookcall import call_all
from .plugins import PluginManager
from .store import TaskStore


@asynccontextmanager
async def started_plugins(settings: Settings, pm: PluginManager) -> AsyncIterator[TaskStore]:
    """Yield the durable task store with every plugin started; stop them afterwards."""
    store = pm.hook.task_store(settings=settings)
    if store is None or not store.durable:
        raise ConfigError("this command needs a durable task store (the database plugin)")
    app = Litestar(state=State({"pm": pm, "settings": settings, "engine": None}))
    await store.open()
    try:
        # a plugin that needs the engine (absent here) fails alone, logged, and sits out
        await call_all(pm.hook.startup, isolate=True, app=app, settings=settings)
        try:
            yield store
        finally:
            await call_all(pm.hook.shutdown, isolate=True, reverse=True, app=app)
    finally:
        await store.close()
