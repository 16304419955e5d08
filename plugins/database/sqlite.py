"""The embedded default: one SQLite file in WAL mode.

Two long-lived aiosqlite connections, one that writes and one that reads, instead of
piccolo's SQLiteEngine, which opens a connection (and a thread) per query: measured here,
a create took 1.8 ms through it and 0.28 ms on a kept connection. Writes queue on one
asyncio lock, so 500 concurrent submissions wait their turn in this process instead of
racing for SQLite's file lock; the busy timeout covers other processes on the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
from comfyui_server.core import StartupError, Task, TaskEvent

from . import rows
from .base import SqlTaskStore
from .settings import DatabaseTarget


@functools.lru_cache(maxsize=256)
def _sqlite_sql(sql: str) -> str:
    """`$1` -> `?1`: SQLite's numbered parameters, so one SQL text serves both backends."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


def _adapt(value: Any) -> Any:
    # Fixed-width UTC text, so times compare correctly as strings (claim leases do).
    if isinstance(value, dt.datetime):
        return rows.utc(value).isoformat(timespec="microseconds")
    return value


class _Connection:
    """aiosqlite behind asyncpg's fetch/execute/executemany."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        return await self._conn.execute_fetchall(_sqlite_sql(sql), [_adapt(a) for a in args])

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute_fetchall(_sqlite_sql(sql), [_adapt(a) for a in args])

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(_sqlite_sql(sql), [[_adapt(a) for a in r] for r in args])


class SQLiteTaskStore(SqlTaskStore):
    backend = "sqlite"

    def __init__(self, target: DatabaseTarget) -> None:
        super().__init__(target)
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._raw: list[aiosqlite.Connection] = []
        self._lock: asyncio.Lock | None = None

    async def _open_connection(self, *pragmas: str) -> _Connection:
        conn = await aiosqlite.connect(
            self.target.location, isolation_level=None, timeout=self.target.busy_timeout
        )
        self._raw.append(conn)
        for pragma in (
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {self.target.sqlite_synchronous}",
            "PRAGMA foreign_keys = ON",
            *pragmas,
        ):
            await conn.execute_fetchall(pragma)
        return _Connection(conn)

    async def connect(self) -> None:
        folder = Path(self.target.location).parent
        self._lock = asyncio.Lock()  # made here, on the loop that will use it
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            self._writer = await self._open_connection()
            self._reader = await self._open_connection("PRAGMA query_only = ON")
        except BaseException as exc:
            await self.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise StartupError(f"database {self.target.display}: {exc}") from exc
            raise

    async def close(self) -> None:
        raw, self._raw = self._raw, []
        self._writer = self._reader = None
        for conn in raw:
            await conn.close()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[_Connection]:
        assert self._reader is not None, "store is not open"
        yield self._reader

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        """BEGIN IMMEDIATE takes the file's write lock up front, so a transaction never
        fails half-way for lack of it. aiosqlite runs statements in order on one thread,
        so even a cancelled caller's ROLLBACK lands before the next BEGIN."""
        assert self._writer is not None and self._lock is not None, "store is not open"
        conn = self._writer
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise

    def migrating(self):
        return self._transaction()

    async def _write(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        """One statement, atomic by itself: no BEGIN/COMMIT round trips."""
        assert self._writer is not None and self._lock is not None, "store is not open"
        async with self._lock:
            return await self._writer.fetch(sql, *args)

    async def _insert(self, task: Task, events: list[TaskEvent], owner: str | None) -> int:
        columns = ", ".join(rows.INSERT_COLUMNS)
        values = rows.placeholders(1, len(rows.INSERT_COLUMNS))
        async with self._transaction() as conn:
            ((task_id,),) = await conn.fetch(
                f"INSERT INTO {rows.TASK_TABLE} ({columns}) VALUES ({values}) RETURNING id",
                *rows.insert_values(task, owner),
            )
            events_rows = [rows.event_values(task_id, e) for e in events]
            await conn.executemany(rows.INSERT_EVENT, events_rows)
        return task_id

    def _is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "client_task_id" in str(exc)

    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool:
        update = rows.UPDATE_STATE + ("" if force else rows.NOT_ENDED) + " RETURNING id"
        if event is None:
            return bool(await self._write(update, *rows.state_values(task)))
        async with self._transaction() as conn:
            if not await conn.fetch(update, *rows.state_values(task)):
                return False
            await conn.execute(rows.INSERT_EVENT, *rows.event_values(task.id, event))
        return True

    async def claim(self, owner: str, limit: int) -> list[Task]:
        now = dt.datetime.now(dt.UTC)
        found = await self._write(
            f"""UPDATE {rows.TASK_TABLE} SET owner = $1, claimed_at = $2
            WHERE id IN (
                SELECT id FROM {rows.TASK_TABLE}
                WHERE status = 'queued' AND (owner IS NULL OR claimed_at < $3)
                ORDER BY id LIMIT $4)
            RETURNING {rows.columns()}""",
            owner,
            now,
            now - dt.timedelta(seconds=self.target.claim_lease),
            limit,
        )
        return sorted(map(rows.decode_task, found), key=lambda t: t.id)

    async def release(self, task_ids: list[int]) -> None:
        if task_ids:
            await self._write(
                f"UPDATE {rows.TASK_TABLE} SET owner = NULL, claimed_at = NULL "
                f"WHERE id IN ({rows.placeholders(1, len(task_ids))}) AND status = 'queued'",
                *task_ids,
            )
