"""Image parameters: base64, a data URL, or an http(s) URL, each checked to be an image of
bounded size before a task is queued.

A URL is fetched at submission (so a bad one is the client's 422, not a failed task) under
the URL policy, re-checked on every redirect, with a time and a size limit, and kept as a
data URL in the task's params: the task then needs nothing outside our store to run.
"""

from __future__ import annotations

import base64
import binascii
import io

import httpx
from PIL import Image, UnidentifiedImageError

from .errors import RequestError
from .urls import UrlPolicy

MAX_REDIRECTS = 5


def decode_image(field: str, value: str, max_bytes: int) -> tuple[bytes, str]:
    """Return the image's bytes and its file extension. Errors name `field`."""
    text = value
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(f"{field}: a data URL must be base64", field=field, status_code=422)
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise _too_large(field, max_bytes)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            f"{field} is neither valid base64 nor an http(s) URL", field=field, status_code=422
        ) from None
    if len(data) > max_bytes:
        raise _too_large(field, max_bytes)
    return data, sniff_image(field, data)


def sniff_image(field: str, data: bytes) -> str:
    """The image format's file extension, from the content (never from a name)."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        raise RequestError(f"{field} is not an image", field=field, status_code=422) from None
    return {"jpeg": "jpg"}.get(kind, kind)


def _too_large(field: str, max_bytes: int) -> RequestError:
    return RequestError(
        f"{field} is larger than the {max_bytes} byte limit (MAX_IMAGE_BYTES)",
        field=field,
        status_code=413,
    )


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


async def fetch_image(
    field: str,
    url: str,
    *,
    http: httpx.AsyncClient,
    policy: UrlPolicy,
    max_bytes: int,
    timeout: float,
) -> str:
    """Download an image param and return it as a data URL."""
    try:
        for _ in range(MAX_REDIRECTS + 1):
            await policy.check(url, field)
            async with http.stream("GET", url, follow_redirects=False, timeout=timeout) as response:
                if response.is_redirect:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise RequestError(
                        f"{field}: {url} answered HTTP {response.status_code}",
                        field=field,
                        status_code=422,
                    )
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise _too_large(field, max_bytes)
                break
        else:
            raise RequestError(f"{field}: too many redirects", field=field, status_code=422)
    except httpx.TimeoutException:
        raise RequestError(
            f"{field}: {url} did not answer within {timeout:g} s", field=field, status_code=422
        ) from None
    except httpx.HTTPError as exc:
        raise RequestError(
            f"{field}: cannot fetch {url}: {exc}", field=field, status_code=422
        ) from None
    kind = sniff_image(field, bytes(data))
    mime = {"jpg": "jpeg"}.get(kind, kind)
    return f"data:image/{mime};base64,{base64.b64encode(data).decode()}"
