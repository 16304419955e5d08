"""Who is looking at the dashboard: an API key, proved once by a sign-in form and then by a
signed cookie, so the browser never holds the key itself.

The cookie holds the key's name and an expiry, signed with HMAC-SHA256 over those and the
key's digest: changing a key's secret (or removing it) ends its sessions at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import msgspec
from comfyui_server.core import RequestError, Task
from comfyui_server.core.auth import ApiKey, Keyring

COOKIE = "comfyui_dashboard"


class Viewer(msgspec.Struct, frozen=True, kw_only=True):
    """The person behind a request: a key, or anyone when the API is open."""

    key: ApiKey | None
    """None when no key is configured (the API and the pages are open)."""

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else None

    @property
    def admin(self) -> bool:
        return self.key is None or self.key.admin

    @property
    def signed_in(self) -> bool:
        return self.key is not None

    @property
    def client_filter(self) -> str | None:
        """The `TaskQuery.client` that limits a listing to what this viewer may see."""
        return None if self.admin else self.name

    def sees(self, task: Task) -> bool:
        return self.admin or task.client == self.name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Issues and checks session cookies."""

    def __init__(self, secret: bytes, lifetime_seconds: float) -> None:
        self._secret = secret
        self.lifetime = lifetime_seconds

    def _mac(self, payload: str, key: ApiKey) -> str:
        message = f"{payload}.{key.digest}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, key: ApiKey, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.lifetime)
        payload = f"{_b64(key.name.encode())}.{expires}"
        return f"{payload}.{self._mac(payload, key)}"

    def verify(self, value: str, keyring: Keyring, now: float | None = None) -> ApiKey | None:
        """The key a cookie stands for, or None when it is forged, expired or revoked."""
        try:
            encoded_name, expires_text, mac = value.split(".")
            name, expires = _unb64(encoded_name).decode(), int(expires_text)
        except (ValueError, UnicodeDecodeError):
            return None
        if expires < (now if now is not None else time.time()):
            return None
        key = next((k for k in keyring.by_digest.values() if k.name == name), None)
        if key is None:
            return None
        expected = self._mac(f"{encoded_name}.{expires_text}", key)
        return key if hmac.compare_digest(expected, mac) else None


def check_key(keyring: Keyring, secret: str) -> ApiKey | None:
    """The key with this secret, or None; the sign-in form's check."""
    try:
        return keyring.identify(f"Bearer {secret.strip()}") if secret.strip() else None
    except RequestError:
        return None
