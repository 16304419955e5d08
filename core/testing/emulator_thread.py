"""Run a ComfyUIEmulator on its own event loop in a background thread.

Tests and benchmarks of comfyui-server use this so the emulated ComfyUI never shares (and never
slows down, or is slowed down by) the event loop of the code under test, as with a real
ComfyUI in another process. Every control method blocks until the emulator has applied it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .emulator import ComfyUIEmulator, QueueItem

T = TypeVar("T")

_TIMEOUT = 30.0


class EmulatorThread:
    """A `ComfyUIEmulator` (same keyword arguments) served from a dedicated thread."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: ComfyUIEmulator | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmulatorThread:
        if self._thread is not None:
            raise RuntimeError("emulator thread already started")
        loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._emulator = ComfyUIEmulator(**self._options)
                loop.run_until_complete(self._emulator.start())
            except BaseException as ex:
                ready.set_exception(ex)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="comfyui-emulator", daemon=True)
        self._thread.start()
        try:
            ready.result(_TIMEOUT)
        except BaseException:
            self._thread.join(_TIMEOUT)
            self._thread = self._loop = None
            raise
        return self

    def stop(self) -> None:
        """Stop the emulator and its thread; safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        self._run(self.emulator.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_TIMEOUT)
        self._thread = self._loop = None

    def kill(self) -> None:
        self._run(self.emulator.kill)

    def restart(self) -> None:
        self._run(self.emulator.restart)

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        message: str = "Emulated failure",
        exception_type: str = "RuntimeError",
        *,
        class_type: str | None = None,
    ) -> None:
        self._call(
            lambda: self.emulator.fail_next(count, message, exception_type, class_type=class_type)
        )

    def clear_failures(self) -> None:
        self._call(self.emulator.clear_failures)

    def hang(self, enabled: bool = True) -> None:
        self._call(lambda: self.emulator.hang(enabled))

    def interrupt(self) -> None:
        self._call(self.emulator.interrupt)

    def drop_websockets(self) -> None:
        self._call(self.emulator.drop_websockets)

    # -- inspection --------------------------------------------------------------------------

    @property
    def emulator(self) -> ComfyUIEmulator:
        """The emulator itself; only touch it from its loop (see `call`)."""
        if self._emulator is None:
            raise RuntimeError("emulator thread not started")
        return self._emulator

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def address(self) -> str:
        return self.emulator.address

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def base_dir(self) -> Path:
        return self.emulator.base_dir

    @property
    def input_dir(self) -> Path:
        return self.emulator.input_dir

    @property
    def output_dir(self) -> Path:
        return self.emulator.output_dir

    @property
    def temp_dir(self) -> Path:
        return self.emulator.temp_dir

    @property
    def prompts_received(self) -> list[dict[str, Any]]:
        return self._call(lambda: list(self.emulator.prompts_received))

    @property
    def requests(self) -> dict[str, int]:
        """Requests served so far, by method and route (`GET /history/{prompt_id}`)."""
        return self._call(lambda: dict(self.emulator.requests))

    @property
    def history(self) -> dict[str, dict[str, Any]]:
        return self._call(lambda: dict(self.emulator.history))

    @property
    def queue_pending(self) -> list[QueueItem]:
        return self._call(lambda: self.emulator.queue_pending)

    @property
    def queue_running(self) -> list[QueueItem]:
        return self._call(lambda: self.emulator.queue_running)

    @property
    def client_ids(self) -> list[str]:
        return self._call(lambda: self.emulator.client_ids)

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the emulator's loop and return its result."""
        return self._call(function)

    def _call(self, function: Callable[[], T]) -> T:
        async def invoke() -> T:
            return function()

        return self._run(invoke)

    def _run(self, coroutine_function: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._loop is None:
            raise RuntimeError("emulator thread not started")
        return asyncio.run_coroutine_threadsafe(coroutine_function(), self._loop).result(_TIMEOUT)
