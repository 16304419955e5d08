"""The durable task store: SQLite by default, PostgreSQL when DATABASE_URL or RDB_* say so.
See docs/database.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfyui_server.core import Settings, hookimpl

from .base import SqlTaskStore
from .postgres import PostgresTaskStore
from .settings import DatabaseTarget, resolve_target
from .sqlite import SQLiteTaskStore

if TYPE_CHECKING:
    import click

__all__ = ["PostgresTaskStore", "SQLiteTaskStore", "SqlTaskStore", "store_for"]


def store_for(target: DatabaseTarget) -> SqlTaskStore:
    """An unopened store for `target`; `open()` connects and migrates."""
    if target.backend == "postgres":
        return PostgresTaskStore(target)
    return SQLiteTaskStore(target)


@hookimpl(trylast=True)
def task_store(settings: Settings) -> SqlTaskStore:
    # Settings are checked here, while the app is built, so a bad variable stops start-up
    # before anything listens; connecting waits for the lifespan's store.open().
    return store_for(resolve_target(settings))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import db

    cli.add_command(db)
