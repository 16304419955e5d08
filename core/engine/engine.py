"""The task engine: accept, queue, dispatch, watch, collect, finish.

Every task is saved in the task store before anything happens to it, and each step is
saved before the next one starts, so whatever fails (ComfyUI, storage, this process), the
task can be picked up again. Plugins are called through `core.hookcall` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import socket
import uuid
from typing import Any

import httpx
import msgspec

from ..comfyui.client import ComfyUIClient, PromptRejected
from ..comfyui.monitor import EndpointMonitor, Watch
from ..config import Settings
from ..errors import EndpointUnavailable, ErrorCode, RequestError, TaskFailure
from ..hookcall import call_all, call_first
from ..inputs import decode_image, fetch_image, is_url
from ..logs import current_task_id
from ..models import WEBHOOK_EVENTS, Task, TaskEvent, TaskProgress, TaskResult, TaskStatus, utcnow
from ..store import DuplicateClientTaskId, TaskStore
from ..urls import UrlPolicy
from ..workflows import Workflow, WorkflowRegistry, tag_output_prefixes
from .attempt import Attempt, EndpointLost, Stop, Stopped
from .claims import ClaimedTasks
from .feed import TaskFeed
from .fleet import Fleet
from .outputs import OutputCollector

log = logging.getLogger(__name__)

INPUT_SUBFOLDER = "comfyui-server"
"""Where our uploads go inside ComfyUI's input folder."""


