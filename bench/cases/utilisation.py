"""d. Utilisation: 3 endpoints, 1 s jobs, a burst of 90 tasks. Endpoint busy time over wall
time, and the makespan over the ideal, against the same 90 prompts queued straight on 3
emulators (30 each, all at once: no endpoint can idle)."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

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


async def run(ctx: Context) -> CaseResult:
    result = CaseResult("d", "Utilisation")
    tasks = 30 if ctx.quick else TASKS
    floor_util, floor_ratio, floor_span = await direct(ctx, tasks)
    util, ratio, span = await through_server(ctx, tasks)
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
    ]
    return result
