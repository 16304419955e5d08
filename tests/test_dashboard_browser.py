"""The dashboard in real headless Chromium against the real server and emulated ComfyUI:
the fleet goes live, a task submitted from a workflow's form finishes with its thumbnail,
and API keys decide who sees which task."""

from __future__ import annotations

import re
import time

import httpx
from PIL import Image

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails with instructions
    expect = None

ALICE, BOB, ROOT = "alice-secret-000000", "bob-secret-0000000", "root-secret-000000"
KEYS = {"API_KEYS": f"alice:{ALICE},bob:{BOB}", "ADMIN_API_KEYS": f"root:{ROOT}"}


def api_submit(server, secret=None, **params):
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    body = {"service_type": "blank", "params": {"width": 8, "height": 8, **params}}
    response = httpx.post(server.api, json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def loaded(page, selector):
    """Wait until every <img> matching `selector` has decoded (naturalWidth > 0)."""
    page.wait_for_function(
        """sel => {
            const imgs = [...document.querySelectorAll(sel)];
            return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=selector,
    )


def test_the_fleet_page_shows_an_endpoint_going_down(
    comfyui_emulator_factory, dashboard_server, new_page
):
    doomed, healthy = comfyui_emulator_factory(), comfyui_emulator_factory()
    server = dashboard_server([doomed, healthy])
    page = new_page()
    page.goto(server.url + "/ui/fleet")

    def status(emulator):
        return page.locator(f'[data-endpoint="{emulator.address}"] [data-status]')

    expect(status(doomed)).to_have_text("up")
    expect(status(healthy)).to_have_text("up")
    card = page.locator(f'[data-endpoint="{doomed.address}"]')
    expect(card).to_contain_text("blank")  # the workflows it can run
    expect(card).to_contain_text(re.compile(r"Node classes\s*\d+"))

    doomed.kill()
    killed = time.monotonic()
    expect(status(doomed)).to_have_text("down", timeout=10_000)
    assert time.monotonic() - killed < 8
    expect(card).to_contain_text("Last error")
    expect(status(healthy)).to_have_text("up")
    assert page.errors == []


def test_a_task_submitted_from_the_form_completes_with_its_thumbnail(
    comfyui_emulator, dashboard_server, new_page
):
    server = dashboard_server([comfyui_emulator])
    page = new_page()
    page.goto(server.url + "/ui/workflows")
    page.get_by_role("link", name="Try blank").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Try blank")
    page.get_by_label("width").fill("40")
    page.get_by_label("height").fill("24")
    page.get_by_label("color").fill(str(0x3366FF))
    page.get_by_role("button", name="Submit task").click()

    page.wait_for_url(re.compile(r"/ui/tasks/\d+$"))
    task_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("[data-task-status]")).to_have_text("completed")
    loaded(page, "#task-region img.thumbnail")
    size = page.eval_on_selector(
        "#task-region img.thumbnail", "i => [i.naturalWidth, i.naturalHeight]"
    )
    assert size == [40, 24]  # smaller than the bound: kept at its own size
    expect(page.locator(".timeline li")).to_have_count(5)  # accepted ... completed
    expect(page.get_by_role("button", name="Cancel task")).to_be_hidden()

    # the list shows it with the same cached thumbnail
    page.goto(server.url + "/ui/tasks")
    loaded(page, f'tr[data-task="{task_id}"] img.thumbnail')
    expect(page.locator(f'tr[data-task="{task_id}"]')).to_contain_text("completed")
    assert page.errors == []


def test_an_image_param_is_posted_from_a_file_picker(
    comfyui_emulator, dashboard_server, new_page, tmp_path
):
    server = dashboard_server([comfyui_emulator])
    picture = tmp_path / "red.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(picture)
    page = new_page(color_scheme="dark")
    page.goto(server.url + "/ui/workflows/invert")
    page.get_by_label("Image file").set_input_files(str(picture))
    page.get_by_label("width").fill("30")
    page.get_by_label("height").fill("15")
    page.get_by_role("button", name="Submit task").click()
    page.wait_for_url(re.compile(r"/ui/tasks/\d+$"))
    expect(page.locator("[data-task-status]")).to_have_text("completed")
    loaded(page, "#task-region img.thumbnail")
    # the params table summarises the base64 image instead of printing it
    expect(page.locator("table.params")).to_contain_text("image/png")
    expect(page.locator("table.params")).to_contain_text("base64, not shown")
    assert len(page.content()) < 20_000


def test_keys_see_their_own_tasks_and_admins_see_all(comfyui_emulator, dashboard_server, new_page):
    server = dashboard_server([comfyui_emulator], env=KEYS)
    alice_task = api_submit(server, ALICE)
    bob_task = api_submit(server, BOB)

    page = new_page()
    page.goto(server.url + "/ui/tasks")
    page.wait_for_url(re.compile(r"/ui/login\?next=%2Fui%2Ftasks$"))
    page.get_by_label("API key").fill("wrong-wrong-wrong-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    page.get_by_label("API key").fill(ALICE)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/tasks$"))
    expect(page.get_by_role("banner")).to_contain_text("Signed in as alice")
    expect(page.locator(f'tr[data-task="{alice_task["id"]}"]')).to_be_visible()
    expect(page.locator(f'tr[data-task="{bob_task["id"]}"]')).to_have_count(0)
    response = page.goto(f"{server.url}/ui/tasks/{bob_task['id']}")
    assert response.status == 404

    # a task submitted from the form belongs to the signed-in key
    page.goto(server.url + "/ui/workflows/blank")
    page.get_by_role("button", name="Submit task").click()
    page.wait_for_url(re.compile(r"/ui/tasks/\d+$"))
    expect(page.locator("[data-task-status]")).to_have_text("completed")
    formed = int(page.url.rsplit("/", 1)[1])
    record = httpx.get(f"{server.api}/tasks/{formed}", headers={"authorization": f"Bearer {ALICE}"})
    assert record.status_code == 200

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/login"))
    page.goto(server.url + "/ui/fleet")
    page.wait_for_url(re.compile(r"/ui/login\?next="))

    admin = new_page(color_scheme="dark")
    admin.goto(f"{server.url}/ui/tasks/{bob_task['id']}")
    admin.get_by_label("API key").fill(ROOT)
    admin.get_by_role("button", name="Sign in").click()
    admin.wait_for_url(re.compile(rf"/ui/tasks/{bob_task['id']}$"))  # back where it was going
    admin.goto(server.url + "/ui/tasks")
    for task_id in (alice_task["id"], bob_task["id"], formed):
        expect(admin.locator(f'tr[data-task="{task_id}"]')).to_be_visible()
    expect(admin.get_by_role("banner")).to_contain_text("(admin)")


def test_a_failed_task_shows_comfyuis_error_and_node(comfyui_emulator, dashboard_server, new_page):
    server = dashboard_server([comfyui_emulator])
    comfyui_emulator.fail_next()
    task = api_submit(server)
    page = new_page()
    page.goto(f"{server.url}/ui/tasks/{task['id']}")
    expect(page.locator("[data-task-status]")).to_have_text("failed")
    error = page.locator("#task-error")
    expect(error).to_contain_text("error code 4")
    expect(error).to_contain_text("ComfyUI node")


def test_a_queued_task_is_cancelled_from_its_page(
    comfyui_emulator_factory, dashboard_server, new_page
):
    emulator = comfyui_emulator_factory()
    server = dashboard_server([emulator])
    emulator.hang()
    task = api_submit(server)
    page = new_page()
    page.goto(f"{server.url}/ui/tasks/{task['id']}")
    expect(page.locator("[data-task-status]")).to_have_text(re.compile("dispatched|running"))
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("[data-task-status]")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    emulator.hang(False)
