"""Submitting tasks and reading them back."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import JSONBody, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ..auth import caller
from ..errors import RequestError
from ..models import Task, TaskStatus
from ..records import TaskRecord, render_task
from ..store import TaskQuery
from .params import TaskId
from .schemas import SubmitRequest, TaskEventInfo

STREAM_LIMIT = 24 * 3600.0
"""An event stream ends with its task, or after this many seconds."""


async def _json(task: Task, pm) -> str:
    return msgspec.json.encode(await render_task(task, pm)).decode()


async def visible_task(request: Request, task_id: int) -> Task:
    """The task, if the caller may see it: its own, or any for an admin key."""
    task = await request.app.state.engine.store.get(task_id)
    key = request.state.get("api_key")
    if task is None or (key is not None and not key.admin and task.client != key.name):
        raise RequestError(f"no task with id {task_id}", field="task_id", status_code=404)
    return task


MAX_WAIT = 60.0
"""Longest `?wait=` we honour, in seconds: a held request costs little, but not nothing."""

WaitParam = Annotated[
    float,
    Parameter(
        ge=0,
        le=MAX_WAIT,
        description=f"Seconds (at most {MAX_WAIT:g}) to wait for the task to end: 200 with the "
        "final record if it ends in time, else 202 with the current one.",
    ),
]


async def follow(request: Request, task: Task, seconds: float):
    """Yield the task's news (new states and progress) until it ends or `seconds` pass.

    Ends of tasks running on another replica are not published here, so a quiet second
    re-reads the store.
    """
    engine = request.app.state.engine
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with engine.feed.subscribe(task.id) as queue:
        latest = await engine.store.get(task.id) or task  # after subscribing: nothing missed
        if latest.status != task.status:
            yield latest
        while not latest.is_final:
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                item = await asyncio.wait_for(queue.get(), timeout=min(left, 1.0))
            except TimeoutError:
                item = await engine.store.get(task.id)
                if item is None or item.status == latest.status:
                    continue
            if isinstance(item, Task):
                latest = item
            yield item


async def waited(request: Request, task: Task, seconds: float, status: int) -> Response:
    if seconds and not task.is_final:
        async for item in follow(request, task, seconds):
            if isinstance(item, Task):
                task = item
    code = status if task.is_final or not seconds else 202
    return Response(await render_task(task, request.app.state.pm), status_code=code)


async def submit_task(
    data: SubmitRequest, request: Request, wait: float = 0.0
) -> Response[TaskRecord]:
    state = request.app.state
    engine = state.engine
    await engine.check_capacity()
    task, created = await engine.submit(
        data.service_type,
        data.params,
        client_task_id=data.client_task_id,
        client_callback_url=data.client_callback_url,
        callback_events=tuple(data.callback_events or ()),
        timeout=data.timeout,
        client=caller(request),
    )
    # 200 either way, as the seed answered; a repeat is marked by a header.
    response = await waited(request, task, wait, 200)
    if not created:
        response.headers["idempotent-replay"] = "true"
    return response


class SeedSubmitController(Controller):
    """`POST {ROUTE_PREFIX}`: the seed's submission route."""

    path = ""
    tags = ["tasks"]

    @post("", operation_id="submitTaskSeed", status_code=200, summary="Submit a task")
    async def submit(
        self, data: JSONBody[SubmitRequest], request: Request, wait: WaitParam = 0.0
    ) -> Response[TaskRecord]:
        return await submit_task(data, request, wait)


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @post("", operation_id="submitTask", status_code=200, summary="Submit a task")
    async def submit(
        self, data: JSONBody[SubmitRequest], request: Request, wait: WaitParam = 0.0
    ) -> Response[TaskRecord]:
        return await submit_task(data, request, wait)

    @get("/{task_id:int}", operation_id="getTask", summary="One task's record")
    async def get_task(
        self, task_id: TaskId, request: Request, wait: WaitParam = 0.0
    ) -> Response[TaskRecord]:
        return await waited(request, await visible_task(request, task_id), wait, 200)

    @get(
        "/{task_id:int}/events",
        operation_id="streamTaskEvents",
        summary="Server-Sent Events: state changes and progress, then the final record",
    )
    async def events(self, task_id: TaskId, request: Request) -> ServerSentEvent:
        task = await visible_task(request, task_id)
        pm = request.app.state.pm

        async def stream():
            yield ServerSentEventMessage(event="status", data=await _json(task, pm))
            latest = task
            async for item in follow(request, task, STREAM_LIMIT):
                if isinstance(item, Task):
                    latest = item
                    event = "final" if item.is_final else "status"
                    yield ServerSentEventMessage(event=event, data=await _json(item, pm))
                else:
                    yield ServerSentEventMessage(
                        event="progress", data=msgspec.json.encode(item).decode()
                    )
            if task.is_final and latest is task:
                yield ServerSentEventMessage(event="final", data=await _json(task, pm))

        return ServerSentEvent(stream())

    @get("", operation_id="listTasks", summary="Find or list tasks, newest first")
    async def list_tasks(
        self,
        request: Request,
        client_task_id: Annotated[str | None, Parameter(min_length=1)] = None,
        status: Annotated[TaskStatus | None, Parameter(description="Only this state.")] = None,
        workflow: Annotated[str | None, Parameter(min_length=1)] = None,
        since: Annotated[
            dt.datetime | None, Parameter(description="Created at or after (ISO 8601).")
        ] = None,
        cursor: Annotated[
            int | None,
            Parameter(ge=1, le=2**63 - 1, description="`x-next-cursor` of the previous page."),
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    ) -> Response[list[TaskRecord]]:
        pm, store = request.app.state.pm, request.app.state.engine.store
        if client_task_id is not None:
            task = await store.find(client_task_id)
            try:
                tasks = [await visible_task(request, task.id)] if task else []
            except RequestError:
                tasks = []
            return Response([await render_task(t, pm) for t in tasks])
        key = request.state.get("api_key")
        query = TaskQuery(
            status=status,
            workflow=workflow,
            client=key.name if key is not None and not key.admin else None,
            since=since,
            before_id=cursor,
            limit=limit,
        )
        tasks = await store.list_tasks(query)
        headers = {"x-next-cursor": str(tasks[-1].id)} if len(tasks) == limit else {}
        return Response([await render_task(t, pm) for t in tasks], headers=headers)

    @delete("/{task_id:int}", operation_id="cancelTask", status_code=200, summary="Cancel a task")
    async def cancel_task(self, task_id: TaskId, request: Request) -> TaskRecord:
        await visible_task(request, task_id)
        task = await request.app.state.engine.cancel(task_id)
        return await render_task(task, request.app.state.pm)

    @get("/{task_id:int}/flow", operation_id="getTaskFlow", summary="A task's recorded steps")
    async def flow(self, task_id: TaskId, request: Request) -> list[TaskEventInfo]:
        await visible_task(request, task_id)
        state = request.app.state
        return [
            TaskEventInfo(
                status=e.status, at=e.at.isoformat(), endpoint=e.endpoint, detail=e.detail
            )
            for e in await state.engine.store.events(task_id)
        ]
