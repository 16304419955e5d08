"""Pick the endpoint that finishes the task soonest, and hold the tail of a batch back from
an endpoint so slow that a busy faster one would still finish it sooner.

While some endpoint that could run the workflow has no measured speed yet, it is the
shortest queue, counting what we sent but ComfyUI has not reported yet (the seed sent a
whole burst to one endpoint because it did not), divided by the endpoint's weight, ties in
turn. Once every one has run a prompt of ours, the measured speeds replace the weights
(see `by_speed`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from comfyui_server.core import EndpointState, Task, Workflow, hookimpl

_turn = itertools.count()


def queue(endpoint: EndpointState) -> int:
    """ComfyUI's broadcast `queue_remaining` counts every client's prompts, ours included
    once they are queued; our in-flight count also covers prompts not yet acknowledged.
    The larger of the two is the best estimate of the real backlog."""
    return max(endpoint.queue_remaining, endpoint.in_flight)


def load(endpoint: EndpointState) -> float:
    """The queue relative to the weight: what the shortest-queue rule compares."""
    return queue(endpoint) / max(endpoint.weight, 1e-9)


def seconds(endpoint: EndpointState) -> float:
    """Its measured seconds per task (at least a microsecond, so nothing divides by 0)."""
    return max(endpoint.seconds_per_task or 0.0, 1e-6)


def finish_time(endpoint: EndpointState) -> float:
    """Seconds until a task sent now would be done: after the queue ahead of it, then its
    own run. The running prompt counts whole, since we do not know how far it got."""
    return (queue(endpoint) + 1) * seconds(endpoint)


def done_before(endpoint: EndpointState, deadline: float) -> int:
    """How many more tasks `endpoint` would finish, after its queue, strictly before
    `deadline` seconds from now (up to a rounding error: a tie does not count)."""
    return max(0, math.ceil(deadline / seconds(endpoint) - 1e-9) - 1 - queue(endpoint))


def in_turn(
    candidates: list[EndpointState], key: Callable[[EndpointState], float]
) -> EndpointState:
    """The candidate with the smallest `key`; equals take turns, so they share the work."""
    best = min(key(e) for e in candidates)
    tied = [e for e in candidates if key(e) == best]
    return tied[next(_turn) % len(tied)]


def by_speed(
    candidates: list[EndpointState], able: list[EndpointState], backlog: int
) -> EndpointState | None:
    """Among the endpoints with a free slot, the one that would finish the task first;
    None (wait) when the endpoints that could run it, busy ones included, would finish all
    `backlog` waiting tasks before that one would finish this one.

    Tasks are taken in order and all alike, so the first waiting task should go where
    one of them finishes soonest. When the faster endpoints can do every waiting task
    before the free one, starting one here only makes it the last to finish: it waits
    instead and is offered again when a slot frees. A free endpoint that some waiting task
    needs is never left idle, and with no busy endpoint nothing is held (an idle faster
    endpoint would have been the choice).
    """
    best = in_turn(candidates, finish_time)
    deadline = finish_time(best)
    sooner = sum(done_before(e, deadline) for e in able if e.name != best.name)
    return None if sooner >= backlog else best


@hookimpl(trylast=True)
def schedule_endpoint(
    task: Task, endpoints: Sequence[EndpointState], workflow: Workflow, backlog: int
) -> EndpointState | None:
    """`backlog`: how many tasks wait for an endpoint, this one included."""
    candidates = [e for e in endpoints if e.accepts(workflow.node_classes)]
    if not candidates:
        return None
    able = [e for e in endpoints if e.status == "up" and e.can_run(workflow.node_classes)]
    if any(e.seconds_per_task is None for e in able):
        return in_turn(candidates, load)
    return by_speed(candidates, able, backlog)
