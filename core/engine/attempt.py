"""One try at running a task on one endpoint, and the ways it can end early."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec

from ..comfyui.monitor import EndpointMonitor, Watch
from ..errors import ErrorCode
from ..models import Task, TaskStatus


class EndpointLost(Exception):
    """The endpoint forgot or dropped the prompt; the task may run elsewhere."""


class Stop(msgspec.Struct, frozen=True):
    """Why an attempt ends early: a cancellation or a deadline."""

    status: TaskStatus
    code: ErrorCode
    message: str


class Stopped(Exception):
    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.message)
        self.stop = stop


class Attempt:
    """One try at running a task on one endpoint, while it is in flight in this process."""

    __slots__ = ("done", "ended_at", "monitor", "posted_at", "started", "stop", "task", "watch")

    def __init__(self, task: Task, monitor: EndpointMonitor, watch: Watch) -> None:
        self.task = task
        self.monitor = monitor
        self.watch = watch
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self.stop: Stop | None = None
        self.posted_at: dt.datetime | None = None
        self.ended_at: dt.datetime | None = None

    def timings(self, stored_at: dt.datetime) -> dict[str, float]:
        """Seconds per stage, for the record (what the client waited on, and why)."""
        task = self.task
        marks = [
            ("queued", task.created_at, task.dispatched_at),
            ("upload", task.dispatched_at, self.posted_at),
            ("comfyui_queue", self.posted_at, task.started_at),
            ("execution", task.started_at or self.posted_at, self.ended_at),
            ("storage", self.ended_at, stored_at),
        ]
        return {
            name: round((end - start).total_seconds(), 6)
            for name, start, end in marks
            if start is not None and end is not None
        }

    @property
    def prompt_id(self) -> str:
        return self.watch.prompt_id
