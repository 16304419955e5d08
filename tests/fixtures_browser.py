"""Real headless Chromium for the dashboard's tests, driven by Playwright.

One browser per test session (launching costs about a second); each test gets fresh
contexts (cookies, colour scheme) that are closed after it. The browser is Debian's
`chromium` package at /usr/bin/chromium (CI installs it; Playwright's own download is
never used). When it is missing, the browser tests fail and say how to install it.

Playwright's sync API runs its event loop in a greenlet of the main thread, so between two
browser calls that thread looks as if it were inside a running loop, and pytest-asyncio
could not run any async test after the first browser test. The hook wrappers below hide
that loop while a test that does not use the browser runs, and put it back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
"""Longest wait for any one browser condition."""


class _Playwright:
    loop: asyncio.AbstractEventLoop | None = None
    """Playwright's loop while the session's browser is open."""


@contextlib.contextmanager
def _without_playwright_loop(item: pytest.Item) -> Iterator[None]:
    loop = _Playwright.loop
    if loop is None or "browser" in getattr(item, "fixturenames", ()):
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        # the browser fixture may have closed during this teardown (last test of the session)
        asyncio._set_running_loop(_Playwright.loop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    with _without_playwright_loop(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    with _without_playwright_loop(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    with _without_playwright_loop(item):
        return (yield)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """The session's Chromium."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: the dashboard's browser tests need it. "
            "Install it with `apt-get install -y chromium` (or set CHROMIUM_PATH).",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `pip install -e '.[test]'` (or `pip install "
            "playwright`; never `playwright install`, we use the system Chromium).",
            pytrace=False,
        )
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    except Exception as exc:
        playwright.stop()
        pytest.fail(f"cannot start Chromium at {CHROMIUM}: {exc}", pytrace=False)
    _Playwright.loop = asyncio._get_running_loop()
    yield browser
    asyncio._set_running_loop(_Playwright.loop)  # a test without the browser may have hidden it
    try:
        browser.close()
        playwright.stop()
    finally:
        _Playwright.loop = None
        asyncio._set_running_loop(None)


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """new_page(color_scheme="light", **context_options) -> a Page in a fresh context (its
    own cookies). Console errors are kept in `page.errors` for tests to assert on."""
    contexts: list[Any] = []

    def make(color_scheme: str = "light", **options: Any) -> Any:
        context = browser.new_context(color_scheme=color_scheme, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on(
            "console",
            lambda message: page.errors.append(message.text) if message.type == "error" else None,
        )
        return page

    yield make
    for context in contexts:
        context.close()


def dashboard_plugins() -> list[tuple[str, object]]:
    """The dashboard as an extra plugin, unless its entry point already loads it."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="comfyui_server")}
    if "dashboard" in names:
        return []
    from comfyui_server.plugins import dashboard

    return [("dashboard", dashboard)]


@pytest.fixture
def dashboard_server(server_factory: Callable[..., Any]) -> Callable[..., Any]:
    """make(endpoints, env=None) -> a started ServerThread with the dashboard, once every
    endpoint is up (read from the engine, so it works with API keys too)."""

    def make(endpoints: Sequence[Any], env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        server = server_factory(
            endpoints, env, wait_up=False, extra_plugins=dashboard_plugins(), **kwargs
        )
        from fixtures_app import wait_until  # imported late: conftest loads it as a plugin

        engine = server.app.state.engine
        wait_until(lambda: all(s.status == "up" for s in engine.fleet.states()))
        return server

    return make
