"""API keys, ownership, rate limits, backpressure and body size."""

import httpx
import pytest

ALICE, BOB, ROOT = "alice-secret-000000", "bob-secret-0000000", "root-secret-000000"
KEYS = {"API_KEYS": f"alice:{ALICE},bob:{BOB}", "ADMIN_API_KEYS": f"root:{ROOT}"}
BODY = {"service_type": "blank", "params": {"width": 8, "height": 8}}


def auth(secret):
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture
def server(comfyui_emulator, server_factory):
    return server_factory([comfyui_emulator], env=KEYS, wait_up=False)


def test_missing_or_wrong_key_is_401(server):
    for headers in ({}, auth("nope-nope-nope-nope"), {"authorization": "Basic abc"}):
        response = httpx.post(server.api, json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.json()["extra"][0]["key"] == "authorization"
    assert httpx.get(server.url + "/health").status_code == 200  # probes stay open


def test_a_task_is_visible_to_its_key_and_admins_only(server):
    task = httpx.post(server.api, json={**BODY, "client_task_id": "a1"}, headers=auth(ALICE)).json()
    url = f"{server.api}/tasks/{task['id']}"
    assert httpx.get(url, headers=auth(ALICE)).status_code == 200
    assert httpx.get(url, headers=auth(BOB)).status_code == 404
    assert httpx.get(url, headers=auth(ROOT)).status_code == 200
    assert httpx.delete(url, headers=auth(BOB)).status_code == 404
    found = httpx.get(server.api + "/tasks", params={"client_task_id": "a1"}, headers=auth(BOB))
    assert found.json() == []


def test_rate_limit_gives_429_with_retry_after(comfyui_emulator, server_factory):
    server = server_factory(
        [comfyui_emulator], env={**KEYS, "RATE_LIMIT_PER_MINUTE": "3"}, wait_up=False
    )
    codes = [
        httpx.get(server.api + "/workflows", headers=auth(ALICE)).status_code for _ in range(5)
    ]
    assert codes[:3] == [200, 200, 200]
    last = httpx.get(server.api + "/workflows", headers=auth(ALICE))
    assert last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1
    # another key has its own bucket
    assert httpx.get(server.api + "/workflows", headers=auth(BOB)).status_code == 200


def test_queue_depth_cap_gives_503(comfyui_emulator, server_factory):
    comfyui_emulator.hang()
    server = server_factory(
        [comfyui_emulator], env={"MAX_QUEUE_DEPTH": "2", "MAX_IN_FLIGHT_PER_ENDPOINT": "1"}
    )
    statuses = [
        httpx.post(server.api, json={**BODY, "params": {"color": i}}).status_code for i in range(5)
    ]
    assert statuses.count(200) >= 3 and statuses[-1] == 503
    refused = httpx.post(server.api, json=BODY)
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["extra"][0]["key"] == "queue"


def test_oversized_body_is_413(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"MAX_BODY_BYTES": "2048"}, wait_up=False)
    response = httpx.post(server.api, json={**BODY, "params": {"x": "y" * 5000}})
    assert response.status_code == 413
    assert response.json()["status_code"] == 413


def test_no_guard_runs_in_a_worker_thread(tmp_path):
    """Litestar runs a plain-function guard in a thread pool: a thread hop per request, and
    rate buckets updated from two threads at once. Every guard of every route (plugins'
    included) is a coroutine function."""
    import inspect

    from comfyui_server.core.app import create_app
    from comfyui_server.core.config import get_settings

    app = create_app(get_settings({"DATA_DIR": str(tmp_path)}, env_file=None))
    guards = {
        guard
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        for guard in handler.resolve_guards()
    }
    assert guards, "the API has guards"
    assert [g for g in guards if not inspect.iscoroutinefunction(g)] == []
