"""PostgreSQL, shared by every replica: the queue is the table, claimed with
`FOR UPDATE SKIP LOCKED`.

piccolo's PostgresEngine opens and closes the asyncpg pool; queries run on that pool's
connections directly. Each write is one statement (data-modifying CTEs), so it is one
round trip and atomic without BEGIN/COMMIT: measured here, 500 concurrent creates took
0.09 s that way against 0.18 s through piccolo's transaction and querystring layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from comfyui_server.core import StartupError, Task, TaskEvent
from piccolo.engine.postgres import PostgresEngine

from . import rows
from .base import SqlTaskStore
from .pg_batch import StatementBatcher
from .settings import DatabaseTarget

_MIGRATION_LOCK = 0x636F6D6679  # pg_advisory_xact_lock key: "comfy" in ASCII

_N = len(rows.INSERT_COLUMNS)
_CREATE = f"""
    WITH task AS (
        INSERT INTO {rows.TASK_TABLE} ({", ".join(rows.INSERT_COLUMNS)})
        VALUES ({rows.placeholders(1, _N)}) RETURNING id
    ), events AS (
        INSERT INTO {rows.EVENT_TABLE} ({", ".join(rows.EVENT_COLUMNS)})
        SELECT task.id, e.status, e.at, e.endpoint, e.detail
        FROM task, unnest(${_N + 1}::text[], ${_N + 2}::timestamptz[], ${_N + 3}::text[],
                          ${_N + 4}::text[]) WITH ORDINALITY AS e(status, at, endpoint, detail, n)
        ORDER BY e.n
    )
    SELECT id FROM task"""


def _save_with_event(update: str) -> str:
    return f"""
    WITH task AS ({update} RETURNING id)
    INSERT INTO {rows.EVENT_TABLE} ({", ".join(rows.EVENT_COLUMNS)})
    SELECT id, $16, $17, $18, $19 FROM task RETURNING task_id"""


_SAVE = {
    False: (
        rows.UPDATE_STATE + rows.NOT_ENDED + " RETURNING id",
        _save_with_event(rows.UPDATE_STATE + rows.NOT_ENDED),
    ),
    True: (rows.UPDATE_STATE + " RETURNING id", _save_with_event(rows.UPDATE_STATE)),
}

_CLAIM = f"""
    WITH picked AS (
        SELECT id FROM {rows.TASK_TABLE}
        WHERE status = 'queued' AND (owner IS NULL OR claimed_at < $3)
        ORDER BY id LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    UPDATE {rows.TASK_TABLE} AS t SET owner = $1, claimed_at = $2
    FROM picked WHERE t.id = picked.id
    RETURNING {rows.columns("t.")}"""

_RELEASE = (
    f"UPDATE {rows.TASK_TABLE} SET owner = NULL, claimed_at = NULL "
    "WHERE id = ANY($1::bigint[]) AND status = 'queued'"
)


async def _no_reset(connection: asyncpg.Connection) -> None:
    """asyncpg resets every connection it takes back (one more round trip per query,
    measured at ~8% of the server's time); we keep no session state to reset."""


class PostgresTaskStore(SqlTaskStore):
    backend = "postgres"

    def __init__(self, target: DatabaseTarget) -> None:
        super().__init__(target)
        self._engine: PostgresEngine | None = None
        self._batch = StatementBatcher(lambda: self.pool)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._engine is not None and self._engine.pool is not None, "store is not open"
        return self._engine.pool

    async def connect(self) -> None:
        # The engine's constructor checks the server version over a blocking connection of
        # its own, so it is built off the event loop.
        engine = await asyncio.to_thread(
            PostgresEngine, config={"dsn": self.target.location}, extensions=()
        )
        size = self.target.pool_size
        try:
            await engine.start_connection_pool(
                min_size=min(2, size), max_size=size, reset=_no_reset
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StartupError(f"database {self.target.display}: {exc}") from exc
        self._engine = engine

    async def close(self) -> None:
        await self._batch.close()
        engine, self._engine = self._engine, None
        if engine is not None and engine.pool is not None:
            await engine.close_connection_pool()

    def reading(self):
        return self.pool.acquire()

    @contextlib.asynccontextmanager
    async def migrating(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            yield conn

    async def _insert(self, task: Task, events: list[TaskEvent], owner: str | None) -> int:
        statuses = [e.status for e in events]
        times = [rows.utc(e.at) for e in events]
        endpoints = [e.endpoint for e in events]
        details = [e.detail for e in events]
        args = (*rows.insert_values(task, owner), statuses, times, endpoints, details)
        return (await self._batch.one_row(_CREATE, args))[0]

    def _is_duplicate(self, exc: Exception) -> bool:
        return (
            isinstance(exc, asyncpg.UniqueViolationError)
            and exc.constraint_name == rows.UNIQUE_CLIENT_TASK_ID
        )

    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool:
        plain, with_event = _SAVE[force]
        if event is None:
            sql, args = plain, rows.state_values(task)
        else:
            event_args = rows.event_values(task.id, event)[1:]
            sql, args = with_event, (*rows.state_values(task), *event_args)
        return await self._batch.row(sql, args, key=task.id) is not None

    async def _write_row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._batch.row(sql, args, key=args[0])

    async def _write(self, sql: str, *args: Any) -> list[Any]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def claim(self, owner: str, limit: int) -> list[Task]:
        now = dt.datetime.now(dt.UTC)
        lease = dt.timedelta(seconds=self.target.claim_lease)
        async with self.pool.acquire() as conn:
            found = await conn.fetch(_CLAIM, owner, now, now - lease, limit)
        return sorted(map(rows.decode_task, found), key=lambda t: t.id)

    async def release(self, task_ids: list[int]) -> None:
        if task_ids:
            async with self.pool.acquire() as conn:
                await conn.execute(_RELEASE, task_ids)
