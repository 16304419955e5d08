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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import logging
import random
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import msgspec
from comfyui_server.core import (
    ConfigError,
    MemoryTaskStore,
    RequestError,
    Settings,
    Task,
    TaskRecord,
    TaskResult,
    TaskStore,
    __version__,
    hookimpl,
    render_task,
)
from comfyui_server.core.api.params import TaskId
from comfyui_server.core.api.tasks import visible_task
from comfyui_server.core.auth import authenticate
from comfyui_server.core.models import TaskEvent, TaskProgress, WebhookDelivery, utcnow
from comfyui_server.core.records import show_webhook_state
from comfyui_server.core.urls import UrlPolicy
from litestar import Request, Response, Router, get, post

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
POLL_BATCH = 500
"""Deliveries taken from the outbox per poll; the rest wait for the next one."""
LEASE_MARGIN = 10.0
"""Seconds a claim outlives the attempt's timeout (the store write that ends it)."""
DRAIN_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read to keep its connection; nobody reads the body."""


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    webhook_secret: tuple[str, ...] = ()
    """Signing secrets, base64 after an optional `whsec_` prefix; several (comma-separated)
    sign with each, for rotation. Empty: deliveries are sent unsigned."""
    webhook_retry_window: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds after the event during which a delivery is retried."""
    webhook_backoff_base: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Delay before the first retry; doubled for each later one."""
    webhook_backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Longest delay between two attempts."""
    webhook_max_per_host: Annotated[int, msgspec.Meta(ge=1)] = 4
    """Requests in flight at once to one receiver (scheme, host, port)."""
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Seconds one attempt may take, from resolving the host to the answer's status."""
    webhook_progress_interval: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """At most one `task.progress` per task per this many seconds."""
    webhook_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """How often the outbox is read for deliveries left by a restart or another replica."""


# ---- signing (Standard Webhooks) ---------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` (or bare base64) secret."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError(
            "WEBHOOK_SECRET: expected base64 of 16+ random bytes, optionally prefixed with "
            "'whsec_' (e.g. whsec_$(openssl rand -base64 32))"
        )
    return key


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """id and timestamp always (receivers de-duplicate on the id); a signature with keys."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "user-agent": f"comfyui-server/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if keys:
        headers["webhook-signature"] = signature(keys, msg_id, timestamp, body)
    return headers


# ---- what an answer means ------------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's result."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False
    """We would not send it (the URL policy said no): retrying cannot help."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """No answer, or one that says "later": 408, 429, 5xx."""
        code = self.status_code
        if self.refused:
            return False
        return code is None or code in (408, 429) or code >= 500


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay after the `attempts`-th failure: base * 2^(attempts-1), capped, with "equal
    jitter" (half fixed, half random) so receivers that come back are not hit all at once."""
    nominal = min(cap, base * 2 ** min(attempts - 1, 62))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


def after_attempt(
    delivery: WebhookDelivery, outcome: Outcome, own: WebhookSettings, now: dt.datetime
) -> WebhookDelivery:
    """The delivery's next state: delivered, failed for good, or pending until a retry."""
    attempts = delivery.attempts + 1
    common = {"attempts": attempts, "last_status": outcome.status_code}
    if outcome.delivered:
        return msgspec.structs.replace(
            delivery,
            status="delivered",
            last_error=None,
            next_attempt_at=None,
            finished_at=now,
            **common,
        )
    error = outcome.error or f"HTTP {outcome.status_code}"
    if not outcome.retryable:
        return msgspec.structs.replace(
            delivery,
            status="failed",
            last_error=error,
            next_attempt_at=None,
            finished_at=now,
            **common,
        )
    delay = outcome.retry_after
    if delay is None:
        delay = backoff(attempts, own.webhook_backoff_base, own.webhook_backoff_max)
    due = now + dt.timedelta(seconds=delay)
    if due > delivery.expires_at:
        window = (delivery.expires_at - delivery.created_at).total_seconds()
        return msgspec.structs.replace(
            delivery,
            status="failed",
            next_attempt_at=None,
            finished_at=now,
            last_error=f"{error}; gave up: the {window:g} s retry window ended",
            **common,
        )
    return msgspec.structs.replace(delivery, last_error=error, next_attempt_at=due, **common)


# ---- one attempt ------------------------------------------------------------------------


