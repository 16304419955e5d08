"""Webhook delivery through the real server: retries with one webhook-id, the retry window,
signatures, final refusals, Retry-After, opt-in events, the record's webhook state and the
redeliver route."""

from __future__ import annotations

import itertools
import sqlite3
import time

import httpx
import pytest
from comfyui_server.core.testing.receiver import WebhookReceiver
from fixtures_app import wait_final, wait_until
from test_metrics import completed, scrape
from test_webhook_policy import SECRET, verify

BLANK = {"width": 8, "height": 8, "color": 0x123456}
FAST_RETRIES = {"WEBHOOK_BACKOFF_BASE": "0.05", "WEBHOOK_BACKOFF_MAX": "0.2"}


def submit(server, headers=None, **extra) -> dict:
    body = {"service_type": "blank", "params": BLANK, **extra}
    response = httpx.post(server.api, json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def record(server, task_id: int, headers=None) -> dict:
    return httpx.get(f"{server.api}/tasks/{task_id}", headers=headers).json()


def webhook_settled(server, task_id: int, headers=None) -> dict | None:
    """The record once its webhook has ended (delivered or failed)."""
    got = record(server, task_id, headers)
    state = got.get("webhook")
    return got if state and state["status"] != "pending" else None


@pytest.fixture
def receiver_factory():
    receivers: list[WebhookReceiver] = []

    def make(*statuses: int, **options) -> WebhookReceiver:
        receiver = WebhookReceiver(statuses=statuses or (200,), **options).start()
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.stop()


@pytest.mark.parametrize("store", ["sqlite", "postgres", "memory"])
def test_three_503s_then_200_is_one_delivery_of_four_attempts_with_one_id(
    store, comfyui_emulator, server_factory, receiver_factory, make_db_url
):
    env = dict(FAST_RETRIES)
    if store == "postgres":
        env["DATABASE_URL"] = make_db_url("postgres")
    elif store == "memory":
        env["DISABLED_PLUGINS"] = "database"
    server = server_factory([comfyui_emulator], env)
    receiver = receiver_factory(503, 503, 503, 200)
    task = submit(server, client_callback_url=receiver.url)

    attempts = receiver.wait_for(4)
    final = wait_until(lambda: webhook_settled(server, task["id"]))
    assert final["status"] == "completed"
    assert final["webhook"] == {
        "status": "delivered", "attempts": 4, "last_status": 200, "last_error": None,
        "next_attempt_at": None,
    }  # fmt: skip
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert attempts[0].headers["webhook-id"].startswith("msg_")
    assert len({a.body for a in attempts}) == 1  # every attempt sends the same bytes
    body = attempts[0].json()
    assert body["event"] == "task.completed" and body["id"] == task["id"]
    assert body["webhook"] is None
    assert "webhook-signature" not in attempts[0].headers  # no WEBHOOK_SECRET
    time.sleep(0.5)
    assert len(receiver.deliveries) == 4  # nothing after the accepted one

    (delivery,) = httpx.get(f"{server.api}/tasks/{task['id']}/webhooks").json()
    assert delivery["id"] == attempts[0].headers["webhook-id"]
    assert (delivery["event"], delivery["status"], delivery["attempts"]) == (
        "task.completed",
        "delivered",
        4,
    )


def test_a_receiver_failing_forever_ends_failed_after_the_window_and_the_task_stays_completed(
    comfyui_emulator, server_factory, receiver_factory
):
    server = server_factory([comfyui_emulator], {**FAST_RETRIES, "WEBHOOK_RETRY_WINDOW": "1"})
    receiver = receiver_factory(500)
    task = submit(server, client_callback_url=receiver.url)
    started = time.monotonic()
    final = wait_until(lambda: webhook_settled(server, task["id"]), timeout=20)
    assert final["status"] == "completed" and final["error_code"] == 0
    webhook = final["webhook"]
    assert webhook["status"] == "failed"
    assert webhook["attempts"] >= 4 and webhook["last_status"] == 500
    assert "retry window" in webhook["last_error"]
    assert time.monotonic() - started < 10
    count = len(receiver.deliveries)
    assert count == webhook["attempts"]
    time.sleep(0.6)
    assert len(receiver.deliveries) == count


def test_signed_deliveries_verify_independently(comfyui_emulator, server_factory, receiver_factory):
    server = server_factory([comfyui_emulator], {**FAST_RETRIES, "WEBHOOK_SECRET": SECRET})
    receiver = receiver_factory(503, 200)
    submit(server, client_callback_url=receiver.url)
    first, second = receiver.wait_for(2)
    for got in (first, second):
        assert verify(SECRET, got.headers, got.body)
        assert not verify(SECRET, got.headers, got.body.replace(b'"completed"', b'"failed"'))
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_a_client_error_ends_the_delivery_after_one_attempt(
    comfyui_emulator, server_factory, receiver_factory
):
    server = server_factory([comfyui_emulator], FAST_RETRIES)
    receiver = receiver_factory(410)
    task = submit(server, client_callback_url=receiver.url)
    final = wait_until(lambda: webhook_settled(server, task["id"]))
    assert final["webhook"]["status"] == "failed"
    assert final["webhook"]["attempts"] == 1
    assert final["webhook"]["last_error"] == "HTTP 410"
    time.sleep(0.5)
    assert len(receiver.deliveries) == 1


def test_retry_after_is_honoured(comfyui_emulator, server_factory, receiver_factory):
    server = server_factory([comfyui_emulator], FAST_RETRIES)
    receiver = receiver_factory(429, 200, headers={"retry-after": "1"})
    submit(server, client_callback_url=receiver.url)
    first, second = receiver.wait_for(2)
    assert second.received_at - first.received_at >= 0.9


def test_unknown_callback_events_are_refused_naming_the_field(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    for value, status in ((["task.started", "task.exploded"], 422), ("task.started", 400)):
        response = httpx.post(
            server.api,
            json={"service_type": "blank", "params": BLANK, "callback_events": value},
        )
        assert response.status_code == status, response.text
        assert "callback_events" in [e["key"] for e in response.json()["extra"]]
    assert "task.exploded" in response.json()["detail"] or status == 400


def test_started_and_throttled_progress_are_sent_only_when_asked_for(
    comfyui_emulator_factory, server_factory, receiver_factory
):
    emulator = comfyui_emulator_factory(node_time=0.3)
    server = server_factory([emulator], {"WEBHOOK_PROGRESS_INTERVAL": "30"})
    asked, plain = receiver_factory(), receiver_factory()
    task = submit(
        server, client_callback_url=asked.url, callback_events=["task.progress", "task.started"]
    )
    other = submit(server, client_callback_url=plain.url)
    wait_final(server.api, task["id"])
    wait_final(server.api, other["id"])
    wait_until(lambda: any(d.json()["event"] == "task.completed" for d in asked.deliveries))
    time.sleep(0.3)
    events = [d.json()["event"] for d in asked.deliveries]
    assert sorted(events) == ["task.completed", "task.progress", "task.started"], events
    progress = next(d.json() for d in asked.deliveries if d.json()["event"] == "task.progress")
    assert progress["id"] == task["id"] and set(progress["progress"]) == {"node", "value", "max"}
    started = next(d.json() for d in asked.deliveries if d.json()["event"] == "task.started")
    assert started["status"] == "running"
    assert len({d.headers["webhook-id"] for d in asked.deliveries}) == 3
    plain.wait_for(1)
    assert [d.json()["event"] for d in plain.deliveries] == ["task.completed"]
    # the record's webhook state is the final event's delivery, not task.started's
    assert record(server, task["id"])["webhook"]["status"] == "delivered"


def test_progress_events_are_throttled_per_task(
    comfyui_emulator_factory, server_factory, receiver_factory
):
    emulator = comfyui_emulator_factory(node_time=0.4)
    server = server_factory([emulator], {"WEBHOOK_PROGRESS_INTERVAL": "0.25"})
    receiver = receiver_factory()
    task = submit(
        server, client_callback_url=receiver.url, params={**BLANK, "batch_size": 3},
        callback_events=["task.progress"],
    )  # fmt: skip
    final = wait_final(server.api, task["id"])
    receiver.wait_for(2)
    time.sleep(0.3)
    times = [d.received_at for d in receiver.deliveries if d.json()["event"] == "task.progress"]
    assert times, "no progress event arrived"
    running = httpx.get(f"{server.api}/tasks/{task['id']}").json()["timings"].get("execution", 1.0)
    assert len(times) <= running / 0.25 + 2
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(times))
    assert final["status"] == "completed"


def test_redeliver_sends_the_final_event_again_with_a_new_id(
    comfyui_emulator, server_factory, receiver_factory
):
    server = server_factory([comfyui_emulator], FAST_RETRIES)
    receiver = receiver_factory(410, 200)
    task = submit(server, client_callback_url=receiver.url)
    failed = wait_until(lambda: webhook_settled(server, task["id"]))
    assert failed["webhook"]["status"] == "failed"

    response = httpx.post(f"{server.api}/tasks/{task['id']}/redeliver")
    assert response.status_code == 202, response.text
    assert response.json()["webhook"]["status"] in ("pending", "delivered")
    first, again = receiver.wait_for(2)
    assert again.json()["event"] == "task.completed"
    assert again.headers["webhook-id"] != first.headers["webhook-id"]
    final = wait_until(lambda: webhook_settled(server, task["id"]))
    assert final["webhook"] == {
        "status": "delivered", "attempts": 1, "last_status": 200, "last_error": None,
        "next_attempt_at": None,
    }  # fmt: skip
    assert len(httpx.get(f"{server.api}/tasks/{task['id']}/webhooks").json()) == 2

    plain = submit(server)
    wait_final(server.api, plain["id"])
    assert record(server, plain["id"])["webhook"] is None
    refused = httpx.post(f"{server.api}/tasks/{plain['id']}/redeliver")
    assert refused.status_code == 409
    assert refused.json()["extra"][0]["key"] == "client_callback_url"
    missing = httpx.post(f"{server.api}/tasks/999999/redeliver")
    assert missing.status_code == 404


def test_redeliver_needs_the_tasks_own_key(comfyui_emulator, server_factory, receiver_factory):
    alice, bob = "alice-secret-0123456789", "bob-secret-0123456789ab"
    env = {"API_KEYS": f"alice:{alice},bob:{bob}"}
    server = server_factory([comfyui_emulator], env, wait_up=False)
    receiver = receiver_factory()
    as_alice = {"authorization": f"Bearer {alice}"}
    task = submit(server, headers=as_alice, client_callback_url=receiver.url)
    wait_until(lambda: webhook_settled(server, task["id"], as_alice))
    url = f"{server.api}/tasks/{task['id']}/redeliver"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"authorization": f"Bearer {bob}"}).status_code == 404
    assert httpx.post(url, headers=as_alice).status_code == 202
    receiver.wait_for(2)


