"""Outputs for calling a storage plugin's `store` hook directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

from comfyui_server.core import Artifact


def artifact(
    filename: str,
    subfolder: str = "",
    data: Iterable[bytes] = (),
    stream: Callable[[], AsyncIterator[bytes]] | None = None,
) -> Artifact:
    """An output whose bytes are `data`, or whatever `stream()` yields."""
    chunks = list(data)

    async def from_data() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return Artifact(
        filename=filename,
        subfolder=subfolder,
        type="output",
        node_id="9",
        content_type="application/octet-stream",
        endpoint="127.0.0.1:8188",
        open=stream or from_data,
    )
