"""A small versioned migration runner of our own (docs/database.md says why not piccolo's).

Migrations are the modules `migrations/vNNNN_name.py`; each is applied in its own
transaction together with its row in `comfyui_schema_migration`, under a lock that makes
replicas starting at once apply it exactly once.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import migrations as migrations_package

if TYPE_CHECKING:
    from .base import SqlTaskStore

MIGRATION_TABLE = "comfyui_schema_migration"
_MODULE_NAME = re.compile(r"^v(\d{4})_(\w+)$")
_BOOKKEEPING = {
    "postgres": f"""CREATE TABLE IF NOT EXISTS {MIGRATION_TABLE} (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)""",
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {MIGRATION_TABLE} (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)""",
}
_EXISTS = {
    "postgres": f"SELECT to_regclass('{MIGRATION_TABLE}') IS NOT NULL",
    "sqlite": f"SELECT count(*) FROM sqlite_master WHERE name = '{MIGRATION_TABLE}'",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    description: str
    sql: Mapping[str, Sequence[str]]
    """Statements per backend ("sqlite", "postgres")."""

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def discover() -> list[Migration]:
    """The migrations shipped in the `migrations` package, checked to run 1, 2, 3, ..."""
    found = []
    for info in pkgutil.iter_modules(migrations_package.__path__):
        match = _MODULE_NAME.match(info.name)
        if match is None:
            continue
        module = importlib.import_module(f"{migrations_package.__name__}.{info.name}")
        found.append(Migration(int(match[1]), match[2], module.DESCRIPTION, module.SQL))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, ...: {[m.label for m in found]}")
    return found


def head_version(migrations: Sequence[Migration] | None = None) -> int:
    migrations = discover() if migrations is None else migrations
    return migrations[-1].version if migrations else 0


async def schema_version(store: SqlTaskStore) -> int:
    """The newest applied migration; 0 for an empty database. Reads only."""
    async with store.reading() as conn:
        (exists,) = (await conn.fetch(_EXISTS[store.backend]))[0]
        if not exists:
            return 0
        (version,) = (await conn.fetch(f"SELECT max(version) FROM {MIGRATION_TABLE}"))[0]
    return version or 0


async def upgrade(
    store: SqlTaskStore,
    migrations: Sequence[Migration] | None = None,
    *,
    to: int | None = None,
) -> list[Migration]:
    """Apply every pending migration (up to version `to`); return those applied here."""
    migrations = discover() if migrations is None else migrations
    current = await schema_version(store)
    applied = []
    for migration in migrations:
        if migration.version <= current or (to is not None and migration.version > to):
            continue
        async with store.migrating() as conn:
            await conn.execute(_BOOKKEEPING[store.backend])
            (done,) = (
                await conn.fetch(
                    f"SELECT count(*) FROM {MIGRATION_TABLE} WHERE version = $1",
                    migration.version,
                )
            )[0]
            if done:  # another replica got there first
                continue
            for statement in migration.sql[store.backend]:
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {MIGRATION_TABLE} (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                dt.datetime.now(dt.UTC),
            )
        applied.append(migration)
    return applied
