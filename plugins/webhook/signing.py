"""Signing per Standard Webhooks (https://www.standardwebhooks.com/): the key of a
`whsec_` secret, the `webhook-signature` header, and the headers of every attempt.
`webhook-id` stays the same on every attempt of one delivery, so receivers can drop
repeats."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence

from comfyui_server.core import ConfigError, __version__

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` (or bare base64) secret."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError(
            "WEBHOOK_SECRET: expected base64 of 16+ random bytes, optionally prefixed with "
            "'whsec_' (e.g. whsec_$(openssl rand -base64 32))"
        )
    return key


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """id and timestamp always (receivers de-duplicate on the id); a signature with keys."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "user-agent": f"comfyui-server/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if keys:
        headers["webhook-signature"] = signature(keys, msg_id, timestamp, body)
    return headers
