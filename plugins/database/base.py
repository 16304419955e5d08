"""What the SQLite and PostgreSQL stores share: opening (with migrations), the reads, and
the duplicate-client_task_id rule. Each backend supplies its connections and the writes
whose fastest form differs (PostgreSQL does them in one statement each)."""

from __future__ import annotations

import datetime as dt
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Literal, Protocol, get_args

import msgspec
from comfyui_server.core import DuplicateClientTaskId, StartupError, Task, TaskEvent
from comfyui_server.core.models import FINAL_STATUSES, TaskStatus
from comfyui_server.core.store import TaskQuery

from . import rows
from .chores import Chores
from .migrate import head_version, schema_version, upgrade
from .outbox import Outbox
from .settings import DatabaseTarget

log = logging.getLogger(__name__)

REPLICA_TABLE = "comfyui_replica"
UNFINISHED = tuple(s for s in get_args(TaskStatus) if s not in FINAL_STATUSES)


class Connection(Protocol):
    """The slice of asyncpg's Connection we use; the SQLite store adapts its threads to it.
    SQL is written once, with PostgreSQL's `$1` placeholders."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    async def execute(self, sql: str, *args: Any) -> Any: ...

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> Any: ...


class SqlTaskStore(Outbox, Chores, ABC):
    durable = True
    backend: ClassVar[Literal["sqlite", "postgres"]]

    def __init__(self, target: DatabaseTarget) -> None:
        self.target = target
        self.claim_lease = target.claim_lease

    # ---- connections (per backend) ---------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open connections, without touching the schema."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def reading(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads that sees every committed write."""

    @abstractmethod
    def migrating(self) -> AbstractAsyncContextManager[Connection]:
        """A transaction that holds the migration lock, so replicas starting together apply
        each migration once."""

    # ---- writes (per backend) ------------------------------------------------------------

    @abstractmethod
    async def _write(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        """One statement on a writing connection, atomic by itself; returns its rows."""

    @abstractmethod
    async def _insert(self, task: Task, events: list[TaskEvent], owner: str | None) -> int:
        """Insert task (claimed by `owner`, if given) and events in one transaction; return
        the new id."""

    @abstractmethod
    def _is_duplicate(self, exc: Exception) -> bool:
        """Whether `exc` is the unique index on client_task_id refusing a row."""

    @abstractmethod
    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool: ...

    @abstractmethod
    async def claim(self, owner: str, limit: int) -> list[Task]: ...

    @abstractmethod
    async def release(self, task_ids: list[int]) -> None: ...

    async def _write_row(self, sql: str, *args: Any) -> Sequence[Any] | None:
        """A write of the one row named by its first argument, returning a row that starts
        with that value, or nothing. PostgreSQL batches these (pg_batch.py); SQLite's
        writer thread groups every write anyway."""
        found = await self._write(sql, *args)
        return found[0] if found else None

    # ---- shared ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self.connect()
        try:
            if self.target.auto_migrate:
                for migration in await upgrade(self):
                    log.info("database: applied migration %s", migration.label)
            else:
                current, head = await schema_version(self), head_version()
                if current < head:
                    raise StartupError(
                        f"DB_AUTO_MIGRATE: the database schema is at version {current}, this "
                        f"version needs {head}; run `comfyui-server db upgrade`"
                    )
        except BaseException:
            await self.close()
            raise

    async def create(
        self, task: Task, events: list[TaskEvent], *, owner: str | None = None
    ) -> Task:
        try:
            task_id = await self._insert(task, events, owner)
        except Exception as exc:
            if task.client_task_id is None or not self._is_duplicate(exc):
                raise
            existing = await self.find(task.client_task_id)
            if existing is None:  # the holder vanished in between: report the original error
                raise
            raise DuplicateClientTaskId(existing) from None
        return msgspec.structs.replace(task, id=task_id)

    async def _fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        async with self.reading() as conn:
            return await conn.fetch(sql, *args)

    async def get(self, task_id: int) -> Task | None:
        found = await self._fetch(f"{rows.SELECT_TASK} WHERE id = $1", task_id)
        return rows.decode_task(found[0]) if found else None

    async def find(self, client_task_id: str) -> Task | None:
        found = await self._fetch(f"{rows.SELECT_TASK} WHERE client_task_id = $1", client_task_id)
        return rows.decode_task(found[0]) if found else None

    async def events(self, task_id: int) -> list[TaskEvent]:
        return [rows.decode_event(r) for r in await self._fetch(rows.SELECT_EVENTS, task_id)]

    async def count_queued(self) -> int:
        found = await self._fetch(f"SELECT count(*) FROM {rows.TASK_TABLE} WHERE status = 'queued'")
        return found[0][0]

    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        conditions, args = [], []
        for column, value in (
            ("status", query.status),
            ("workflow", query.workflow),
            ("client", query.client),
            ("error_code", query.error_code),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        if query.since is not None:
            args.append(rows.utc(query.since))  # SQLite gets it as comparable ISO text
            conditions.append(f"created_at >= ${len(args)}")
        if query.before_id is not None:
            args.append(query.before_id)
            conditions.append(f"id < ${len(args)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(query.limit)
        found = await self._fetch(
            f"{rows.SELECT_TASK}{where} ORDER BY id DESC LIMIT ${len(args)}", *args
        )
        return [rows.decode_task(r) for r in found]

    # ---- replicas ----------------------------------------------------------------------

    async def heartbeat(self, owner: str) -> None:
        await self._write(
            f"INSERT INTO {REPLICA_TABLE} (owner, seen_at) VALUES ($1, $2) "
            "ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
            owner,
            dt.datetime.now(dt.UTC),
        )

    async def retire(self, owner: str) -> None:
        await self._write(f"DELETE FROM {REPLICA_TABLE} WHERE owner = $1", owner)

    async def adopt(self, owner: str, stale_after: float, *, own: bool = False) -> list[Task]:
        # The owner test sits in the outer WHERE too: PostgreSQL re-checks it after waiting
        # for a row another replica is adopting, so a task is adopted once.
        orphan = (
            f"(owner IS NULL{' OR owner = $1' if own else ''} OR owner NOT IN "
            f"(SELECT owner FROM {REPLICA_TABLE} WHERE seen_at >= $2))"
        )
        if own:  # claims from our earlier life are not leases anyone waits on: free them
            await self._write(
                f"UPDATE {rows.TASK_TABLE} SET owner = NULL, claimed_at = NULL "
                "WHERE status = 'queued' AND owner = $1",
                owner,
            )
        found = await self._write(
            f"""UPDATE {rows.TASK_TABLE} SET owner = $1
            WHERE status IN ('dispatched', 'running') AND {orphan} AND id IN (
                SELECT id FROM {rows.TASK_TABLE}
                WHERE status IN ('dispatched', 'running') AND {orphan})
            RETURNING {rows.columns()}""",
            owner,
            dt.datetime.now(dt.UTC) - dt.timedelta(seconds=stale_after),
        )
        return sorted(map(rows.decode_task, found), key=lambda t: t.id)

    async def mark_notified(self, task_id: int) -> None:
        await self._write_row(
            f"UPDATE {rows.TASK_TABLE} SET notified_at = $2 WHERE id = $1 RETURNING id",
            task_id,
            dt.datetime.now(dt.UTC),
        )

    async def claim_unnotified(self, stale_after: float, limit: int) -> list[Task]:
        now = dt.datetime.now(dt.UTC)
        ended = "status IN ('completed', 'failed', 'cancelled') AND notified_at IS NULL"
        found = await self._write(
            f"""UPDATE {rows.TASK_TABLE} SET notified_at = $1
            WHERE {ended} AND id IN (
                SELECT id FROM {rows.TASK_TABLE}
                WHERE {ended} AND finished_at < $2 ORDER BY id LIMIT $3)
            RETURNING {rows.columns()}""",
            now,
            now - dt.timedelta(seconds=stale_after),
            limit,
        )
        return sorted(map(rows.decode_task, found), key=lambda t: t.id)

    async def unfinished(self) -> list[Task]:
        statuses = ", ".join(f"'{s}'" for s in UNFINISHED)
        found = await self._fetch(f"{rows.SELECT_TASK} WHERE status IN ({statuses}) ORDER BY id")
        return [rows.decode_task(r) for r in found]
