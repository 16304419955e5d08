"""What this server offers: workflows and endpoints, plus health checks."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from ..errors import RequestError
from ..workflows import Workflow
from .schemas import EndpointInfo, ParamInfo, WorkflowInfo


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


class EndpointController(Controller):
    path = "/endpoints"
    tags = ["endpoints"]

    @get("", operation_id="listEndpoints", summary="ComfyUI endpoints and their state")
    async def list_endpoints(self, state: State) -> list[EndpointInfo]:
        return [
            EndpointInfo(
                name=s.name,
                url=s.url,
                status=s.status,
                queue_remaining=s.queue_remaining,
                in_flight=s.in_flight,
                capacity=s.capacity,
                last_error=s.last_error,
            )
            for s in state.engine.fleet.states()
        ]


@get("/health", operation_id="health", tags=["operations"], summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", operation_id="ready", tags=["operations"], summary="Readiness")
async def ready(state: State) -> Response[dict]:
    """Ready when at least one endpoint is up: otherwise tasks would only queue."""
    up = [s.name for s in state.engine.fleet.states() if s.status == "up"]
    body = {"status": "ready" if up else "not ready", "endpoints_up": up}
    return Response(body, status_code=200 if up else 503)
