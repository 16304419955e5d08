"""API keys, per-key rate limits and the queue-depth cap.

Keys come from `API_KEYS` / `ADMIN_API_KEYS` (comma-separated `name:secret`) or from
`API_KEYS_FILE` (lines `name sha256-hex [admin]`, so secrets never sit in plain text). Clients
send `Authorization: Bearer <secret>`. A task belongs to the key that created it; another key
sees a 404 for it. With no key configured the service runs open (and says so at start).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from .config import Settings
from .errors import ConfigError, RequestError

log = logging.getLogger(__name__)


class ApiKey(msgspec.Struct, frozen=True):
    name: str
    digest: str
    admin: bool = False


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse_pairs(items: tuple[str, ...], variable: str, admin: bool) -> list[ApiKey]:
    keys = []
    for item in items:
        name, sep, secret = item.partition(":")
        if not sep or not name or len(secret) < 16:
            raise ConfigError(
                f"{variable}: each key is 'name:secret' with a secret of 16+ characters"
            )
        keys.append(ApiKey(name, digest(secret), admin))
    return keys


def _parse_file(path: str) -> list[ApiKey]:
    keys = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"API_KEYS_FILE: cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or len(fields[1]) != 64 or fields[2:] not in ([], ["admin"]):
            raise ConfigError(f"API_KEYS_FILE: line {number}: expected 'name sha256-hex [admin]'")
        keys.append(ApiKey(fields[0], fields[1].lower(), fields[2:] == ["admin"]))
    return keys


class Keyring:
    def __init__(self, settings: Settings) -> None:
        keys = [
            *_parse_pairs(settings.api_keys, "API_KEYS", admin=False),
            *_parse_pairs(settings.admin_api_keys, "ADMIN_API_KEYS", admin=True),
            *(_parse_file(settings.api_keys_file) if settings.api_keys_file else []),
        ]
        self.by_digest = {key.digest: key for key in keys}
        if len({k.name for k in keys}) != len(keys):
            raise ConfigError("API_KEYS: two keys share one name")
        self.rate = settings.rate_limit_per_minute
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def open(self) -> bool:
        return not self.by_digest

    def identify(self, authorization: str | None) -> ApiKey | None:
        if self.open:
            return None
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise RequestError(
                "missing API key: send 'Authorization: Bearer <key>'",
                field="authorization",
                status_code=401,
            )
        wanted = digest(secret.strip())
        for known, key in self.by_digest.items():
            if hmac.compare_digest(known, wanted):
                return key
        raise RequestError("unknown API key", field="authorization", status_code=401)

    def take(self, key: ApiKey | None) -> None:
        """A token bucket per key: RATE_LIMIT_PER_MINUTE requests, refilled continuously."""
        if not self.rate:
            return
        name = key.name if key else "(open)"
        now = time.monotonic()
        tokens, last = self._buckets.get(name, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
        if tokens < 1.0:
            retry = (1.0 - tokens) * 60.0 / self.rate
            raise RateLimited(retry)
        self._buckets[name] = (tokens - 1.0, now)


class RateLimited(RequestError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"rate limit of this key exceeded; retry in {retry_after:.1f} s",
            field="authorization",
            status_code=429,
            retry_after=retry_after,
        )


async def authenticate(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for every API route: who is calling, and are they within their rate. Guards
    are coroutines: Litestar runs a plain function guard in a worker thread, which cost a
    thread hop per request and let two requests update the rate buckets at once."""
    keyring: Keyring = connection.app.state.keyring
    key = keyring.identify(connection.headers.get("authorization"))
    keyring.take(key)
    connection.state.api_key = key


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for fleet and plugin management: admin keys only (anyone when open)."""
    keyring: Keyring = connection.app.state.keyring
    if keyring.open:
        return
    key = connection.state.get("api_key")
    if key is None or not key.admin:
        raise RequestError("this route needs an admin key", field="authorization", status_code=403)


def caller(connection: ASGIConnection) -> str | None:
    """The calling key's name, which owns the tasks it creates (None when open)."""
    key = connection.state.get("api_key")
    return key.name if key else None
