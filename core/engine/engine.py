"""The task engine: accept, queue, dispatch, watch, collect, finish.

Every task is saved in the task store before anything happens to it, and each step is
saved before the next one starts, so whatever fails (ComfyUI, storage, this process), the
task can be picked up again. Plugins are called through `core.hookcall` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import Any

import httpx
import msgspec

from ..comfyui.client import ComfyUIClient, PromptRejected
from ..comfyui.monitor import EndpointMonitor, Watch
from ..config import Settings
from ..errors import EndpointUnavailable, ErrorCode, RequestError, TaskFailure
from ..hookcall import call_all, call_first
from ..inputs import decode_image
from ..models import Task, TaskEvent, TaskResult, TaskStatus, utcnow
from ..store import DuplicateClientTaskId, TaskStore
from ..urls import UrlPolicy
from ..workflows import Workflow, WorkflowRegistry, tag_output_prefixes
from .fleet import Fleet
from .outputs import OutputCollector

log = logging.getLogger(__name__)

INPUT_SUBFOLDER = "comfyui-server"
"""Where our uploads go inside ComfyUI's input folder."""


class EndpointLost(Exception):
    """The endpoint forgot or dropped the prompt; the task may run elsewhere."""


class Engine:
    def __init__(
        self,
        pm: Any,
        settings: Settings,
        store: TaskStore,
        workflows: WorkflowRegistry,
        http: httpx.AsyncClient,
        *,
        monitor_options: dict[str, float] | None = None,
    ) -> None:
        self.pm = pm
        self.settings = settings
        self.store = store
        self.workflows = workflows
        self.http = http
        self.owner = uuid.uuid4().hex
        self.url_policy = UrlPolicy(settings.url_allowlist)
        self.fleet = Fleet(
            settings.comfyui_endpoints,
            http,
            capacity=settings.max_in_flight_per_endpoint,
            on_change=self.wake,
            on_started=self._on_started,
            **(monitor_options or {}),
        )
        self.collector = OutputCollector(pm, settings.failed_path)
        self._wakeup = asyncio.Event()
        self._runs: dict[str, asyncio.Task] = {}
        self._started: dict[str, asyncio.Event] = {}
        self._loop_task: asyncio.Task | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.fleet.start()
        await self._recover()
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="dispatcher")

    async def stop(self) -> None:
        """Stop taking work. Running tasks stay recoverable: they are saved as dispatched or
        running, and the next start resumes them from ComfyUI's history."""
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await self.fleet.close()

    def wake(self) -> None:
        self._wakeup.set()

    # ---- submission ---------------------------------------------------------------------

    async def submit(
        self,
        workflow_name: str,
        params: dict[str, Any],
        *,
        client_task_id: str | None = None,
        client_callback_url: str | None = None,
    ) -> tuple[Task, bool]:
        """Validate, record and queue a task. Returns (task, created): a repeated
        `client_task_id` with the same request returns the existing task."""
        workflow = self.workflows.get(workflow_name)
        if workflow is None:
            raise RequestError(
                f"unknown service_type {workflow_name!r}; available: "
                f"{', '.join(self.workflows.names()) or 'none'}",
                field="service_type",
                status_code=422,
            )
        max_bytes = self.settings.max_image_bytes
        clean = workflow.validate_params(
            params, check_image=lambda field, value: decode_image(field, value, max_bytes) and value
        )
        if client_callback_url:
            await self.url_policy.check(client_callback_url, "client_callback_url")
        digest = hashlib.sha256(
            msgspec.json.encode([workflow_name, clean, client_callback_url], order="sorted")
        ).hexdigest()
        task = Task(
            workflow=workflow_name,
            params=clean,
            client_task_id=client_task_id,
            client_callback_url=client_callback_url,
            request_hash=digest,
            status="queued",
        )
        try:
            task = await self.store.create(
                task,
                [TaskEvent(task_id=0, status="accepted"), TaskEvent(task_id=0, status="queued")],
            )
        except DuplicateClientTaskId as dup:
            if dup.existing.request_hash != digest:
                raise RequestError(
                    f"client_task_id {client_task_id!r} was already used for a different request",
                    field="client_task_id",
                    status_code=409,
                ) from None
            return dup.existing, False
        await call_all(
            self.pm.hook.on_task_event, isolate=True, task=task,
            event=TaskEvent(task_id=task.id, status="queued"),
        )
        self.wake()
        return task, True

    # ---- dispatching --------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # the timeout picks up tasks queued by other replicas sharing the store
                await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
            self._wakeup.clear()
            try:
                await self._dispatch_round()
            except Exception:
                log.exception("dispatch round failed; retrying")
                await asyncio.sleep(0.5)

    async def _dispatch_round(self) -> None:
        while (free := self.fleet.free_slots()) > 0:
            tasks = await self.store.claim(self.owner, free)
            if not tasks:
                return
            not_now = []
            for task in tasks:
                if not await self._dispatch(task):
                    not_now.append(task.id)
            if not_now:
                await self.store.release(not_now)
                return

    async def _dispatch(self, task: Task) -> bool:
        states = self.fleet.states()
        choice = await call_first(self.pm.hook.schedule_endpoint, task=task, endpoints=states)
        monitor = self.fleet.get(getattr(choice, "name", None))
        if monitor is None or monitor.status != "up" or len(monitor.watches) >= monitor.capacity:
            return False
        prompt_id = str(uuid.uuid4())
        watch = monitor.reserve(prompt_id)
        self._started[prompt_id] = asyncio.Event()
        task = msgspec.structs.replace(
            task,
            status="dispatched",
            endpoint=monitor.name,
            comfyui_task_id=prompt_id,
            attempts=task.attempts + 1,
            dispatched_at=utcnow(),
        )
        self._spawn(prompt_id, self._run(task, monitor, watch, fresh=True))
        return True

    def _spawn(self, prompt_id: str, coro) -> None:
        run = asyncio.create_task(coro, name=f"prompt {prompt_id}")
        self._runs[prompt_id] = run
        run.add_done_callback(lambda _: self._runs.pop(prompt_id, None))

    def _on_started(self, prompt_id: str) -> None:
        event = self._started.get(prompt_id)
        if event is not None:
            event.set()

    # ---- one attempt ----------------------------------------------------------------------

    async def _run(self, task: Task, monitor: EndpointMonitor, watch: Watch, *, fresh: bool):
        prompt_id = watch.prompt_id
        client = monitor.client
        try:
            if fresh:
                await self._step(task, "dispatched")
                await self._submit_prompt(task, client, monitor)
                watch.submitted = True
            task = await self._wait(task, watch)
            await self._collect(task, client, prompt_id)
        except PromptRejected as exc:
            await self._finish(task, "failed", ErrorCode.QUEUE_PROMPT_ERROR, str(exc))
        except (EndpointUnavailable, EndpointLost) as exc:
            await self._retry_or_fail(task, str(exc))
        except TaskFailure as exc:
            await self._finish(task, "failed", exc.code, exc.message)
        except asyncio.CancelledError:
            raise  # shutdown: the saved state lets the next start resume this task
        except Exception as exc:
            log.exception("task %s failed unexpectedly", task.id)
            await self._finish(task, "failed", ErrorCode.UNKNOWN, f"internal error: {exc!r}")
        finally:
            self._started.pop(prompt_id, None)
            monitor.release(prompt_id)

    async def _submit_prompt(self, task: Task, client: ComfyUIClient, monitor: EndpointMonitor):
        workflow = self._workflow(task)
        params = await self._upload_inputs(task, workflow, client)
        try:
            prompt = await call_first(
                self.pm.hook.build_prompt,
                workflow=workflow, params=params, task=task, endpoint=monitor.state(),
            )
        except Exception as exc:
            raise TaskFailure(ErrorCode.BUILD_PROMPT_ERROR, f"build_prompt failed: {exc!r}") from exc
        if prompt is None:
            raise TaskFailure(ErrorCode.BUILD_PROMPT_ERROR, "no plugin built a prompt")
        tag_output_prefixes(prompt, task.comfyui_task_id.replace("-", "")[:12])
        await client.post_prompt(prompt, client_id=monitor.client_id, prompt_id=task.comfyui_task_id)

    async def _upload_inputs(self, task: Task, workflow: Workflow, client: ComfyUIClient):
        params = dict(task.params)
        uploaded = []
        for name, spec in workflow.params.items():
            if spec.type != "image" or params.get(name) is None:
                continue
            data, ext = decode_image(f"params.{name}", params[name], self.settings.max_image_bytes)
            filename = f"{task.comfyui_task_id}_{name}.{ext}"
            try:
                params[name] = await client.upload_image(data, filename, INPUT_SUBFOLDER)
            except httpx.HTTPStatusError as exc:
                raise TaskFailure(ErrorCode.INPUT_UPLOAD_ERROR, f"upload of {name}: {exc}") from exc
            uploaded.append(params[name])
        if uploaded:
            task = msgspec.structs.replace(task, inputs=(*task.inputs, *uploaded))
            await self.store.save(task)
        return params

    async def _wait(self, task: Task, watch: Watch) -> Task:
        """Wait for the prompt's end, recording `running` when ComfyUI starts it."""
        started = self._started.get(watch.prompt_id)
        if started is not None and task.status != "running":
            start_wait = asyncio.ensure_future(started.wait())
            try:
                await asyncio.wait({watch.future, start_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                start_wait.cancel()
            if started.is_set():
                task = msgspec.structs.replace(task, status="running", started_at=utcnow())
                await self._step(task, "running")
        if await watch.future == "lost":
            raise EndpointLost(f"{task.endpoint} lost prompt {watch.prompt_id}")
        return task

    async def _collect(self, task: Task, client: ComfyUIClient, prompt_id: str) -> None:
        entry = await self._history(client, prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            kind, data = _last_outcome(status.get("messages") or [])
            if kind == "execution_interrupted":
                raise TaskFailure(
                    ErrorCode.INTERRUPTED, f"ComfyUI interrupted node {data.get('node_id')}"
                )
            raise TaskFailure(
                ErrorCode.EXECUTION_ERROR,
                f"node {data.get('node_id')} ({data.get('node_type')}): "
                f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}",
            )
        workflow = self.workflows.get(task.workflow)
        output_nodes = workflow.output_nodes if workflow else None
        refs, code, message = await self.collector.collect(task, client, entry, output_nodes)
        task = msgspec.structs.replace(task, outputs=tuple(refs))
        if code != ErrorCode.SUCCESS:
            await self._finish(task, "failed", code, message)
        elif not refs:
            await self._finish(task, "failed", ErrorCode.NO_OUTPUTS, "the prompt wrote no file")
        else:
            await self._finish(task, "completed", ErrorCode.SUCCESS, None)

    async def _history(self, client: ComfyUIClient, prompt_id: str) -> dict[str, Any]:
        """History is written before `executing null`, but allow for a slow write."""
        for delay in (0, 0.05, 0.1, 0.2, 0.5, 1.0):
            await asyncio.sleep(delay)
            entry = await client.history(prompt_id)
            if entry is not None:
                return entry
        raise EndpointLost(f"{client.name} has no history for prompt {prompt_id}")

    # ---- steps and endings -----------------------------------------------------------------

    async def _step(self, task: Task, status: TaskStatus, detail: str | None = None) -> None:
        event = TaskEvent(task_id=task.id, status=status, endpoint=task.endpoint, detail=detail)
        await self.store.save(task, event)
        await call_all(self.pm.hook.on_task_event, isolate=True, task=task, event=event)

    async def _retry_or_fail(self, task: Task, reason: str) -> None:
        if task.attempts >= self.settings.max_attempts:
            await self._finish(
                task, "failed", ErrorCode.ENDPOINT_LOST,
                f"gave up after {task.attempts} attempt(s): {reason}",
            )
            return
        log.info("task %s: requeued after attempt %s: %s", task.id, task.attempts, reason)
        task = msgspec.structs.replace(
            task, status="queued", endpoint=None, comfyui_task_id=None, started_at=None
        )
        await self._step(task, "queued", f"requeued: {reason}")
        self.wake()

    async def _finish(
        self, task: Task, status: TaskStatus, code: ErrorCode, message: str | None
    ) -> Task:
        task = msgspec.structs.replace(
            task, status=status, error_code=int(code), error=message, finished_at=utcnow()
        )
        await self._step(task, status, message)
        result = TaskResult(
            status=status, outputs=task.outputs, error_code=int(code), error=message
        )
        await call_all(self.pm.hook.on_result, isolate=True, task=task, result=result)
        await call_all(self.pm.hook.notify, isolate=True, task=task, result=result)
        return task

    def _workflow(self, task: Task) -> Workflow:
        workflow = self.workflows.get(task.workflow)
        if workflow is None:
            raise TaskFailure(ErrorCode.BUILD_PROMPT_ERROR, f"workflow {task.workflow!r} is gone")
        return workflow

    # ---- recovery -----------------------------------------------------------------------

    async def _recover(self) -> None:
        """Resume what a previous run left: dispatched and running tasks are watched again
        on their endpoint (history tells whether they finished); the rest is queued."""
        for task in await self.store.unfinished():
            if task.status in ("accepted", "queued"):
                continue
            monitor = self.fleet.get(task.endpoint)
            if monitor is None or task.comfyui_task_id is None:
                await self._retry_or_fail(task, "endpoint no longer configured")
                continue
            watch = monitor.reserve(task.comfyui_task_id)
            watch.submitted = True
            log.info("task %s: resuming prompt %s on %s", task.id, watch.prompt_id, monitor.name)
            self._spawn(watch.prompt_id, self._run(task, monitor, watch, fresh=False))


def _last_outcome(messages: list) -> tuple[str, dict]:
    for kind, data in reversed(messages):
        if kind in ("execution_error", "execution_interrupted"):
            return kind, data or {}
    return "execution_error", {}
