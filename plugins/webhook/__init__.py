"""Tell the client about its task: POST the task record to its `client_callback_url`.

Why it is built this way (docs/webhooks.md has the user's view):

* Durable. A delivery is written to the task store's outbox before anything is sent, and
  `notify` returns as soon as it is, so the engine never waits on a receiver and a restart
  resumes what was pending (the first poll at start-up schedules it).
* Retried. Connection errors, timeouts, 408, 429 and 5xx are retried with exponential
  backoff and jitter (or after the receiver's `Retry-After`) until the retry window ends;
  any other answer ends the delivery.
* Signed per Standard Webhooks (https://www.standardwebhooks.com/): `webhook-id` stays the
  same on every attempt of one delivery, so receivers can drop repeats.
* Isolated. Each delivery runs in its own asyncio task and waits for a slot of its host's
  semaphore (WEBHOOK_MAX_PER_HOST) only when it is about to send, so a slow or dead receiver
  holds up nothing but its own deliveries.
* Once per attempt across replicas. An attempt is sent only after the store hands this
  process a lease on the delivery (`claim_delivery`); the lease outlives the attempt's
  timeout, and a crashed holder's lease runs out so another process takes over.

This module holds the plugin's hooks (pluggy registers it, the entry point `webhook`). The
rest: `settings` (WebhookSettings), `signing` (Standard Webhooks), `policy` (what an answer
means, backoff, Retry-After, the retry window), `sender` (one attempt's POST), `outbox` (the
worker: enqueue, per-host slots, runs, the poll loop, progress) and `routes` (redeliver,
list deliveries).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from comfyui_server.core import MemoryTaskStore, Settings, Task, TaskResult, hookimpl
from comfyui_server.core.auth import authenticate
from comfyui_server.core.models import TaskEvent, TaskProgress
from comfyui_server.core.records import show_webhook_state
from comfyui_server.core.urls import UrlPolicy
from litestar import Router

from .outbox import Outbox
from .policy import Outcome, after_attempt, backoff, parse_retry_after
from .routes import deliveries, redeliver
from .sender import Sender
from .settings import WebhookSettings
from .signing import secret_key, signature, webhook_headers

__all__ = [
    "Outbox",
    "Outcome",
    "Sender",
    "WebhookSettings",
    "after_attempt",
    "backoff",
    "parse_retry_after",
    "secret_key",
    "signature",
    "webhook_headers",
]

log = logging.getLogger(__name__)

_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox] = (
    weakref.WeakKeyDictionary()
)
"""The outbox of the app running on each event loop: hooks such as `notify` get no app, and
tests may run several apps (each on its own loop) in one process."""


def _current() -> Outbox | None:
    try:
        return _outboxes.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


def _has_outbox(store: Any) -> bool:
    return all(
        callable(getattr(store, name, None))
        for name in ("add_delivery", "claim_delivery", "save_delivery", "pending_deliveries")
    )


@hookimpl
async def startup(app: Any, settings: Settings) -> None:
    own = settings.load(WebhookSettings)
    keys = [secret_key(secret) for secret in own.webhook_secret]
    store = app.state.engine.store
    if not _has_outbox(store):
        log.warning(
            "webhook: the task store %s keeps no outbox; deliveries are kept in memory and "
            "lost on restart",
            type(store).__name__,
        )
        store = MemoryTaskStore()
    elif not store.durable:
        log.warning("webhook: pending deliveries are lost on restart (no durable task store)")
    outbox = Outbox(store, app.state.pm, own, Sender(own, keys, UrlPolicy(settings.url_allowlist)))
    await outbox.start()
    _outboxes[asyncio.get_running_loop()] = outbox
    app.state.webhook_outbox = outbox
    show_webhook_state(app.state.pm, store)


@hookimpl
async def shutdown(app: Any) -> None:
    outbox = _outboxes.pop(asyncio.get_running_loop(), None)
    show_webhook_state(app.state.pm, None)
    if outbox is not None:
        await outbox.stop()


@hookimpl
async def notify(task: Task, result: TaskResult) -> None:
    outbox = _current()
    if outbox is None or not task.client_callback_url:
        return
    outbox.forget(task.id)
    event = f"task.{result.status}"
    if result.replayed and any(
        d.event == event for d in await outbox.store.task_deliveries(task.id)
    ):
        return  # recorded before the crash: it is being delivered already
    await outbox.enqueue(task, event)


@hookimpl
async def on_task_event(task: Task, event: TaskEvent) -> None:
    if event.status != "running" or "task.started" not in task.callback_events:
        return
    outbox = _current()
    if outbox is not None and task.client_callback_url:
        await outbox.enqueue(task, "task.started")


@hookimpl
def on_progress(task: Task, progress: TaskProgress) -> None:
    if "task.progress" not in task.callback_events or not task.client_callback_url:
        return
    outbox = _current()
    if outbox is not None:
        outbox.progress(task, progress)


@hookimpl
def register_routes(settings: Settings) -> list[Router]:
    # the API's own guard (API key and rate limit) and its ownership rule (visible_task)
    return [
        Router(
            path=settings.route_prefix,
            route_handlers=[redeliver, deliveries],
            guards=[authenticate],
        )
    ]
