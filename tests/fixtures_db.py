"""Database fixtures: a fresh, empty database per test on SQLite and on PostgreSQL.

PostgreSQL is the real server at COMFYUI_SERVER_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/postgres); each test gets a database of its own, so
pytest-xdist workers never share one. When PostgreSQL cannot be reached the postgres cases
fail (CI requires them) unless COMFYUI_SERVER_SKIP_POSTGRES=1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest
from comfyui_server.core import Settings
from comfyui_server.plugins.database import SqlTaskStore, store_for
from comfyui_server.plugins.database.settings import resolve_target

Backend = Literal["sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
POSTGRES_ADMIN_URL = os.environ.get(
    "COMFYUI_SERVER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` to the end from sync code, even when this thread already runs a loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _postgres_url(name: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def make_db_url(tmp_path: Path) -> Iterator[Callable[[Backend], str]]:
    """`make_db_url(backend) -> url` of a new, empty database, dropped after the test.
    SQLite urls are absolute: `sqlite:////tmp/.../comfyui-server-N.sqlite3`."""
    created: list[str] = []

    def make(backend: Backend) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'comfyui-server-{uuid.uuid4().hex[:8]}.sqlite3'}"
        if os.environ.get("COMFYUI_SERVER_SKIP_POSTGRES") == "1":
            pytest.skip("COMFYUI_SERVER_SKIP_POSTGRES=1")
        name = f"comfyui_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        try:
            _run(_admin(f'CREATE DATABASE "{name}"'))
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            pytest.fail(
                f"PostgreSQL at {POSTGRES_ADMIN_URL} is required ({exc!r}); "
                "set COMFYUI_SERVER_SKIP_POSTGRES=1 to skip these tests"
            )
        created.append(name)
        return _postgres_url(name)

    yield make
    for name in created:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, make_db_url: Callable[[Backend], str]) -> str:
    """The URL of a fresh database, once per backend: pass it as DATABASE_URL."""
    return make_db_url(request.param)


@pytest.fixture
async def task_store_factory() -> AsyncIterator[Callable[..., Awaitable[SqlTaskStore]]]:
    """`await factory(url, **env)` -> an opened (migrated) store, closed after the test.
    `env` holds extra settings by variable name, e.g. `DB_CLAIM_LEASE="0.2"`."""
    stores: list[SqlTaskStore] = []

    async def factory(url: str, **env: str) -> SqlTaskStore:
        settings = Settings(env={"DATABASE_URL": url, **env})
        store = store_for(resolve_target(settings))
        await store.open()
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
async def task_store(
    db_url: str, task_store_factory: Callable[..., Awaitable[SqlTaskStore]]
) -> SqlTaskStore:
    """An opened store on `db_url` (so: once per backend)."""
    return await task_store_factory(db_url)
