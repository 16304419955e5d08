"""`comfyui-server tasks retry-storage`: store again the outputs that went to the fallback
folder (DEFAULT_FAILED_IMAGE_PATH) while storage was failing, and clean their records.

Safe to run twice: a task is rewritten only once all its fallback files are stored, and its
files are deleted only after that; a second run finds nothing left to do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import obstore
from obstore.store import LocalStore

from .errors import ErrorCode
from .hookcall import call_all, call_first
from .models import Artifact, OutputRef, Task, TaskEvent
from .store import TaskQuery, TaskStore

log = logging.getLogger(__name__)
FALLBACK = "fallback"


@dataclass
class RetryReport:
    tasks_fixed: list[int] = field(default_factory=list)
    files_stored: int = 0
    failures: list[str] = field(default_factory=list)


def _reader(folder: LocalStore, key: str):
    async def chunks() -> AsyncIterator[bytes]:
        result = await obstore.get_async(folder, key)
        async for chunk in result.stream():
            yield bytes(chunk)

    return chunks


async def retry_storage(store: TaskStore, pm, fallback_dir) -> RetryReport:
    report = RetryReport()
    folder = LocalStore(fallback_dir, mkdir=True)
    cursor = None
    while True:
        page = await store.list_tasks(
            TaskQuery(error_code=int(ErrorCode.S3_UPLOAD_ERROR), before_id=cursor, limit=200)
        )
        for task in page:
            await _retry_task(task, store, pm, folder, report)
        if len(page) < 200:
            return report
        cursor = page[-1].id


async def _retry_task(task: Task, store: TaskStore, pm, folder: LocalStore, report) -> None:
    outputs: list[OutputRef] = []
    stored_keys = []
    for output in task.outputs:
        if output.storage != FALLBACK:
            outputs.append(output)
            continue
        artifact = Artifact(
            filename=output.filename,
            subfolder=output.subfolder,
            type="output",
            node_id=output.node_id,
            content_type=output.content_type,
            endpoint=task.endpoint or "",
            open=_reader(folder, output.key),
        )
        try:
            stored = await call_first(pm.hook.store, artifact=artifact, task=task)
            if stored is None:
                raise RuntimeError("no storage plugin stored the file")
        except Exception as exc:
            report.failures.append(f"task {task.id}: {output.key}: {exc}")
            return  # leave the task and its files as they were
        outputs.append(
            msgspec.structs.replace(
                output, key=stored.key, size=stored.size, storage=stored.storage, url=stored.url
            )
        )
        stored_keys.append(output.key)
    fixed = msgspec.structs.replace(
        task,
        outputs=tuple(outputs),
        error_code=int(ErrorCode.SUCCESS),
        error=None,
        status="completed",
    )
    event = TaskEvent(
        task_id=task.id,
        status="completed",
        detail=f"retry-storage stored {len(stored_keys)} fallback file(s)",
    )
    await store.save(fixed, event, force=True)  # a failed task becomes completed
    await call_all(pm.hook.on_task_event, isolate=True, task=fixed, event=event)
    for key in stored_keys:
        await obstore.delete_async(folder, key)
    report.tasks_fixed.append(task.id)
    report.files_stored += len(stored_keys)
