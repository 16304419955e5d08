"""What this server offers: workflows and endpoints, plus health checks."""

from __future__ import annotations

import logging

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from ..auth import require_admin
from ..errors import RequestError
from ..models import EndpointState
from ..workflows import Workflow
from .schemas import EndpointInfo, EndpointRequest, ParamInfo, WorkflowInfo

log = logging.getLogger(__name__)


def workflow_info(workflow: Workflow, plugin: str) -> WorkflowInfo:
    return WorkflowInfo(
        name=workflow.name,
        description=workflow.description,
        plugin=plugin,
        params=[
            ParamInfo(
                name=p.name,
                type=p.type,
                required=p.required,
                default=p.default,
                minimum=p.minimum,
                maximum=p.maximum,
                choices=list(p.choices) if p.choices is not None else None,
                description=p.description,
            )
            for p in workflow.params.values()
        ],
        node_classes=sorted(workflow.node_classes),
        output_nodes=list(workflow.output_nodes) if workflow.output_nodes is not None else None,
    )


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]

    @get("", operation_id="listWorkflows", summary="Every deployed workflow and its params")
    async def list_workflows(self, state: State) -> list[WorkflowInfo]:
        registry = state.engine.workflows
        return [workflow_info(w, registry.owner(w.name)) for w in registry]

    @get("/{name:str}", operation_id="getWorkflow", summary="One workflow and its params")
    async def get_workflow(self, name: FromPath[str], state: State) -> WorkflowInfo:
        registry = state.engine.workflows
        workflow = registry.get(name)
        if workflow is None:
            raise RequestError(f"no workflow named {name!r}", field="name", status_code=404)
        return workflow_info(workflow, registry.owner(name))


def endpoint_info(state: EndpointState, registry) -> EndpointInfo:
    runnable = None
    if state.node_classes is not None:
        runnable = [w.name for w in registry if state.can_run(w.node_classes)]
    return EndpointInfo(
        name=state.name,
        url=state.url,
        status=state.status,
        queue_remaining=state.queue_remaining,
        in_flight=state.in_flight,
        capacity=state.capacity,
        weight=state.weight,
        node_classes=len(state.node_classes) if state.node_classes is not None else None,
        workflows=runnable,
        last_error=state.last_error,
        seconds_per_task=(
            round(state.seconds_per_task, 4) if state.seconds_per_task is not None else None
        ),
    )


class EndpointController(Controller):
    """The fleet. Changes apply to this process until restart (COMFYUI_ENDPOINTS is read
    again then); they need an admin key when keys are configured."""

    path = "/endpoints"
    tags = ["endpoints"]

    @get("", operation_id="listEndpoints", summary="ComfyUI endpoints and their state")
    async def list_endpoints(self, state: State) -> list[EndpointInfo]:
        engine = state.engine
        return [endpoint_info(s, engine.workflows) for s in engine.fleet.states()]

    @post(
        "",
        operation_id="addEndpoint",
        summary="Add a ComfyUI endpoint",
        status_code=201,
        guards=[require_admin],
    )
    async def add_endpoint(self, data: JSONBody[EndpointRequest], state: State) -> EndpointInfo:
        engine = state.engine
        try:
            monitor = engine.fleet.add(data.url)
        except ValueError as exc:
            status = 409 if "twice" in str(exc) else 422
            raise RequestError(f"url: {exc}", field="url", status_code=status) from None
        return endpoint_info(monitor.state(), engine.workflows)

    @delete(
        "/{name:str}",
        operation_id="removeEndpoint",
        status_code=202,
        summary="Drain and remove an endpoint",
        guards=[require_admin],
    )
    async def remove_endpoint(self, name: FromPath[str], state: State) -> EndpointInfo:
        engine = state.engine
        monitor = engine.fleet.get(name)
        if monitor is None:
            raise RequestError(f"no endpoint named {name!r}", field="name", status_code=404)
        engine.fleet.drain(name)
        engine.spawn(engine.remove_endpoint(name))
        return endpoint_info(monitor.state(), engine.workflows)


@get("/health", operation_id="health", tags=["operations"], summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", operation_id="ready", tags=["operations"], summary="Readiness")
async def ready(state: State) -> Response[dict]:
    """Ready when the task store answers and at least one endpoint is up: otherwise tasks
    would only queue (or not even be recorded)."""
    engine = state.engine
    up = [s.name for s in engine.fleet.states() if s.status == "up"]
    try:
        await engine.store.count_queued()
        store_ok = True
    except Exception:  # any failure of the store means "not ready"; the reason is logged
        log.exception("readiness: the task store did not answer")
        store_ok = False
    ok = bool(up) and store_ok
    body = {"status": "ready" if ok else "not ready", "endpoints_up": up, "store": store_ok}
    return Response(body, status_code=200 if ok else 503)
