"""Durable clean-ups: each task's clean-up is a chore (kind `cleanup`) written to the task
store, held by this process and run at once in the background; success finishes it. A
failed attempt (endpoint down, clean-up prompt failed or not finished in time) puts it back
with exponential backoff, until COMFYUI_CLEANUP_RETRY_WINDOW has passed since the task
ended (then it is given up, with a warning). A poll loop claims due chores: retries, and
those a crashed process held once their lease has run out. The strategies that do the work
are in `filecleaner` and `local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import random
import uuid
from typing import Any

import httpx
from comfyui_server.core import Task, TaskResult
from comfyui_server.core.errors import EndpointUnavailable
from comfyui_server.core.models import Chore, utcnow

from . import filecleaner, local
from .attempts import Progress, Retry
from .settings import CleanupSettings

log = logging.getLogger(__package__)  # the plugin's logger, whichever module writes

KIND = "cleanup"
"""The chores' kind in the task store."""
LEASE_MARGIN = 5.0
"""Seconds a hold on a chore outlives the attempt's timeout (the store write that ends it)."""
POLL_BATCH = 100
"""Attempts in flight at most from what the poll loop claims."""


# ---- what to remove ---------------------------------------------------------------------


def files_to_remove(task: Task) -> list[tuple[str, str]]:
    """(folder type, path relative to it) of every file the task left on ComfyUI."""
    files = [("input", path) for path in task.inputs]
    for output in task.outputs:
        path = f"{output.subfolder}/{output.filename}" if output.subfolder else output.filename
        files.append(("output", path))
    return files


def chore_data(task: Task) -> dict[str, Any]:
    """What a clean-up chore records: where, which prompt, which files. `prompts` collects
    the clean-up prompts of failed attempts, whose history entries go at the end too."""
    return {
        "endpoint": task.endpoint,
        "prompt_id": task.comfyui_task_id,
        "files": [list(f) for f in files_to_remove(task)],
        "prompts": [],
    }