class Engine:
    """One per server process. Tasks live in the store (shared by replicas); what this
    process holds in memory (claimed tasks, attempts in flight, deadline timers) can be
    rebuilt from the store, which is what a restart or another replica does."""

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
        self.owner = settings.replica_id or f"{socket.gethostname()}:{settings.service_port}"
        self.url_policy = UrlPolicy(settings.url_allowlist)
        self.fleet = Fleet(
            settings.comfyui_endpoints,
            capacity=settings.max_in_flight_per_endpoint,
            on_change=self.wake,
            on_started=self._on_started,
            on_progress=self._on_progress,
            **(monitor_options or {}),
        )
        self.collector = OutputCollector(pm, settings.failed_path)
        self.feed = TaskFeed()
        self._wakeup = asyncio.Event()
        self._attempts: dict[int, Attempt] = {}
        """In-flight attempts by task id."""
        self._by_prompt: dict[str, Attempt] = {}
        self._runs: set[asyncio.Task] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.claimed = ClaimedTasks(store, self.owner)
        self._taking = 0
        """Submissions being recorded as claimed by this replica right now."""
        self._stopped: set[int] = set()
        """Queued tasks ended by cancel/deadline; a claim that races them skips them."""
        self._loop_tasks: list[asyncio.Task] = []

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.fleet.start()
        await self.store.heartbeat(self.owner)
        await self._recover()
        self._loop_tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dispatcher"),
            asyncio.create_task(self._replica_loop(), name="replica"),
        ]

    async def stop(self) -> None:
        """Stop taking work. Running tasks stay recoverable: they are saved as dispatched or
        running, and the next start resumes them from ComfyUI's history."""
        for loop_task in self._loop_tasks:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        for timer in self._timers.values():
            timer.cancel()
        with contextlib.suppress(Exception):  # else the claim lease runs out
            await self.claimed.return_stale(older_than=-1.0)
        runs = list(self._runs)
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        with contextlib.suppress(Exception):  # a store already gone: the timeout covers it
            await self.store.retire(self.owner)

    async def close(self) -> None:
        """Close the endpoints' websockets and connections: after `stop`, and after the
        plugins have shut down (a clean-up that is stopping still talks to ComfyUI)."""
        await self.fleet.close()

    def wake(self) -> None:
        self._wakeup.set()

    async def remove_endpoint(self, name: str) -> None:
        """Drain the endpoint, let its prompts end and their outputs be collected (its slot
        frees before collection), then forget it and close its connections."""
        monitor = self.fleet.drain(name)
        await monitor.idle.wait()
        while busy := [a.done.wait() for a in self._attempts.values() if a.monitor is monitor]:
            await asyncio.gather(*busy)
        await self.fleet.remove(name)

    def client(self, endpoint: str | None) -> ComfyUIClient | None:
        """The HTTP client of an endpoint by name (`host:port`), for plugins that talk to
        ComfyUI themselves (cleanup, for instance)."""
        monitor = self.fleet.get(endpoint)
        return monitor.client if monitor else None

    def client_id(self, endpoint: str | None) -> str | None:
        """The websocket clientId we use on an endpoint: prompts sent with it report to us."""
        monitor = self.fleet.get(endpoint)
        return monitor.client_id if monitor else None

    # ---- submission ---------------------------------------------------------------------

    async def submit(
        self,
        workflow_name: str,
        params: dict[str, Any],
        *,
        client_task_id: str | None = None,
        client_callback_url: str | None = None,
        callback_events: tuple[str, ...] = (),
        timeout: float | None = None,
        client: str | None = None,
    ) -> tuple[Task, bool]:
        """Validate, record and queue a task. Returns (task, created): a repeated
        `client_task_id` with the same request returns the existing task."""
        unknown = sorted(set(callback_events) - set(WEBHOOK_EVENTS))
        if unknown:
            raise RequestError(
                f"callback_events: unknown event(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(WEBHOOK_EVENTS)}",
                field="callback_events",
                status_code=422,
            )
        events = tuple(e for e in WEBHOOK_EVENTS if e in callback_events)  # one order
        workflow = self.workflows.get(workflow_name)
        if workflow is None:
            raise RequestError(
                f"service_type {workflow_name!r} is not a deployed workflow; available: "
                f"{', '.join(self.workflows.names()) or 'none'}",
                field="service_type",
                status_code=422,
            )
        clean = workflow.validate_params(params)
        await self._load_images(workflow, clean)
        if client_callback_url:
            await self.url_policy.check(client_callback_url, "client_callback_url")
        request = [workflow_name, clean, client_callback_url, timeout]
        if events:  # left out when empty, so hashes of earlier requests stay valid
            request.append(events)
        digest = hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()
        now = utcnow()
        timeout = timeout or workflow.timeout
        task = Task(
            workflow=workflow_name,
            params=clean,
            client_task_id=client_task_id,
            client_callback_url=client_callback_url,
            callback_events=events,
            client=client,
            request_hash=digest,
            status="queued",
            created_at=now,
            deadline=now + dt.timedelta(seconds=timeout) if timeout else None,
        )
        # with a slot free for it, this replica claims the task as it records it: the
        # dispatcher finds it in memory instead of claiming it with a second write
        take = self.fleet.free_slots() > len(self.claimed) + self._taking
        self._taking += take  # submissions racing for the same free slots count too
        try:
            task = await self.store.create(
                task,
                [
                    TaskEvent(task_id=0, status="accepted", at=now),
                    TaskEvent(task_id=0, status="queued", at=now),
                ],
                owner=self.owner if take else None,
            )
        except DuplicateClientTaskId as dup:
            if dup.existing.request_hash != digest or dup.existing.client != client:
                raise RequestError(
                    f"client_task_id {client_task_id!r} was already used for a different request",
                    field="client_task_id",
                    status_code=409,
                ) from None
            return dup.existing, False
        finally:
            self._taking -= take
        if take:
            self.claimed.add(task)
        self._arm_deadline(task)
        await call_all(
            self.pm.hook.on_task_event,
            isolate=True,
            task=task,
            event=TaskEvent(task_id=task.id, status="queued", at=now),
        )
        self.wake()
        return task, True

    async def check_capacity(self) -> None:
        """Backpressure: refuse new work while MAX_QUEUE_DEPTH tasks already wait."""
        cap = self.settings.max_queue_depth
        if cap and await self.store.count_queued() >= cap:
            raise RequestError(
                f"the queue is full ({cap} tasks waiting, MAX_QUEUE_DEPTH); retry later",
                field="queue",
                status_code=503,
                retry_after=5,
            )

    async def _load_images(self, workflow: Workflow, params: dict[str, Any]) -> None:
        """Check every image param now; URLs are fetched and kept as data URLs."""
        max_bytes = self.settings.max_image_bytes
        for name, spec in workflow.params.items():
            value, field = params.get(name), f"params.{name}"
            if spec.type != "image" or value is None:
                continue
            if is_url(value):
                params[name] = await fetch_image(
                    field,
                    value,
                    http=self.http,
                    policy=self.url_policy,
                    max_bytes=max_bytes,
                    timeout=self.settings.image_fetch_timeout,
                )
            else:
                decode_image(field, value, max_bytes)

    # ---- ending early: cancel and deadlines -----------------------------------------------

    async def cancel(self, task_id: int) -> Task:
        """End a task in whatever state it is: removed from our queue, deleted from
        ComfyUI's queue, or interrupted while running."""
        task = await self.store.get(task_id)
        if task is None:
            raise RequestError(f"no task with id {task_id}", field="task_id", status_code=404)
        if task.is_final:
            raise RequestError(
                f"task {task_id} already ended ({task.status})", field="task_id", status_code=409
            )
        return await self._end_early(
            task, Stop("cancelled", ErrorCode.CANCELLED, "cancelled by the client")
        )

    def _arm_deadline(self, task: Task) -> None:
        if task.deadline is None or task.id in self._timers:
            return
        delay = max(0.0, (task.deadline - utcnow()).total_seconds())
        loop = asyncio.get_running_loop()
        self._timers[task.id] = loop.call_later(
            delay, lambda: self.spawn(self._deadline_passed(task.id))
        )

    async def _deadline_passed(self, task_id: int) -> None:
        self._timers.pop(task_id, None)
        task = await self.store.get(task_id)
        if task is not None and not task.is_final:
            seconds = (task.deadline - task.created_at).total_seconds() if task.deadline else 0
            await self._end_early(
                task, Stop("failed", ErrorCode.TIMEOUT, f"the task's {seconds:g} s deadline passed")
            )

    async def _end_early(self, task: Task, stop: Stop) -> Task:
        attempt = self._attempts.get(task.id)
        if attempt is None:  # waiting in the queue, or running for another replica
            self._stopped.add(task.id)
            # the end is recorded first, so the other replica's interrupted attempt finds
            # the task ended and cannot record its own end over this one
            ended = await self._finish(task, stop.status, stop.code, stop.message)
            await self._stop_prompt_elsewhere(task)
            return ended
        await self._stop_attempt(attempt, stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attempt.done.wait(), timeout=10)
        return await self.store.get(task.id) or attempt.task

    async def _stop_attempt(self, attempt: Attempt, stop: Stop) -> None:
        """Take the attempt's prompt off ComfyUI and end its wait; `_run` records `stop`."""
        attempt.stop = stop
        if attempt.watch.submitted:
            client = attempt.monitor.client
            with contextlib.suppress(EndpointUnavailable, httpx.HTTPError):
                await client.delete_from_queue([attempt.prompt_id])  # if still pending
                await client.interrupt(attempt.prompt_id)  # if running; no-op otherwise
        attempt.watch.resolve("stopped")

    def _ended_elsewhere(self, attempt: Attempt) -> None:
        """A step of the attempt was refused: another replica ended the task (a cancel or
        a deadline) before its prompt could be stopped here. Stop it now."""
        if attempt.stop is None:
            log.info("task %s ended elsewhere; stopping its prompt", attempt.task.id)
            attempt.stop = Stop("cancelled", ErrorCode.CANCELLED, "ended by another replica")
            self.spawn(self._stop_attempt(attempt, attempt.stop))

    async def _stop_prompt_elsewhere(self, task: Task) -> None:
        """Stop the prompt of a task another replica runs: its attempt then ends as
        interrupted, and its outcome is refused because the task has ended here first."""
        monitor = self.fleet.get(task.endpoint)
        if task.status not in ("dispatched", "running") or not task.comfyui_task_id or not monitor:
            return
        with contextlib.suppress(EndpointUnavailable, httpx.HTTPError):
            await monitor.client.delete_from_queue([task.comfyui_task_id])  # if still pending
            await monitor.client.interrupt(task.comfyui_task_id)  # if running

    # ---- dispatching --------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            # the timeout picks up tasks queued by other replicas sharing the store; a
            # timeout scope, not wait_for, which would start a task at every wake-up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._dispatch_round()
            except Exception:
                log.exception("dispatch round failed; retrying")
                await asyncio.sleep(0.5)

    async def _dispatch_round(self) -> None:
        claimed = self.claimed
        await claimed.return_stale()
        while self.fleet.free_slots() > 0:
            limit = self.fleet.free_slots() + self.fleet.total_slots()
            if not claimed and not await claimed.refill(limit):
                return
            backlog = await claimed.backlog()  # for schedulers that look ahead
            kept, position = [], 0
            while claimed and self.fleet.free_slots() > 0:
                task, claimed_at = claimed.pop()
                if task.id in self._stopped:
                    continue
                if await self._dispatch(task, max(1, backlog - position)):
                    position += 1
                else:
                    kept.append((task, claimed_at))
            claimed.put_back(kept)
            if kept:  # the scheduler said "not now": ask again when something changes
                return

    async def _dispatch(self, task: Task, backlog: int) -> bool:
        """Start the task on an endpoint; False leaves it queued for later."""
        workflow = self.workflows.get(task.workflow)
        if workflow is None:
            await self._finish(
                task,
                "failed",
                ErrorCode.BUILD_PROMPT_ERROR,
                f"workflow {task.workflow!r} is no longer deployed",
            )
            return True
        states = self.fleet.states()
        if (
            states
            and all(s.node_classes is not None for s in states)
            and not any(s.can_run(workflow.node_classes) for s in states)
        ):
            missing = sorted(workflow.node_classes - set().union(*(s.node_classes for s in states)))
            await self._finish(
                task,
                "failed",
                ErrorCode.NO_CAPABLE_ENDPOINT,
                "no endpoint offers every node class of workflow "
                f"{workflow.name!r}; missing everywhere: {', '.join(missing) or '(none alone)'}",
            )
            return True
        choice = await call_first(
            self.pm.hook.schedule_endpoint,
            task=task,
            endpoints=states,
            workflow=workflow,
            backlog=backlog,
        )
        monitor = self.fleet.get(getattr(choice, "name", None))
        if monitor is None or not monitor.state().accepts(workflow.node_classes):
            return False
        task = msgspec.structs.replace(
            task,
            status="dispatched",
            endpoint=monitor.name,
            comfyui_task_id=str(uuid.uuid4()),
            attempts=task.attempts + 1,
            dispatched_at=utcnow(),
        )
        attempt = self._track(task, monitor, monitor.reserve(task.comfyui_task_id))
        self.spawn(self._run(attempt, fresh=True))
        return True

    def _track(self, task: Task, monitor: EndpointMonitor, watch: Watch) -> Attempt:
        attempt = Attempt(task, monitor, watch)
        self._attempts[task.id] = attempt
        self._by_prompt[watch.prompt_id] = attempt
        return attempt

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background; shutdown cancels it with the engine's own work."""
        run = asyncio.create_task(coro)
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    def _on_started(self, prompt_id: str) -> None:
        attempt = self._by_prompt.get(prompt_id)
        if attempt is not None:
            attempt.started.set()

    def _on_progress(
        self, prompt_id: str, node: str | None, value: int | None, maximum: int | None
    ) -> None:
        attempt = self._by_prompt.get(prompt_id)
        if attempt is None:
            return
        progress = TaskProgress(task_id=attempt.task.id, node=node, value=value, max=maximum)
        self.feed.publish(attempt.task.id, progress)
        if self.pm.hook.on_progress.get_hookimpls():
            self.spawn(
                call_all(
                    self.pm.hook.on_progress, isolate=True, task=attempt.task, progress=progress
                )
            )

    # ---- one attempt ----------------------------------------------------------------------

    async def _run(self, attempt: Attempt, *, fresh: bool) -> None:
        current_task_id.set(attempt.task.id)  # this coroutine runs in its own context
        monitor, watch = attempt.monitor, attempt.watch
        try:
            if fresh:
                if not await self._record(attempt.task, "dispatched"):
                    return  # it ended while it waited to be dispatched (another replica)
                await self._submit_prompt(attempt)
            await self._wait(attempt)
            await self._collect(attempt)
        except Stopped as exc:
            await self._finish(attempt.task, exc.stop.status, exc.stop.code, exc.stop.message)
        except PromptRejected as exc:
            await self._finish(attempt.task, "failed", ErrorCode.QUEUE_PROMPT_ERROR, str(exc))
        except (EndpointUnavailable, EndpointLost) as exc:
            await self._retry_or_fail(attempt.task, str(exc))
        except TaskFailure as exc:
            await self._finish(attempt.task, "failed", exc.code, exc.message)
        except asyncio.CancelledError:
            raise  # shutdown: the saved state lets the next start resume this task
        except Exception as exc:
            log.exception("task %s failed unexpectedly", attempt.task.id)
            await self._finish(
                attempt.task, "failed", ErrorCode.UNKNOWN, f"internal error: {exc!r}"
            )
        finally:
            self._attempts.pop(attempt.task.id, None)
            self._by_prompt.pop(watch.prompt_id, None)
            monitor.release(watch.prompt_id)
            attempt.done.set()

    async def _submit_prompt(self, attempt: Attempt) -> None:
        task, monitor = attempt.task, attempt.monitor
        workflow = self.workflows.get(task.workflow)
        params = await self._upload_inputs(attempt, workflow)
        try:
            prompt = await call_first(
                self.pm.hook.build_prompt,
                workflow=workflow,
                params=params,
                task=task,
                endpoint=monitor.state(),
            )
        except Exception as exc:
            raise TaskFailure(
                ErrorCode.BUILD_PROMPT_ERROR, f"build_prompt failed: {exc!r}"
            ) from exc
        if prompt is None:
            raise TaskFailure(ErrorCode.BUILD_PROMPT_ERROR, "no plugin built a prompt")
        tag_output_prefixes(prompt, attempt.prompt_id.replace("-", "")[:12])
        attempt.watch.node_order = tuple(prompt)
        if attempt.stop is not None:
            raise Stopped(attempt.stop)
        await monitor.client.post_prompt(
            prompt, client_id=monitor.client_id, prompt_id=attempt.prompt_id
        )
        attempt.watch.submitted = True
        attempt.posted_at = utcnow()

    async def _upload_inputs(self, attempt: Attempt, workflow: Workflow) -> dict[str, Any]:
        task, client = attempt.task, attempt.monitor.client
        params = dict(task.params)
        uploaded = []
        for name, spec in workflow.params.items():
            if spec.type != "image" or params.get(name) is None:
                continue
            data, ext = decode_image(f"params.{name}", params[name], self.settings.max_image_bytes)
            filename = f"{attempt.prompt_id}_{name}.{ext}"
            try:
                params[name] = await client.upload_image(data, filename, INPUT_SUBFOLDER)
            except httpx.HTTPStatusError as exc:
                raise TaskFailure(ErrorCode.INPUT_UPLOAD_ERROR, f"upload of {name}: {exc}") from exc
            uploaded.append(params[name])
        if uploaded:  # recorded at once, so cleanup finds them whatever happens next
            attempt.task = msgspec.structs.replace(task, inputs=(*task.inputs, *uploaded))
            if not await self.store.save(attempt.task):
                raise Stopped(Stop("cancelled", ErrorCode.CANCELLED, "ended by another replica"))
        return params

    async def _wait(self, attempt: Attempt) -> None:
        """Wait for the prompt's end, recording `running` when ComfyUI starts it. That write
        runs beside the wait, so a slow database never holds the endpoint's slot after the
        prompt has ended; it is finished before anything else is recorded."""
        watch = attempt.watch
        recording: asyncio.Future | None = None
        if attempt.task.status != "running":
            start_wait = asyncio.ensure_future(attempt.started.wait())
            try:
                await asyncio.wait({watch.future, start_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                start_wait.cancel()
            if attempt.started.is_set() and attempt.stop is None:
                attempt.task = msgspec.structs.replace(
                    attempt.task, status="running", started_at=utcnow()
                )
                recording = asyncio.ensure_future(self._record(attempt.task, "running"))
                recording.add_done_callback(
                    lambda done: (
                        done.cancelled()
                        or done.exception() is not None
                        or done.result()
                        or self._ended_elsewhere(attempt)
                    )
                )
        try:
            outcome = await watch.future
            attempt.ended_at = utcnow()
            if attempt.stop is None and outcome != "lost":
                # ComfyUI is done with it: give the slot to the next task while we collect,
                # store and notify (that reads /history and /view, never ComfyUI's queue)
                attempt.monitor.release(watch.prompt_id)
        finally:
            if recording is not None:
                await recording
        if attempt.stop is not None:
            raise Stopped(attempt.stop)
        if outcome == "lost":
            raise EndpointLost(f"{attempt.task.endpoint} lost prompt {watch.prompt_id}")

    async def _collect(self, attempt: Attempt) -> None:
        task, client = attempt.task, attempt.monitor.client
        entry = attempt.monitor.heard_entry(attempt.watch)
        if entry is None:
            entry = await self._history(client, attempt.prompt_id)
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
        task = msgspec.structs.replace(task, outputs=tuple(refs), timings=attempt.timings(utcnow()))
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

    async def _record(self, task: Task, status: TaskStatus, detail: str | None = None) -> bool:
        """Save the step; False when the task had already ended (cancelled or timed out by
        another replica): then nothing is written and nobody is told."""
        event = TaskEvent(task_id=task.id, status=status, endpoint=task.endpoint, detail=detail)
        if not await self.store.save(task, event):
            return False
        self.feed.publish(task.id, task)
        await call_all(self.pm.hook.on_task_event, isolate=True, task=task, event=event)
        return True

    async def _retry_or_fail(self, task: Task, reason: str) -> None:
        if task.attempts >= self.settings.max_attempts:
            await self._finish(
                task,
                "failed",
                ErrorCode.ENDPOINT_LOST,
                f"gave up after {task.attempts} attempt(s): {reason}",
            )
            return
        log.info("task %s: requeued after attempt %s: %s", task.id, task.attempts, reason)
        task = msgspec.structs.replace(
            task, status="queued", endpoint=None, comfyui_task_id=None, started_at=None
        )
        await self._record(task, "queued", f"requeued: {reason}")
        self.wake()

    async def _finish(
        self, task: Task, status: TaskStatus, code: ErrorCode, message: str | None
    ) -> Task:
        timer = self._timers.pop(task.id, None)
        if timer is not None:
            timer.cancel()
        task = msgspec.structs.replace(
            task, status=status, error_code=int(code), error=message, finished_at=utcnow()
        )
        if not await self._record(task, status, message):
            log.info("task %s had already ended elsewhere; %s not recorded", task.id, status)
            return await self.store.get(task.id) or task
        log.info(
            "task %s %s (error_code %s)%s",
            task.id,
            status,
            int(code),
            f": {message}" if message else "",
        )
        result = TaskResult(
            status=status, outputs=task.outputs, error_code=int(code), error=message
        )
        await self._announce(task, result)
        return task

    async def _announce(self, task: Task, result: TaskResult) -> None:
        """Run on_result and notify. When a notify implementation fails (the webhook
        plugin could not record its delivery, say), the end counts as not announced: the
        replica loop announces it again (`replayed=True`) once REPLICA_TIMEOUT has passed,
        and implementations that did their part skip a replay they have already seen.
        Once: a replay that fails too is given up, so a plugin that always fails cannot
        replay every task forever."""
        failed: list[str] = []
        await call_all(self.pm.hook.on_result, isolate=True, task=task, result=result)
        await call_all(self.pm.hook.notify, isolate=True, failed=failed, task=task, result=result)
        if failed and not result.replayed:  # left unmarked: claim_unnotified hands it out
            log.warning(
                "task %s: notify failed in %s; its end will be announced again",
                task.id,
                ", ".join(failed),
            )
            return
        if failed:  # a replay, already marked when it was claimed
            log.error("task %s: notify failed again in %s; given up", task.id, ", ".join(failed))
        await self.store.mark_notified(task.id)

    async def _announce_missed(self) -> None:
        """Ends saved just before a crash were never announced: announce them now."""
        for task in await self.store.claim_unnotified(self.settings.replica_timeout, 100):
            log.info("task %s: announcing its end, missed before a restart", task.id)
            result = TaskResult(
                status=task.status,
                outputs=task.outputs,
                error_code=task.error_code,
                error=task.error,
                replayed=True,
            )
            await self._announce(task, result)

    # ---- recovery -----------------------------------------------------------------------

    async def _recover(self) -> None:
        """At start: re-arm deadlines, and resume this replica's tasks from an earlier life
        and those of dead replicas."""
        for task in await self.store.unfinished():
            self._arm_deadline(task)
        await self._adopt(own=True)

    async def _replica_loop(self) -> None:
        """Say we are alive; take over what dead replicas left running."""
        interval = self.settings.replica_timeout / 4
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.heartbeat(self.owner)
                await self._adopt(own=False)
                await self._announce_missed()
            except Exception:
                log.exception("replica heartbeat failed; retrying")

    async def _adopt(self, *, own: bool) -> None:
        """Watch adopted prompts again on their endpoint: history tells whether they
        finished (then their outputs are collected, never run twice), else they run again."""
        adopted = await self.store.adopt(self.owner, self.settings.replica_timeout, own=own)
        for task in adopted:
            if task.id in self._attempts:
                continue
            monitor = self.fleet.get(task.endpoint)
            if monitor is None or task.comfyui_task_id is None:
                await self._retry_or_fail(task, "its endpoint is no longer configured")
                continue
            watch = monitor.reserve(task.comfyui_task_id)
            watch.submitted = True  # we cannot know; reconcile settles it either way
            log.info("task %s: resuming prompt %s on %s", task.id, watch.prompt_id, monitor.name)
            self.spawn(self._run(self._track(task, monitor, watch), fresh=False))


def _last_outcome(messages: list) -> tuple[str, dict]:
    for kind, data in reversed(messages):
        if kind in ("execution_error", "execution_interrupted"):
            return kind, data or {}
    return "execution_error", {}
