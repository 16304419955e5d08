"""The dispatcher's claimed-ahead tasks: claimed once, handed out in queue order, and given
back to the shared queue when they wait too long."""

from comfyui_server.core.engine.claims import ClaimedTasks
from comfyui_server.core.memory_store import MemoryTaskStore
from comfyui_server.core.models import Task, TaskEvent


async def queued(store, count):
    return [
        await store.create(
            Task(workflow="blank", status="queued"), [TaskEvent(task_id=0, status="queued")]
        )
        for _ in range(count)
    ]


async def test_refill_claims_in_order_and_reports_the_backlog():
    store = MemoryTaskStore()
    tasks = await queued(store, 5)
    claimed = ClaimedTasks(store, "me")
    assert await claimed.refill(3)
    assert len(claimed) == 3
    assert await claimed.backlog() == 5  # the last claim left tasks in the shared queue
    assert await store.claim("other", 10) == tasks[3:]  # nobody else gets the held three
    assert claimed.pop()[0] == tasks[0]
    second = claimed.pop()
    assert second[0] == tasks[1]
    claimed.put_back([second])  # the scheduler said "not now"
    assert [claimed.pop()[0] for _ in range(len(claimed))] == tasks[1:3]  # it comes first
    assert not await claimed.refill(10)  # the rest belong to "other"
    assert await claimed.backlog() == 0


async def test_tasks_held_too_long_go_back_to_the_shared_queue():
    store = MemoryTaskStore()
    tasks = await queued(store, 2)
    claimed = ClaimedTasks(store, "me")
    await claimed.refill(2)
    await claimed.return_stale(older_than=60)
    assert len(claimed) == 2 and await store.claim("other", 10) == []
    await claimed.return_stale(older_than=-1)
    assert len(claimed) == 0
    assert await store.claim("other", 10) == tasks
    assert not await claimed.refill(10)
    assert await claimed.backlog() == 0


async def test_a_short_claim_lease_shortens_the_hold():
    store = MemoryTaskStore()
    assert ClaimedTasks(store, "me").hold == 10.0  # claims in memory never lapse
    store.claim_lease = 0.4
    assert ClaimedTasks(store, "me").hold == 0.2
