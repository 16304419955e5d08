"""The built-in scheduler's choices, from endpoint snapshots (no server), and the speed it
relies on, measured by a real monitor against the emulator."""

import asyncio
import time
import uuid

import pytest
from comfyui_server.core import EndpointState, Task
from comfyui_server.core.comfyui.client import ComfyUIClient
from comfyui_server.core.comfyui.monitor import SPEED_ALPHA, EndpointMonitor
from comfyui_server.core.plugins import create_plugin_manager
from comfyui_server.core.testing.emulator import ComfyUIEmulator
from comfyui_server.core.workflows import Workflow
from comfyui_server.plugins.least_queue import schedule_endpoint

GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}
WORKFLOW = Workflow(name="blank", graph=GRAPH, params={})
TASK = Task(id=1, workflow="blank")


def endpoint(name, *, busy=0, capacity=1, speed=None, **kwargs) -> EndpointState:
    """`busy` prompts of ours in flight; `speed` its seconds per task (None: not measured)."""
    return EndpointState(
        name=name,
        url=f"http://{name}",
        status=kwargs.pop("status", "up"),
        in_flight=busy,
        capacity=capacity,
        seconds_per_task=speed,
        **kwargs,
    )


def choose(endpoints, backlog=1):
    choice = schedule_endpoint(task=TASK, endpoints=endpoints, workflow=WORKFLOW, backlog=backlog)
    return None if choice is None else choice.name


# ---- speeds not measured yet: the shortest queue, as before ------------------------------


def test_unmeasured_equals_take_turns():
    endpoints = [endpoint(n) for n in ("a", "b", "c")]
    assert {choose(endpoints) for _ in range(6)} == {"a", "b", "c"}


def test_unmeasured_queue_relative_to_weight():
    heavy = endpoint("heavy", busy=1, capacity=2, weight=2.0)  # 1/2
    plain = endpoint("plain", busy=1, capacity=2)  # 1/1
    assert choose([plain, heavy]) == "heavy"
    assert choose([plain, endpoint("idle")]) == "idle"
    # ComfyUI's own count includes other clients' prompts
    assert choose([endpoint("shared", queue_remaining=3, capacity=2), plain]) == "plain"


def test_one_unmeasured_endpoint_keeps_the_shortest_queue_rule():
    # known: a fast one, busy, and a slow one, free; the third has not finished a prompt
    fast = endpoint("fast", busy=1, speed=0.3)
    slow = endpoint("slow", speed=0.9)
    new = endpoint("new", busy=1)
    assert choose([fast, slow, new], backlog=1) == "slow"  # not held back
    assert choose([fast, slow], backlog=1) is None  # with all measured, it is


# ---- speeds measured: the earliest finish -----------------------------------------------


def test_a_queued_slot_on_a_fast_endpoint_beats_an_idle_slow_one():
    fast = endpoint("fast", busy=1, capacity=2, speed=0.3)  # done in 0.6 s
    slow = endpoint("slow", capacity=2, speed=0.9)  # done in 0.9 s
    assert choose([slow, fast], backlog=30) == "fast"
    assert choose([slow, endpoint("fast", busy=2, capacity=2, speed=0.3)], backlog=30) == "slow"


def test_the_fastest_free_endpoint_first():
    endpoints = [endpoint("slow", speed=0.9), endpoint("fast", speed=0.3)]
    assert {choose(endpoints) for _ in range(4)} == {"fast"}


def test_the_tail_of_a_batch_waits_for_the_fast_endpoints():
    # each fast endpoint finishes its prompt within 0.3 s and one more within 0.6 s, both
    # before the slow one would finish a task started now (0.9 s)
    fast = [endpoint(n, busy=1, speed=0.3) for n in ("f1", "f2")]
    slow = endpoint("slow", speed=0.9)
    assert choose([*fast, slow], backlog=1) is None
    assert choose([*fast, slow], backlog=2) is None
    # a third waiting task would end at 0.9 s on a fast one too: a tie starts it here
    assert choose([*fast, slow], backlog=3) == "slow"
    assert choose([*fast, slow], backlog=30) == "slow"


def test_the_hold_counts_the_fast_endpoints_queues():
    # two of ours queued on each fast endpoint: it starts a new one only after 0.6 s
    fast = [endpoint(n, busy=2, capacity=2, speed=0.3) for n in ("f1", "f2")]
    slow = endpoint("slow", speed=0.9)
    assert choose([*fast, slow], backlog=1) == "slow"
    busier = [endpoint(n, busy=2, capacity=2, speed=0.1) for n in ("f1", "f2")]
    assert choose([*busier, slow], backlog=12) is None  # 6 more each before 0.9 s
    assert choose([*busier, slow], backlog=13) == "slow"


