"""The records that cross a seam: between core and plugins, and between us and clients.

They are frozen msgspec Structs so one hook implementation cannot change what the next one
sees; the engine makes a new value with `msgspec.structs.replace` at every step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec

TaskStatus = Literal[
    "accepted", "queued", "dispatched", "running", "completed", "failed", "cancelled"
]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
EndpointStatus = Literal["connecting", "up", "down", "draining"]
DeliveryStatus = Literal["pending", "delivered", "failed"]

FINAL_EVENTS: tuple[str, ...] = ("task.completed", "task.failed", "task.cancelled")
"""Webhook events every callback URL gets: the task's end."""
WEBHOOK_EVENTS: tuple[str, ...] = ("task.started", "task.progress", *FINAL_EVENTS)
"""Every event a request may name in `callback_events`."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OutputRef(msgspec.Struct, frozen=True, kw_only=True):
    """One stored output file, as clients see it."""

    key: str
    url: str | None = None
    filename: str
    subfolder: str = ""
    node_id: str
    content_type: str
    size: int
    storage: str = ""
    """Which storage holds it (`StoredOutput.storage`), or "fallback" when the store failed."""


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A task as core keeps it. `id` is the record's integer key (seed-compatible);
    `comfyui_task_id` is the prompt_id we choose ourselves before POST /prompt."""

    id: int = 0
    workflow: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    client_task_id: str | None = None
    client_callback_url: str | None = None
    callback_events: tuple[str, ...] = ()
    """Webhook events the client asked for besides the final ones (`task.started`,
    `task.progress`), from the request's `callback_events`."""
    client: str | None = None
    """Name of the API key that created the task (None when the API is open)."""
    request_hash: str = ""
    status: TaskStatus = "accepted"
    comfyui_task_id: str | None = None
    endpoint: str | None = None
    attempts: int = 0
    outputs: tuple[OutputRef, ...] = ()
    inputs: tuple[str, ...] = ()
    """Files we uploaded to the endpoint's input folder (for cleanup)."""
    error_code: int = 0
    error: str | None = None
    deadline: dt.datetime | None = None
    """When the task fails with TIMEOUT if it has not ended (request `timeout` or the
    workflow's default, counted from submission)."""
    created_at: dt.datetime = msgspec.field(default_factory=utcnow)
    dispatched_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    """Seconds spent per stage of the last attempt: queued, upload, comfyui_queue,
    execution, storage."""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a task's flow; recorders persist these as the task's history."""

    task_id: int
    status: TaskStatus
    at: dt.datetime = msgspec.field(default_factory=utcnow)
    endpoint: str | None = None
    detail: str | None = None


class TaskProgress(msgspec.Struct, frozen=True, kw_only=True):
    """ComfyUI reported progress on a running task: a node started (`value` None) or a node
    that counts (a sampler's steps, a batch being saved) moved to `value` of `max`."""

    task_id: int
    node: str | None
    value: int | None = None
    max: int | None = None
    at: dt.datetime = msgspec.field(default_factory=utcnow)


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished task produced, handed to on_result and notify."""

    status: TaskStatus
    outputs: tuple[OutputRef, ...] = ()
    error_code: int = 0
    error: str | None = None
    replayed: bool = False
    """True when announced again after a crash cut the first announcement short: a
    listener that already acted on this end (a delivery recorded) should not act twice."""


class EndpointState(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one ComfyUI endpoint, as schedulers see it."""

    name: str
    """`host:port`, the seed's notation."""
    url: str
    status: EndpointStatus = "connecting"
    queue_remaining: int = 0
    """ComfyUI's own count from its last `status` broadcast (running + pending, all clients)."""
    in_flight: int = 0
    """Prompts this server sent there that have not finished yet."""
    capacity: int = 2
    weight: float = 1.0
    node_classes: frozenset[str] | None = None
    """Node classes the endpoint offers (from /object_info), None while unknown."""
    last_error: str | None = None
    seconds_per_task: float | None = None
    """How long a prompt of ours takes to run here, in seconds: a moving average over the
    recent ones that succeeded, from ComfyUI's `execution_start` to their end (time queued
    in ComfyUI not included), over every workflow run here. None until one has."""
    running_for: float = 0.0
    """How long, in seconds, the prompt of ours that ComfyUI is running here has been running:
    since its `execution_start`, for the prompt that started last and has not ended (ComfyUI
    runs one at a time). 0 when none is, or when the running prompt is another client's."""

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.in_flight)

    def can_run(self, node_classes: frozenset[str]) -> bool:
        """True unless the endpoint is known to lack one of `node_classes`."""
        return self.node_classes is None or node_classes <= self.node_classes

    def accepts(self, node_classes: frozenset[str]) -> bool:
        """Up, with a free slot, and able to run a graph of `node_classes`."""
        return self.status == "up" and self.free_slots > 0 and self.can_run(node_classes)


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    """One output file of a prompt, still on ComfyUI. `chunks()` streams it afresh on every
    call, so core can retry into the fallback folder without holding the file in memory."""

    filename: str
    subfolder: str
    type: str
    node_id: str
    content_type: str
    endpoint: str
    open: Callable[[], AsyncIterator[bytes]]

    def chunks(self) -> AsyncIterator[bytes]:
        return self.open()

    @property
    def relative_path(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename


class SizedStream:
    """An output's bytes as a store wants them: whole, when they fit in `small` bytes (one
    buffer, one write or one PUT), else as a stream that starts with what was read to find
    out. `size` counts every byte handed on either way.

        stream = SizedStream(artifact.chunks(), small=1024 * 1024)
        whole = await stream.whole()
        if whole is None:
            ... upload stream.chunks() ...  # never more than `small` held at once
    """

    def __init__(self, chunks: AsyncIterator[bytes], small: int) -> None:
        self._chunks = chunks
        self._small = small
        self._head = bytearray()
        self.size = 0

    async def whole(self) -> bytearray | None:
        """All the bytes if there are at most `small` of them; None otherwise."""
        async for chunk in self._chunks:
            self._head += chunk
            if len(self._head) > self._small:
                self.size = len(self._head)
                return None
        self.size = len(self._head)
        return self._head

    async def chunks(self) -> AsyncIterator[bytes | bytearray]:
        """Every byte after a `whole()` that said None: what it read, then the rest."""
        yield self._head
        async for chunk in self._chunks:
            self.size += len(chunk)
            yield chunk


class StoredOutput(msgspec.Struct, frozen=True, kw_only=True):
    """Where `store` put an artifact."""

    key: str
    size: int
    storage: str
    """A short name of the storage (e.g. "local", "s3"), so `output_url` knows whose it is."""
    url: str | None = None


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook message in the outbox: an event of a task, sent to the callback URL until
    the receiver takes it, it refuses it for good, or the retry window ends.

    `id` is the Standard Webhooks `webhook-id`: the same on every attempt of this delivery,
    so a receiver can drop a repeat; a redelivery is a new delivery with a new id. `body` is
    fixed when the event happens, so every attempt sends the same bytes.
    """

    id: str
    """`msg_` and 32 hex digits; sent as `webhook-id`."""
    task_id: int
    event: str
    """`task.completed`, `task.failed`, `task.cancelled` or `task.started`."""
    url: str
    """The task's `client_callback_url` when the event happened."""
    body: bytes
    """The JSON sent (the task record with `event`), the same bytes on every attempt."""
    status: DeliveryStatus = "pending"
    """`pending` until a 2xx answer (`delivered`) or a final refusal or the end of the
    retry window (`failed`)."""
    attempts: int = 0
    """Attempts made and recorded so far."""
    last_status: int | None = None
    """HTTP status of the last attempt's answer (None: no answer)."""
    last_error: str | None = None
    """Why the last attempt did not deliver (None after a 2xx)."""
    created_at: dt.datetime = msgspec.field(default_factory=utcnow)
    next_attempt_at: dt.datetime | None = None
    """When a pending delivery is due; None once it has ended."""
    expires_at: dt.datetime
    """No attempt starts after this (created_at + WEBHOOK_RETRY_WINDOW)."""
    finished_at: dt.datetime | None = None
    """When it was delivered or given up."""


class Chore(msgspec.Struct, frozen=True, kw_only=True):
    """Work a plugin must see done even if the process dies first (the `cleanup` plugin's
    removal of a task's files from ComfyUI, say), recorded in the task store. One process
    at a time holds a chore, under a lease; it either finishes it or puts it back to be
    retried later, and a chore whose holder died is taken up by another once the lease has
    run out. Core never looks inside: `kind` tells the plugin its own chores apart."""

    id: str
    """`chore_` and 32 hex digits, made by the store."""
    kind: str
    """Whose chore this is, e.g. `cleanup`; each plugin claims only its own kind."""
    task_id: int | None = None
    """The task the chore is about, if any."""
    data: dict[str, Any] = {}
    """What the plugin needs to do the work (JSON types only), as last recorded."""
    attempts: int = 0
    """Attempts recorded so far (finished or put back for a retry)."""
    last_error: str | None = None
    """Why the last recorded attempt did not finish it (or why it was given up)."""
    created_at: dt.datetime = msgspec.field(default_factory=utcnow)
    """When it was recorded; a plugin's retry window counts from here."""
    due_at: dt.datetime = msgspec.field(default_factory=utcnow)
    """When the next attempt may start."""
    finished_at: dt.datetime | None = None
    """When it was finished (done or given up); None while pending."""
