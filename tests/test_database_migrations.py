"""Migrations: from an empty database, from one at an older version with rows in it, by
several replicas at once, and through `comfyui-server db upgrade`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys

import pytest
from comfyui_server.core import OutputRef, StartupError, Task
from comfyui_server.plugins.database import store_for
from comfyui_server.plugins.database.migrate import (
    Migration,
    discover,
    head_version,
    schema_version,
    upgrade,
)
from comfyui_server.plugins.database.settings import DatabaseTarget, parse_database_url

ADD_PRIORITY = Migration(
    version=head_version() + 1,
    name="test_priority",
    description="a later migration, for the test",
    sql={
        "postgres": ["ALTER TABLE comfyui_task ADD COLUMN priority INTEGER NOT NULL DEFAULT 5"],
        "sqlite": ["ALTER TABLE comfyui_task ADD COLUMN priority INTEGER NOT NULL DEFAULT 5"],
    },
)


def unopened(url: str):
    return store_for(DatabaseTarget(*parse_database_url(url)))


async def test_shipped_migrations_are_numbered_from_one():
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].label == "0001_initial"
    assert all(set(m.sql) == {"sqlite", "postgres"} for m in migrations)


async def test_upgrade_from_empty_applies_everything_once(db_url):
    store = unopened(db_url)
    await store.connect()
    try:
        assert await schema_version(store) == 0
        applied = await upgrade(store)
        assert [m.version for m in applied] == [m.version for m in discover()]
        assert await schema_version(store) == head_version()
        assert await upgrade(store) == []
    finally:
        await store.close()


async def test_rows_survive_upgrades_from_version_one(db_url):
    """Rows written by the first schema (in its own SQL, as an old release wrote them) are
    read back intact through every later migration, including one added here."""
    store = unopened(db_url)
    await store.connect()
    created_at = dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    try:
        assert [m.version for m in await upgrade(store, to=1)] == [1]
        async with store.migrating() as conn:
            await conn.execute(
                "INSERT INTO comfyui_task (client_task_id, workflow, params, status, "
                "outputs, inputs, s3_key, created_at) "
                "VALUES ('kept', 'text2img', $1, 'completed', $2, '[]', 'k', $3)",
                '{"prompt": "a cat"}',
                '[{"key": "k", "filename": "a.png", "node_id": "9", '
                '"content_type": "image/png", "size": 3}]',
                created_at,
            )
            await conn.execute(
                "INSERT INTO comfyui_task_event (task_id, status, at) VALUES (1, 'queued', $1)",
                created_at,
            )
        applied = await upgrade(store, [*discover(), ADD_PRIORITY])
        assert [m.version for m in applied] == list(range(2, ADD_PRIORITY.version + 1))
        task = await store.find("kept")
        assert task == await store.get(1)
        assert (task.id, task.workflow, task.params, task.status) == (
            1,
            "text2img",
            {"prompt": "a cat"},
            "completed",
        )
        assert task.outputs == (
            OutputRef(key="k", filename="a.png", node_id="9", content_type="image/png", size=3),
        )
        assert task.created_at == created_at and task.client is None
        assert [(e.status, e.at) for e in await store.events(1)] == [("queued", created_at)]
        async with store.reading() as conn:
            assert (await conn.fetch("SELECT priority FROM comfyui_task"))[0][0] == 5
        assert await schema_version(store) == ADD_PRIORITY.version
        newer = await store.create(Task(workflow="w", status="queued", client="key-a"), [])
        assert newer.id == 2 and (await store.get(newer.id)).client == "key-a"
    finally:
        await store.close()


async def test_replicas_starting_together_apply_each_migration_once(db_url):
    stores = [unopened(db_url) for _ in range(4)]
    for store in stores:
        await store.connect()
    try:
        results = await asyncio.gather(*(upgrade(s) for s in stores))
        assert sorted(m.version for r in results for m in r) == [m.version for m in discover()]
        async with stores[0].reading() as conn:
            rows = await conn.fetch("SELECT version FROM comfyui_schema_migration")
        assert sorted(r[0] for r in rows) == [m.version for m in discover()]
    finally:
        for store in stores:
            await store.close()


async def test_without_auto_migrate_an_old_schema_stops_start_up(db_url):
    store = store_for(DatabaseTarget(*parse_database_url(db_url), auto_migrate=False))
    with pytest.raises(StartupError, match="db upgrade"):
        await store.open()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real entry point in a child process, as an operator runs it."""
    code = "from comfyui_server.core.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "--env-file", "", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_command_prints_what_it_applied(db_url):
    first = run_cli("db", "upgrade", DATABASE_URL=db_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    assert f"schema at version {head_version()}" in first.stdout
    again = run_cli("db", "upgrade", DATABASE_URL=db_url)
    assert again.returncode == 0, again.stderr
    assert "nothing to apply" in again.stdout

    async def opens_without_migrating() -> None:
        store = store_for(DatabaseTarget(*parse_database_url(db_url), auto_migrate=False))
        await store.open()
        await store.close()

    asyncio.run(opens_without_migrating())


def test_db_upgrade_reports_bad_settings():
    result = run_cli("db", "upgrade", DATABASE_URL="mysql://h/d")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
