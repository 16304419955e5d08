"""Accessibility of every dashboard page, in light and dark colour schemes: axe-core's WCAG
2.1 A/AA and best-practice rules (labels, alt text, landmarks, contrast), plus keyboard
entry and a narrow screen. axe-core is vendored in tests/data/axe (MPL-2.0, tests only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails with instructions
    expect = None

AXE = Path(__file__).parent / "data" / "axe" / "axe.min.js"
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
ROOT = "root-secret-000000"
KEYS = {"ADMIN_API_KEYS": f"root:{ROOT}"}


def violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "rules => axe.run(document, {runOnly: {type: 'tag', values: rules}})", RULES
    )
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["html"][:160] for n in v["nodes"][:3]]}
        for v in result["violations"]
    ]


def check_page(page) -> None:
    """axe finds nothing, and the basics hold even where axe's rules are lenient."""
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => [...document.images].every(i => i.complete)"
    )  # contrast is judged on the final layout
    found = violations(page)
    assert not found, json.dumps(found, indent=2)
    assert page.locator("main").count() == 1
    assert page.locator("h1").count() == 1
    for control in page.locator("input:not([type=hidden]), select, textarea").all():
        assert control.evaluate("c => c.labels.length > 0"), control.evaluate("c => c.outerHTML")
    for image in page.locator("img").all():
        assert image.get_attribute("alt"), image.evaluate("i => i.outerHTML")
    assert page.evaluate("() => document.documentElement.lang") == "en"


@pytest.fixture
def populated(comfyui_emulator, dashboard_server):
    """A server with one completed and one failed task, signed in as admin."""
    server = dashboard_server([comfyui_emulator], env=KEYS)
    auth = {"authorization": f"Bearer {ROOT}"}
    body = {"service_type": "blank", "params": {"width": 300, "height": 200, "color": 0x884422}}
    done = httpx.post(server.api, json=body, headers=auth, params={"wait": 20}).json()
    comfyui_emulator.fail_next()
    failed = httpx.post(server.api, json=body, headers=auth, params={"wait": 20}).json()
    assert (done["status"], failed["status"]) == ("completed", "failed")
    return server, done["id"], failed["id"]


def sign_in(page, server) -> None:
    page.goto(server.url + "/ui/login")
    page.get_by_label("API key").fill(ROOT)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/fleet$"))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe(populated, new_page, scheme):
    server, done, failed = populated
    page = new_page(color_scheme=scheme, bypass_csp=True)  # axe is injected as a script
    page.goto(server.url + "/ui/login")
    check_page(page)
    page.get_by_label("API key").fill("not-a-key-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    check_page(page)  # the error state
    sign_in(page, server)
    assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches") == (
        scheme == "dark"
    )
    for path in (
        "/ui/fleet",
        "/ui/tasks",
        f"/ui/tasks/{done}",
        f"/ui/tasks/{failed}",
        "/ui/tasks?status=failed",
        "/ui/workflows",
        "/ui/workflows/blank",
        "/ui/workflows/invert",
    ):
        page.goto(server.url + path)
        check_page(page)
    # a form re-shown with its errors
    page.goto(server.url + "/ui/workflows/blank")
    page.get_by_label("width").fill("0")
    page.locator("form.stack").evaluate("f => f.noValidate = true")
    page.get_by_role("button", name="Submit task").click()
    expect(page.get_by_role("alert")).to_contain_text("width")
    check_page(page)


def test_keyboard_reaches_the_content_first(populated, new_page):
    server, _, _ = populated
    page = new_page()
    sign_in(page, server)
    page.goto(f"{server.url}/ui/tasks")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "content"
    # the status filter is reachable and operable from the keyboard
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "filter-status":
            break
    else:
        pytest.fail("Tab never reached the status filter")
    page.keyboard.press("ArrowDown")  # opens or moves the select


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_fit_a_narrow_screen(populated, new_page, scheme):
    server, done, _ = populated
    page = new_page(color_scheme=scheme, viewport={"width": 360, "height": 740})
    sign_in(page, server)
    for path in ("/ui/fleet", "/ui/tasks", f"/ui/tasks/{done}", "/ui/workflows/blank"):
        page.goto(server.url + path)
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 360px wide"
