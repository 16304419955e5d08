"""Deliveries outlive the process (a real `comfyui-server serve` killed with SIGKILL
mid-retry), and a slow receiver holds up neither the tasks nor another receiver."""

from __future__ import annotations

import datetime as dt
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from comfyui_server.core.testing.receiver import WebhookReceiver
from comfyui_server.core.testing.server import ServerProcess
from fixtures_app import wait_until

BLANK = {"width": 8, "height": 8, "color": 0x445566}


def test_a_delivery_resumes_after_the_server_is_killed_mid_retry(comfyui_emulator, tmp_path):
    env = {
        "COMFYUI_ENDPOINTS": comfyui_emulator.address,
        "DATA_DIR": str(tmp_path / "data"),
        "URL_ALLOWLIST": "127.0.0.1",
        "COMFYUI_CLEANUP": "off",
        "WEBHOOK_BACKOFF_BASE": "0.2",
        "WEBHOOK_BACKOFF_MAX": "0.4",
        "WEBHOOK_TIMEOUT": "2",
        "WEBHOOK_POLL_INTERVAL": "0.5",
    }
    with WebhookReceiver(statuses=(503,)) as receiver:
        first = ServerProcess(env).start()
        try:
            body = {"service_type": "blank", "params": BLANK, "client_callback_url": receiver.url}
            task = httpx.post(first.api, json=body, timeout=10).json()
            receiver.wait_for(2, timeout=30)
            first.signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL
        finally:
            first.stop()
        refused = len(receiver.deliveries)
        webhook_id = receiver.deliveries[0].headers["webhook-id"]
        receiver.answer(200)
        time.sleep(0.5)
        assert len(receiver.deliveries) == refused  # nobody sends while no server runs

        with ServerProcess(env) as second:

            def delivered() -> dict | None:
                got = httpx.get(f"{second.api}/tasks/{task['id']}").json()
                return got if (got["webhook"] or {}).get("status") == "delivered" else None

            final = wait_until(delivered, timeout=40)
        assert final["status"] == "completed"
        accepted = receiver.deliveries[refused:]
        assert len(accepted) == 1, [d.headers for d in accepted]
        assert {d.headers["webhook-id"] for d in receiver.deliveries} == {webhook_id}
        assert accepted[0].json()["event"] == "task.completed"
        # an attempt cut short by the kill may have reached the receiver unrecorded
        assert final["webhook"]["attempts"] in (refused, refused + 1)
        assert final["webhook"]["last_status"] == 200


def test_a_slow_receiver_does_not_slow_tasks_or_another_receiver(
    comfyui_emulator_factory, server_factory
):
    emulators = [comfyui_emulator_factory() for _ in range(4)]
    server = server_factory(emulators, {"MAX_IN_FLIGHT_PER_ENDPOINT": "4"})
    count, per_host, delay = 200, 4, 2.0

    def all_final() -> list[dict] | None:
        found = httpx.get(f"{server.api}/tasks", params={"limit": 2 * count}).json()
        done = [t for t in found if t["status"] in ("completed", "failed", "cancelled")]
        return found if len(done) == 2 * count else None

    with WebhookReceiver(delay=delay) as slow, WebhookReceiver() as fast:
        started = time.monotonic()

        def submit(n: int) -> None:
            url = slow.url if n % 2 else fast.url
            body = {"service_type": "blank", "params": {**BLANK, "color": n},
                    "client_callback_url": url}  # fmt: skip
            response = httpx.post(server.api, json=body, timeout=30)
            assert response.status_code == 200, response.text

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(submit, range(2 * count)))
        records = wait_until(all_final, timeout=60, interval=0.2)
        slow_when_tasks_ended = len(slow.deliveries)
        fast.wait_for(count, timeout=5)
        fast_done = time.monotonic() - started
        slow_so_far = len(slow.deliveries)

    assert all(r["status"] == "completed" for r in records)
    finished = {r["id"]: dt.datetime.fromisoformat(r["finished_at"]) for r in records}
    # Each fast delivery arrived right after its task ended, though the slow receiver's 200
    # take 200 * 2 s / 4 per host = 100 s and were queued among them all along.
    latency = [d.wall_time - finished[d.json()["id"]].timestamp() for d in fast.deliveries]
    assert max(latency) < 3.0, sorted(latency)[-5:]
    assert fast_done < count * delay / per_host / 2
    assert slow_so_far <= (fast_done / delay + 1) * per_host < count
    assert slow.max_in_flight == per_host
    # every task ended while most of the slow receiver's webhooks were still waiting
    assert slow_when_tasks_ended < count / 2
