"""The `filecleaner` strategy (the default): the ComfyUI-fileCleaner custom node removes
the files, one prompt per task holding one node per file (the seed sent one prompt per
file). Skipped, with a warning, on an endpoint that does not offer the node.

Idempotent: a clean-up prompt's id is made from the chore, so a process that takes a chore
over looks for it in ComfyUI's history and queue before sending it again; a prompt an
earlier attempt sent and did not see end (still queued when it timed out) is waited for,
not sent again; and a file already gone counts as removed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from comfyui_server.core import ComfyUIClient, PromptRejected
from comfyui_server.core.models import Chore

from .attempts import Progress, Retry, client_for, delete_history, endpoint_state

log = logging.getLogger(__package__)  # the plugin's logger, whichever module writes

CLEANER_NODE = "Clean input and output file"


def cleaner_prompt(files: list[tuple[str, str]]) -> dict:
    return {
        str(i): {"class_type": CLEANER_NODE, "inputs": {"type": kind, "path": path}}
        for i, (kind, path) in enumerate(files, start=1)
    }


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


async def clean(engine: Any, owner: str, chore: Chore, progress: Progress, *, fresh: bool) -> None:
    """One attempt at the chore. `fresh`: the chore was just added by this process, so
    nothing of it can be on ComfyUI yet. `owner` is the client id of the prompts when the
    engine has none for the endpoint."""
    endpoint = chore.data["endpoint"]
    client = client_for(engine, endpoint)
    state = endpoint_state(engine, endpoint)
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
                    client_id=engine.client_id(endpoint) or owner,
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
    await delete_history(client, chore, progress)
