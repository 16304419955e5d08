"""The `local` strategy: ComfyUI's input and output folders are mounted on this host
(COMFYUI_INPUT_DIR, COMFYUI_OUTPUT_DIR), so the files are removed directly, never outside
those folders; only the history entries are deleted over HTTP. Also the start-up check that
the folders are there."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from comfyui_server.core import StartupError
from comfyui_server.core.models import Chore

from .attempts import Progress, Retry, client_for, delete_history, endpoint_state
from .settings import CleanupSettings

log = logging.getLogger(__package__)  # the plugin's logger, whichever module writes


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


def check_folders(own: CleanupSettings, endpoints: list[str]) -> None:
    """At start-up: both folders are set, their templates use only `{host}` and `{port}`,
    and each endpoint's folders exist."""
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


async def clean(engine: Any, own: CleanupSettings, chore: Chore, progress: Progress) -> None:
    """One attempt at the chore: the files, then the history entries."""
    endpoint = chore.data["endpoint"]
    folders = {
        "input": folder_for(own.comfyui_input_dir or "", endpoint),
        "output": folder_for(own.comfyui_output_dir or "", endpoint),
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
    client = client_for(engine, endpoint)
    endpoint_state(engine, endpoint)
    await delete_history(client, chore, progress)
