"""One typed submission route per workflow, so /schema documents every workflow's params.

`POST {ROUTE_PREFIX}/workflows/{name}/tasks` takes `{"params": {...}, "client_task_id": ...}`
where `params` is a Struct generated from the workflow's spec (types, limits, choices,
patterns, defaults). The seed-format `POST {ROUTE_PREFIX}` keeps working beside it.

No `from __future__ import annotations` here: the handlers' annotations must be the
generated types themselves, not names Litestar would have to resolve.
"""

import keyword
import re
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.params import Body
from litestar.types import ControllerRouterHandler

from ..records import TaskRecord
from ..workflows import ParamSpec, Workflow, WorkflowRegistry
from .schemas import SubmitRequest
from .tasks import WaitParam, submit_task

_PYTHON_TYPES = {"string": str, "image": str, "integer": int, "number": float, "boolean": bool}


def _field_type(spec: ParamSpec) -> Any:
    base: Any = _PYTHON_TYPES[spec.type]
    if spec.choices is not None:
        base = Literal[tuple(spec.choices)]
    meta: dict[str, Any] = {}
    if spec.description:
        meta["description"] = spec.description
    if spec.type in ("integer", "number"):
        number = int if spec.type == "integer" else float
        if spec.minimum is not None:
            meta["ge"] = number(spec.minimum)
        if spec.maximum is not None:
            meta["le"] = number(spec.maximum)
    if spec.pattern is not None:
        meta["pattern"] = f"^(?:{spec.pattern})$"
    return Annotated[base, msgspec.Meta(**meta)] if meta else base


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return f"{ident}_" if keyword.iskeyword(ident) or ident[:1].isdigit() else ident


def params_struct(workflow: Workflow) -> type[msgspec.Struct]:
    fields = []
    rename = {}
    for name, spec in workflow.params.items():
        ident = _identifier(name)
        rename[ident] = name
        field_type = _field_type(spec)
        fields.append((ident, field_type) if spec.required else (ident, field_type, spec.default))
    title = "".join(part.capitalize() for part in re.split(r"\W|_", workflow.name) if part)
    return msgspec.defstruct(
        f"{title}Params", fields, kw_only=True, forbid_unknown_fields=True, rename=rename
    )


def request_struct(workflow: Workflow) -> type[msgspec.Struct]:
    params = params_struct(workflow)
    title = params.__name__.removesuffix("Params")
    extras = [
        (f.name, f.type, f.default)
        for f in msgspec.structs.fields(SubmitRequest)
        if f.name not in ("service_type", "params")
    ]
    return msgspec.defstruct(
        f"{title}TaskRequest",
        [("params", params), *extras],
        kw_only=True,
        forbid_unknown_fields=True,
    )


def _route(workflow: Workflow, prefix: str) -> ControllerRouterHandler:
    body_type = request_struct(workflow)
    name = workflow.name

    async def handler(data: Any, request: Request, wait: float = 0.0) -> Response[TaskRecord]:
        params = msgspec.to_builtins(data.params)
        submission = SubmitRequest(
            service_type=name,
            params=params,
            client_task_id=data.client_task_id,
            client_callback_url=data.client_callback_url,
            timeout=data.timeout,
            callback_events=data.callback_events,
        )
        return await submit_task(submission, request, wait)

    handler.__annotations__ = {
        "data": Annotated[body_type, Body(description=workflow.description or name)],
        "request": Request,
        "wait": WaitParam,
        "return": Response[TaskRecord],
    }
    return post(
        f"{prefix}/workflows/{name}/tasks",
        operation_id=f"submit_{_identifier(name)}",
        summary=f"Submit a {name} task",
        description=workflow.description or None,
        tags=["workflows"],
        status_code=200,
    )(handler)


def workflow_routes(registry: WorkflowRegistry, prefix: str) -> list[ControllerRouterHandler]:
    return [_route(workflow, prefix) for workflow in registry]
