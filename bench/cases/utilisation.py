"""d. Utilisation: 3 endpoints, 1 s jobs, a burst of 90 tasks. Endpoint busy time over wall
time, and the makespan over the ideal, against the same 90 prompts queued straight on 3
emulators (30 each, all at once: no endpoint can idle). Then a fleet of unequal speeds (two
endpoints at 0.3 s a task, one three times slower, 30 tasks, as tests/test_fleet.py): the
makespan over that of the best split, against the best split queued straight on them."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import statistics
import time
from collections import Counter

from ..client import (
    DirectComfy,
    HttpConnection,
    WebhookSink,
    blank_graph,
    blank_prompt,
    exec_ms,
    get_json,
    run_pool,
    submission,
    submit,
)
from ..harness import Emulators, Server
from ..report import CaseResult, Context, Row

ENDPOINTS = 3
TASKS = 90
NODE_TIME = 0.5
"""EmptyImage and SaveImage, 0.5 s each: 1 s jobs."""
TARGET_UTIL, TARGET_RATIO = 0.98, 1.03

MIXED_NODE_TIMES = (0.15, 0.15, 0.45)
"""Node times of the mixed fleet: two endpoints at 0.3 s a task and one three times slower."""
MIXED_TASKS, MIXED_RUNS = 30, 2
TARGET_MIXED = 1.1


def start_emulators(ctx: Context, label: str) -> list[Emulators]:
    return [
        Emulators(
            ctx.logs, ctx.tmp / f"d-{label}-{i}", node_time=NODE_TIME, name=f"d-{label}-emulator{i}"
        )
        for i in range(ENDPOINTS)
    ]


async def busy_ms(emulators: list[Emulators]) -> list[float]:
    """Every prompt's execution time, from the emulators' histories."""
    times = []
    for emulator in emulators:
        history = await get_json(emulator.url(), "/history")
        times += [exec_ms(entry["status"]["messages"]) for entry in history.values()]
    return [t for t in times if t is not None]


def figures(makespan_s: float, jobs_ms: list[float], tasks: int) -> tuple[float, float]:
    """(utilisation, makespan / ideal); ideal = ceil(tasks / endpoints) median jobs."""
    utilisation = sum(jobs_ms) / 1000 / (ENDPOINTS * makespan_s)
    ideal = math.ceil(tasks / ENDPOINTS) * statistics.median(jobs_ms) / 1000
    return utilisation, makespan_s / ideal


async def through_server(ctx: Context, tasks: int) -> tuple[float, float, float]:
    emulators = start_emulators(ctx, "server")
    server = Server(
        ctx.logs, ctx.tmp / "d-data", [e.addresses[0] for e in emulators], name="d-server"
    )
    sink = await WebhookSink().start()
    conns = [HttpConnection(server.url) for _ in range(16)]
    try:

        async def job(i: int, worker: int) -> None:
            await submit(conns[worker], submission({"color": ctx.color()}, sink.url))

        t0 = time.perf_counter()
        await run_pool(tasks, len(conns), job)
        await sink.wait_count(tasks, limit=tasks * 2)
        makespan = max(t for t, _ in sink.arrived.values()) - t0
        jobs = await busy_ms(emulators)
    finally:
        for conn in conns:
            await conn.close()
        await sink.stop()
        server.stop()
        for emulator in emulators:
            emulator.stop()
    return (*figures(makespan, jobs, tasks), makespan)


async def direct(ctx: Context, tasks: int) -> tuple[float, float, float]:
    emulators = start_emulators(ctx, "floor")
    comfys = [await DirectComfy(e.addresses[0], tasks // ENDPOINTS).start() for e in emulators]
    graph = blank_graph()
    try:
        t0 = time.perf_counter()
        runs = await asyncio.gather(
            *(
                c.run(blank_prompt(graph, ctx.color()), k)
                for c in comfys
                for k in range(tasks // ENDPOINTS)
            )
        )
        makespan = max(end for _, end, _ in runs) - t0  # the last `executing` null
        jobs = await busy_ms(emulators)
    finally:
        for comfy in comfys:
            await comfy.stop()
        for emulator in emulators:
            emulator.stop()
    return (*figures(makespan, jobs, tasks), makespan)


def best_split(tasks: int, per_task: tuple[float, ...]) -> tuple[tuple[int, ...], float]:
    """The split of `tasks` over endpoints taking `per_task` seconds a task that ends soonest,
    and when it ends."""
    splits = (
        split
        for split in itertools.product(range(tasks + 1), repeat=len(per_task))
        if sum(split) == tasks
    )
    best = min(splits, key=lambda split: max(n * t for n, t in zip(split, per_task, strict=True)))
    return best, max(n * t for n, t in zip(best, per_task, strict=True))


def start_mixed(ctx: Context) -> list[Emulators]:
    return [
        Emulators(ctx.logs, ctx.tmp / f"d-mixed-{i}", node_time=node, name=f"d-mixed-emulator{i}")
        for i, node in enumerate(MIXED_NODE_TIMES)
    ]


async def mixed_through_server(
    ctx: Context, emulators: list[Emulators], tasks: int, run: int
) -> tuple[float, tuple[int, ...]]:
    """(makespan, tasks per endpoint) of one batch through a fresh server, which has measured
    no endpoint's speed yet. As the test: the tasks posted one after the other, the makespan
    from the first one's `created_at` to the last one's `finished_at`."""
    server = Server(
        ctx.logs,
        ctx.tmp / f"d-mixed-data{run}",
        [e.addresses[0] for e in emulators],
        name=f"d-mixed-server{run}",
    )
    sink = await WebhookSink().start()
    conn = HttpConnection(server.url)
    try:
        for _ in range(tasks):
            params = {"color": ctx.color(), "width": 8, "height": 8}
            await submit(conn, submission(params, sink.url))
        await sink.wait_count(tasks, limit=120)
        records = [record for _, record in sink.arrived.values()]
    finally:
        await conn.close()
        await sink.stop()
        server.stop()
    failed = [r for r in records if r["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) did not complete: {failed[0]}")
    start = min(dt.datetime.fromisoformat(r["created_at"]) for r in records)
    end = max(dt.datetime.fromisoformat(r["finished_at"]) for r in records)
    counts = Counter(r["endpoint"] for r in records)
    return (end - start).total_seconds(), tuple(counts[e.addresses[0]] for e in emulators)


async def mixed_direct(ctx: Context, emulators: list[Emulators], split: tuple[int, ...]) -> float:
    """The makespan of `split` POSTed straight to the emulators, all at once."""
    comfys = [
        await DirectComfy(e.addresses[0], n).start() for e, n in zip(emulators, split, strict=True)
    ]
    graph = blank_graph()
    try:
        t0 = time.perf_counter()
        runs = await asyncio.gather(
            *(
                c.run(blank_prompt(graph, ctx.color(), width=8, height=8), k)
                for c, n in zip(comfys, split, strict=True)
                for k in range(n)
            )
        )
        return max(end for _, end, _ in runs) - t0
    finally:
        for comfy in comfys:
            await comfy.stop()


async def mixed_speeds(ctx: Context) -> tuple[Row, list[str]]:
    per_task = tuple(2 * node for node in MIXED_NODE_TIMES)  # EmptyImage + SaveImage
    tasks = ctx.size(MIXED_TASKS, MIXED_TASKS, 8)
    split, best = best_split(tasks, per_task)
    runs = ctx.size(MIXED_RUNS, 1, 1)
    emulators = start_mixed(ctx)
    try:
        floor = await mixed_direct(ctx, emulators, split)
        results = [await mixed_through_server(ctx, emulators, tasks, run) for run in range(runs)]
    finally:
        for emulator in emulators:
            emulator.stop()
    spans = [span for span, _ in results]
    ratio = max(spans) / best
    row = Row(
        "makespan / best split, 3 endpoints, one 3x slower",
        f"{ratio:.3f}",
        f"{floor / best:.3f}",
        f"<= {TARGET_MIXED:g}",
        ratio <= TARGET_MIXED,
    )
    seconds = ", ".join(f"{s:.2f} s" for s in spans)
    splits = ", ".join("/".join(map(str, s)) for _, s in results)
    best_text = "/".join(map(str, split))
    notes = [
        f"Unequal speeds: two emulators at {per_task[0]:g} s a task and one at "
        f"{per_task[2]:g} s, each in its own process, {tasks} tasks posted one after the "
        f"other (as tests/test_fleet.py, which checks the split, not the time). The best split "
        f"is {best_text}, ending after {best:.2f} s by the nominal times. Through the server, "
        f"a fresh one each run (no speed measured yet; no warm-up), {runs} run(s): makespans "
        f"{seconds} from the first task's `created_at` to the last one's `finished_at` "
        f"(the value is the slowest over {best:.2f} s), splits {splits}. Floor: the best split "
        "POSTed straight to the emulators at once, from the first POST to the last "
        "`executing` null. The server's span starts at `created_at`, once the POST has "
        "reached it, the floor's before the POST leaves: the floor can come out a few ms "
        "higher.",
    ]
    return row, notes


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("d", "Utilisation")
    tasks = ctx.size(TASKS, 30, 6)
    floor_util, floor_ratio, floor_span = await direct(ctx, tasks)
    util, ratio, span = await through_server(ctx, tasks)
    mixed_row, mixed_notes = await mixed_speeds(ctx)
    result.rows += [
        Row(
            f"endpoint busy / wall, {ENDPOINTS} endpoints, 1 s jobs, {tasks}-task burst",
            f"{100 * util:.1f} %",
            f"{100 * floor_util:.1f} %",
            f">= {100 * TARGET_UTIL:g} %",
            util >= TARGET_UTIL,
        ),
        Row(
            "makespan / ideal",
            f"{ratio:.3f}",
            f"{floor_ratio:.3f}",
            f"<= {TARGET_RATIO:g}",
            ratio <= TARGET_RATIO,
        ),
        mixed_row,
    ]
    result.notes += [
        f"Makespan: {span:.2f} s through the server, {floor_span:.2f} s straight to the "
        "emulators; from the first POST to the last webhook (server) or the last `executing` "
        "null (floor).",
        f"{ENDPOINTS} emulators, each in its own process, {NODE_TIME:g} s per node "
        "(EmptyImage + SaveImage = 1 s jobs). Busy time = the sum of every prompt's "
        "execution_start -> execution_success from the emulators' histories; utilisation = "
        f"busy / ({ENDPOINTS} x makespan). Ideal = ceil({tasks} / {ENDPOINTS}) x the median job "
        "time: a perfect scheduler with no overhead.",
        f"Floor: all {tasks} prompts POSTed at once, {tasks // ENDPOINTS} to each emulator, so "
        "each emulator's own queue keeps it busy; what is left is the first POST's latency "
        "and the gap between one prompt and the next inside ComfyUI.",
        *mixed_notes,
    ]
    return result
