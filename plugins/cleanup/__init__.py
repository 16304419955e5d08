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

This module holds the plugin's hooks (pluggy registers it, the entry point `cleanup`). The
rest: `settings` (CleanupSettings), `runner` (the chores: attempts, backoff, poll loop),
`attempts` (what one attempt shares with the strategies), `filecleaner` and `local` (the
strategies).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from comfyui_server.core import MemoryTaskStore, Settings, Task, TaskResult, hookimpl

from .filecleaner import CLEANER_NODE, cleaner_prompt
from .local import check_folders, entry_inside, folder_for, remove_local_files
from .runner import KIND, Cleaner, backoff, chore_data, files_to_remove
from .settings import CleanupSettings

__all__ = [
    "CLEANER_NODE",
    "KIND",
    "Cleaner",
    "CleanupSettings",
    "backoff",
    "chore_data",
    "cleaner_prompt",
    "entry_inside",
    "files_to_remove",
    "folder_for",
    "remove_local_files",
]

log = logging.getLogger(__name__)

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


@hookimpl
async def startup(app: Any, settings: Settings) -> None:
    own = settings.load(CleanupSettings)
    if own.comfyui_cleanup == "off":
        return
    engine = app.state.engine
    if own.comfyui_cleanup == "local":
        check_folders(own, [s.name for s in engine.fleet.states()])
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