def test_nothing_is_held_without_a_busy_endpoint_to_wait_for():
    slow = endpoint("slow", speed=0.9)
    assert choose([slow]) == "slow"
    # equal speeds never wait: the busy one would finish a new task no sooner
    assert choose([endpoint("a", busy=1, speed=0.3), endpoint("b", speed=0.3)]) == "b"
    # a faster endpoint that is down, draining or lacks a node class is not waited for
    for other in (
        endpoint("fast", busy=1, speed=0.3, status="down"),
        endpoint("fast", busy=1, speed=0.3, status="draining"),
        endpoint("fast", busy=1, speed=0.3, node_classes=frozenset({"EmptyImage"})),
    ):
        assert choose([other, slow]) == "slow", other


def test_the_running_prompt_counts_for_what_is_left_of_it():
    # one fast endpoint, its prompt started 0.2 s ago: done at 0.1 s, then 0.4 s and 0.7 s,
    # both before the slow one would finish (0.9 s); counted whole, only 0.6 s was
    slow = endpoint("slow", speed=0.9)
    fresh = endpoint("fast", busy=1, speed=0.3)
    running = endpoint("fast", busy=1, speed=0.3, running_for=0.2)
    assert choose([fresh, slow], backlog=2) == "slow"
    assert choose([running, slow], backlog=2) is None
    assert choose([running, slow], backlog=3) == "slow"
    # and where a task finishes first: behind the running prompt at 0.4 s, not 0.6 s
    medium = endpoint("medium", capacity=2, speed=0.5)
    assert choose([endpoint("fast", busy=1, capacity=2, speed=0.3), medium]) == "medium"
    assert choose([endpoint("fast", busy=1, capacity=2, speed=0.3, running_for=0.2), medium]) == (
        "fast"
    )
    # a prompt past its average is due any moment (LEAST_LEFT), not done: the one queued
    # behind it ends at ~0.3 s, a new one at ~0.6 s, before 0.9 s; a second one would not
    late = endpoint("fast", busy=2, capacity=2, speed=0.3, running_for=0.5)
    assert choose([late, slow], backlog=1) is None
    assert choose([late, slow], backlog=2) == "slow"


def test_an_endpoint_whose_prompt_overran_is_not_waited_for():
    fast = [endpoint(n, busy=1, speed=0.3, running_for=0.5) for n in ("f1", "f2")]
    slow = endpoint("slow", speed=0.9)
    assert choose([*fast, slow], backlog=1) is None  # late, but within OVERRUN x 0.3 s
    stuck = [endpoint(n, busy=1, speed=0.3, running_for=0.61) for n in ("f1", "f2")]
    assert choose([*stuck, slow], backlog=1) == "slow"
    # one still counted on is waited for as before (done at 0.3 s, one more at 0.6 s); the
    # stuck one adds nothing
    counted_on = endpoint("f2", busy=1, speed=0.3)
    assert choose([stuck[0], counted_on, slow], backlog=1) is None
    assert choose([stuck[0], counted_on, slow], backlog=2) == "slow"
    # however long it has run, the tail is not held for it
    hung = endpoint("f1", busy=1, speed=0.3, running_for=3600.0)
    assert choose([hung, slow], backlog=1) == "slow"


def test_no_task_is_queued_behind_a_prompt_that_overran():
    stuck = endpoint("fast", busy=1, capacity=2, speed=0.3, running_for=0.7)
    slow = endpoint("slow", capacity=2, speed=0.9)
    assert choose([stuck, slow], backlog=30) == "slow"  # counted whole, 0.6 s beat 0.9 s
    # its free slot is the only one: wait for an endpoint that still works through its queue
    full = endpoint("slow", busy=2, capacity=2, speed=0.9)
    assert choose([stuck, full], backlog=30) is None
    # with none, it goes there
    assert choose([stuck], backlog=30) == "fast"
    assert choose([stuck, endpoint("slow", busy=2, capacity=2, speed=0.9, running_for=2)]) == (
        "fast"
    )


def test_no_candidate_no_choice():
    assert choose([endpoint("full", busy=1, speed=0.3)]) is None
    assert choose([endpoint("down", status="down")]) is None


