"""Thumbnails of image outputs, made once and kept under DATA_DIR/thumbnails.

The original is fetched through the URL `render_task` gives (our own /files route for local
storage, a presigned link for S3), streamed to a temporary file with a size bound, and
shrunk with Pillow in a worker thread: the event loop never decodes an image, and a task
list never sends full-size outputs to the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MEDIA_TYPE = "image/webp"


class ThumbnailError(Exception):
    """The original could not be fetched or read; the message says why."""


class Thumbnailer:
    def __init__(self, folder: Path, http: httpx.AsyncClient, *, size: int, max_bytes: int) -> None:
        self.folder = folder
        self.http = http
        self.size = size
        self.max_bytes = max_bytes
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, identity: str) -> Path:
        """Where the thumbnail of the output named `identity` (storage and key) lives."""
        digest = hashlib.sha256(f"{identity}\0{self.size}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.webp"

    async def get(self, identity: str, url: str) -> Path:
        """The thumbnail's path, made from `url` on first use. Concurrent requests for one
        output share one download."""
        path = self.path_for(identity)
        if path.is_file():
            return path
        lock = self._locks.setdefault(str(path), asyncio.Lock())
        try:
            async with lock:
                if not path.is_file():
                    await self._make(url, path)
        finally:
            if not lock.locked():
                self._locks.pop(str(path), None)
        return path

    async def _make(self, url: str, path: Path) -> None:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        original = await self.download(url, path.parent)
        try:
            await asyncio.to_thread(shrink, original, path, self.size)
        finally:
            await asyncio.to_thread(_unlink, original)

    async def download(self, url: str, folder: Path) -> Path:
        """Stream `url` into a temporary file in `folder`, at most `max_bytes`."""
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=folder, suffix=".part")
        target = Path(name)
        try:
            with os.fdopen(fd, "wb") as sink:
                async with self.http.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise ThumbnailError(f"GET {url} answered {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise ThumbnailError(f"{url} is larger than {self.max_bytes} bytes")
                    received = 0
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > self.max_bytes:
                            raise ThumbnailError(f"{url} is larger than {self.max_bytes} bytes")
                        await asyncio.to_thread(sink.write, chunk)
        except httpx.HTTPError as exc:
            await asyncio.to_thread(_unlink, target)
            raise ThumbnailError(f"cannot fetch {url}: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(_unlink, target)
            raise
        return target

    async def read_text(self, url: str, limit: int) -> str | None:
        """A small text output's content for an inline preview; None when too large or
        unreadable (the page then offers the link only)."""
        try:
            async with self.http.stream("GET", url) as response:
                if response.status_code != 200:
                    return None
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        return None
        except httpx.HTTPError:
            return None
        return data.decode("utf-8", errors="replace")


def shrink(original: Path, target: Path, size: int) -> None:
    """Write a WebP at most `size` px on its longest side; atomic, so a reader never sees a
    half-written file. Runs in a worker thread."""
    try:
        with Image.open(original) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size))
            if image.mode not in ("RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            fd, name = tempfile.mkstemp(dir=target.parent, suffix=".webp.part")
            try:
                with os.fdopen(fd, "wb") as sink:
                    image.save(sink, "WEBP", quality=80, method=4)
                os.replace(name, target)
            except BaseException:
                _unlink(Path(name))
                raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from exc


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
