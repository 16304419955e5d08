"""Request and response bodies at the HTTP edge."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The seed's request body, unchanged: seed clients keep working."""

    service_type: Annotated[str, msgspec.Meta(min_length=1, description="Workflow name.")]
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    client_task_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    client_callback_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)] | None = None
    timeout: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0, le=30 * 86400, description="Seconds before TIMEOUT (at most 30 days)."
            ),
        ]
        | None
    ) = None
    callback_events: (
        Annotated[
            list[str],
            msgspec.Meta(
                max_length=10,
                description="Webhook events to send besides the final ones (task.completed, "
                "task.failed, task.cancelled, always sent): task.started, task.progress.",
            ),
        ]
        | None
    ) = None


class ParamInfo(msgspec.Struct, kw_only=True):
    name: str
    type: str
    required: bool
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    description: str = ""


class WorkflowInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    plugin: str
    params: list[ParamInfo]
    node_classes: list[str]
    output_nodes: list[str] | None


class EndpointInfo(msgspec.Struct, kw_only=True):
    name: str
    url: str
    status: str
    queue_remaining: int
    in_flight: int
    capacity: int
    weight: float
    node_classes: int | None
    """How many node classes the endpoint offers (None until it has connected once)."""
    workflows: list[str] | None
    """The deployed workflows it can run."""
    last_error: str | None
    seconds_per_task: float | None = None
    """Moving average of how long our prompts ran there (None until one has)."""


class EndpointRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str,
        msgspec.Meta(min_length=1, description="`host:port` or a URL, optionally `?weight=N`."),
    ]


class TaskEventInfo(msgspec.Struct, kw_only=True):
    status: str
    at: str
    endpoint: str | None
    detail: str | None


class ErrorDetail(msgspec.Struct, kw_only=True):
    key: str | None
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every 4xx/5xx body; the same shape Litestar uses for its validation errors."""

    status_code: int
    detail: str
    extra: list[ErrorDetail] = msgspec.field(default_factory=list)
