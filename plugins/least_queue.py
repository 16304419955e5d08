"""Pick the endpoint with the shortest queue, counting what we sent but ComfyUI has not
reported yet (the seed sent a whole burst to one endpoint because it did not)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from comfyui_server.core import EndpointState, Task, Workflow, hookimpl

_turn = itertools.count()


def load(endpoint: EndpointState) -> float:
    """ComfyUI's broadcast `queue_remaining` counts every client's prompts, ours included
    once they are queued; our in-flight count also covers prompts not yet acknowledged.
    The larger of the two is the best estimate of the real backlog."""
    return max(endpoint.queue_remaining, endpoint.in_flight) / max(endpoint.weight, 1e-9)


@hookimpl(trylast=True)
def schedule_endpoint(
    task: Task, endpoints: Sequence[EndpointState], workflow: Workflow
) -> EndpointState | None:
    candidates = [e for e in endpoints if e.accepts(workflow.node_classes)]
    if not candidates:
        return None
    best = min(load(e) for e in candidates)
    tied = [e for e in candidates if load(e) == best]
    return tied[next(_turn) % len(tied)]  # ties in turn, so equal endpoints share work
