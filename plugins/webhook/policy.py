"""The retry policy: what a receiver's answer means (delivered, retry later, or failed for
good), how long to wait before the next attempt (exponential backoff with jitter, or the
receiver's `Retry-After`), and when the retry window ends. Pure functions of their inputs,
so they are tested without a server."""

from __future__ import annotations

import datetime as dt
import email.utils
import random

import msgspec
from comfyui_server.core.models import WebhookDelivery

from .settings import WebhookSettings


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's result."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False
    """We would not send it (the URL policy said no): retrying cannot help."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """No answer, or one that says "later": 408, 429, 5xx."""
        code = self.status_code
        if self.refused:
            return False
        return code is None or code in (408, 429) or code >= 500


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay after the `attempts`-th failure: base * 2^(attempts-1), capped, with "equal
    jitter" (half fixed, half random) so receivers that come back are not hit all at once."""
    nominal = min(cap, base * 2 ** min(attempts - 1, 62))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


def after_attempt(
    delivery: WebhookDelivery, outcome: Outcome, own: WebhookSettings, now: dt.datetime
) -> WebhookDelivery:
    """The delivery's next state: delivered, failed for good, or pending until a retry."""
    attempts = delivery.attempts + 1
    common = {"attempts": attempts, "last_status": outcome.status_code}
    if outcome.delivered:
        return msgspec.structs.replace(
            delivery,
            status="delivered",
            last_error=None,
            next_attempt_at=None,
            finished_at=now,
            **common,
        )
    error = outcome.error or f"HTTP {outcome.status_code}"
    if not outcome.retryable:
        return msgspec.structs.replace(
            delivery,
            status="failed",
            last_error=error,
            next_attempt_at=None,
            finished_at=now,
            **common,
        )
    delay = outcome.retry_after
    if delay is None:
        delay = backoff(attempts, own.webhook_backoff_base, own.webhook_backoff_max)
    due = now + dt.timedelta(seconds=delay)
    if due > delivery.expires_at:
        window = (delivery.expires_at - delivery.created_at).total_seconds()
        return msgspec.structs.replace(
            delivery,
            status="failed",
            next_attempt_at=None,
            finished_at=now,
            last_error=f"{error}; gave up: the {window:g} s retry window ended",
            **common,
        )
    return msgspec.structs.replace(delivery, last_error=error, next_attempt_at=due, **common)
