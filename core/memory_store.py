"""The task store of last resort: everything in this process's memory, gone at restart.

It serves when no plugin provides a store (the `database` plugin normally does), and it is
the reference the store contract tests hold the SQL stores to.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Collection
from typing import Any

import msgspec

from .models import FINAL_STATUSES, Chore, Task, TaskEvent, WebhookDelivery, utcnow
from .store import DuplicateClientTaskId, TaskQuery, new_chore_id


class _Claim(msgspec.Struct):
    owner: str
    until: dt.datetime


def _holder(claims: dict[str, _Claim], key: str, now: dt.datetime) -> str | None:
    """Who holds `key` now (a delivery or a chore), None when nobody or the lease ran out."""
    claim = claims.get(key)
    return claim.owner if claim is not None and claim.until >= now else None


def _let_go_all(claims: dict[str, _Claim], owner: str) -> None:
    for key in [k for k, c in claims.items() if c.owner == owner]:
        del claims[key]


class MemoryTaskStore:
    """Keeps tasks in this process only. Fast, and lost on restart."""

    durable = False
    claim_lease = None  # one process: a claim never needs to lapse

    def __init__(self) -> None:
        self._tasks: dict[int, Task] = {}
        self._by_client: dict[str, int] = {}
        self._events: dict[int, list[TaskEvent]] = {}
        self._unnotified: set[int] = set()
        self._owners: dict[int, str] = {}
        self._seen: dict[str, dt.datetime] = {}
        """Replicas' last heartbeats."""
        """Who claimed each task: in one process that is one engine at a time."""
        self._queued: dict[int, None] = {}
        """Queued, unclaimed ids in id order (a dict is an ordered set)."""
        self._ids = itertools.count(1)
        self._deliveries: dict[str, WebhookDelivery] = {}
        self._claims: dict[str, _Claim] = {}
        self._chores: dict[str, Chore] = {}
        self._chore_claims: dict[str, _Claim] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(
        self, task: Task, events: list[TaskEvent], *, owner: str | None = None
    ) -> Task:
        if task.client_task_id is not None and task.client_task_id in self._by_client:
            raise DuplicateClientTaskId(self._tasks[self._by_client[task.client_task_id]])
        task = msgspec.structs.replace(task, id=next(self._ids))
        self._tasks[task.id] = task
        if task.client_task_id is not None:
            self._by_client[task.client_task_id] = task.id
        self._events[task.id] = [msgspec.structs.replace(e, task_id=task.id) for e in events]
        if task.status == "queued":
            if owner is None:
                self._queued[task.id] = None
            else:
                self._owners[task.id] = owner
        return task

    async def get(self, task_id: int) -> Task | None:
        return self._tasks.get(task_id)

    async def find(self, client_task_id: str) -> Task | None:
        task_id = self._by_client.get(client_task_id)
        return None if task_id is None else self._tasks[task_id]

    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool:
        previous = self._tasks.get(task.id)
        if previous is None or (previous.is_final and not force):
            return False
        self._tasks[task.id] = task
        if task.status != "queued":
            self._queued.pop(task.id, None)
        elif previous.status != "queued":
            self._queued[task.id] = None
        if task.is_final and not previous.is_final:
            self._unnotified.add(task.id)
        if event is not None:
            self._events[task.id].append(event)
        return True

    async def events(self, task_id: int) -> list[TaskEvent]:
        return list(self._events.get(task_id, ()))

    async def claim(self, owner: str, limit: int) -> list[Task]:
        ids = list(itertools.islice(self._queued, limit))
        for task_id in ids:
            del self._queued[task_id]
            self._owners[task_id] = owner
        return [self._tasks[task_id] for task_id in ids]

    async def release(self, task_ids: list[int]) -> None:
        for task_id in sorted(task_ids):
            if self._tasks[task_id].status == "queued":
                self._queued[task_id] = None
        # released tasks go behind newer ones; keep the queue in id order
        self._queued = dict.fromkeys(sorted(self._queued))

    async def unfinished(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.status not in FINAL_STATUSES]

    async def count_queued(self) -> int:
        return sum(1 for t in self._tasks.values() if t.status == "queued")

    async def heartbeat(self, owner: str) -> None:
        self._seen[owner] = utcnow()

    async def mark_notified(self, task_id: int) -> None:
        self._unnotified.discard(task_id)

    async def claim_unnotified(self, stale_after: float, limit: int) -> list[Task]:
        cutoff = utcnow() - dt.timedelta(seconds=stale_after)
        found = [
            t
            for t in (self._tasks[i] for i in sorted(self._unnotified))
            if t.finished_at is not None and t.finished_at < cutoff
        ][:limit]
        self._unnotified.difference_update(t.id for t in found)
        return found

    async def retire(self, owner: str) -> None:
        self._seen.pop(owner, None)

    async def adopt(self, owner: str, stale_after: float, *, own: bool = False) -> list[Task]:
        adopted = []
        alive_since = utcnow() - dt.timedelta(seconds=stale_after)
        alive = {name for name, seen in self._seen.items() if seen >= alive_since}
        for task in self._tasks.values():
            holder = self._owners.get(task.id)
            orphan = holder is None or holder not in alive or (own and holder == owner)
            if task.status in ("dispatched", "running") and orphan:
                self._owners[task.id] = owner
                adopted.append(task)
        return adopted

    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        found = []
        for task_id in sorted(self._tasks, reverse=True):
            task = self._tasks[task_id]
            if query.matches(task):
                found.append(task)
                if len(found) >= query.limit:
                    break
        return found

    # ---- webhook outbox ----------------------------------------------------------------

    async def add_delivery(
        self, delivery: WebhookDelivery, *, owner: str | None = None, lease: float = 0.0
    ) -> None:
        self._deliveries[delivery.id] = delivery
        if owner is not None:
            self._claims[delivery.id] = _Claim(owner, utcnow() + dt.timedelta(seconds=lease))

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self._deliveries.get(delivery_id)

    async def task_deliveries(self, task_id: int) -> list[WebhookDelivery]:
        found = [d for d in self._deliveries.values() if d.task_id == task_id]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def latest_delivery(
        self, task_id: int, events: Collection[str]
    ) -> WebhookDelivery | None:
        found = [d for d in await self.task_deliveries(task_id) if d.event in events]
        return found[-1] if found else None

    async def pending_deliveries(
        self, due_before: dt.datetime, limit: int
    ) -> list[WebhookDelivery]:
        now = utcnow()
        found = [
            d
            for d in self._deliveries.values()
            if d.status == "pending"
            and d.next_attempt_at is not None
            and d.next_attempt_at <= due_before
            and _holder(self._claims, d.id, now) is None
        ]
        found.sort(key=lambda d: (d.next_attempt_at, d.id))
        return found[:limit]

    async def claim_delivery(
        self, delivery_id: str, owner: str, lease: float
    ) -> WebhookDelivery | None:
        now = utcnow()
        delivery = self._deliveries.get(delivery_id)
        if (
            delivery is None
            or delivery.status != "pending"
            or delivery.next_attempt_at is None
            or delivery.next_attempt_at > now
            or _holder(self._claims, delivery_id, now) not in (None, owner)
        ):
            return None
        self._claims[delivery_id] = _Claim(owner, now + dt.timedelta(seconds=lease))
        return delivery

    async def save_delivery(self, delivery: WebhookDelivery, owner: str) -> bool:
        claim = self._claims.get(delivery.id)
        if claim is None or claim.owner != owner:
            return False
        del self._claims[delivery.id]
        self._deliveries[delivery.id] = delivery
        return True

    async def release_deliveries(self, owner: str) -> None:
        _let_go_all(self._claims, owner)

    # ---- chores ------------------------------------------------------------------------

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
        # a copy through JSON, as a database keeps it: the caller's dict stays the caller's
        data = msgspec.json.decode(msgspec.json.encode(data))
        chore = Chore(
            id=new_chore_id(), kind=kind, task_id=task_id, data=data, created_at=now, due_at=now
        )
        self._chores[chore.id] = chore
        if owner is not None:
            self._chore_claims[chore.id] = _Claim(owner, now + dt.timedelta(seconds=lease))
        return chore

    async def get_chore(self, chore_id: str) -> Chore | None:
        return self._chores.get(chore_id)

    async def task_chores(self, task_id: int, kind: str | None = None) -> list[Chore]:
        found = [
            c
            for c in self._chores.values()
            if c.task_id == task_id and (kind is None or c.kind == kind)
        ]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    async def claim_chores(self, kind: str, owner: str, lease: float, limit: int) -> list[Chore]:
        now = utcnow()
        found = sorted(
            (
                c
                for c in self._chores.values()
                if c.kind == kind
                and c.finished_at is None
                and c.due_at <= now
                and _holder(self._chore_claims, c.id, now) is None
            ),
            key=lambda c: (c.due_at, c.id),
        )[:limit]
        for chore in found:
            self._chore_claims[chore.id] = _Claim(owner, now + dt.timedelta(seconds=lease))
        return found

    def _let_go(self, chore_id: str, owner: str) -> Chore | None:
        """The chore, if `owner` holds it and it is unfinished; its claim is dropped."""
        claim = self._chore_claims.get(chore_id)
        chore = self._chores.get(chore_id)
        if claim is None or claim.owner != owner or chore is None or chore.finished_at is not None:
            return None
        del self._chore_claims[chore_id]
        return chore

    async def finish_chore(self, chore_id: str, owner: str, *, error: str | None = None) -> bool:
        chore = self._let_go(chore_id, owner)
        if chore is None:
            return False
        self._chores[chore_id] = msgspec.structs.replace(
            chore, attempts=chore.attempts + 1, last_error=error, finished_at=utcnow()
        )
        return True

    async def retry_chore(
        self,
        chore_id: str,
        owner: str,
        due_at: dt.datetime,
        error: str,
        *,
        data: dict[str, Any] | None = None,
    ) -> bool:
        chore = self._let_go(chore_id, owner)
        if chore is None:
            return False
        if data is not None:
            data = msgspec.json.decode(msgspec.json.encode(data))
        self._chores[chore_id] = msgspec.structs.replace(
            chore,
            attempts=chore.attempts + 1,
            last_error=error,
            due_at=due_at,
            data=chore.data if data is None else data,
        )
        return True

    async def release_chores(self, owner: str) -> None:
        _let_go_all(self._chore_claims, owner)
