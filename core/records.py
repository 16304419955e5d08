"""The task record clients get: in responses and webhook bodies alike.

It keeps the seed's fields (`id`, `client_task_id`, `comfyui_task_id`, `s3_key`,
`client_callback_url`, `comfyui_filepath`, `error_code`) so seed clients keep working, and adds
the rest. `s3_key` and `comfyui_filepath` are the first output's.
"""

from __future__ import annotations

import datetime as dt
import weakref
from typing import TYPE_CHECKING, Any

import msgspec

from .hookcall import call_first
from .models import FINAL_EVENTS, OutputRef, Task, TaskStatus, WebhookDelivery

if TYPE_CHECKING:
    from .store import TaskStore


class OutputRecord(msgspec.Struct, kw_only=True):
    key: str
    url: str | None
    filename: str
    node_id: str
    content_type: str
    size: int


class WebhookState(msgspec.Struct, kw_only=True):
    """Where the webhook announcing the task's end stands (its latest delivery)."""

    status: str
    """`pending` (being tried or waiting to retry), `delivered` or `failed`."""
    attempts: int
    last_status: int | None
    """HTTP status of the last answer; None when there was none (timeout, refused)."""
    last_error: str | None
    next_attempt_at: dt.datetime | None
    """When a pending delivery is tried next."""

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> WebhookState:
        return cls(
            status=delivery.status,
            attempts=delivery.attempts,
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
        )


class TaskRecord(msgspec.Struct, kw_only=True):
    id: int
    client_task_id: str | None
    comfyui_task_id: str | None
    s3_key: str | None
    client_callback_url: str | None
    comfyui_filepath: str | None
    error_code: int
    status: TaskStatus
    workflow: str
    service_type: str
    endpoint: str | None
    attempts: int
    outputs: list[OutputRecord]
    error: str | None
    created_at: dt.datetime
    dispatched_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    timings: dict[str, float]
    """Seconds per stage: queued, upload, comfyui_queue, execution, storage."""
    event: str | None = msgspec.field(default=None)
    """In webhook bodies: `task.completed`, `task.failed`, `task.cancelled` (or
    `task.started`, `task.progress` when asked for)."""
    webhook: WebhookState | None = None
    """The delivery of the final event to `client_callback_url`; null without a callback
    URL, before the task ends, and in webhook bodies themselves."""


_webhook_outboxes: weakref.WeakKeyDictionary[Any, TaskStore] = weakref.WeakKeyDictionary()
"""Per plugin manager (one per app): the store whose outbox records show. Set by the
webhook plugin while it runs, so records carry no delivery state when it is disabled."""


def show_webhook_state(pm: Any, store: TaskStore | None) -> None:
    """Make records rendered with `pm` show the webhook state kept in `store` (None: stop)."""
    if store is None:
        _webhook_outboxes.pop(pm, None)
    else:
        _webhook_outboxes[pm] = store


async def webhook_state(task: Task, pm: Any) -> WebhookState | None:
    store = _webhook_outboxes.get(pm)
    if store is None or not task.client_callback_url or not task.is_final:
        return None
    latest = await store.latest_delivery(task.id, FINAL_EVENTS)
    return WebhookState.of(latest) if latest is not None else None


async def output_record(output: OutputRef, pm: Any) -> OutputRecord:
    url = await call_first(pm.hook.output_url, output=output)
    return OutputRecord(
        key=output.key,
        url=url or output.url,
        filename=output.filename,
        node_id=output.node_id,
        content_type=output.content_type,
        size=output.size,
    )


async def render_task(task: Task, pm: Any, *, event: str | None = None) -> TaskRecord:
    """The record of `task`, with output URLs made afresh (presigned links never go stale).
    `event` marks a webhook body, which leaves the webhook state out (it would describe the
    very message that carries it)."""
    outputs = [await output_record(o, pm) for o in task.outputs]
    first = task.outputs[0] if task.outputs else None
    return TaskRecord(
        id=task.id,
        client_task_id=task.client_task_id,
        comfyui_task_id=task.comfyui_task_id,
        s3_key=first.key if first else None,
        client_callback_url=task.client_callback_url,
        comfyui_filepath=(
            f"{first.subfolder}/{first.filename}"
            if first and first.subfolder
            else first.filename
            if first
            else None
        ),
        error_code=task.error_code,
        status=task.status,
        workflow=task.workflow,
        service_type=task.workflow,
        endpoint=task.endpoint,
        attempts=task.attempts,
        outputs=outputs,
        error=task.error,
        created_at=task.created_at,
        dispatched_at=task.dispatched_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        timings=task.timings,
        event=event,
        webhook=None if event is not None else await webhook_state(task, pm),
    )
