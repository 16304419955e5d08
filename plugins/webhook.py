"""Tell the client when a task ends: POST the task record to its `client_callback_url`.

Delivery runs in a background task so a slow receiver never holds the engine up.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import msgspec

from comfyui_server.core import Task, TaskResult, hookimpl, render_task

log = logging.getLogger(__name__)


class _State:
    http: httpx.AsyncClient | None = None
    pm = None
    pending: set[asyncio.Task] = set()


_state = _State()


@hookimpl
def startup(app) -> None:
    _state.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
    _state.pm = app.state.pm


@hookimpl
async def shutdown() -> None:
    if _state.pending:
        await asyncio.wait(_state.pending, timeout=5)
    if _state.http is not None:
        await _state.http.aclose()
        _state.http = None


async def deliver(task: Task, result: TaskResult) -> None:
    record = await render_task(task, _state.pm, event=f"task.{result.status}")
    body = msgspec.json.encode(record)
    try:
        response = await _state.http.post(
            task.client_callback_url, content=body, headers={"content-type": "application/json"}
        )
        log.info("task %s: webhook answered %s", task.id, response.status_code)
    except httpx.HTTPError as exc:
        log.warning("task %s: webhook to %s failed: %r", task.id, task.client_callback_url, exc)


@hookimpl
def notify(task: Task, result: TaskResult) -> None:
    if not task.client_callback_url or _state.http is None:
        return
    delivery = asyncio.create_task(deliver(task, result))
    _state.pending.add(delivery)
    delivery.add_done_callback(_state.pending.discard)
