"""What only a database store promises: rows outlive the process, abandoned claims come
back, the seed's columns are filled, and an unreachable server is reported by name."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from comfyui_server.core import OutputRef, StartupError, Task, TaskEvent
from comfyui_server.plugins.database import store_for
from comfyui_server.plugins.database.settings import DatabaseTarget


async def test_a_restart_keeps_tasks_events_and_ids(db_url, task_store_factory):
    before = await task_store_factory(db_url)
    first = await before.create(
        Task(workflow="w", client_task_id="survivor", status="queued"),
        [TaskEvent(task_id=0, status="accepted"), TaskEvent(task_id=0, status="queued")],
    )
    running = msgspec.structs.replace(first, status="running", endpoint="e:1")
    await before.save(running, TaskEvent(task_id=first.id, status="running"))
    await before.close()

    after = await task_store_factory(db_url)
    assert await after.get(first.id) == running
    assert await after.find("survivor") == running
    assert [e.status for e in await after.events(first.id)] == ["accepted", "queued", "running"]
    assert await after.unfinished() == [running]
    second = await after.create(Task(workflow="w", status="queued"), [])
    assert second.id > first.id


async def test_an_abandoned_claim_is_claimed_again_after_the_lease(db_url, task_store_factory):
    store = await task_store_factory(db_url, DB_CLAIM_LEASE="0.3")
    task = await store.create(Task(workflow="w", status="queued"), [])
    assert [t.id for t in await store.claim("dead-replica", 5)] == [task.id]
    assert await store.claim("live-replica", 5) == []
    await asyncio.sleep(0.4)
    assert [t.id for t in await store.claim("live-replica", 5)] == [task.id]
    assert await store.claim("dead-replica", 5) == []


async def test_seed_columns_follow_the_first_output(task_store):
    task = await task_store.create(Task(workflow="w", status="queued"), [])
    outputs = (
        OutputRef(
            key="1/sub/a.png",
            filename="a.png",
            subfolder="sub",
            node_id="9",
            content_type="image/png",
            size=3,
        ),
        OutputRef(key="1/b.png", filename="b.png", node_id="9", content_type="image/png", size=4),
    )
    done = msgspec.structs.replace(task, status="completed", outputs=outputs, comfyui_task_id="p")
    await task_store.save(done, TaskEvent(task_id=task.id, status="completed"))
    async with task_store.reading() as conn:
        row = (
            await conn.fetch(
                "SELECT s3_key, comfy_filepath, comfyui_task_id, error_code, owner "
                "FROM comfyui_task WHERE id = $1",
                task.id,
            )
        )[0]
    assert tuple(row) == ("1/sub/a.png", "sub/a.png", "p", 0, None)


@pytest.mark.filterwarnings("ignore:.*Unable to connect")  # piccolo's own, before ours
async def test_an_unreachable_postgres_fails_start_up_naming_it():
    store = store_for(DatabaseTarget("postgres", "postgresql://u:secret@127.0.0.1:1/nowhere"))
    with pytest.raises(StartupError) as caught:
        await store.open()
    assert "127.0.0.1:1/nowhere" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_an_unusable_sqlite_path_fails_start_up_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = store_for(DatabaseTarget("sqlite", str(blocker / "db.sqlite3")))
    with pytest.raises(StartupError, match=r"db\.sqlite3"):
        await store.open()
