"""The outbox worker of one running app. A delivery is written to the task store's outbox
before anything is sent, and `enqueue` returns as soon as it is, so the engine never waits
on a receiver and a restart resumes what was pending (the first poll at start-up schedules
it). Each delivery runs in its own asyncio task and waits for a slot of its host's semaphore
(WEBHOOK_MAX_PER_HOST) only when it is about to send, so a slow or dead receiver holds up
nothing but its own deliveries. An attempt is sent only after the store hands this process
a lease on the delivery (`claim_delivery`); the lease outlives the attempt's timeout, and a
crashed holder's lease runs out so another process takes over. `task.progress` messages are
best effort: never stored or retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec
from comfyui_server.core import Task, TaskStore, render_task
from comfyui_server.core.models import TaskProgress, WebhookDelivery, utcnow

from .policy import Outcome, after_attempt
from .sender import Sender
from .settings import WebhookSettings

log = logging.getLogger(__package__)  # the plugin's logger, whichever module writes

POLL_BATCH = 500
"""Deliveries taken from the outbox per poll; the rest wait for the next one."""
LEASE_MARGIN = 10.0
"""Seconds a claim outlives the attempt's timeout (the store write that ends it)."""


def host_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


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
                    left = held[1] - time.monotonic() if held is not None else 0.0
                    if held is not None and left > self.sender.timeout + LEASE_MARGIN / 2:
                        # ours for a whole attempt and the write that records it: no claim
                        delivery = held[0]
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
