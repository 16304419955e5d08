"""Image parameters: base64 or a data URL, checked to be an image before a task is queued."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from .errors import RequestError


def decode_image(field: str, value: str, max_bytes: int) -> tuple[bytes, str]:
    """Return the image's bytes and its file extension. Errors name `field`."""
    text = value
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(f"{field}: a data URL must be base64", field=field, status_code=422)
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise RequestError(
            f"{field} is larger than the {max_bytes} byte limit", field=field, status_code=413
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field} is not valid base64", field=field, status_code=422) from None
    if len(data) > max_bytes:
        raise RequestError(
            f"{field} is larger than the {max_bytes} byte limit", field=field, status_code=413
        )
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        raise RequestError(f"{field} is not an image", field=field, status_code=422) from None
    return data, {"jpeg": "jpg"}.get(kind, kind)
