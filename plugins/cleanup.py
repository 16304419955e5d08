"""Clean ComfyUI's disks after each task (the seed's promise): remove the task's uploaded
inputs and its output files from the endpoint, then its history entry.

Strategy `COMFYUI_CLEANUP`:
- `filecleaner` (default): the ComfyUI-fileCleaner custom node, one prompt per task holding
  one node per file (the seed sent one prompt per file). Skipped, with a warning, on an
  endpoint that does not offer the node.
- `off`: leave everything on ComfyUI.
History entries are deleted in both cases unless `off`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Literal

import msgspec
from comfyui_server.core import (
    ComfyUIClient,
    PromptRejected,
    Settings,
    Task,
    TaskResult,
    hookimpl,
)
from comfyui_server.core.errors import EndpointUnavailable

log = logging.getLogger(__name__)

CLEANER_NODE = "Clean input and output file"


class CleanupSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    comfyui_cleanup: Literal["filecleaner", "off"] = "filecleaner"
    """How to remove a finished task's files from ComfyUI."""
    comfyui_cleanup_timeout: float = 30.0
    """Seconds to wait for a cleanup prompt to finish."""


class _State:
    engine = None
    settings = CleanupSettings()
    pending: set[asyncio.Task] = set()


_state = _State()


@hookimpl
def startup(app, settings: Settings) -> None:
    _state.engine = app.state.engine
    _state.settings = settings.load(CleanupSettings)


@hookimpl
async def shutdown() -> None:
    if _state.pending:
        await asyncio.wait(_state.pending, timeout=5)


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


async def _wait_history(client: ComfyUIClient, prompt_id: str, timeout: float) -> dict | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        entry = await client.history(prompt_id)
        if entry is not None:
            return entry
        await asyncio.sleep(0.1)
    return None


async def clean(task: Task) -> None:
    engine = _state.engine
    client = engine.client(task.endpoint) if engine else None
    if client is None or task.comfyui_task_id is None:
        return
    done = [task.comfyui_task_id]
    files = files_to_remove(task)
    try:
        state = next((s for s in engine.fleet.states() if s.name == task.endpoint), None)
        if files and state is not None and not state.can_run(frozenset({CLEANER_NODE})):
            log.warning(
                "task %s: %s has no %r node; its files stay", task.id, client.name, CLEANER_NODE
            )
            files = []
        # One failing node aborts the whole prompt (a file already gone, say): drop the
        # failing file and run the rest again.
        while files:
            prompt_id = f"cleanup-{uuid.uuid4()}"
            await client.post_prompt(
                cleaner_prompt(files),
                client_id=engine.client_id(task.endpoint),
                prompt_id=prompt_id,
            )
            entry = await _wait_history(client, prompt_id, _state.settings.comfyui_cleanup_timeout)
            if entry is None:
                log.warning("task %s: cleanup prompt %s did not finish", task.id, prompt_id)
                break
            done.append(prompt_id)
            if entry["status"].get("status_str") == "success":
                break
            failed = _failed_node(entry)
            if failed is None:
                break
            log.info("task %s: cleanup could not remove %s", task.id, files[failed - 1][1])
            files = [f for i, f in enumerate(files, start=1) if i != failed]
        await client.delete_history(done)
    except (EndpointUnavailable, PromptRejected) as exc:
        log.warning("task %s: cleanup on %s failed: %s", task.id, task.endpoint, exc)


def _failed_node(entry: dict) -> int | None:
    for kind, data in reversed(entry["status"].get("messages") or []):
        if kind == "execution_error":
            try:
                return int(data.get("node_id"))
            except (TypeError, ValueError):
                return None
    return None


@hookimpl(trylast=True)
def on_result(task: Task, result: TaskResult) -> None:
    if _state.settings.comfyui_cleanup == "off" or task.endpoint is None:
        return
    job = asyncio.create_task(clean(task))
    _state.pending.add(job)
    job.add_done_callback(_state.pending.discard)
