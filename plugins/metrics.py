"""Prometheus metrics at `/metrics`: queue depth, endpoints, task results and stage
latencies. Other plugins add their own metrics to prometheus_client's default registry and
they appear here too."""

from __future__ import annotations

from collections import OrderedDict

from comfyui_server.core import Task, TaskResult, hookimpl
from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

STAGE_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
)

TASKS = Counter(
    "comfyui_server_tasks_total",
    "Tasks that reached a final state.",
    ["workflow", "status", "error_code"],
)
STAGE_SECONDS = Histogram(
    "comfyui_server_task_stage_seconds",
    "Time a task spent in each stage (queued, upload, comfyui_queue, execution, storage).",
    ["workflow", "stage"],
    buckets=STAGE_BUCKETS,
)
TASK_SECONDS = Histogram(
    "comfyui_server_task_seconds",
    "Submission to final state.",
    ["workflow", "status"],
    buckets=STAGE_BUCKETS,
)
QUEUE_DEPTH = Gauge("comfyui_server_queue_depth", "Tasks waiting in our queue.")
ENDPOINT_UP = Gauge("comfyui_server_endpoint_up", "1 when the endpoint is up.", ["endpoint"])
IN_FLIGHT = Gauge(
    "comfyui_server_endpoint_in_flight", "Prompts we sent that have not ended.", ["endpoint"]
)
COMFYUI_QUEUE = Gauge(
    "comfyui_server_endpoint_queue_remaining",
    "ComfyUI's own queue length (all its clients), from its status broadcasts.",
    ["endpoint"],
)
SECONDS_PER_TASK = Gauge(
    "comfyui_server_endpoint_seconds_per_task",
    "Moving average of how long our prompts run on the endpoint (absent until measured).",
    ["endpoint"],
)
ENDPOINT_GAUGES = (ENDPOINT_UP, IN_FLIGHT, COMFYUI_QUEUE, SECONDS_PER_TASK)


_counted: OrderedDict[tuple, None] = OrderedDict()
"""The tasks this process counted last, by id and creation time (tests run several apps,
with databases of their own, in one process). An end is announced again (`replayed`) when
a notify failed; a replay in the process that counted it must not count it twice, one
after a restart must (the earlier process's counters died with it)."""
COUNTED_KEPT = 10_000
"""Replays come within a few REPLICA_TIMEOUTs of the first announcement: far fewer ends."""


def _first_time(task: Task, result: TaskResult) -> bool:
    key = (task.id, task.created_at)
    if result.replayed and key in _counted:
        return False
    _counted[key] = None
    if len(_counted) > COUNTED_KEPT:
        _counted.popitem(last=False)
    return True


@hookimpl
def on_result(task: Task, result: TaskResult) -> None:
    if not _first_time(task, result):
        return
    TASKS.labels(task.workflow, result.status, str(result.error_code)).inc()
    for stage, seconds in task.timings.items():
        STAGE_SECONDS.labels(task.workflow, stage).observe(seconds)
    if task.finished_at is not None:
        total = (task.finished_at - task.created_at).total_seconds()
        TASK_SECONDS.labels(task.workflow, result.status).observe(max(0.0, total))


@get(
    "/metrics",
    operation_id="metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics(state: State) -> Response[bytes]:
    """Gauges are read at scrape time, so they are never stale; per-endpoint ones are
    cleared first, so an endpoint removed at run time leaves no series behind."""
    engine = state.engine
    QUEUE_DEPTH.set(await engine.store.count_queued())
    for gauge in ENDPOINT_GAUGES:
        gauge.clear()
    for endpoint in engine.fleet.states():
        ENDPOINT_UP.labels(endpoint.name).set(1 if endpoint.status == "up" else 0)
        IN_FLIGHT.labels(endpoint.name).set(endpoint.in_flight)
        COMFYUI_QUEUE.labels(endpoint.name).set(endpoint.queue_remaining)
        if endpoint.seconds_per_task is not None:
            SECONDS_PER_TASK.labels(endpoint.name).set(endpoint.seconds_per_task)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@hookimpl
def register_routes():
    return [metrics]
