"""Pick the endpoint that finishes the task soonest, and hold the tail of a batch back from
an endpoint so slow that a busy faster one would still finish it sooner.

While some endpoint that could run the workflow has no measured speed yet, it is the
shortest queue, counting what we sent but ComfyUI has not reported yet (the seed sent a
whole burst to one endpoint because it did not), divided by the endpoint's weight, ties in
turn. Once every one has run a prompt of ours, the measured speeds replace the weights
(see `by_speed`), and how long the prompt running on an endpoint has run shortens the wait
for it, up to `OVERRUN` times its speed, after which the endpoint is no longer waited for.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from comfyui_server.core import EndpointState, Task, Workflow, hookimpl

_turn = itertools.count()

OVERRUN = 2.0
"""A prompt of ours that has run this many times its endpoint's `seconds_per_task` is no
longer expected to end soon: the endpoint is not waited for (it finishes nothing before any
deadline, see `done_before`) and no task is queued behind that prompt while another
endpoint could take it (its `finish_time` is unknown, so infinite).

The average tells when a run should end, not when this one will. One that has taken twice
as long is stuck (ComfyUI hung while its websocket stays up, which nothing else notices),
loading a model (which can take ten times as long), or a longer workflow than the average
is made of: its end may be far off and is not known. Twice leaves room for the ordinary
spread of run times (other parameters, a busy machine) below it. A wrong guess costs
little: a task that could have waited for the faster endpoint starts on a slower free one
and ends less than one of that endpoint's runs later. Waiting for a prompt that never ends
costs without bound: the tail of the batch would wait while the slower endpoint idles. A
held task is offered again at least every second (the dispatcher's idle timeout), so the
hold ends within about a second of the bound."""

LEAST_LEFT = 0.05
"""The least of a run a prompt that has not ended yet is counted to have left, as a fraction
of `seconds_per_task`: one that has run longer than the average is due any moment, not
already done."""


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


def overran(endpoint: EndpointState) -> bool:
    """Its running prompt has run more than `OVERRUN` times its measured speed."""
    return endpoint.running_for > OVERRUN * seconds(endpoint)


def ahead(endpoint: EndpointState) -> float:
    """Seconds until its queue is done: the prompt of ours it runs, for what its speed leaves
    of it (`running_for` on from its start, at least `LEAST_LEFT` of a run), the rest whole.
    A prompt of another client's counts whole, since we do not see when it started."""
    queued, each = queue(endpoint), seconds(endpoint)
    if endpoint.running_for <= 0 or queued == 0:
        return queued * each
    return (queued - 1) * each + max(each - endpoint.running_for, LEAST_LEFT * each)


def finish_time(endpoint: EndpointState) -> float:
    """Seconds until a task sent now would be done: after the queue ahead of it, then its
    own run. Unknown (infinite) behind a prompt that `overran`."""
    if overran(endpoint):
        return math.inf
    return ahead(endpoint) + seconds(endpoint)


def done_before(endpoint: EndpointState, deadline: float) -> int:
    """How many more tasks `endpoint` would finish, after its queue, strictly before
    `deadline` seconds from now (up to a rounding error: a tie does not count). 0 when its
    running prompt `overran`: it is not waited for."""
    if overran(endpoint):
        return 0
    spare = (deadline - ahead(endpoint)) / seconds(endpoint)
    return max(0, math.ceil(spare - 1e-9) - 1)


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

    A busy endpoint whose running prompt `overran` is not waited for. And when every free
    slot is behind such a prompt, the task waits for any other endpoint that could run it
    rather than queue there; with none, it goes there.
    """
    best = in_turn(candidates, finish_time)
    others = [e for e in able if e.name != best.name]
    if overran(best):
        return None if any(not overran(e) for e in others) else best
    deadline = finish_time(best)
    sooner = sum(done_before(e, deadline) for e in others)
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
