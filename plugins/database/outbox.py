"""The webhook outbox on both backends: one SQL text each (`$N` placeholders), every write a
single statement, so it is atomic without a transaction on SQLite and PostgreSQL alike.

A claim is a conditional UPDATE: it sets `owner` and `lease_until` only where nobody holds
the row (or the holder's lease ran out), so of two replicas racing for one delivery exactly
one gets a row back. PostgreSQL re-checks the WHERE clause after waiting for the other
writer's row lock; SQLite runs writes one at a time.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

from comfyui_server.core.models import WebhookDelivery, utcnow

from .rows import placeholders, utc

DELIVERY_TABLE = "comfyui_webhook_delivery"
DELIVERY_COLUMNS = (
    "id",
    "task_id",
    "event",
    "url",
    "body",
    "status",
    "attempts",
    "last_status",
    "last_error",
    "created_at",
    "next_attempt_at",
    "expires_at",
    "finished_at",
)
_COLUMNS = ", ".join(DELIVERY_COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM {DELIVERY_TABLE}"
_FREE = "(owner IS NULL OR lease_until < $2)"
"""Nobody holds the row; `$2` is now."""

_INSERT = (
    f"INSERT INTO {DELIVERY_TABLE} ({_COLUMNS}, owner, lease_until) "
    f"VALUES ({placeholders(1, len(DELIVERY_COLUMNS) + 2)}) RETURNING id"
)
_PENDING = f"""{_SELECT}
    WHERE status = 'pending' AND next_attempt_at <= $1 AND {_FREE}
    ORDER BY next_attempt_at, id LIMIT $3"""
_CLAIM = f"""UPDATE {DELIVERY_TABLE} SET owner = $3, lease_until = $4
    WHERE id = $1 AND status = 'pending' AND next_attempt_at <= $2
        AND (owner IS NULL OR owner = $3 OR lease_until < $2)
    RETURNING {_COLUMNS}"""
_SAVE = f"""UPDATE {DELIVERY_TABLE} SET
        status = $3, attempts = $4, last_status = $5, last_error = $6,
        next_attempt_at = $7, finished_at = $8, owner = NULL, lease_until = NULL
    WHERE id = $1 AND owner = $2
    RETURNING id"""
_RELEASE = f"UPDATE {DELIVERY_TABLE} SET owner = NULL, lease_until = NULL WHERE owner = $1"


def _time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def decode_delivery(row: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row[0],
        task_id=row[1],
        event=row[2],
        url=row[3],
        body=bytes(row[4]),
        status=row[5],
        attempts=row[6],
        last_status=row[7],
        last_error=row[8],
        created_at=_time(row[9]),
        next_attempt_at=_time(row[10]),
        expires_at=_time(row[11]),
        finished_at=_time(row[12]),
    )


def delivery_values(d: WebhookDelivery) -> tuple[Any, ...]:
    return (
        d.id,
        d.task_id,
        d.event,
        d.url,
        d.body,
        d.status,
        d.attempts,
        d.last_status,
        d.last_error,
        utc(d.created_at),
        utc(d.next_attempt_at),
        utc(d.expires_at),
        utc(d.finished_at),
    )


class Outbox:
    """The TaskStore's outbox methods, mixed into SqlTaskStore; each backend supplies
    `_fetch` (a read) and `_write` (one statement on the writing connection)."""

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    @abstractmethod
    async def _write(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    @abstractmethod
    async def _write_row(self, sql: str, *args: Any) -> Sequence[Any] | None:
        """A write of the one row named by `args[0]`; the row it returned, if any."""

    async def add_delivery(
        self, delivery: WebhookDelivery, *, owner: str | None = None, lease: float = 0.0
    ) -> None:
        lease_until = utcnow() + dt.timedelta(seconds=lease) if owner is not None else None
        await self._write_row(_INSERT, *delivery_values(delivery), owner, lease_until)

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        found = await self._fetch(f"{_SELECT} WHERE id = $1", delivery_id)
        return decode_delivery(found[0]) if found else None

    async def task_deliveries(self, task_id: int) -> list[WebhookDelivery]:
        found = await self._fetch(f"{_SELECT} WHERE task_id = $1 ORDER BY created_at, id", task_id)
        return [decode_delivery(r) for r in found]

    async def latest_delivery(
        self, task_id: int, events: Collection[str]
    ) -> WebhookDelivery | None:
        if not events:
            return None
        found = await self._fetch(
            f"{_SELECT} WHERE task_id = $1 AND event IN ({placeholders(2, len(events))}) "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            task_id,
            *events,
        )
        return decode_delivery(found[0]) if found else None

    async def pending_deliveries(
        self, due_before: dt.datetime, limit: int
    ) -> list[WebhookDelivery]:
        found = await self._fetch(_PENDING, utc(due_before), utcnow(), limit)
        return [decode_delivery(r) for r in found]

    async def claim_delivery(
        self, delivery_id: str, owner: str, lease: float
    ) -> WebhookDelivery | None:
        now = utcnow()
        found = await self._write_row(
            _CLAIM, delivery_id, now, owner, now + dt.timedelta(seconds=lease)
        )
        return decode_delivery(found) if found else None

    async def save_delivery(self, delivery: WebhookDelivery, owner: str) -> bool:
        found = await self._write_row(
            _SAVE,
            delivery.id,
            owner,
            delivery.status,
            delivery.attempts,
            delivery.last_status,
            delivery.last_error,
            utc(delivery.next_attempt_at),
            utc(delivery.finished_at),
        )
        return bool(found)

    async def release_deliveries(self, owner: str) -> None:
        await self._write(_RELEASE, owner)
