"""Chores on both backends (see `core.models.Chore`): one SQL text each (`$N` placeholders),
every write a single statement, so it is atomic without a transaction on SQLite and
PostgreSQL alike, like the webhook outbox beside it.

A claim is a conditional UPDATE: it sets `owner` and `lease_until` only on rows nobody holds
(or whose holder's lease ran out), and the test is repeated in the outer WHERE, so of two
replicas racing for one chore exactly one gets it back: PostgreSQL re-checks the outer
WHERE clause after waiting for the other writer's row lock; SQLite runs writes one at a time.
Finishing and retrying are conditional on still being the holder.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import msgspec
from comfyui_server.core.models import Chore, utcnow
from comfyui_server.core.store import new_chore_id

from .rows import placeholders, utc

CHORE_TABLE = "comfyui_chore"
CHORE_COLUMNS = (
    "id",
    "kind",
    "task_id",
    "data",
    "attempts",
    "last_error",
    "created_at",
    "due_at",
    "finished_at",
)
_COLUMNS = ", ".join(CHORE_COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM {CHORE_TABLE}"

_INSERT = (
    f"INSERT INTO {CHORE_TABLE} ({_COLUMNS}, owner, lease_until) "
    f"VALUES ({placeholders(1, len(CHORE_COLUMNS) + 2)})"
)
_CLAIMABLE = (
    "kind = $1 AND finished_at IS NULL AND due_at <= $3 AND (owner IS NULL OR lease_until < $3)"
)
"""`$1` the kind, `$3` now."""
_CLAIM = f"""UPDATE {CHORE_TABLE} SET owner = $2, lease_until = $4
    WHERE {_CLAIMABLE} AND id IN (
        SELECT id FROM {CHORE_TABLE} WHERE {_CLAIMABLE} ORDER BY due_at, id LIMIT $5)
    RETURNING {_COLUMNS}"""
_HELD = "id = $1 AND owner = $2 AND finished_at IS NULL"
_FINISH = f"""UPDATE {CHORE_TABLE} SET
        attempts = attempts + 1, last_error = $3, finished_at = $4,
        owner = NULL, lease_until = NULL
    WHERE {_HELD}
    RETURNING id"""
_RETRY = f"""UPDATE {CHORE_TABLE} SET
        attempts = attempts + 1, last_error = $3, due_at = $4, data = COALESCE($5, data),
        owner = NULL, lease_until = NULL
    WHERE {_HELD}
    RETURNING id"""
_RELEASE = (
    f"UPDATE {CHORE_TABLE} SET owner = NULL, lease_until = NULL "
    "WHERE owner = $1 AND finished_at IS NULL"
)

_data = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder()


def _time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _json(data: dict[str, Any]) -> str:
    return _encode.encode(data).decode()


def decode_chore(row: Sequence[Any]) -> Chore:
    return Chore(
        id=row[0],
        kind=row[1],
        task_id=row[2],
        data=_data.decode(row[3]),
        attempts=row[4],
        last_error=row[5],
        created_at=_time(row[6]),
        due_at=_time(row[7]),
        finished_at=_time(row[8]),
    )


class Chores:
    """The TaskStore's chore methods, mixed into SqlTaskStore; each backend supplies
    `_fetch` (a read) and `_write` (one statement on the writing connection)."""

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    @abstractmethod
    async def _write(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    async def add_chore(
        self,
        kind: str,
        task_id: int | None,
        data: dict[str, Any],
        *,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Chore:
        now = utcnow()
        chore = Chore(
            id=new_chore_id(),
            kind=kind,
            task_id=task_id,
            data=_data.decode(_json(data)),  # as it will be read back
            created_at=now,
            due_at=now,
        )
        lease_until = now + dt.timedelta(seconds=lease) if owner is not None else None
        await self._write(
            _INSERT,
            chore.id,
            kind,
            task_id,
            _json(data),
            0,
            None,
            now,
            now,
            None,
            owner,
            lease_until,
        )
        return chore

    async def get_chore(self, chore_id: str) -> Chore | None:
        found = await self._fetch(f"{_SELECT} WHERE id = $1", chore_id)
        return decode_chore(found[0]) if found else None

    async def task_chores(self, task_id: int, kind: str | None = None) -> list[Chore]:
        if kind is None:
            found = await self._fetch(
                f"{_SELECT} WHERE task_id = $1 ORDER BY created_at, id", task_id
            )
        else:
            found = await self._fetch(
                f"{_SELECT} WHERE task_id = $1 AND kind = $2 ORDER BY created_at, id",
                task_id,
                kind,
            )
        return [decode_chore(r) for r in found]

    async def claim_chores(self, kind: str, owner: str, lease: float, limit: int) -> list[Chore]:
        now = utcnow()
        found = await self._write(
            _CLAIM, kind, owner, now, now + dt.timedelta(seconds=lease), limit
        )
        return sorted(map(decode_chore, found), key=lambda c: (c.due_at, c.id))

    async def finish_chore(self, chore_id: str, owner: str, *, error: str | None = None) -> bool:
        return bool(await self._write(_FINISH, chore_id, owner, error, utcnow()))

    async def retry_chore(
        self,
        chore_id: str,
        owner: str,
        due_at: dt.datetime,
        error: str,
        *,
        data: dict[str, Any] | None = None,
    ) -> bool:
        found = await self._write(
            _RETRY,
            chore_id,
            owner,
            error,
            utc(due_at),
            None if data is None else _json(data),
        )
        return bool(found)

    async def release_chores(self, owner: str) -> None:
        await self._write(_RELEASE, owner)
