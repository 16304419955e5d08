"""Clean ComfyUI's disks after each task (the seed's promise): remove the task's uploaded
inputs and its output files from the endpoint, then its history entry.

Strategy `COMFYUI_CLEANUP`:
- `filecleaner` (default): the ComfyUI-fileCleaner custom node, one prompt per task holding
  one node per file (the seed sent one prompt per file). Skipped, with a warning, on an
  endpoint that does not offer the node.
- `local`: ComfyUI's input and output folders are mounted here (`COMFYUI_INPUT_DIR`,
  `COMFYUI_OUTPUT_DIR`): the files are removed directly, never outside those folders.
- `off`: leave everything on ComfyUI.
History entries are deleted over HTTP unless `off`.

Durable. When a task ends, a chore (kind `cleanup`) is written to the task store, held by
this process, and run at once in the background; success finishes it. A failed attempt
(endpoint down, clean-up prompt failed or not finished in time) puts it back with
exponential backoff, until COMFYUI_CLEANUP_RETRY_WINDOW has passed since the task ended
(then it is given up, with a warning). A poll loop claims due chores: retries, and those a
crashed process held once their lease has run out. An attempt is idempotent: its clean-up
prompts have ids made from the chore, so a process that takes over looks for them in
ComfyUI's history and queue before sending them again; a prompt an attempt sent and did not
see end (still queued when it timed out) is waited for by the next one, not sent again; and
a file already gone counts as removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import random
import uuid
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import msgspec
from comfyui_server.core import (
    ComfyUIClient,
    MemoryTaskStore,
    PromptRejected,
    Settings,
    StartupError,
    Task,
    TaskResult,
    hookimpl,
)
from comfyui_server.core.errors import EndpointUnavailable
from comfyui_server.core.models import Chore, utcnow

log = logging.getLogger(__name__)

CLEANER_NODE = "Clean input and output file"
KIND = "cleanup"
"""The chores' kind in the task store."""
LEASE_MARGIN = 5.0
"""Seconds a hold on a chore outlives the attempt's timeout (the store write that ends it)."""
POLL_BATCH = 100
"""Attempts in flight at most from what the poll loop claims."""


class CleanupSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    comfyui_cleanup: Literal["filecleaner", "local", "off"] = "filecleaner"
    """How to remove a finished task's files from ComfyUI: `filecleaner` (the
    ComfyUI-fileCleaner node), `local` (ComfyUI's folders are mounted here: see
    COMFYUI_INPUT_DIR) or `off`."""
    comfyui_cleanup_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Seconds one clean-up attempt may take, its prompts on ComfyUI included; one that
    takes longer is tried again later."""
    comfyui_cleanup_retry_window: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds after a task's end during which a failed clean-up is retried; then it is
    given up with a warning and the files stay."""
    comfyui_cleanup_backoff_base: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Delay before the first retry of a clean-up; doubled for each later one."""
    comfyui_cleanup_backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """Longest delay between two clean-up attempts."""
    comfyui_cleanup_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """How often the task store is read for clean-ups that are due, or that a process
    which died left behind (taken once their lease of COMFYUI_CLEANUP_TIMEOUT + 5 s ran
    out)."""
    comfyui_input_dir: str | None = None
    """`local` clean-up: ComfyUI's input folder as mounted on this host. `{host}` and
    `{port}` stand for the endpoint's, for a folder per endpoint
    (e.g. `/mnt/comfyui-{port}/input`); without them one folder serves every endpoint."""
    comfyui_output_dir: str | None = None
    """`local` clean-up: ComfyUI's output folder as mounted on this host; `{host}` and
    `{port}` as in COMFYUI_INPUT_DIR."""


# ---- what to remove ---------------------------------------------------------------------


def files_to_remove(task: Task) -> list[tuple[str, str]]:
    """(folder type, path relative to it) of every file the task left on ComfyUI."""
    files = [("input", path) for path in task.inputs]
    for output in task.outputs:
        path = f"{output.subfolder}/{output.filename}" if output.subfolder else output.filename
        files.append(("output", path))
    return files


def cleaner_prompt(files: list[tuple[str, str]]) -> dict:
    return {
        str(i): {"class_type": CLEANER_NODE, "inputs": {"type": kind, "path": path}}
        for i, (kind, path) in enumerate(files, start=1)
    }


def chore_data(task: Task) -> dict[str, Any]:
    """What a clean-up chore records: where, which prompt, which files. `prompts` collects
    the clean-up prompts of failed attempts, whose history entries go at the end too."""
    return {
        "endpoint": task.endpoint,
        "prompt_id": task.comfyui_task_id,
        "files": [list(f) for f in files_to_remove(task)],
        "prompts": [],
    }


# ---- the `local` strategy ------------------------------------------------------------------


def entry_inside(folder: Path, relative: str) -> Path | None:
    """The directory entry `relative` names inside `folder`, or None when it would lie
    outside it (`..`, an absolute path, a symlinked directory leading out) or is no file
    name at all. Directories on the way are resolved; the last component is not, so a
    symlink is removed itself, never what it points to."""
    if not relative or "\x00" in relative:
        return None
    root = folder.resolve()
    path = root / relative
    if path.name in ("", ".", ".."):
        return None
    parent = path.parent.resolve()
    if parent != root and not parent.is_relative_to(root):
        return None
    return parent / path.name


def remove_local_files(folders: dict[str, Path], files: list[tuple[str, str]]) -> list[str]:
    """Remove each file from its folder (`input` or `output`); a file already gone counts
    as removed. Returns what was refused: paths outside their folder, and directories.
    Other errors (permissions, I/O) raise, so the attempt is retried. Blocking: run it in a
    thread."""
    refused = []
    for kind, relative in files:
        folder = folders.get(kind)
        target = entry_inside(folder, relative) if folder is not None else None
        if target is None:
            refused.append(f"{kind}/{relative}")
            continue
        try:
            target.unlink(missing_ok=True)
        except IsADirectoryError:
            refused.append(f"{kind}/{relative}")
        except PermissionError:
            if target.is_dir() and not target.is_symlink():  # unlink(dir) on Linux
                refused.append(f"{kind}/{relative}")
            else:
                raise
    return refused


def folder_for(template: str, endpoint: str) -> Path:
    host, _, port = endpoint.rpartition(":")
    return Path(template.format(host=host, port=port))


# ---- attempts ---------------------------------------------------------------------------


class Retry(Exception):
    """The attempt did not finish the clean-up; a later one may."""


class _Progress:
    """What an attempt did so far, kept when it is cut short (its timeout)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        """Clean-up prompts it sent or found, in order."""
        self.waiting: dict[str, Any] | None = None
        """The prompt it waits for (`prompt_id`) and the files that prompt removes."""


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay after the `attempts`-th failure: base * 2^(attempts-1), capped, half of it
    random, so the clean-ups of one dead endpoint do not all come back at once."""
    nominal = min(cap, base * 2 ** min(attempts - 1, 62))
    return nominal / 2 + random.uniform(0, nominal / 2)


def _prompt_id(chore: Chore, round_: int) -> str:
    """The same for a chore's attempt in every process, so one that takes the chore over
    finds what a dead holder sent."""
    return f"cleanup-{chore.id.removeprefix('chore_')}-{chore.attempts}-{round_}"


async def _wait_history(client: ComfyUIClient, prompt_id: str) -> dict:
    """The prompt's history entry once it has one; the attempt's timeout bounds the wait.
    Asked every 0.1 s at first (a clean-up prompt on an idle ComfyUI takes milliseconds),
    then less often, up to once a second, while it waits in a busy queue."""
    delay = 0.1
    while True:
        entry = await client.history(prompt_id)
        if entry is not None:
            return entry
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 1.5)


async def _queued(client: ComfyUIClient, prompt_id: str) -> bool:
    queue = await client.queue()
    items = [*queue.get("queue_running", ()), *queue.get("queue_pending", ())]
    return any(len(item) > 1 and item[1] == prompt_id for item in items)


def _failure(entry: dict) -> tuple[int | None, str, str]:
    """(failing node number, exception type, message) of a clean-up prompt that failed."""
    for kind, data in reversed(entry["status"].get("messages") or []):
        if kind == "execution_error":
            try:
                node = int(data.get("node_id"))
            except (TypeError, ValueError):
                node = None
            return node, str(data.get("exception_type")), str(data.get("exception_message"))
        if kind == "execution_interrupted":
            return None, "interrupted", "interrupted"
    return None, "unknown", "no execution_error reported"


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
        # ComfyUI's clients are closed by now (the engine stops first): attempts in flight
        # are cut short, unrecorded, and the next start takes them up where they were
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
        progress = _Progress()
        timeout = self.own.comfyui_cleanup_timeout
        error: str | None = None
        try:
            async with asyncio.timeout(timeout):
                if self.own.comfyui_cleanup == "local":
                    await self._local(chore, progress)
                else:
                    await self._filecleaner(chore, progress, fresh=fresh)
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

    async def _record(self, chore: Chore, progress: _Progress, error: str | None) -> None:
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

    def _client(self, endpoint: str) -> ComfyUIClient:
        client = self.engine.client(endpoint)
        if client is None:
            raise Retry(f"endpoint {endpoint} is not configured")
        return client

    def _state(self, endpoint: str) -> Any:
        state = next((s for s in self.engine.fleet.states() if s.name == endpoint), None)
        if state is not None and state.status == "down":
            raise Retry(f"endpoint {endpoint} is down")
        return state

    async def _delete_history(
        self, client: ComfyUIClient, chore: Chore, progress: _Progress
    ) -> None:
        prompt_id = chore.data.get("prompt_id")
        ids = [*([prompt_id] if prompt_id else []), *chore.data.get("prompts", [])]
        ids = list(dict.fromkeys([*ids, *progress.prompts]))
        if ids:
            await client.delete_history(ids)

    async def _filecleaner(self, chore: Chore, progress: _Progress, *, fresh: bool) -> None:
        endpoint = chore.data["endpoint"]
        client = self._client(endpoint)
        state = self._state(endpoint)
        files = [(kind, path) for kind, path in chore.data.get("files", [])]
        waiting = chore.data.get("waiting")  # sent by an earlier attempt that timed out
        if waiting:
            files = [(kind, path) for kind, path in waiting["files"]]
        if files and state is not None and not state.can_run(frozenset({CLEANER_NODE})):
            log.warning(
                "task %s: %s has no %r node; its files stay", chore.task_id, endpoint, CLEANER_NODE
            )
            files = []
        round_ = 0
        # One failing node aborts the whole prompt: a file already gone (FileNotFoundError)
        # counts as removed, and the rest run again in the next round.
        while files:
            round_ += 1
            if waiting:
                prompt_id, lookup, waiting = waiting["prompt_id"], True, None
            else:
                # a dead holder may have sent it (not `fresh`): its outcome, or wait for it
                prompt_id, lookup = _prompt_id(chore, round_), not fresh
            progress.prompts.append(prompt_id)
            progress.waiting = {"prompt_id": prompt_id, "files": [list(f) for f in files]}
            entry = None
            if lookup:
                entry = await client.history(prompt_id)
                if entry is None and await _queued(client, prompt_id):
                    entry = await _wait_history(client, prompt_id)
            if entry is None:
                try:
                    await client.post_prompt(
                        cleaner_prompt(files),
                        client_id=self.engine.client_id(endpoint) or self.owner,
                        prompt_id=prompt_id,
                    )
                except PromptRejected as exc:  # no node, or a path it refuses: cannot help
                    log.warning(
                        "task %s: %s refused the cleanup prompt; its files stay: %s",
                        chore.task_id,
                        endpoint,
                        exc,
                    )
                    progress.waiting = None
                    break
                entry = await _wait_history(client, prompt_id)
            progress.waiting = None
            if entry["status"].get("status_str") == "success":
                break
            node, exception_type, message = _failure(entry)
            if node is None or exception_type != "FileNotFoundError":
                raise Retry(f"cleanup prompt {prompt_id} failed: {exception_type}: {message}")
            files = [f for i, f in enumerate(files, start=1) if i != node]
        await self._delete_history(client, chore, progress)

    async def _local(self, chore: Chore, progress: _Progress) -> None:
        endpoint = chore.data["endpoint"]
        folders = {
            "input": folder_for(self.own.comfyui_input_dir or "", endpoint),
            "output": folder_for(self.own.comfyui_output_dir or "", endpoint),
        }
        for kind, folder in folders.items():
            if not await asyncio.to_thread(folder.is_dir):  # not mounted (now)?
                raise Retry(f"{kind} folder {folder} is not there")
        files = [(kind, path) for kind, path in chore.data.get("files", [])]
        refused = await asyncio.to_thread(remove_local_files, folders, files)
        if refused:
            log.warning(
                "task %s: refused to remove %s: outside its folder or not a file",
                chore.task_id,
                ", ".join(refused),
            )
        client = self._client(endpoint)
        self._state(endpoint)
        await self._delete_history(client, chore, progress)

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


# ---- hooks ------------------------------------------------------------------------------

_cleaners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Cleaner] = (
    weakref.WeakKeyDictionary()
)
"""The cleaner of the app running on each event loop: on_result gets no app, and tests may
run several apps (each on its own loop) in one process."""

_CHORE_METHODS = (
    "add_chore",
    "task_chores",
    "claim_chores",
    "finish_chore",
    "retry_chore",
    "release_chores",
)


def _current() -> Cleaner | None:
    try:
        return _cleaners.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


def _check_local(own: CleanupSettings, endpoints: list[str]) -> None:
    if not own.comfyui_input_dir or not own.comfyui_output_dir:
        raise StartupError(
            "COMFYUI_CLEANUP=local needs COMFYUI_INPUT_DIR and COMFYUI_OUTPUT_DIR: ComfyUI's "
            "input and output folders as mounted on this host"
        )
    for name, template in (
        ("COMFYUI_INPUT_DIR", own.comfyui_input_dir),
        ("COMFYUI_OUTPUT_DIR", own.comfyui_output_dir),
    ):
        for endpoint in endpoints:
            try:
                folder = folder_for(template, endpoint)
            except (KeyError, IndexError, ValueError) as exc:
                raise StartupError(
                    f"{name}: {template!r}: only {{host}} and {{port}} may be used ({exc!r})"
                ) from None
            if not folder.is_dir():
                raise StartupError(f"{name}: {folder} (for {endpoint}) is not a folder")


@hookimpl
async def startup(app: Any, settings: Settings) -> None:
    own = settings.load(CleanupSettings)
    if own.comfyui_cleanup == "off":
        return
    engine = app.state.engine
    if own.comfyui_cleanup == "local":
        _check_local(own, [s.name for s in engine.fleet.states()])
    store = engine.store
    if not all(callable(getattr(store, name, None)) for name in _CHORE_METHODS):
        log.warning(
            "cleanup: the task store %s keeps no chores; pending clean-ups are kept in memory "
            "and lost on restart",
            type(store).__name__,
        )
        store = MemoryTaskStore()
    cleaner = Cleaner(engine, store, own)
    await cleaner.start()
    _cleaners[asyncio.get_running_loop()] = cleaner


@hookimpl
async def shutdown(app: Any) -> None:
    cleaner = _cleaners.pop(asyncio.get_running_loop(), None)
    if cleaner is not None:
        await cleaner.stop()


@hookimpl(trylast=True)
async def on_result(task: Task, result: TaskResult) -> None:
    cleaner = _current()
    if cleaner is None or task.endpoint is None:
        return
    await cleaner.add(task, result)
