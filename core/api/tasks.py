"""Submitting tasks and reading them back."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, Parameter

from ..errors import RequestError
from ..records import TaskRecord, render_task
from .schemas import SubmitRequest, TaskEventInfo


async def submit_task(data: SubmitRequest, state: State) -> Response[TaskRecord]:
    engine = state.engine
    task, created = await engine.submit(
        data.service_type,
        data.params,
        client_task_id=data.client_task_id,
        client_callback_url=data.client_callback_url,
        timeout=data.timeout,
    )
    # 200 either way, as the seed answered; a repeat is marked by a header.
    headers = {} if created else {"Idempotent-Replay": "true"}
    return Response(await render_task(task, state.pm), status_code=200, headers=headers)


class SeedSubmitController(Controller):
    """`POST {ROUTE_PREFIX}`: the seed's submission route."""

    path = ""
    tags = ["tasks"]

    @post("", operation_id="submitTaskSeed", status_code=200, summary="Submit a task")
    async def submit(self, data: JSONBody[SubmitRequest], state: State) -> Response[TaskRecord]:
        return await submit_task(data, state)


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @post("", operation_id="submitTask", status_code=200, summary="Submit a task")
    async def submit(self, data: JSONBody[SubmitRequest], state: State) -> Response[TaskRecord]:
        return await submit_task(data, state)

    @get("/{task_id:int}", operation_id="getTask", summary="One task's record")
    async def get_task(self, task_id: FromPath[int], state: State) -> TaskRecord:
        task = await state.engine.store.get(task_id)
        if task is None:
            raise RequestError(f"no task with id {task_id}", field="task_id", status_code=404)
        return await render_task(task, state.pm)

    @get("", operation_id="findTasks", summary="Find tasks by client_task_id")
    async def find_tasks(
        self,
        state: State,
        client_task_id: Annotated[str, Parameter(min_length=1)],
    ) -> list[TaskRecord]:
        task = await state.engine.store.find(client_task_id)
        return [] if task is None else [await render_task(task, state.pm)]

    @delete(
        "/{task_id:int}", operation_id="cancelTask", status_code=200, summary="Cancel a task"
    )
    async def cancel_task(self, task_id: FromPath[int], state: State) -> TaskRecord:
        task = await state.engine.cancel(task_id)
        return await render_task(task, state.pm)

    @get("/{task_id:int}/flow", operation_id="getTaskFlow", summary="A task's recorded steps")
    async def flow(self, task_id: FromPath[int], state: State) -> list[TaskEventInfo]:
        if await state.engine.store.get(task_id) is None:
            raise RequestError(f"no task with id {task_id}", field="task_id", status_code=404)
        return [
            TaskEventInfo(
                status=e.status, at=e.at.isoformat(), endpoint=e.endpoint, detail=e.detail
            )
            for e in await state.engine.store.events(task_id)
        ]
