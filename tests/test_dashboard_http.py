"""The dashboard over plain HTTP against the real server: who may see what, the sign-in
cookie, refused cross-site posts, paging, and thumbnails made once from stored outputs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

ALICE, BOB, ROOT = "alice-secret-000000", "bob-secret-0000000", "root-secret-000000"
KEYS = {"API_KEYS": f"alice:{ALICE},bob:{BOB}", "ADMIN_API_KEYS": f"root:{ROOT}"}
SECRET = "dashboard-secret-0123456789"


def submit(server, secret=None, wait=20, **params):
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    body = {"service_type": "blank", "params": {"width": 8, "height": 8, **params}}
    response = httpx.post(server.api, json=body, headers=headers, params={"wait": wait})
    assert response.status_code == 200, response.text
    return response.json()


def signed_in(server, secret) -> httpx.Client:
    client = httpx.Client(base_url=server.url)
    response = client.post("/ui/login", data={"key": secret, "next": "/ui/tasks"})
    assert response.status_code == 303 and response.headers["location"] == "/ui/tasks"
    return client


def task_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-task="(\d+)"', html)]


@pytest.fixture
def keyed(comfyui_emulator, dashboard_server):
    return dashboard_server([comfyui_emulator], env={**KEYS, "DASHBOARD_SECRET": SECRET})


def test_without_a_session_pages_redirect_and_fragments_answer_401(keyed):
    task = submit(keyed, ALICE)
    client = httpx.Client(base_url=keyed.url)
    for path in (
        "/ui/fleet",
        "/ui/tasks?status=completed",
        f"/ui/tasks/{task['id']}",
        "/ui/workflows",
        "/ui/workflows/blank",
    ):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=%2Fui%2F"), path
    for path in ("/ui/fleet/live", f"/ui/tasks/{task['id']}/live", f"/ui/thumbs/{task['id']}/0"):
        assert client.get(path).status_code == 401, path
    assert client.post(f"/ui/tasks/{task['id']}/cancel").status_code == 401
    assert client.post("/ui/workflows/blank", data={"width": "8"}).status_code == 401
    assert client.get("/ui/login").status_code == 200
    assert client.get("/ui/static/dashboard.css").status_code == 200  # nothing secret
    client.cookies.set("comfyui_dashboard", "forged.123.abc", path="/ui")
    assert client.get("/ui/fleet").status_code == 303


def test_the_session_cookie_is_signed_httponly_and_lax(keyed):
    client = httpx.Client(base_url=keyed.url)
    bad = client.post("/ui/login", data={"key": "nope-nope-nope-nope"})
    assert bad.status_code == 401 and "not valid" in bad.text
    response = client.post("/ui/login", data={"key": BOB, "next": "//evil.test/x"})
    assert response.headers["location"] == "/ui/fleet"  # no open redirect
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/ui" in cookie
    assert ROOT not in response.headers["set-cookie"] and BOB not in response.headers["set-cookie"]
    assert client.get("/ui/fleet").status_code == 200
    assert client.post("/ui/logout").status_code == 303
    assert client.get("/ui/fleet").status_code == 303


def test_replicas_sharing_dashboard_secret_accept_each_others_sessions(
    comfyui_emulator, dashboard_server, keyed
):
    other = dashboard_server([comfyui_emulator], env={**KEYS, "DASHBOARD_SECRET": SECRET})
    stranger = dashboard_server([comfyui_emulator], env=KEYS)  # a random secret
    cookie = signed_in(keyed, ALICE).cookies.get("comfyui_dashboard")
    for server, status in ((other, 200), (stranger, 303)):
        client = httpx.Client(base_url=server.url, cookies={"comfyui_dashboard": cookie})
        assert client.get("/ui/tasks").status_code == status


def test_a_key_sees_its_own_tasks_thumbnails_and_cancels_only(keyed):
    alice_task, bob_task = submit(keyed, ALICE), submit(keyed, BOB)
    alice, root = signed_in(keyed, ALICE), signed_in(keyed, ROOT)
    assert task_ids(alice.get("/ui/tasks").text) == [alice_task["id"]]
    assert task_ids(root.get("/ui/tasks").text) == [bob_task["id"], alice_task["id"]]
    for path in (
        f"/ui/tasks/{bob_task['id']}",
        f"/ui/tasks/{bob_task['id']}/live",
        f"/ui/thumbs/{bob_task['id']}/0",
    ):
        assert alice.get(path).status_code == 404, path
        assert root.get(path).status_code == 200, path
    assert alice.post(f"/ui/tasks/{bob_task['id']}/cancel").status_code == 404


def test_cross_site_posts_are_refused(comfyui_emulator, dashboard_server):
    server = dashboard_server([comfyui_emulator])  # open: no key, still no CSRF
    client = httpx.Client(base_url=server.url)
    for headers in (
        {"origin": "http://evil.test"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "null"},
    ):
        response = client.post("/ui/workflows/blank", data={"width": "8"}, headers=headers)
        assert response.status_code == 403, headers
    same = client.post(
        "/ui/workflows/blank",
        data={"width": "8"},
        headers={"origin": server.url, "sec-fetch-site": "same-origin"},
    )
    assert same.status_code == 303


def test_open_api_means_open_pages(comfyui_emulator, dashboard_server):
    server = dashboard_server([comfyui_emulator])
    client = httpx.Client(base_url=server.url)
    assert client.get("/ui/").headers["location"] == "/ui/fleet"
    assert client.get("/ui/fleet").status_code == 200
    assert "open to anyone" in client.get("/ui/login").text
    assert "Sign out" not in client.get("/ui/fleet").text


def test_the_task_list_pages_and_filters(comfyui_emulator, dashboard_server):
    server = dashboard_server([comfyui_emulator])
    comfyui_emulator.fail_next()
    failed = submit(server)
    assert failed["status"] == "failed"
    ids = [submit(server, wait=0)["id"] for _ in range(27)]
    newest_first = [*reversed(ids), failed["id"]]
    client = httpx.Client(base_url=server.url)
    first = client.get("/ui/tasks").text
    assert task_ids(first) == newest_first[:25]
    older = re.search(r'href="(/ui/tasks\?before=\d+)" rel="next"', first)
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert task_ids(second) == newest_first[25:]
    assert 'rel="next"' not in second and ">Newest</a>" in second
    assert task_ids(client.get("/ui/tasks?status=failed").text) == [failed["id"]]
    assert task_ids(client.get("/ui/tasks?workflow=invert").text) == []
    assert client.get("/ui/tasks?status=bogus").status_code == 200  # ignored, not a 500


def test_a_thumbnail_is_made_once_bounded_and_kept(comfyui_emulator, dashboard_server):
    server = dashboard_server([comfyui_emulator])
    task = submit(server, width=600, height=300)
    client = httpx.Client(base_url=server.url)
    response = client.get(f"/ui/thumbs/{task['id']}/0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    cached = list((Path(server.settings.data_dir) / "thumbnails").rglob("*.webp"))
    assert len(cached) == 1
    with Image.open(cached[0]) as thumb:
        assert thumb.size == (256, 128)
    assert len(response.content) < task["outputs"][0]["size"]
    # the original is not fetched again: the cached file serves even once it is gone
    shutil.rmtree(Path(server.settings.data_dir) / "outputs")
    assert client.get(f"/ui/thumbs/{task['id']}/0").content == response.content
    assert client.get(f"/ui/thumbs/{task['id']}/5").status_code == 404


def test_the_task_page_summarises_image_params(comfyui_emulator, dashboard_server):
    server = dashboard_server([comfyui_emulator])
    picture = Path(server.settings.data_dir) / "in.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 200), (1, 2, 3)).save(picture)
    import base64

    encoded = base64.b64encode(picture.read_bytes()).decode()
    body = {"service_type": "invert", "params": {"image": encoded, "width": 10, "height": 10}}
    task = httpx.post(server.api, json=body, params={"wait": 20}).json()
    page = httpx.get(f"{server.url}/ui/tasks/{task['id']}").text
    assert encoded[:40] not in page
    assert "(base64, not shown)" in page


def test_a_short_dashboard_secret_stops_start_up(tmp_path):
    from comfyui_server.core import StartupError
    from comfyui_server.core.config import get_settings
    from comfyui_server.plugins import dashboard
    from litestar.datastructures import State

    settings = get_settings({"DASHBOARD_SECRET": "short", "DATA_DIR": str(tmp_path)})
    app = type("App", (), {"state": State({"engine": None, "pm": None, "keyring": None})})()
    with pytest.raises(StartupError, match="DASHBOARD_SECRET"):
        dashboard.startup(app=app, settings=settings)
