"""The webhook plugin's rules in isolation: signing per Standard Webhooks, what an answer
means, backoff and Retry-After, the retry window, and the URL policy at delivery time."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import random
import time

import pytest
from comfyui_server.core import ConfigError
from comfyui_server.core.models import WebhookDelivery, utcnow
from comfyui_server.core.testing.receiver import WebhookReceiver
from comfyui_server.core.urls import UrlPolicy
from comfyui_server.plugins.webhook import (
    Outcome,
    Sender,
    WebhookSettings,
    after_attempt,
    backoff,
    parse_retry_after,
    secret_key,
    signature,
    webhook_headers,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks verification written from the specification alone: the key is the
    base64 after `whsec_`; the signed content is `{id}.{timestamp}.{body}`; the header holds
    space-separated `v1,<base64 HMAC-SHA256>`; the timestamp must be recent."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for candidate in headers.get("webhook-signature", "").split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


def delivery(**fields) -> WebhookDelivery:
    now = utcnow()
    defaults = {
        "id": "msg_1", "task_id": 1, "event": "task.completed", "url": "http://127.0.0.1:9/hook",
        "body": b"{}", "created_at": now, "next_attempt_at": now,
        "expires_at": now + dt.timedelta(days=1),
    }  # fmt: skip
    return WebhookDelivery(**{**defaults, **fields})


# ---- signing ---------------------------------------------------------------------------------


def test_signature_matches_the_published_standard_webhooks_test_vector():
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = signature([key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signed_headers_verify_and_a_tampered_body_does_not():
    body = b'{"id": 7, "event": "task.completed"}'
    headers = webhook_headers([secret_key(SECRET)], "msg_abc", body)
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body.replace(b"7", b"8"))
    assert not verify(SECRET, {**headers, "webhook-id": "msg_other"}, body)
    assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, body)
    old = webhook_headers([secret_key(SECRET)], "msg_abc", body, timestamp=int(time.time()) - 900)
    assert not verify(SECRET, old, body)


def test_a_bare_base64_secret_works_and_several_secrets_sign_with_each():
    bare = SECRET.removeprefix("whsec_")
    other = "whsec_" + base64.b64encode(b"another key of 32 bytes........").decode()
    headers = webhook_headers([secret_key(bare), secret_key(other)], "msg_1", b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(SECRET, headers, b"{}") and verify(other, headers, b"{}")


def test_unsigned_headers_still_carry_id_and_timestamp():
    headers = webhook_headers([], "msg_1", b"{}")
    assert headers["webhook-id"] == "msg_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert "webhook-signature" not in headers


@pytest.mark.parametrize("bad", ["not base64!", "whsec_c2hvcnQ=", ""])
def test_a_bad_secret_names_the_variable(bad):
    with pytest.raises(ConfigError, match=r"^WEBHOOK_SECRET"):
        secret_key(bad)


# ---- answers, backoff, window ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "delivered", "retryable"),
    [
        (Outcome(status_code=200), True, False),
        (Outcome(status_code=204), True, False),
        (Outcome(status_code=503), False, True),
        (Outcome(status_code=500), False, True),
        (Outcome(status_code=408), False, True),
        (Outcome(status_code=429), False, True),
        (Outcome(error="ConnectError"), False, True),
        (Outcome(status_code=400), False, False),
        (Outcome(status_code=410), False, False),
        (Outcome(status_code=301), False, False),
        (Outcome(refused=True, error="policy"), False, False),
    ],
)
def test_what_an_answer_means(outcome, delivered, retryable):
    assert outcome.delivered is delivered
    assert outcome.retryable is retryable


def test_backoff_doubles_up_to_the_cap_with_jitter():
    rng = random.Random(1)
    for attempts, nominal in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)]:
        for _ in range(20):
            delay = backoff(attempts, 5.0, 3600.0, rng)
            assert nominal / 2 <= delay <= nominal
    delays = {round(backoff(3, 5.0, 3600.0, rng), 6) for _ in range(20)}
    assert len(delays) > 10  # jittered, not fixed


def test_retry_after_in_seconds_or_as_an_http_date():
    now = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Tue, 01 Jan 2030 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Tue, 01 Jan 2030 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_after_attempt_delivered_retry_failed_and_window():
    own = WebhookSettings(webhook_backoff_base=1.0, webhook_backoff_max=10.0)
    now = utcnow()
    d = delivery()
    done = after_attempt(d, Outcome(status_code=200), own, now)
    assert (done.status, done.attempts, done.last_status, done.finished_at) == (
        "delivered",
        1,
        200,
        now,
    )
    assert done.next_attempt_at is None and done.id == d.id

    retry = after_attempt(d, Outcome(status_code=503), own, now)
    assert retry.status == "pending" and retry.attempts == 1 and retry.last_status == 503
    assert now + dt.timedelta(seconds=0.5) <= retry.next_attempt_at <= now + dt.timedelta(seconds=1)
    assert retry.last_error == "HTTP 503"

    later = after_attempt(d, Outcome(status_code=429, retry_after=5.0), own, now)
    assert later.next_attempt_at == now + dt.timedelta(seconds=5)

    gone = after_attempt(d, Outcome(status_code=410), own, now)
    assert (gone.status, gone.last_error, gone.finished_at) == ("failed", "HTTP 410", now)

    short = delivery(expires_at=now + dt.timedelta(seconds=0.1))
    expired = after_attempt(short, Outcome(error="ConnectError: refused"), own, now)
    assert expired.status == "failed" and expired.next_attempt_at is None
    assert "ConnectError: refused" in expired.last_error and "retry window" in expired.last_error


# ---- one attempt over HTTP -------------------------------------------------------------------


async def test_sender_posts_the_body_with_signed_headers_and_reads_retry_after():
    own = WebhookSettings(webhook_timeout=5.0)
    sender = Sender(own, [secret_key(SECRET)], UrlPolicy(["127.0.0.1"]))
    try:
        with WebhookReceiver(statuses=(429,), headers={"retry-after": "3"}) as receiver:
            outcome = await sender.send(delivery(url=receiver.url, body=b'{"a": 1}'))
            (got,) = receiver.deliveries
        assert outcome == Outcome(status_code=429, retry_after=3.0)
        assert got.body == b'{"a": 1}'
        assert got.headers["content-type"] == "application/json"
        assert got.headers["webhook-id"] == "msg_1"
        assert verify(SECRET, got.headers, got.body)
    finally:
        await sender.close()


async def test_sender_rechecks_the_url_policy_at_delivery_time():
    own = WebhookSettings(webhook_timeout=5.0)
    sender = Sender(own, [], UrlPolicy([]))  # 127.0.0.1 is not allowed here
    try:
        with WebhookReceiver() as receiver:
            outcome = await sender.send(delivery(url=receiver.url))
            assert receiver.deliveries == []
        assert outcome.refused and not outcome.retryable
        assert "non-public address" in outcome.error
    finally:
        await sender.close()


async def test_sender_gives_up_an_attempt_after_the_timeout_and_on_refused_connections():
    own = WebhookSettings(webhook_timeout=0.3)
    sender = Sender(own, [], UrlPolicy(["127.0.0.1"]))
    try:
        with WebhookReceiver(delay=2.0) as receiver:
            started = time.monotonic()
            outcome = await sender.send(delivery(url=receiver.url))
        assert time.monotonic() - started < 1.5
        assert outcome.status_code is None and outcome.retryable
        refused = await sender.send(delivery(url="http://127.0.0.1:9/hook"))
        assert refused.status_code is None and refused.retryable and refused.error
    finally:
        await sender.close()
