"""The embedded default storage, its hook called directly: small outputs are written from
one buffer, large ones streamed, and both land byte for byte under the task's folder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from comfyui_server.core import Task
from comfyui_server.core.config import get_settings
from comfyui_server.plugins import local_storage
from fixtures_storage import artifact


async def test_small_and_large_outputs_land_whole(tmp_path):
    root = tmp_path / "outputs"
    local_storage.startup(settings=get_settings({"LOCAL_STORAGE_DIR": str(root)}))
    task = Task(id=7, workflow="w")
    small = [b"\x89PNG", b"-" * 1000]
    large = [bytes([i]) * 300_000 for i in range(10)]  # 3 MB: past the one-buffer size

    stored_small = await local_storage.store(artifact=artifact("s.png", data=small), task=task)
    stored_large = await local_storage.store(artifact=artifact("l.mp4", "v", large), task=task)

    assert (stored_small.key, stored_small.size) == ("7/s.png", 1004)
    assert (stored_large.key, stored_large.size) == ("7/v/l.mp4", 3_000_000)
    assert stored_small.storage == stored_large.storage == "local"
    assert (root / "7" / "s.png").read_bytes() == b"".join(small)
    assert (root / "7" / "v" / "l.mp4").read_bytes() == b"".join(large)


async def test_a_failing_stream_leaves_no_file(tmp_path):
    root = tmp_path / "outputs"
    local_storage.startup(settings=get_settings({"LOCAL_STORAGE_DIR": str(root)}))

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 500_000
        raise ConnectionError("ComfyUI went away")

    with pytest.raises(ConnectionError):
        await local_storage.store(
            artifact=artifact("b.png", stream=broken), task=Task(id=8, workflow="w")
        )
    assert not (root / "8" / "b.png").exists()
