"""How a Task maps onto a `comfyui_task` row and back, the same for both backends.

JSON columns travel as text both ways (asyncpg's default jsonb codec and SQLite TEXT), so
one msgspec codec serves both. Times go in as aware datetimes; SQLite hands them back as ISO
text, PostgreSQL as datetimes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
from comfyui_server.core import OutputRef, Task, TaskEvent

TASK_TABLE = "comfyui_task"
EVENT_TABLE = "comfyui_task_event"
UNIQUE_CLIENT_TASK_ID = "comfyui_task_client_task_id_key"

# The order of `decode_task`'s positional reads.
TASK_COLUMNS = (
    "id",
    "workflow",
    "params",
    "client_task_id",
    "client_callback_url",
    "client",
    "request_hash",
    "status",
    "comfyui_task_id",
    "endpoint",
    "attempts",
    "outputs",
    "inputs",
    "error_code",
    "error",
    "created_at",
    "dispatched_at",
    "started_at",
    "finished_at",
    "deadline",
    "timings",
    "callback_events",
)
INSERT_COLUMNS = (*TASK_COLUMNS[1:], "s3_key", "comfy_filepath", "owner", "claimed_at")
EVENT_COLUMNS = ("task_id", "status", "at", "endpoint", "detail")

_params = msgspec.json.Decoder(dict[str, Any])
_outputs = msgspec.json.Decoder(tuple[OutputRef, ...])
_strings = msgspec.json.Decoder(tuple[str, ...])
_timings = msgspec.json.Decoder(dict[str, float])
_encode = msgspec.json.Encoder()


def columns(prefix: str = "") -> str:
    return ", ".join(f"{prefix}{name}" for name in TASK_COLUMNS)


def placeholders(start: int, count: int) -> str:
    return ", ".join(f"${n}" for n in range(start, start + count))


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """Naive times are taken as UTC; aware ones are converted to it."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _json(value: Any) -> str:
    return _encode.encode(value).decode()


def first_output_columns(task: Task) -> tuple[str | None, str | None]:
    """The seed's `s3_key` and `comfy_filepath`: the first output's key and ComfyUI path."""
    if not task.outputs:
        return None, None
    first = task.outputs[0]
    path = f"{first.subfolder}/{first.filename}" if first.subfolder else first.filename
    return first.key, path


def insert_values(task: Task, owner: str | None = None) -> tuple[Any, ...]:
    """Values for INSERT_COLUMNS; with `owner`, the new task is claimed by it now."""
    return (
        task.workflow,
        _json(task.params),
        task.client_task_id,
        task.client_callback_url,
        task.client,
        task.request_hash,
        task.status,
        task.comfyui_task_id,
        task.endpoint,
        task.attempts,
        _json(task.outputs),
        _json(task.inputs),
        task.error_code,
        task.error,
        utc(task.created_at),
        utc(task.dispatched_at),
        utc(task.started_at),
        utc(task.finished_at),
        utc(task.deadline),
        _json(task.timings),
        _json(task.callback_events),
        *first_output_columns(task),
        owner,
        dt.datetime.now(dt.UTC) if owner is not None else None,
    )


# The request (workflow, params, client ids, key, hash, created_at) is fixed at create: save writes
# only the state, so a large params blob (base64 images) is written once, not at every step.
# A task that stays queued keeps its claim; one that re-enters the queue or ends loses it.
# A dispatched or running task stays with the replica that claimed it (see `adopt`).
UPDATE_STATE = f"""
    UPDATE {TASK_TABLE} SET
        status = $2, comfyui_task_id = $3, endpoint = $4, attempts = $5, outputs = $6,
        inputs = $7, error_code = $8, error = $9, s3_key = $10, comfy_filepath = $11,
        dispatched_at = $12, started_at = $13, finished_at = $14, timings = $15,
        owner = CASE WHEN $2 IN ('dispatched', 'running')
                          OR (status = 'queued' AND $2 = 'queued') THEN owner END,
        claimed_at = CASE WHEN status = 'queued' AND $2 = 'queued' THEN claimed_at END
    WHERE id = $1"""

# An ended task stays ended: a second replica (or a late attempt) cannot overwrite it.
NOT_ENDED = " AND status NOT IN ('completed', 'failed', 'cancelled')"


def state_values(task: Task) -> tuple[Any, ...]:
    """Values for UPDATE_STATE ($1 .. $15)."""
    return (
        task.id,
        task.status,
        task.comfyui_task_id,
        task.endpoint,
        task.attempts,
        _json(task.outputs),
        _json(task.inputs),
        task.error_code,
        task.error,
        *first_output_columns(task),
        utc(task.dispatched_at),
        utc(task.started_at),
        utc(task.finished_at),
        _json(task.timings),
    )


def event_values(task_id: int, event: TaskEvent) -> tuple[Any, ...]:
    return (task_id, event.status, utc(event.at), event.endpoint, event.detail)


def decode_task(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        workflow=row[1],
        params=_params.decode(row[2]),
        client_task_id=row[3],
        client_callback_url=row[4],
        client=row[5],
        request_hash=row[6],
        status=row[7],
        comfyui_task_id=row[8],
        endpoint=row[9],
        attempts=row[10],
        outputs=_outputs.decode(row[11]),
        inputs=_strings.decode(row[12]),
        error_code=row[13],
        error=row[14],
        created_at=_time(row[15]),
        dispatched_at=_time(row[16]),
        started_at=_time(row[17]),
        finished_at=_time(row[18]),
        deadline=_time(row[19]),
        timings=_timings.decode(row[20]),
        callback_events=_strings.decode(row[21]),
    )


def decode_event(row: Sequence[Any]) -> TaskEvent:
    return TaskEvent(
        task_id=row[0], status=row[1], at=_time(row[2]), endpoint=row[3], detail=row[4]
    )


SELECT_TASK = f"SELECT {columns()} FROM {TASK_TABLE}"
SELECT_EVENTS = (
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM {EVENT_TABLE} WHERE task_id = $1 ORDER BY id"
)
INSERT_EVENT = (
    f"INSERT INTO {EVENT_TABLE} ({', '.join(EVENT_COLUMNS)}) VALUES ({placeholders(1, 5)})"
)
