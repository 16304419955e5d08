"""The task record clients get: in responses and webhook bodies alike.

It keeps the seed's fields (`id`, `client_task_id`, `comfyui_task_id`, `s3_key`,
`client_callback_url`, `comfyui_filepath`, `error_code`) so seed clients keep working, and adds
the rest. `s3_key` and `comfyui_filepath` are the first output's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from .hookcall import call_first
from .models import OutputRef, Task, TaskStatus


class OutputRecord(msgspec.Struct, kw_only=True):
    key: str
    url: str | None
    filename: str
    node_id: str
    content_type: str
    size: int


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
    """In webhook bodies: `task.completed`, `task.failed`, `task.cancelled`."""


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
    """The record of `task`, with output URLs made afresh (presigned links never go stale)."""
    outputs = [await output_record(o, pm) for o in task.outputs]
    first = task.outputs[0] if task.outputs else None
    return TaskRecord(
        id=task.id,
        client_task_id=task.client_task_id,
        comfyui_task_id=task.comfyui_task_id,
        s3_key=first.key if first else None,
        client_callback_url=task.client_callback_url,
        comfyui_filepath=(
            f"{first.subfolder}/{first.filename}" if first and first.subfolder
            else first.filename if first else None
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
    )
