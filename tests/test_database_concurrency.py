"""Bursts of submissions: 500 at once must all land, with no "database is locked" on
SQLite and no pool exhaustion on PostgreSQL, even with a pool of two."""

from __future__ import annotations

import asyncio
import time

import msgspec
from comfyui_server.core import Task, TaskEvent

BURST = 500


def submission(n: int) -> tuple[Task, list[TaskEvent]]:
    task = Task(
        workflow="text2img",
        params={"prompt": f"prompt {n}", "seed": n},
        client_task_id=f"client-{n}",
        request_hash=f"{n:064x}",
        status="queued",
    )
    return task, [TaskEvent(task_id=0, status="accepted"), TaskEvent(task_id=0, status="queued")]


async def test_500_concurrent_creates_all_land(db_url, task_store_factory):
    store = await task_store_factory(db_url, DB_POOL_SIZE="2")
    started = time.perf_counter()
    created = await asyncio.gather(*(store.create(*submission(n)) for n in range(BURST)))
    elapsed = time.perf_counter() - started
    print(f"\n{db_url.split(':')[0]}: {BURST} concurrent creates in {elapsed:.3f} s")
    assert len({t.id for t in created}) == BURST
    assert [len(await store.events(t.id)) for t in created[:: BURST // 10]] == [2] * 10
    assert await store.find("client-499") == created[499]
    assert len(await store.unfinished()) == BURST


async def test_creates_saves_and_claims_interleave(db_url, task_store_factory):
    """The engine's mix: submissions arriving while two dispatchers claim and finish tasks."""
    store = await task_store_factory(db_url)
    finished: list[int] = []

    async def dispatcher(owner: str) -> None:
        async with asyncio.timeout(30):
            while len(finished) < 200:
                tasks = await store.claim(owner, 4)
                for task in tasks:
                    done = msgspec.structs.replace(task, status="completed")
                    await store.save(done, TaskEvent(task_id=task.id, status="completed"))
                    finished.append(task.id)
                await asyncio.sleep(0 if tasks else 0.005)

    submissions = asyncio.gather(*(store.create(*submission(n)) for n in range(200)))
    await asyncio.gather(dispatcher("a"), dispatcher("b"), submissions)
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 200
    assert await store.unfinished() == []
