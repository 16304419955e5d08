"""The plugin's REST routes, under the API's prefix and guard: send a task's final webhook
again as a new delivery (`POST /tasks/{id}/redeliver`), and list a task's deliveries
(`GET /tasks/{id}/webhooks`). Both answer 503 while webhooks are not running."""

from __future__ import annotations

import datetime as dt

import msgspec
from comfyui_server.core import RequestError, TaskRecord, render_task
from comfyui_server.core.api.params import TaskId
from comfyui_server.core.api.tasks import visible_task
from litestar import Request, Response, get, post

from .outbox import Outbox


class DeliveryInfo(msgspec.Struct, kw_only=True):
    id: str
    """The `webhook-id` header of every attempt."""
    event: str
    url: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    finished_at: dt.datetime | None


def _outbox_of(request: Request) -> Outbox:
    outbox = getattr(request.app.state, "webhook_outbox", None)
    if outbox is None:
        raise RequestError("webhooks are not running", field="webhook", status_code=503)
    return outbox


@post(
    "/tasks/{task_id:int}/redeliver",
    operation_id="redeliverWebhook",
    status_code=202,
    summary="Send the task's final webhook again, as a new delivery (new webhook-id)",
    tags=["webhooks"],
)
async def redeliver(task_id: TaskId, request: Request) -> Response[TaskRecord]:
    task = await visible_task(request, task_id)
    if not task.client_callback_url:
        raise RequestError(
            f"task {task_id} has no client_callback_url",
            field="client_callback_url",
            status_code=409,
        )
    if not task.is_final:
        raise RequestError(
            f"task {task_id} is {task.status}; only a final event can be redelivered",
            field="task_id",
            status_code=409,
        )
    outbox = _outbox_of(request)
    await outbox.enqueue(task, f"task.{task.status}")
    return Response(await render_task(task, request.app.state.pm), status_code=202)


@get(
    "/tasks/{task_id:int}/webhooks",
    operation_id="listWebhookDeliveries",
    summary="Every webhook delivery of a task, oldest first",
    tags=["webhooks"],
)
async def deliveries(task_id: TaskId, request: Request) -> list[DeliveryInfo]:
    await visible_task(request, task_id)
    found = await _outbox_of(request).store.task_deliveries(task_id)
    return [
        DeliveryInfo(
            id=d.id,
            event=d.event,
            url=d.url,
            status=d.status,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at,
            finished_at=d.finished_at,
        )
        for d in found
    ]