# ---- the runner -------------------------------------------------------------------------


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay after the `attempts`-th failure: base * 2^(attempts-1), capped, half of it
    random, so the clean-ups of one dead endpoint do not all come back at once."""
    nominal = min(cap, base * 2 ** min(attempts - 1, 62))
    return nominal / 2 + random.uniform(0, nominal / 2)


class Cleaner:
    """Records, runs and retries the clean-ups of one running app."""

    def __init__(self, engine: Any, store: Any, own: CleanupSettings) -> None:
        self.engine = engine
        self.store = store
        self.own = own
        self.owner = f"cleanup-{uuid.uuid4().hex}"
        self.lease = own.comfyui_cleanup_timeout + LEASE_MARGIN
        self._running: dict[str, asyncio.Task] = {}
        self._dues: list[dt.datetime] = []
        """When retries we put back fall due (a heap), so the poll loop wakes for them."""
        self._wake = asyncio.Event()
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_loop(), name="cleanup-chores")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        # attempts in flight are cut short, unrecorded, and the next start takes them up
        # where they were (their prompt ids are derived from the chore, so none runs twice)
        running = list(self._running.values())
        for job in running:
            job.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        try:
            await self.store.release_chores(self.owner)  # the next start takes them at once
        except Exception:  # the leases run out instead
            log.exception("cleanup: could not let go of chores at shutdown")

    # ---- adding --------------------------------------------------------------------------

    async def add(self, task: Task, result: TaskResult) -> None:
        if result.replayed and await self.store.task_chores(task.id, KIND):
            return  # recorded before the crash: it runs from the store
        chore = await self.store.add_chore(
            KIND, task.id, chore_data(task), owner=self.owner, lease=self.lease
        )
        self._spawn(chore, fresh=True)

    def _spawn(self, chore: Chore, *, fresh: bool) -> None:
        if chore.id in self._running:
            return
        job = asyncio.create_task(self._run(chore, fresh=fresh))
        self._running[chore.id] = job
        job.add_done_callback(lambda _: self._running.pop(chore.id, None))

    # ---- running -------------------------------------------------------------------------

    async def _run(self, chore: Chore, *, fresh: bool) -> None:
        """One attempt, then its outcome recorded. `fresh`: the chore was just added by us,
        so nothing of it can be on ComfyUI yet."""
        progress = Progress()
        timeout = self.own.comfyui_cleanup_timeout
        error: str | None = None
        try:
            async with asyncio.timeout(timeout):
                if self.own.comfyui_cleanup == "local":
                    await local.clean(self.engine, self.own, chore, progress)
                else:
                    await filecleaner.clean(self.engine, self.owner, chore, progress, fresh=fresh)
        except TimeoutError:
            error = f"not done within COMFYUI_CLEANUP_TIMEOUT ({timeout:g} s)"
            if progress.waiting is not None:
                error += f"; prompt {progress.waiting['prompt_id']} is still on ComfyUI"
        except Retry as exc:
            error = str(exc)
        except (EndpointUnavailable, httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a surprise from ComfyUI: retried all the same
            log.exception("task %s: cleanup attempt failed", chore.task_id)
            error = f"{type(exc).__name__}: {exc}"
        try:
            await self._record(chore, progress, error)
        except Exception:  # the store failed: the lease runs out and the poll takes it again
            log.exception("task %s: cleanup outcome could not be recorded", chore.task_id)

    async def _record(self, chore: Chore, progress: Progress, error: str | None) -> None:
        what = f"task {chore.task_id}: cleanup on {chore.data.get('endpoint')}"
        if error is None:
            if not await self.store.finish_chore(chore.id, self.owner):
                log.warning("%s done, but another process held it by then", what)
            return
        now = utcnow()
        due = now + dt.timedelta(
            seconds=backoff(
                chore.attempts + 1,
                self.own.comfyui_cleanup_backoff_base,
                self.own.comfyui_cleanup_backoff_max,
            )
        )
        window = dt.timedelta(seconds=self.own.comfyui_cleanup_retry_window)
        if due > chore.created_at + window:
            log.warning(
                "%s given up after %s attempt(s), its files and history stay: %s",
                what,
                chore.attempts + 1,
                error,
            )
            await self.store.finish_chore(chore.id, self.owner, error=f"gave up: {error}")
            return
        data = dict(chore.data)
        data["prompts"] = list(dict.fromkeys([*data.get("prompts", []), *progress.prompts]))
        # a prompt sent and not seen to end: the next attempt waits for it instead of
        # sending the same files again (it may just be queued behind long prompts)
        data["waiting"] = progress.waiting
        if not await self.store.retry_chore(chore.id, self.owner, due, error, data=data):
            log.warning("%s: lease lost; another process took it", what)
            return
        log.info(
            "%s attempt %s failed: %s; retry in %.1f s",
            what,
            chore.attempts + 1,
            error,
            (due - now).total_seconds(),
        )
        heapq.heappush(self._dues, due)
        self._wake.set()

    # ---- the poll loop ---------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """Claim due chores: at start (what a restart left), then every
        COMFYUI_CLEANUP_POLL_INTERVAL and when a retry of ours falls due."""
        interval = self.own.comfyui_cleanup_poll_interval
        while True:
            self._wake.clear()
            started = utcnow()
            try:
                room = POLL_BATCH - len(self._running)
                if room > 0:
                    for chore in await self.store.claim_chores(KIND, self.owner, self.lease, room):
                        self._spawn(chore, fresh=False)
            except Exception:
                log.exception("cleanup: reading the task store failed; retrying")
            while self._dues and self._dues[0] <= started:
                heapq.heappop(self._dues)
            delay = interval
            if self._dues:
                delay = min(delay, (self._dues[0] - utcnow()).total_seconds() + 0.01)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.01)):
                    await self._wake.wait()
