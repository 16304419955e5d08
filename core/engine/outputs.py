"""From a finished prompt's history entry to stored outputs, losing none.

Every file goes through the `store` hook. When that fails, the file is streamed again from
ComfyUI into the fallback folder at the same relative path it had there, and the task gets
error code 2 (the seed's S3_UPLOAD_ERROR); a file that cannot be downloaded gives code 3.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import obstore
from obstore.store import LocalStore

from ..comfyui.client import ComfyUIClient
from ..errors import EndpointUnavailable, ErrorCode
from ..hookcall import call_first
from ..models import Artifact, OutputRef, Task
from ..paths import safe_relative_path

log = logging.getLogger(__name__)


class DownloadFailed(Exception):
    """Reading the file from ComfyUI failed, as opposed to writing it somewhere."""


def content_type_of(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def history_files(
    entry: dict[str, Any], output_nodes: tuple[str, ...] | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(node_id, file) for every file a prompt's history lists: `images`, `gifs`, `audio`...

    Without an explicit node list only `output` files count (PreviewImage's `temp` files are
    previews, not results).
    """
    for node_id, ui in (entry.get("outputs") or {}).items():
        if output_nodes is not None and node_id not in output_nodes:
            continue
        for items in (ui or {}).values():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                if output_nodes is None and item.get("type", "output") != "output":
                    continue
                yield node_id, item


def make_artifact(client: ComfyUIClient, node_id: str, item: dict[str, Any]) -> Artifact:
    filename, subfolder = item["filename"], item.get("subfolder") or ""
    type_ = item.get("type") or "output"

    async def open_stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in client.view(filename, subfolder, type_):
                yield chunk
        except (FileNotFoundError, EndpointUnavailable) as exc:
            raise DownloadFailed(str(exc)) from exc

    return Artifact(
        filename=filename,
        subfolder=subfolder,
        type=type_,
        node_id=node_id,
        content_type=content_type_of(filename),
        endpoint=client.name,
        open=open_stream,
    )


class OutputCollector:
    def __init__(self, pm: Any, fallback_dir: Path) -> None:
        self.pm = pm
        self.fallback_dir = fallback_dir
        self._fallback_store: LocalStore | None = None

    async def collect(
        self, task: Task, client: ComfyUIClient, entry: dict[str, Any], output_nodes
    ) -> tuple[list[OutputRef], ErrorCode, str | None]:
        """Store every file; return the refs, the worst error code and its message."""
        refs: list[OutputRef] = []
        code, message = ErrorCode.SUCCESS, None
        for node_id, item in history_files(entry, output_nodes):
            artifact = make_artifact(client, node_id, item)
            ref, err_code, err = await self._store_one(artifact, task)
            if ref is not None:
                refs.append(ref)
            if err_code != ErrorCode.SUCCESS and code == ErrorCode.SUCCESS:
                code, message = err_code, err
        return refs, code, message

    async def _store_one(self, artifact: Artifact, task: Task):
        try:
            stored = await call_first(self.pm.hook.store, artifact=artifact, task=task)
            if stored is None:
                raise RuntimeError("no storage plugin stored the file")
        except Exception as exc:
            if isinstance(exc, DownloadFailed) or isinstance(exc.__cause__, DownloadFailed):
                log.warning("task %s: cannot download %s: %s", task.id, artifact.filename, exc)
                return None, ErrorCode.RETRIEVE_IMAGE_ERROR, f"download failed: {exc}"
            log.warning("task %s: store failed for %s: %r", task.id, artifact.filename, exc)
            return await self._fallback(artifact, task, exc)
        ref = OutputRef(
            key=stored.key,
            url=stored.url,
            filename=artifact.filename,
            subfolder=artifact.subfolder,
            node_id=artifact.node_id,
            content_type=artifact.content_type,
            size=stored.size,
            storage=stored.storage,
        )
        return ref, ErrorCode.SUCCESS, None

    async def _fallback(self, artifact: Artifact, task: Task, cause: Exception):
        """Keep the file under the fallback folder, at its path on ComfyUI."""
        if self._fallback_store is None:
            self._fallback_store = LocalStore(self.fallback_dir, mkdir=True)
        path = safe_relative_path(artifact.subfolder, artifact.filename)
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in artifact.chunks():
                size += len(chunk)
                yield chunk

        try:
            await obstore.put_async(self._fallback_store, path, counted(), max_concurrency=2)
        except Exception as exc:
            log.error("task %s: fallback write failed for %s: %r", task.id, path, exc)
            code = (
                ErrorCode.RETRIEVE_IMAGE_ERROR
                if isinstance(exc, DownloadFailed)
                else ErrorCode.S3_UPLOAD_ERROR
            )
            return None, code, f"store failed ({cause!r}) and fallback failed ({exc!r})"
        ref = OutputRef(
            key=path,
            filename=artifact.filename,
            subfolder=artifact.subfolder,
            node_id=artifact.node_id,
            content_type=artifact.content_type,
            size=size,
            storage="fallback",
        )
        return (
            ref,
            ErrorCode.S3_UPLOAD_ERROR,
            f"store failed, kept in the fallback folder: {cause!r}",
        )
