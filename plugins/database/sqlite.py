"""The embedded default: one SQLite file in WAL mode.

Two long-lived connections, one that writes and one that reads, each on its own thread
(sqlite_thread.py), instead of piccolo's SQLiteEngine, which opens a connection (and a
thread) per query: measured here, a create took 1.8 ms through it and 0.28 ms on a kept
connection. Each write is one call on the writer's thread, and the writes queued while it
was busy share one transaction (group commit), so 500 concurrent submissions cost a few
commits instead of 500; the busy timeout covers other processes on the same file.
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

from comfyui_server.core import StartupError, Task, TaskEvent

from . import rows
from .base import SqlTaskStore
from .settings import DatabaseTarget
from .sqlite_thread import SessionConnection, SqliteThread


@functools.lru_cache(maxsize=256)
def _sqlite_sql(sql: str) -> str:
    """`$1` -> `?1`: SQLite's numbered parameters, so one SQL text serves both backends."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


def _adapt(value: Any) -> Any:
    # Fixed-width UTC text, so times compare correctly as strings (claim leases do).
    if isinstance(value, dt.datetime):
        return rows.utc(value).isoformat(timespec="microseconds")
    return value


def _args(args: Iterable[Any]) -> list[Any]:
    return [_adapt(a) for a in args]


class _Reader:
    """The reading thread behind asyncpg's `fetch`."""

    def __init__(self, thread: SqliteThread) -> None:
        self._thread = thread

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        sql, values = _sqlite_sql(sql), _args(args)
        return await self._thread.call(lambda conn: conn.execute(sql, values).fetchall())

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        raise sqlite3.NotSupportedError("the reading connection does not write")


class _Session:
    """A migration's transaction behind asyncpg's fetch/execute/executemany."""

    def __init__(self, session: SessionConnection) -> None:
        self._session = session

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        return await self._session.run(_sqlite_sql(sql), _args(args))

    async def execute(self, sql: str, *args: Any) -> None:
        await self._session.run(_sqlite_sql(sql), _args(args))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self._session.run_many(_sqlite_sql(sql), [_args(r) for r in args])


class SQLiteTaskStore(SqlTaskStore):
    backend = "sqlite"

    def __init__(self, target: DatabaseTarget) -> None:
        super().__init__(target)
        self._writer: SqliteThread | None = None
        self._reader: SqliteThread | None = None

    def _thread(self, *pragmas: str, writes: bool) -> SqliteThread:
        return SqliteThread(
            self.target.location,
            timeout=self.target.busy_timeout,
            pragmas=(
                "PRAGMA journal_mode = WAL",
                f"PRAGMA synchronous = {self.target.sqlite_synchronous}",
                "PRAGMA foreign_keys = ON",
                *pragmas,
            ),
            writes=writes,
        )

    async def connect(self) -> None:
        folder = Path(self.target.location).parent
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            self._writer = self._thread(writes=True)
            await self._writer.start()
            self._reader = self._thread("PRAGMA query_only = ON", writes=False)
            await self._reader.start()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise StartupError(f"database {self.target.display}: {exc}") from exc
            raise

    async def close(self) -> None:
        threads = [self._writer, self._reader]
        self._writer = self._reader = None
        for thread in threads:
            if thread is not None:
                await thread.close()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[_Reader]:
        assert self._reader is not None, "store is not open"
        yield _Reader(self._reader)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        assert self._writer is not None, "store is not open"
        async with self._writer.session() as session:
            yield _Session(session)

    def migrating(self):
        return self._session()

    async def _write(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        """One statement, in the next group commit."""
        assert self._writer is not None, "store is not open"
        sql, values = _sqlite_sql(sql), _args(args)
        return await self._writer.call(lambda conn: conn.execute(sql, values).fetchall())

    async def _insert(self, task: Task, events: list[TaskEvent], owner: str | None) -> int:
        assert self._writer is not None, "store is not open"
        columns = ", ".join(rows.INSERT_COLUMNS)
        values = rows.placeholders(1, len(rows.INSERT_COLUMNS))
        insert = _sqlite_sql(
            f"INSERT INTO {rows.TASK_TABLE} ({columns}) VALUES ({values}) RETURNING id"
        )
        task_values = _args(rows.insert_values(task, owner))
        insert_event = _sqlite_sql(rows.INSERT_EVENT)

        def write(conn: sqlite3.Connection) -> int:
            ((task_id,),) = conn.execute(insert, task_values).fetchall()
            conn.executemany(insert_event, [_args(rows.event_values(task_id, e)) for e in events])
            return task_id

        return await self._writer.call(write)

    def _is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "client_task_id" in str(exc)

    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool:
        assert self._writer is not None, "store is not open"
        condition = "" if force else rows.NOT_ENDED
        update = _sqlite_sql(f"{rows.UPDATE_STATE}{condition} RETURNING id")
        state = _args(rows.state_values(task))
        insert_event = _sqlite_sql(rows.INSERT_EVENT)
        event_values = _args(rows.event_values(task.id, event)) if event is not None else None

        def write(conn: sqlite3.Connection) -> bool:
            if not conn.execute(update, state).fetchall():
                return False
            if event_values is not None:
                conn.execute(insert_event, event_values)
            return True

        return await self._writer.call(write)

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
