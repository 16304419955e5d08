"""Fixtures that run the real server over real HTTP, with a webhook receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyui_server.core.testing.receiver import WebhookReceiver
from comfyui_server.core.testing.server import ServerThread

TEST_ENV: dict[str, str] = {}
"""Extra settings for every server a test starts (a development aid)."""

FAST_MONITOR = {"reconcile_interval": 0.5, "grace_period": 2.0, "reconnect_max_delay": 0.5}


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """make(endpoints, env=None) -> a started ServerThread whose endpoints are all up."""
    servers: list[ServerThread] = []

    def make(
        endpoints: Sequence[Any],
        env: dict[str, str] | None = None,
        *,
        wait_up: bool = True,
        **kwargs: Any,
    ) -> ServerThread:
        base = {
            "COMFYUI_ENDPOINTS": ",".join(e.address for e in endpoints),
            "DATA_DIR": str(tmp_path / f"data{len(servers)}"),
            "URL_ALLOWLIST": "127.0.0.1",
            # tests compare stored outputs with the emulator's files; the cleanup tests
            # switch it back on
            "COMFYUI_CLEANUP": "off",
            **TEST_ENV,
        }
        kwargs.setdefault("monitor_options", FAST_MONITOR)
        server = ServerThread({**base, **(env or {})}, **kwargs).start()
        servers.append(server)
        if wait_up:
            wait_until(
                lambda: (
                    all(e["status"] == "up" for e in httpx.get(server.api + "/endpoints").json())
                    or None
                )
            )
        return server

    yield make
    for server in servers:
        server.stop()


def wait_final(api: str, task_id: int, timeout: float = 30.0) -> dict:
    """Poll GET /tasks/{id} until the task is final; return its record."""

    def final() -> dict | None:
        record = httpx.get(f"{api}/tasks/{task_id}").json()
        return record if record["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(final, timeout, interval=0.05)
