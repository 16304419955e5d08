"""Tasks this replica has claimed from the shared queue and not yet dispatched.

The dispatcher claims more tasks than it has free slots (as many again as the fleet holds),
so the next slot to free up is filled from memory instead of after a database round trip.
A task that waits here longer than `HOLD` goes back to the shared queue, where another
replica may start it sooner.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

from ..models import Task
from ..store import TaskStore

HOLD = 10.0
"""Seconds a claimed task may wait here, at most; well inside the database plugin's default
claim lease (DB_CLAIM_LEASE, 60 s). A shorter lease shortens the hold (`ClaimedTasks.hold`)."""

Claimed = tuple[Task, float]
"""A task and when (monotonic) it was claimed."""


class ClaimedTasks:
    def __init__(self, store: TaskStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        lease = getattr(store, "claim_lease", None)  # a third-party store may not say
        self.hold = min(HOLD, lease / 2) if lease else HOLD
        """How long a task may wait here: `HOLD`, or half the store's claim lease if that
        is shorter, so no other replica can claim a task this one still holds."""
        self._ready: collections.deque[Claimed] = collections.deque()
        self._more_queued = False
        """Whether the last claim left tasks in the shared queue."""

    def __len__(self) -> int:
        return len(self._ready)

    async def refill(self, limit: int) -> bool:
        """Claim up to `limit` more queued tasks, oldest first; False when there were none."""
        tasks = await self.store.claim(self.owner, limit)
        self._more_queued = len(tasks) == limit
        now = time.monotonic()
        self._ready.extend((task, now) for task in tasks)
        return bool(tasks)

    async def backlog(self) -> int:
        """How many tasks wait for an endpoint: those held here, plus the shared queue's
        when the last claim did not empty it (queued counts claimed tasks too)."""
        return await self.store.count_queued() if self._more_queued else len(self._ready)

    def add(self, task: Task) -> None:
        """A task claimed elsewhere (at submission, by `create(owner=...)`)."""
        self._ready.append((task, time.monotonic()))

    def pop(self) -> Claimed:
        return self._ready.popleft()

    def put_back(self, claimed: Iterable[Claimed]) -> None:
        """Return tasks the scheduler did not place, ahead of the rest, in their order."""
        self._ready.extendleft(reversed(list(claimed)))

    async def return_stale(self, older_than: float | None = None) -> None:
        """Give the tasks held longer than `older_than` seconds (default `hold`) back to
        the shared queue (all of them with a negative value, at shutdown)."""
        limit = time.monotonic() - (self.hold if older_than is None else older_than)
        stale = {task.id for task, claimed_at in self._ready if claimed_at <= limit}
        if stale:
            self._ready = collections.deque(c for c in self._ready if c[0].id not in stale)
            await self.store.release(sorted(stale))
