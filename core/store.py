"""Where tasks live. Core talks to a `TaskStore`; the `database` plugin provides a durable
one through the `task_store` hook, and `MemoryTaskStore` (core.memory_store) serves when
none is installed.

A store is shared by every replica that points at the same database, so the queue is the
store itself: `claim` hands each queued task to exactly one owner.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from typing import Any, Protocol, runtime_checkable

import msgspec

from .models import Chore, Task, TaskEvent, WebhookDelivery


class TaskQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: str | None = None
    workflow: str | None = None
    client: str | None = None
    """Only tasks of this API key."""
    since: dt.datetime | None = None
    """Only tasks created at or after this time."""
    before_id: int | None = None
    error_code: int | None = None
    limit: int = 50

    def matches(self, task: Task) -> bool:
        return (
            (self.status is None or task.status == self.status)
            and (self.workflow is None or task.workflow == self.workflow)
            and (self.client is None or task.client == self.client)
            and (self.since is None or task.created_at >= self.since)
            and (self.before_id is None or task.id < self.before_id)
            and (self.error_code is None or task.error_code == self.error_code)
        )


def new_chore_id() -> str:
    return f"chore_{uuid.uuid4().hex}"


class DuplicateClientTaskId(Exception):
    """`client_task_id` is taken; `existing` is the task that holds it."""

    def __init__(self, existing: Task) -> None:
        super().__init__(existing.client_task_id)
        self.existing = existing


@runtime_checkable
class TaskStore(Protocol):
    durable: bool
    """False when tasks vanish on restart (the server warns at start)."""
    claim_lease: float | None
    """Seconds after which a claimed task still queued may be claimed by another owner (the
    claimer is presumed dead); None when claims never lapse. Claimers hold tasks for less."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self, task: Task, events: list[TaskEvent], *, owner: str | None = None
    ) -> Task:
        """Insert `task` with a new id and its first events in one transaction; raise
        DuplicateClientTaskId when its client_task_id is taken. With `owner`, the queued
        task is claimed by `owner` at once, as `claim` would (a replica with a free slot
        takes its own submission without a second write)."""
        ...

    async def get(self, task_id: int) -> Task | None: ...

    async def find(self, client_task_id: str) -> Task | None: ...

    async def save(
        self, task: Task, event: TaskEvent | None = None, *, force: bool = False
    ) -> bool:
        """Persist the task's new state (and the step that led to it) atomically. A task
        that has ended stays ended: False, and nothing written, unless `force` (for tools
        that repair records, such as retry-storage). Only the state is written; the request
        (workflow, params, client ids, key) is fixed at create."""
        ...

    async def events(self, task_id: int) -> list[TaskEvent]: ...

    async def claim(self, owner: str, limit: int) -> list[Task]:
        """Hand up to `limit` queued tasks, oldest first, to `owner`; none goes to two owners."""
        ...

    async def release(self, task_ids: list[int]) -> None:
        """Give claimed tasks back to the queue (the scheduler said "not now"); a task no
        longer queued (dispatched meanwhile) keeps its owner."""
        ...

    async def unfinished(self) -> list[Task]:
        """Every task not in a final state."""
        ...

    async def heartbeat(self, owner: str) -> None:
        """`owner` (a replica) is alive now."""
        ...

    async def mark_notified(self, task_id: int) -> None:
        """The task's end was announced: on_result and notify ran. (Not called when a
        notify implementation failed, so `claim_unnotified` hands the task out later.)"""
        ...

    async def claim_unnotified(self, stale_after: float, limit: int) -> list[Task]:
        """Ended tasks whose end was never announced (the process died in between), ended
        more than `stale_after` seconds ago; each is handed out once."""
        ...

    async def retire(self, owner: str) -> None:
        """`owner` stops cleanly: its tasks may be adopted at once."""
        ...

    async def adopt(self, owner: str, stale_after: float, *, own: bool = False) -> list[Task]:
        """Hand `owner` the dispatched and running tasks of replicas not seen for
        `stale_after` seconds; each task goes to one adopter only. With `own` (at start),
        also those it held in an earlier life, and release its old queue claims."""
        ...

    async def count_queued(self) -> int:
        """How many tasks wait in the queue (claimed or not), for backpressure."""
        ...

    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        """Tasks matching `query`, newest first, at most `query.limit`; `before_id` is the
        cursor of the next page (the last id of the previous one)."""
        ...

    # ---- the webhook outbox: deliveries survive a restart and are sent by one replica ----

    async def add_delivery(
        self, delivery: WebhookDelivery, *, owner: str | None = None, lease: float = 0.0
    ) -> None:
        """Record a new delivery before anything is sent. With `owner`, it is recorded as
        claimed by `owner` for `lease` seconds, so the first attempt needs no second write."""
        ...

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None: ...

    async def task_deliveries(self, task_id: int) -> list[WebhookDelivery]:
        """Every delivery of a task, oldest first."""
        ...

    async def latest_delivery(
        self, task_id: int, events: Collection[str]
    ) -> WebhookDelivery | None:
        """The task's newest delivery of one of `events`, or None."""
        ...

    async def pending_deliveries(
        self, due_before: dt.datetime, limit: int
    ) -> list[WebhookDelivery]:
        """Pending deliveries due by `due_before` that nobody holds (or whose holder's lease
        ran out), soonest first: what a process schedules at start and on each poll."""
        ...

    async def claim_delivery(
        self, delivery_id: str, owner: str, lease: float
    ) -> WebhookDelivery | None:
        """Hold a pending, due delivery for `lease` seconds so that no other process sends it
        meanwhile (the holder may renew its own claim). None when it has ended, is not due
        yet, or another owner holds it."""
        ...

    async def save_delivery(self, delivery: WebhookDelivery, owner: str) -> bool:
        """Record an attempt's outcome (status, attempts, last_status, last_error,
        next_attempt_at, finished_at) and let go of the claim. False, and nothing written,
        when `owner` no longer holds the delivery."""
        ...

    async def release_deliveries(self, owner: str) -> None:
        """Let go of every claim `owner` holds (at shutdown), so others need not wait for
        the leases to run out."""
        ...

    # ---- chores: a plugin's work that must get done even across a crash ------------------
    # Held by one process at a time under a lease, like deliveries; core never reads `data`.

    async def add_chore(
        self,
        kind: str,
        task_id: int | None,
        data: dict[str, Any],
        *,
        owner: str | None = None,
        lease: float = 0.0,
    ) -> Chore:
        """Record a new chore, due now, and return it. With `owner`, it is recorded as held
        by `owner` for `lease` seconds, so the first attempt needs no claim."""
        ...

    async def get_chore(self, chore_id: str) -> Chore | None: ...

    async def task_chores(self, task_id: int, kind: str | None = None) -> list[Chore]:
        """The task's chores (only those of `kind` when given), finished or not, oldest
        first."""
        ...

    async def claim_chores(self, kind: str, owner: str, lease: float, limit: int) -> list[Chore]:
        """Hold up to `limit` unfinished chores of `kind` that are due and that nobody holds
        (or whose holder's lease ran out) for `owner`, for `lease` seconds; soonest due
        first. None goes to two owners."""
        ...

    async def finish_chore(self, chore_id: str, owner: str, *, error: str | None = None) -> bool:
        """Count the attempt and mark the chore finished (given up, when `error` says why),
        letting go of it. False, and nothing written, unless `owner` holds it."""
        ...

    async def retry_chore(
        self,
        chore_id: str,
        owner: str,
        due_at: dt.datetime,
        error: str,
        *,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Count a failed attempt: record `error`, make the chore due at `due_at` (replacing
        its data with `data` when given: what the attempt learnt) and let go of it, so any
        process may claim it then. False, and nothing written, unless `owner` holds it."""
        ...

    async def release_chores(self, owner: str) -> None:
        """Let go of every chore `owner` holds, unchanged (at shutdown), so others need not
        wait for the leases to run out."""
        ...