def host_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class Sender:
    """Sends one attempt: the URL policy again (DNS may have changed since submission),
    then the signed POST, all within WEBHOOK_TIMEOUT."""

    def __init__(self, own: WebhookSettings, keys: Sequence[bytes], policy: UrlPolicy) -> None:
        self.keys = list(keys)
        self.policy = policy
        self.timeout = own.webhook_timeout
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(own.webhook_timeout),
            # per-host semaphores bound the connections; the pool must not add its own wait
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,  # a redirect could point past the URL policy
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, delivery: WebhookDelivery) -> Outcome:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(delivery)
        except TimeoutError:
            return Outcome(error=f"no answer within {self.timeout:g} s")

    async def _send(self, delivery: WebhookDelivery) -> Outcome:
        try:
            await self.policy.check(delivery.url, "client_callback_url")
        except RequestError as exc:
            if "cannot resolve" in exc.message:  # DNS trouble: worth another try
                return Outcome(error=exc.message)
            return Outcome(refused=True, error=f"refused by the URL policy: {exc.message}")
        headers = webhook_headers(self.keys, delivery.id, delivery.body)
        try:
            async with self.http.stream(
                "POST", delivery.url, content=delivery.body, headers=headers
            ) as response:
                retry_after = parse_retry_after(response.headers.get("retry-after"), utcnow())
                await _drain(response)
                return Outcome(status_code=response.status_code, retry_after=retry_after)
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}".rstrip(": "))


async def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end, so its connection goes back to the pool (an unread
    body closes it: measured, a new TCP connection per delivery); a long one is dropped."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > DRAIN_LIMIT:
            return


# ---- the outbox worker of one app -------------------------------------------------------------