def test_the_hook_call_passes_the_backlog():
    """pluggy leaves out hookimpl arguments that have defaults: `backlog` must not have one."""
    pm = create_plugin_manager()
    fast = [endpoint(n, busy=1, speed=0.3) for n in ("f1", "f2")]
    slow = endpoint("slow", speed=0.9)
    call = pm.hook.schedule_endpoint
    assert call(task=TASK, endpoints=[*fast, slow], workflow=WORKFLOW, backlog=1) is None
    assert call(task=TASK, endpoints=[*fast, slow], workflow=WORKFLOW, backlog=9).name == "slow"


# ---- the measured speed ---------------------------------------------------------------


@pytest.fixture
async def watched():
    """A started emulator (0.1 s a node, two nodes a prompt) and a monitor connected to it."""
    async with ComfyUIEmulator(node_time=0.1) as emulator:
        client = ComfyUIClient(emulator.url)
        monitor = EndpointMonitor(
            client, capacity=2, on_change=lambda: None, on_started=lambda _: None
        )
        monitor.start()
        try:
            deadline = time.monotonic() + 10
            while monitor.status != "up":
                assert time.monotonic() < deadline, monitor.last_error
                await asyncio.sleep(0.01)
            yield emulator, monitor
        finally:
            await monitor.close()
            await client.aclose()


async def run(monitor, color, *, then=None):
    """Post a prompt as the engine does; `then(watch)` runs once it is posted."""
    prompt_id = str(uuid.uuid4())
    watch = monitor.reserve(prompt_id)
    graph = {**GRAPH, "1": {**GRAPH["1"], "inputs": {**GRAPH["1"]["inputs"], "color": color}}}
    await monitor.client.post_prompt(graph, client_id=monitor.client_id, prompt_id=prompt_id)
    watch.submitted = True
    if then is not None:
        await then(watch)
    outcome = await asyncio.wait_for(watch.future, 10)
    monitor.release(prompt_id)
    return outcome, watch


async def test_speed_is_a_moving_average_of_successful_runs(watched):
    emulator, monitor = watched
    assert monitor.state().seconds_per_task is None
    assert (await run(monitor, 1))[0] == "ended"
    first = monitor.state().seconds_per_task
    assert 0.2 <= first < 0.35, first  # two nodes of 0.1 s
    emulator.node_time = 0.4
    await run(monitor, 2)  # 0.8 s
    second = monitor.state().seconds_per_task
    expected = first + SPEED_ALPHA * (0.8 - first)
    assert expected <= second < expected + SPEED_ALPHA * 0.15, (first, second)


async def test_running_for_is_how_long_our_running_prompt_has_run(watched):
    emulator, monitor = watched
    assert monitor.state().running_for == 0.0
    started = asyncio.Event()
    monitor.on_started = lambda prompt_id: started.set()
    seen = {}

    async def look_while_it_runs(watch):
        await asyncio.wait_for(started.wait(), 10)
        seen["at start"] = monitor.state().running_for
        await asyncio.sleep(0.3)
        seen["later"] = monitor.state().running_for
        emulator.interrupt()

    emulator.hang()
    try:
        await run(monitor, 1, then=look_while_it_runs)
    finally:
        emulator.hang(False)
    assert seen["at start"] < 0.2 and seen["later"] >= 0.3, seen
    assert monitor.state().running_for == 0.0


async def test_failed_interrupted_and_cached_runs_leave_the_speed_alone(watched):
    emulator, monitor = watched
    await run(monitor, 1)
    measured = monitor.seconds_per_task
    emulator.node_time = 0.0  # anything counted now would drag the average down

    outcome, watch = await run(monitor, 1)  # the same prompt again: all from the cache
    assert outcome == "ended" and not watch.ran_a_node

    emulator.fail_next()
    outcome, watch = await run(monitor, 2)
    assert watch.detail["type"] == "execution_error"

    started = asyncio.Event()
    monitor.on_started = lambda prompt_id: started.set()

    async def interrupt_once_running(watch):
        await asyncio.wait_for(started.wait(), 10)
        emulator.interrupt()

    emulator.hang()
    outcome, watch = await run(monitor, 3, then=interrupt_once_running)
    emulator.hang(False)
    assert watch.detail["type"] == "execution_interrupted"

    assert monitor.seconds_per_task == measured
    await run(monitor, 4)  # and a real run still counts
    assert monitor.seconds_per_task < measured
