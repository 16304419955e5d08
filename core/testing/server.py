"""Run the real server, over real HTTP, inside a test or a benchmark.

`ServerThread` runs uvicorn in its own thread and event loop, so the test's own loop (and
any emulator thread) stays independent, as separate processes would be.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping
from typing import Any

import uvicorn

from ..config import get_settings
from ..plugins import create_plugin_manager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """The app built from `env` (no `.env` file is read) and served on a free port."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        extra_plugins: list[tuple[str, object]] = (),
        monitor_options: dict[str, float] | None = None,
    ) -> None:
        from ..app import create_app

        self.port = free_port()
        env = {"SERVICE_PORT": str(self.port), "SERVICE_HOST": "127.0.0.1", **env}
        self.settings = get_settings(env)
        self.pm = create_plugin_manager(
            disabled=self.settings.disabled_plugins, extra_plugins=extra_plugins
        )
        self.app = create_app(self.settings, self.pm, monitor_options=monitor_options)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name=f"server:{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + self.settings.route_prefix

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self.server.serve())
        except BaseException as exc:  # surfaced by start()
            self.error = exc
        finally:
            self.loop.close()

    def start(self, timeout: float = 20.0) -> ServerThread:
        self.thread.start()
        waited = 0.0
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"server did not start: {self.error!r}")
            self.thread.join(0.02)
            waited += 0.02
            if waited > timeout:
                raise TimeoutError("server did not start in time")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to read the engine's state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
