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


class ServerProcess:
    """`comfyui-server serve` as a child process: what an operator runs, killable for real
    (SIGTERM, SIGKILL) so tests can prove what survives."""

    def __init__(self, env: Mapping[str, str], *, port: int | None = None) -> None:
        import os
        import sys
        from pathlib import Path

        self.port = port or free_port()
        self.env = {
            **os.environ,
            "SERVICE_PORT": str(self.port),
            "SERVICE_HOST": "127.0.0.1",
            **env,
        }
        self.command = [str(Path(sys.executable).parent / "comfyui-server"), "serve"]
        self.process = None
        self.log_lines: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + self.env.get("ROUTE_PREFIX", "/api/v1")

    def start(self, timeout: float = 30.0) -> ServerProcess:
        import subprocess
        import time

        import httpx

        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader collect the last lines
                raise RuntimeError("server exited:\n" + "\n".join(self.log_lines[-30:]))
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not answer /health in time")

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self.log_lines.append(line.rstrip("\n"))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        import signal as signals

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signals.SIGTERM)
            try:
                self.process.wait(20)
            except Exception:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
