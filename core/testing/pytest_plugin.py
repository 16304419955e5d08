"""pytest fixtures that provide emulated ComfyUI servers (registered via the pytest11 entry point).

Kept import-light: the emulator (aiohttp, Pillow) is imported only when a fixture is used, so
merely having comfyui-server installed costs other test suites nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .emulator_thread import EmulatorThread


@pytest.fixture
def comfyui_emulator_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., EmulatorThread]]:
    """Call it to start an emulator (kwargs as `ComfyUIEmulator`) on a free port in its own
    thread; every emulator made is stopped at teardown."""
    from .emulator_thread import EmulatorThread

    started: list[EmulatorThread] = []

    def make(**options: Any) -> EmulatorThread:
        options.setdefault("base_dir", tmp_path_factory.mktemp("comfyui"))
        emulator = EmulatorThread(**options).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def comfyui_emulator(comfyui_emulator_factory: Callable[..., EmulatorThread]) -> EmulatorThread:
    """One running emulated ComfyUI with default settings."""
    return comfyui_emulator_factory()
