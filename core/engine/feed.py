"""Live news of tasks for whoever waits on them in this process (SSE streams, `?wait=`).

Only this process's engine publishes here; a task running on another replica is followed by
polling the store (see `api.tasks`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from ..models import Task, TaskProgress

FeedItem = Task | TaskProgress


class TaskFeed:
    def __init__(self) -> None:
        self._queues: dict[int, set[asyncio.Queue[FeedItem]]] = {}

    @contextlib.contextmanager
    def subscribe(self, task_id: int) -> Iterator[asyncio.Queue[FeedItem]]:
        queue: asyncio.Queue[FeedItem] = asyncio.Queue(maxsize=1000)
        self._queues.setdefault(task_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._queues.get(task_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[task_id]

    def publish(self, task_id: int, item: FeedItem) -> None:
        for queue in self._queues.get(task_id, ()):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled reader skips progress
                queue.put_nowait(item)

    def watched(self, task_id: int) -> bool:
        return task_id in self._queues