def test_a_delivery_the_database_refused_is_sent_when_the_end_is_announced_again(
    comfyui_emulator, server_factory, receiver_factory, tmp_path, caplog
):
    """The webhook plugin could not record the delivery (the real SQLite file refuses the
    insert, through a trigger): the end is not marked announced, so the replica loop
    announces it again after REPLICA_TIMEOUT and the client still hears of it, once."""
    receiver = receiver_factory()
    server = server_factory([comfyui_emulator], env={"REPLICA_TIMEOUT": "2"})
    counted_before = completed(scrape(server))
    database = sqlite3.connect(tmp_path / "data0" / "comfyui-server.sqlite3")
    database.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON comfyui_webhook_delivery "
        "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"
    )
    database.commit()
    try:
        task = submit(server, client_callback_url=receiver.url)
        assert wait_final(server.api, task["id"])["status"] == "completed"
        wait_until(lambda: "its end will be announced again" in caplog.text)
        assert receiver.deliveries == []
    finally:
        database.execute("DROP TRIGGER refuse")
        database.commit()
        database.close()
    (delivery,) = receiver.wait_for(1, timeout=15)
    body = delivery.json()
    assert (body["id"], body["event"], body["status"]) == (
        task["id"],
        "task.completed",
        "completed",
    )
    time.sleep(1.5)  # another turn of the replica loop announces nothing more
    assert len(receiver.deliveries) == 1
    assert "given up" not in caplog.text
    # the replay ran on_result again in the same process: the metrics count the task once
    assert completed(scrape(server)) - counted_before == 1