def new_delivery_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class Outbox:
    """Schedules, sends and records deliveries for one running app."""

    def __init__(self, store: TaskStore, pm: Any, own: WebhookSettings, sender: Sender) -> None:
        self.store = store
        self.pm = pm
        self.own = own
        self.sender = sender
        self.owner = f"webhook-{uuid.uuid4().hex}"
        self.lease = own.webhook_timeout + LEASE_MARGIN
        self._slots: dict[tuple[str, str, int | None], asyncio.Semaphore] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._side: set[asyncio.Task] = set()
        self._progress_sent: dict[int, float] = {}
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_loop(), name="webhook-outbox")

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self._running.values(), *self._side) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.store.release_deliveries(self.owner)
        except Exception:  # the leases run out instead
            log.exception("webhook: could not release claims at shutdown")
        await self.sender.close()

    def slot(self, url: str) -> asyncio.Semaphore:
        host = host_of(url)
        if host not in self._slots:
            self._slots[host] = asyncio.Semaphore(self.own.webhook_max_per_host)
        return self._slots[host]

    # ---- adding ----------------------------------------------------------------------------

    async def enqueue(self, task: Task, event: str) -> WebhookDelivery:
        """Record a delivery of `event` (the body fixed now), then send it in the background."""
        record = await render_task(task, self.pm, event=event)
        now = utcnow()
        delivery = WebhookDelivery(
            id=new_delivery_id(),
            task_id=task.id,
            event=event,
            url=task.client_callback_url or "",
            body=msgspec.json.encode(record),
            created_at=now,
            next_attempt_at=now,
            expires_at=now + dt.timedelta(seconds=self.own.webhook_retry_window),
        )
        # recorded as ours: the first attempt needs no claim (a write fewer per task, and
        # none inside the receiver's slot); a crash before it leaves the lease to run out
        await self.store.add_delivery(delivery, owner=self.owner, lease=self.lease)
        held_until = time.monotonic() + self.lease
        self.schedule(delivery, held=(delivery, held_until))
        return delivery

    def schedule(
        self, delivery: WebhookDelivery, held: tuple[WebhookDelivery, float] | None = None
    ) -> None:
        if delivery.id in self._running or delivery.next_attempt_at is None:
            return
        run = asyncio.create_task(
            self._run(delivery.id, delivery.url, delivery.next_attempt_at, held)
        )
        self._running[delivery.id] = run
        run.add_done_callback(lambda _: self._running.pop(delivery.id, None))

    # ---- sending ---------------------------------------------------------------------------

    async def _run(
        self,
        delivery_id: str,
        url: str,
        due: dt.datetime,
        held: tuple[WebhookDelivery, float] | None = None,
    ) -> None:
        """Attempt after attempt until the delivery ends or another process holds it.
        `held` is a delivery recorded as ours, with when (monotonic) that claim runs out."""
        try:
            while True:
                await _sleep_until(due)
                async with self.slot(url):
                    if held is not None and held[1] - time.monotonic() > self.sender.timeout:
                        delivery = held[0]  # still ours for a whole attempt: no claim needed
                    else:
                        delivery = await self.store.claim_delivery(
                            delivery_id, self.owner, self.lease
                        )
                    held = None
                    if delivery is None:  # ended, rescheduled, or another process sends it
                        return
                    outcome = await self.sender.send(delivery)
                updated = after_attempt(delivery, outcome, self.own, utcnow())
                if not await self.store.save_delivery(updated, self.owner):
                    log.warning("webhook %s: lease lost; another process took it", delivery_id)
                    return
                _log_attempt(updated, outcome)
                if updated.status != "pending" or updated.next_attempt_at is None:
                    return
                due = updated.next_attempt_at
        except asyncio.CancelledError:
            raise
        except Exception:  # the store failed: the next poll picks the delivery up again
            log.exception("webhook %s: attempt could not be recorded", delivery_id)

    async def _poll_loop(self) -> None:
        """Schedule what the outbox holds: at start (a restart resumes pending deliveries),
        then every WEBHOOK_POLL_INTERVAL for deliveries a dead replica or a lost lease left."""
        interval = self.own.webhook_poll_interval
        while True:
            try:
                horizon = utcnow() + dt.timedelta(seconds=interval)
                for delivery in await self.store.pending_deliveries(horizon, POLL_BATCH):
                    self.schedule(delivery)
            except Exception:
                log.exception("webhook: reading the outbox failed; retrying")
            await asyncio.sleep(interval)

    # ---- progress: best effort, never stored or retried --------------------------------------

    def progress(self, task: Task, progress: TaskProgress) -> None:
        interval = self.own.webhook_progress_interval
        now = time.monotonic()
        last = self._progress_sent.get(task.id)
        if last is not None and now - last < interval:
            return
        self._progress_sent[task.id] = now
        side = asyncio.create_task(self._send_progress(task, progress))
        self._side.add(side)
        side.add_done_callback(self._side.discard)

    def forget(self, task_id: int) -> None:
        self._progress_sent.pop(task_id, None)

    async def _send_progress(self, task: Task, progress: TaskProgress) -> None:
        slot = self.slot(task.client_callback_url or "")
        if slot.locked():  # the receiver is busy with lasting deliveries: skip this one
            return
        async with slot:
            record = msgspec.to_builtins(await render_task(task, self.pm, event="task.progress"))
            record["progress"] = {
                "node": progress.node,
                "value": progress.value,
                "max": progress.max,
            }
            now = utcnow()
            delivery = WebhookDelivery(
                id=new_delivery_id(),
                task_id=task.id,
                event="task.progress",
                url=task.client_callback_url or "",
                body=msgspec.json.encode(record),
                expires_at=now,
            )
            outcome = await self.sender.send(delivery)
        if not outcome.delivered:
            log.debug("webhook: task.progress of task %s not taken: %s", task.id, outcome)


async def _sleep_until(when: dt.datetime) -> None:
    """Sleep until the wall clock (which the store compares with) reaches `when`; asyncio's
    monotonic clock may wake a little early."""
    for _ in range(100):
        left = (when - utcnow()).total_seconds()
        if left <= 0:
            return
        await asyncio.sleep(left + 0.001)


def _log_attempt(delivery: WebhookDelivery, outcome: Outcome) -> None:
    what = f"task {delivery.task_id}: webhook {delivery.event} ({delivery.id})"
    if delivery.status == "delivered":
        log.info("%s delivered after %s attempt(s)", what, delivery.attempts)
    elif delivery.status == "failed":
        log.warning(
            "%s failed after %s attempt(s): %s", what, delivery.attempts, delivery.last_error
        )
    else:
        wait = (delivery.next_attempt_at - utcnow()).total_seconds()
        log.info(
            "%s attempt %s: %s; retry in %.1f s", what, delivery.attempts, delivery.last_error, wait
        )


# ---- hooks ------------------------------------------------------------------------------

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


# ---- routes -----------------------------------------------------------------------------


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
