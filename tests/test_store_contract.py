"""The TaskStore contract, held by every store: the in-memory reference and the database
plugin on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import msgspec
import pytest
from comfyui_server.core import DuplicateClientTaskId, MemoryTaskStore, OutputRef, Task, TaskEvent
from comfyui_server.core.models import WebhookDelivery, utcnow
from comfyui_server.core.store import TaskStore


def first_events() -> list[TaskEvent]:
    return [TaskEvent(task_id=0, status="accepted"), TaskEvent(task_id=0, status="queued")]


def new_task(**fields) -> Task:
    fields.setdefault("workflow", "text2img")
    fields.setdefault("status", "queued")
    return Task(**fields)


def replace(task: Task, **fields) -> Task:
    return msgspec.structs.replace(task, **fields)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request, make_db_url, task_store_factory) -> TaskStore:
    if request.param == "memory":
        return MemoryTaskStore()
    return await task_store_factory(make_db_url(request.param))


async def add(store: TaskStore, count: int, **fields) -> list[Task]:
    return [await store.create(new_task(**fields), first_events()) for _ in range(count)]


async def claim_all(store: TaskStore, owner: str, batch: int) -> list[int]:
    """Claim until nothing is left, yielding to the other claimers between rounds."""
    ids: list[int] = []
    while tasks := await store.claim(owner, batch):
        ids.extend(t.id for t in tasks)
        await asyncio.sleep(0)
    return ids


async def test_store_satisfies_the_protocol(store):
    assert isinstance(store, TaskStore)


async def test_create_get_find(store):
    task = new_task(
        params={"prompt": "a cat", "steps": 20, "nested": {"x": [1, 2.5, None]}},
        client_task_id="client-1",
        client_callback_url="http://127.0.0.1:9/hook",
        client="key-a",
        request_hash="abc",
    )
    created = await store.create(task, first_events())
    assert created.id > 0
    assert created == replace(task, id=created.id)
    assert await store.get(created.id) == created
    assert await store.find("client-1") == created
    assert await store.get(created.id + 1000) is None
    assert await store.find("nobody") is None
    second = await store.create(new_task(), first_events())
    assert second.id > created.id
    assert [e.status for e in await store.events(created.id)] == ["accepted", "queued"]
    assert {e.task_id for e in await store.events(created.id)} == {created.id}


async def test_duplicate_client_task_id_raises_with_the_existing_task(store):
    first = await store.create(new_task(client_task_id="same", request_hash="1"), first_events())
    with pytest.raises(DuplicateClientTaskId) as caught:
        await store.create(new_task(client_task_id="same", request_hash="2"), first_events())
    assert caught.value.existing == first
    assert len(await store.events(first.id)) == 2
    assert await store.claim("owner", 10) == [first]


async def test_tasks_without_client_task_id_never_collide(store):
    tasks = await add(store, 3)
    assert len({t.id for t in tasks}) == 3


async def test_save_persists_state_and_appends_events_in_order(store):
    task = await store.create(new_task(), first_events())
    at = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    task = replace(
        task,
        status="dispatched",
        endpoint="127.0.0.1:8188",
        comfyui_task_id="p-1",
        attempts=1,
        dispatched_at=at,
    )
    await store.save(task, TaskEvent(task_id=task.id, status="dispatched", endpoint=task.endpoint))
    task = replace(task, inputs=("comfyui-server/p-1_image.png",))
    await store.save(task)  # a state change with no step
    task = replace(task, status="running", started_at=at + dt.timedelta(seconds=1))
    await store.save(task, TaskEvent(task_id=task.id, status="running", endpoint=task.endpoint))
    task = replace(
        task,
        status="failed",
        error_code=4,
        error="node 3 failed",
        finished_at=at,
    )
    await store.save(task, TaskEvent(task_id=task.id, status="failed", detail="node 3 failed"))
    assert await store.get(task.id) == task
    events = await store.events(task.id)
    assert [e.status for e in events] == ["accepted", "queued", "dispatched", "running", "failed"]
    assert events[2].endpoint == "127.0.0.1:8188"
    assert events[4].detail == "node 3 failed"
    assert await store.events(task.id + 1000) == []


async def test_claim_takes_the_oldest_queued_tasks_up_to_the_limit(store):
    queued = await add(store, 5)
    await store.create(new_task(status="accepted"), [])
    done = await store.create(new_task(status="completed"), [])
    first = await store.claim("a", 2)
    assert [t.id for t in first] == [queued[0].id, queued[1].id]
    assert first == queued[:2]
    rest = await store.claim("b", 10)
    assert [t.id for t in rest] == [t.id for t in queued[2:]]
    assert await store.claim("c", 10) == []
    assert done.id not in {t.id for t in first + rest}


async def test_concurrent_claims_never_hand_a_task_to_two_owners(store):
    tasks = await add(store, 60)
    results = await asyncio.gather(*(claim_all(store, f"owner-{n}", 3) for n in range(4)))
    claimed = [task_id for ids in results for task_id in ids]
    assert sorted(claimed) == [t.id for t in tasks]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_store_instances_never_claim_the_same_task(
    backend, make_db_url, task_store_factory
):
    """Two instances on one database stand for two replicas (two pools, two connections)."""
    url = make_db_url(backend)
    one, two = await task_store_factory(url), await task_store_factory(url)
    tasks = await add(one, 80)
    results = await asyncio.gather(
        claim_all(one, "replica-1", 2),
        claim_all(two, "replica-2", 2),
        claim_all(one, "replica-1b", 5),
        claim_all(two, "replica-2b", 5),
    )
    claimed = [task_id for ids in results for task_id in ids]
    assert sorted(claimed) == [t.id for t in tasks]
    if backend == "postgres":  # SQLite serialises writers: one may drain the queue alone
        assert results[0] + results[2] and results[1] + results[3], "both should win some"


async def test_count_queued_counts_claimed_and_unclaimed_queued_tasks(store):
    assert await store.count_queued() == 0
    await add(store, 3)
    await store.create(new_task(status="accepted"), [])
    (claimed,) = await store.claim("a", 1)
    assert await store.count_queued() == 3
    await store.save(replace(claimed, status="dispatched"))
    assert await store.count_queued() == 2


async def test_release_gives_tasks_back_in_id_order(store):
    tasks = await add(store, 3)
    claimed = await store.claim("a", 2)
    await store.release([claimed[0].id])
    again = await store.claim("b", 10)
    assert [t.id for t in again] == [tasks[0].id, tasks[2].id]
    await store.release([])


async def test_release_after_dispatch_does_not_requeue(store):
    (task,) = await add(store, 1)
    (claimed,) = await store.claim("a", 1)
    await store.save(replace(claimed, status="dispatched"), None)
    await store.release([task.id])
    assert await store.claim("b", 1) == []


async def test_a_requeued_task_can_be_claimed_again_but_a_claimed_one_cannot(store):
    (task,) = await add(store, 1)
    (claimed,) = await store.claim("a", 1)
    await store.save(claimed)  # still queued: the claim holds
    assert await store.claim("b", 1) == []
    dispatched = replace(claimed, status="dispatched", attempts=1)
    await store.save(dispatched, TaskEvent(task_id=task.id, status="dispatched"))
    requeued = replace(dispatched, status="queued")
    await store.save(requeued, TaskEvent(task_id=task.id, status="queued", detail="requeued"))
    assert await store.claim("b", 1) == [requeued]


async def test_unfinished_lists_every_task_not_in_a_final_state(store):
    statuses = ["accepted", "queued", "dispatched", "running", "completed", "failed", "cancelled"]
    tasks = [await store.create(new_task(status=s), []) for s in statuses]
    unfinished = await store.unfinished()
    assert sorted(t.id for t in unfinished) == [t.id for t in tasks[:4]]
    assert sorted(unfinished, key=lambda t: t.id) == tasks[:4]


async def test_outputs_round_trip_as_output_refs(store):
    task = await store.create(new_task(), first_events())
    outputs = (
        OutputRef(
            key="7/out/a.png",
            url="http://x/a.png",
            filename="a.png",
            subfolder="out",
            node_id="9",
            content_type="image/png",
            size=12345,
            storage="s3",
        ),
        OutputRef(
            key="7/b.webp", filename="b.webp", node_id="10", content_type="image/webp", size=1
        ),
    )
    task = replace(task, status="completed", outputs=outputs, inputs=("in/a.png", "in/b.png"))
    await store.save(task, TaskEvent(task_id=task.id, status="completed"))
    got = await store.get(task.id)
    assert got.outputs == outputs
    assert all(isinstance(o, OutputRef) for o in got.outputs)
    assert got.inputs == ("in/a.png", "in/b.png")


async def test_datetimes_come_back_timezone_aware(store):
    plus_two = dt.timezone(dt.timedelta(hours=2))
    created_at = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=plus_two)
    event_at = dt.datetime(2031, 5, 6, 7, 8, 10, tzinfo=dt.UTC)
    task = await store.create(
        new_task(created_at=created_at), [TaskEvent(task_id=0, status="queued", at=event_at)]
    )
    got = await store.get(task.id)
    (event,) = await store.events(task.id)
    for value, expected in ((got.created_at, created_at), (event.at, event_at)):
        assert value.tzinfo is not None
        assert value == expected
    assert got.dispatched_at is None


async def test_list_tasks_filters_newest_first_with_a_cursor(store):
    from comfyui_server.core.store import TaskQuery

    base = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    made = []
    for i in range(7):
        task = await store.create(
            new_task(
                workflow="a" if i % 2 else "b",
                client="k1" if i < 4 else "k2",
                created_at=base + dt.timedelta(minutes=i),
            ),
            first_events(),
        )
        made.append(task)
    await store.save(replace(made[1], status="completed", error_code=0))
    await store.save(replace(made[3], status="failed", error_code=2))

    everything = await store.list_tasks(TaskQuery(limit=100))
    assert [t.id for t in everything] == [t.id for t in reversed(made)]
    page1 = await store.list_tasks(TaskQuery(limit=3))
    page2 = await store.list_tasks(TaskQuery(limit=3, before_id=page1[-1].id))
    assert [t.id for t in page1 + page2] == [t.id for t in reversed(made)][:6]
    assert {t.id for t in await store.list_tasks(TaskQuery(workflow="a"))} == {
        made[1].id,
        made[3].id,
        made[5].id,
    }
    assert [t.id for t in await store.list_tasks(TaskQuery(status="completed"))] == [made[1].id]
    assert [t.id for t in await store.list_tasks(TaskQuery(error_code=2))] == [made[3].id]
    assert {t.id for t in await store.list_tasks(TaskQuery(client="k2"))} == {
        t.id for t in made[4:]
    }
    since = await store.list_tasks(TaskQuery(since=base + dt.timedelta(minutes=5)))
    assert [t.id for t in since] == [made[6].id, made[5].id]


async def test_deadline_and_timings_round_trip(store):
    deadline = dt.datetime(2030, 1, 1, 0, 10, tzinfo=dt.UTC)
    task = await store.create(new_task(deadline=deadline), first_events())
    await store.save(replace(task, status="completed", timings={"queued": 0.5, "execution": 1.25}))
    got = await store.get(task.id)
    assert got.deadline == deadline
    assert got.timings == {"queued": 0.5, "execution": 1.25}


async def test_callback_events_round_trip(store):
    task = await store.create(
        new_task(callback_events=("task.started", "task.progress")), first_events()
    )
    assert (await store.get(task.id)).callback_events == ("task.started", "task.progress")
    plain = await store.create(new_task(), first_events())
    assert (await store.get(plain.id)).callback_events == ()


# ---- the webhook outbox ----------------------------------------------------------------------


def new_delivery(task: Task, **fields) -> WebhookDelivery:
    now = utcnow()
    fields.setdefault("id", f"msg_{uuid.uuid4().hex}")
    fields.setdefault("event", "task.completed")
    fields.setdefault("url", "http://127.0.0.1:9/hook")
    fields.setdefault("body", b'{"id": 1, "event": "task.completed"}')
    fields.setdefault("created_at", now)
    fields.setdefault("next_attempt_at", now)
    fields.setdefault("expires_at", now + dt.timedelta(days=1))
    return WebhookDelivery(task_id=task.id, **fields)


async def test_deliveries_round_trip_and_list_per_task(store):
    task, other = await add(store, 2)
    at = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    first = new_delivery(task, body=b"\x00binary\xff", created_at=at, next_attempt_at=at)
    later = new_delivery(task, event="task.started", created_at=at + dt.timedelta(seconds=1))
    elsewhere = new_delivery(other)
    for delivery in (later, elsewhere, first):
        await store.add_delivery(delivery)
    assert await store.get_delivery(first.id) == first
    assert await store.get_delivery("msg_none") is None
    assert await store.task_deliveries(task.id) == [first, later]
    assert await store.task_deliveries(task.id + 1000) == []
    got = await store.get_delivery(first.id)
    assert got.created_at.tzinfo is not None and got.expires_at.tzinfo is not None
    assert await store.latest_delivery(task.id, ("task.completed", "task.failed")) == first
    assert await store.latest_delivery(task.id, ("task.started",)) == later
    assert await store.latest_delivery(task.id, ("task.cancelled",)) is None
    again = new_delivery(task, created_at=at + dt.timedelta(seconds=2))
    await store.add_delivery(again)
    assert await store.latest_delivery(task.id, ("task.completed",)) == again


async def test_pending_deliveries_are_due_unheld_and_soonest_first(store):
    (task,) = await add(store, 1)
    now = utcnow()
    soon = new_delivery(task, next_attempt_at=now - dt.timedelta(seconds=1))
    sooner = new_delivery(task, next_attempt_at=now - dt.timedelta(seconds=5))
    later = new_delivery(task, next_attempt_at=now + dt.timedelta(hours=1))
    done = new_delivery(task, status="delivered", next_attempt_at=None, finished_at=now)
    for delivery in (soon, sooner, later, done):
        await store.add_delivery(delivery)
    assert await store.pending_deliveries(now, 10) == [sooner, soon]
    assert await store.pending_deliveries(now, 1) == [sooner]
    assert await store.pending_deliveries(now + dt.timedelta(hours=2), 10) == [sooner, soon, later]
    assert await store.claim_delivery(sooner.id, "a", 60) == sooner
    assert await store.pending_deliveries(now, 10) == [soon]


async def test_a_delivery_is_claimed_by_one_owner_at_a_time(store):
    (task,) = await add(store, 1)
    delivery = new_delivery(task)
    await store.add_delivery(delivery)
    results = await asyncio.gather(
        *(store.claim_delivery(delivery.id, f"owner-{n}", 60) for n in range(8))
    )
    assert [r for r in results if r is not None] == [delivery]
    assert await store.claim_delivery("msg_none", "a", 60) is None


async def test_only_due_pending_deliveries_can_be_claimed(store):
    (task,) = await add(store, 1)
    future = new_delivery(task, next_attempt_at=utcnow() + dt.timedelta(hours=1))
    failed = new_delivery(task, status="failed", next_attempt_at=None, finished_at=utcnow())
    for delivery in (future, failed):
        await store.add_delivery(delivery)
    assert await store.claim_delivery(future.id, "a", 60) is None
    assert await store.claim_delivery(failed.id, "a", 60) is None


async def test_an_expired_lease_lets_another_owner_claim(store):
    (task,) = await add(store, 1)
    delivery = new_delivery(task)
    await store.add_delivery(delivery)
    assert await store.claim_delivery(delivery.id, "dead", 0.5) == delivery
    assert await store.claim_delivery(delivery.id, "b", 60) is None
    await asyncio.sleep(0.6)
    assert await store.pending_deliveries(utcnow(), 10) == [delivery]
    assert await store.claim_delivery(delivery.id, "b", 60) == delivery
    # the first owner's late outcome is refused: "b" holds it now
    assert not await store.save_delivery(replace(delivery, attempts=1), "dead")
    assert (await store.get_delivery(delivery.id)).attempts == 0


async def test_save_delivery_records_the_attempt_and_lets_go(store):
    (task,) = await add(store, 1)
    delivery = new_delivery(task)
    await store.add_delivery(delivery)
    assert not await store.save_delivery(replace(delivery, attempts=1), "a")  # not claimed
    claimed = await store.claim_delivery(delivery.id, "a", 60)
    retry_at = utcnow() + dt.timedelta(milliseconds=500)
    retried = replace(
        claimed, attempts=1, last_status=503, last_error="HTTP 503", next_attempt_at=retry_at
    )
    assert await store.save_delivery(retried, "a")
    assert await store.get_delivery(delivery.id) == retried
    assert not await store.save_delivery(retried, "a")  # the claim is gone
    assert await store.claim_delivery(delivery.id, "b", 60) is None  # not due yet
    await asyncio.sleep(0.6)
    assert await store.claim_delivery(delivery.id, "b", 60) == retried
    finished = utcnow()
    done = replace(
        retried,
        status="delivered",
        attempts=2,
        last_status=200,
        last_error=None,
        next_attempt_at=None,
        finished_at=finished,
    )
    assert await store.save_delivery(done, "b")
    assert await store.get_delivery(delivery.id) == done
    assert await store.claim_delivery(delivery.id, "c", 60) is None
    assert await store.pending_deliveries(finished + dt.timedelta(days=2), 10) == []


async def test_release_deliveries_frees_only_that_owners_claims(store):
    (task,) = await add(store, 1)
    mine, theirs = new_delivery(task), new_delivery(task)
    for delivery in (mine, theirs):
        await store.add_delivery(delivery)
    await store.claim_delivery(mine.id, "me", 60)
    await store.claim_delivery(theirs.id, "them", 60)
    await store.release_deliveries("me")
    assert await store.pending_deliveries(utcnow(), 10) == [mine]
    assert await store.claim_delivery(mine.id, "other", 60) == mine


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_store_instances_never_claim_the_same_delivery(
    backend, make_db_url, task_store_factory
):
    url = make_db_url(backend)
    one, two = await task_store_factory(url), await task_store_factory(url)
    (task,) = await add(one, 1)
    deliveries = [new_delivery(task) for _ in range(30)]
    for delivery in deliveries:
        await one.add_delivery(delivery)

    async def claim_each(store: TaskStore, owner: str) -> list[str]:
        won = []
        for delivery in deliveries:
            if await store.claim_delivery(delivery.id, owner, 60):
                won.append(delivery.id)
            await asyncio.sleep(0)
        return won

    results = await asyncio.gather(
        claim_each(one, "r1"), claim_each(two, "r2"), claim_each(one, "r3"), claim_each(two, "r4")
    )
    claimed = [d for won in results for d in won]
    assert sorted(claimed) == sorted(d.id for d in deliveries)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_only_a_dead_replicas_tasks_are_adopted_and_by_one_replica(
    backend, make_db_url, task_store_factory
):
    url = make_db_url(backend)
    a, b = await task_store_factory(url), await task_store_factory(url)
    tasks = await add(a, 4)
    claimed = await a.claim("replica-a", 4)
    for task in claimed[:3]:
        await a.save(replace(task, status="dispatched"))
    for name in ("replica-a", "replica-b", "replica-c"):  # replicas beat before they adopt
        await a.heartbeat(name)
    assert await b.adopt("replica-b", stale_after=60) == []  # a is alive: hands off
    await a.retire("replica-a")
    adopted = await asyncio.gather(
        b.adopt("replica-b", stale_after=60), a.adopt("replica-c", stale_after=60)
    )
    ids = sorted(t.id for found in adopted for t in found)
    assert ids == [t.id for t in tasks[:3]]  # each dispatched task once, the queued one never
    # after a restart a replica takes its own back at once, even while others live
    winner = "replica-b" if adopted[0] else "replica-c"
    again = await b.adopt(winner, stale_after=60, own=True)
    assert sorted(t.id for t in again) == ids


async def test_an_ended_task_stays_ended_unless_forced(store):
    (task,) = await add(store, 1)
    assert await store.save(
        replace(task, status="cancelled"), TaskEvent(task_id=task.id, status="cancelled")
    )
    late = replace(task, status="completed", error_code=0)
    assert not await store.save(late, TaskEvent(task_id=task.id, status="completed"))
    assert (await store.get(task.id)).status == "cancelled"
    assert [e.status for e in await store.events(task.id)] == ["accepted", "queued", "cancelled"]
    assert await store.save(late, force=True)
    assert (await store.get(task.id)).status == "completed"


async def test_an_end_never_announced_is_handed_out_once(store):
    done, announced, running = await add(store, 3)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    await store.save(replace(done, status="completed", finished_at=past))
    await store.save(replace(announced, status="failed", finished_at=past))
    await store.mark_notified(announced.id)
    await store.save(replace(running, status="running"))
    assert [t.id for t in await store.claim_unnotified(10, 100)] == [done.id]
    assert await store.claim_unnotified(10, 100) == []
    fresh = await store.create(new_task(), first_events())
    await store.save(replace(fresh, status="completed", finished_at=dt.datetime.now(dt.UTC)))
    assert await store.claim_unnotified(10, 100) == []  # its finisher may still be announcing


async def test_a_delivery_added_with_an_owner_is_held_by_it(store):
    (task,) = await add(store, 1)
    delivery = new_delivery(task)
    await store.add_delivery(delivery, owner="sender", lease=0.5)
    assert await store.pending_deliveries(utcnow(), 10) == []  # nobody else schedules it
    assert await store.claim_delivery(delivery.id, "other", 60) is None
    assert await store.save_delivery(replace(delivery, attempts=1), "sender")  # no claim needed
    assert await store.claim_delivery(delivery.id, "other", 0.5) == replace(delivery, attempts=1)


async def test_a_holder_renews_its_claim_and_an_unclaimed_add_is_free(store):
    (task,) = await add(store, 1)
    held, free = new_delivery(task), new_delivery(task)
    await store.add_delivery(held, owner="sender", lease=0.5)
    await store.add_delivery(free)
    assert await store.claim_delivery(held.id, "sender", 60) == held  # renewed
    await asyncio.sleep(0.6)
    assert await store.claim_delivery(held.id, "other", 60) is None  # renewal outlived 0.5 s
    assert await store.pending_deliveries(utcnow(), 10) == [free]


# ---- chores ---------------------------------------------------------------------------------


async def test_chores_round_trip_and_list_per_task(store):
    task, other = await add(store, 2)
    data = {"endpoint": "127.0.0.1:8188", "files": [["input", "a b/ü.png"]], "n": 1.5, "x": None}
    first = await store.add_chore("cleanup", task.id, data)
    assert first.id.startswith("chore_") and first.kind == "cleanup"
    assert (first.task_id, first.data, first.attempts, first.last_error) == (task.id, data, 0, None)
    assert first.finished_at is None and first.due_at == first.created_at
    assert first.created_at.tzinfo is not None
    data["n"] = 2  # the chore keeps what was recorded
    assert (await store.get_chore(first.id)).data["n"] == 1.5
    second = await store.add_chore("other", task.id, {})
    elsewhere = await store.add_chore("cleanup", other.id, {"k": [1, 2]})
    free = await store.add_chore("cleanup", None, {})
    assert await store.get_chore(first.id) == first
    assert await store.get_chore(free.id) == free and free.task_id is None
    assert await store.get_chore("chore_none") is None
    assert await store.task_chores(task.id) == [first, second]
    assert await store.task_chores(task.id, "cleanup") == [first]
    assert await store.task_chores(other.id) == [elsewhere]
    assert await store.task_chores(task.id + 1000) == []
    got = await store.get_chore(first.id)
    assert got.created_at.tzinfo is not None and got.due_at.tzinfo is not None


async def test_chores_are_claimed_due_unheld_of_one_kind_soonest_first(store):
    (task,) = await add(store, 1)
    held = await store.add_chore("cleanup", task.id, {"n": 0}, owner="runner", lease=60)
    chores = [await store.add_chore("cleanup", task.id, {"n": n}) for n in range(1, 4)]
    other_kind = await store.add_chore("other", task.id, {})
    claimed = await store.claim_chores("cleanup", "a", 60, 2)
    assert claimed == chores[:2]  # oldest due first, the held one not at all
    assert await store.claim_chores("cleanup", "b", 60, 10) == chores[2:]
    assert await store.claim_chores("cleanup", "c", 60, 10) == []
    assert await store.claim_chores("other", "c", 60, 10) == [other_kind]
    assert held not in claimed


async def test_concurrent_chore_claims_hand_each_chore_to_one_owner(store):
    (task,) = await add(store, 1)
    chores = [await store.add_chore("cleanup", task.id, {"n": n}) for n in range(20)]
    results = await asyncio.gather(
        *(claim_chores_until_empty(store, f"owner-{n}") for n in range(6))
    )
    claimed = [c for won in results for c in won]
    assert sorted(claimed) == sorted(c.id for c in chores)  # each once, none left over


async def claim_chores_until_empty(store: TaskStore, owner: str) -> list[str]:
    """Claim 3 at a time until nothing is left, yielding to the other claimers between."""
    won = []
    while found := await store.claim_chores("cleanup", owner, 60, 3):
        won.extend(c.id for c in found)
        await asyncio.sleep(0)
    return won


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_store_instances_never_claim_the_same_chore(
    backend, make_db_url, task_store_factory
):
    url = make_db_url(backend)
    one, two = await task_store_factory(url), await task_store_factory(url)
    (task,) = await add(one, 1)
    chores = [await one.add_chore("cleanup", task.id, {"n": n}) for n in range(40)]
    results = await asyncio.gather(
        claim_chores_until_empty(one, "r1"),
        claim_chores_until_empty(two, "r2"),
        claim_chores_until_empty(one, "r3"),
        claim_chores_until_empty(two, "r4"),
    )
    claimed = [c for won in results for c in won]
    assert sorted(claimed) == sorted(c.id for c in chores)


async def test_only_the_holder_finishes_a_chore_and_it_stays_finished(store):
    (task,) = await add(store, 1)
    chore = await store.add_chore("cleanup", task.id, {}, owner="runner", lease=60)
    assert not await store.finish_chore(chore.id, "someone-else")
    assert not await store.finish_chore("chore_none", "runner")
    assert await store.finish_chore(chore.id, "runner")
    done = await store.get_chore(chore.id)
    assert done.finished_at is not None and done.attempts == 1 and done.last_error is None
    assert not await store.finish_chore(chore.id, "runner")  # let go already
    assert await store.claim_chores("cleanup", "b", 60, 10) == []
    given_up = await store.add_chore("cleanup", task.id, {}, owner="runner", lease=60)
    assert await store.finish_chore(given_up.id, "runner", error="gave up: 24 h")
    assert (await store.get_chore(given_up.id)).last_error == "gave up: 24 h"
    await store.release_chores("runner")  # a finished chore stays finished
    assert await store.claim_chores("cleanup", "b", 60, 10) == []


async def test_a_retried_chore_is_let_go_and_due_later(store):
    (task,) = await add(store, 1)
    chore = await store.add_chore("cleanup", task.id, {"files": ["a", "b"]}, owner="a", lease=60)
    due = utcnow() + dt.timedelta(milliseconds=500)
    assert not await store.retry_chore(chore.id, "b", due, "not held")
    assert await store.retry_chore(chore.id, "a", due, "endpoint down", data={"files": ["b"]})
    retried = await store.get_chore(chore.id)
    assert (retried.attempts, retried.last_error, retried.data) == (
        1,
        "endpoint down",
        {"files": ["b"]},
    )
    assert retried.due_at == due and retried.finished_at is None
    assert not await store.retry_chore(chore.id, "a", due, "again")  # let go already
    assert await store.claim_chores("cleanup", "b", 60, 10) == []  # not due yet
    await asyncio.sleep(0.6)
    assert await store.claim_chores("cleanup", "b", 60, 10) == [retried]
    assert await store.retry_chore(chore.id, "b", utcnow(), "still down")  # data kept
    again = await store.get_chore(chore.id)
    assert (again.attempts, again.last_error, again.data) == (2, "still down", {"files": ["b"]})
    assert [c.id for c in await store.claim_chores("cleanup", "c", 60, 10)] == [chore.id]
    assert await store.finish_chore(chore.id, "c")
    assert (await store.get_chore(chore.id)).attempts == 3


async def test_a_dead_holders_chore_is_claimed_once_its_lease_runs_out(store):
    (task,) = await add(store, 1)
    chore = await store.add_chore("cleanup", task.id, {}, owner="dead", lease=0.5)
    assert await store.claim_chores("cleanup", "b", 60, 10) == []
    await asyncio.sleep(0.6)
    assert [c.id for c in await store.claim_chores("cleanup", "b", 60, 10)] == [chore.id]
    assert await store.claim_chores("cleanup", "c", 60, 10) == []  # b holds it now
    # the first holder's late outcome is refused
    assert not await store.finish_chore(chore.id, "dead")
    assert not await store.retry_chore(chore.id, "dead", utcnow(), "late")
    assert (await store.get_chore(chore.id)).attempts == 0
    assert await store.finish_chore(chore.id, "b")


async def test_release_chores_frees_only_that_owners_chores(store):
    (task,) = await add(store, 1)
    mine = await store.add_chore("cleanup", task.id, {}, owner="me", lease=60)
    theirs = await store.add_chore("cleanup", task.id, {}, owner="them", lease=60)
    await store.release_chores("me")
    assert [c.id for c in await store.claim_chores("cleanup", "other", 60, 10)] == [mine.id]
    assert not await store.finish_chore(mine.id, "me")
    assert await store.finish_chore(theirs.id, "them")


async def test_a_task_created_with_an_owner_is_claimed_by_it(store):
    (before,) = await add(store, 1)
    mine = await store.create(new_task(), first_events(), owner="me")
    (after,) = await add(store, 1)
    assert mine == await store.get(mine.id)
    assert [t.id for t in await store.claim("other", 10)] == [before.id, after.id]
    await store.release([mine.id])  # given back (the scheduler said "not now" for too long)
    assert [t.id for t in await store.claim("other", 10)] == [mine.id]
    assert await store.count_queued() == 3  # claimed tasks still wait in the queue


async def test_release_leaves_a_task_that_was_dispatched_meanwhile_with_its_owner(store):
    await add(store, 2)
    first, second = await store.claim("replica-a", 2)
    dispatched = replace(first, status="dispatched", endpoint="e:1", comfyui_task_id="p1")
    assert await store.save(dispatched)
    for name in ("replica-a", "replica-b"):
        await store.heartbeat(name)
    await store.release([first.id, second.id])  # a late "give it back" for both
    assert await store.adopt("replica-b", stale_after=60) == []  # still replica-a's
    assert [t.id for t in await store.claim("replica-b", 10)] == [second.id]
