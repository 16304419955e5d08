"""One attempt on the wire: the URL policy checked again (DNS may have changed since
submission), then the signed POST, all within WEBHOOK_TIMEOUT, its answer turned into an
`Outcome`. Redirects are not followed (one could point past the URL policy)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
from comfyui_server.core import RequestError
from comfyui_server.core.models import WebhookDelivery, utcnow
from comfyui_server.core.urls import UrlPolicy

from .policy import Outcome, parse_retry_after
from .settings import WebhookSettings
from .signing import webhook_headers

DRAIN_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read to keep its connection; nobody reads the body."""


class Sender:
    """Sends one attempt: the URL policy again (DNS may have changed since submission),
    then the signed POST, all within WEBHOOK_TIMEOUT."""

    def __init__(self, own: WebhookSettings, keys: Sequence[bytes], policy: UrlPolicy) -> None:
        self.keys = list(keys)
        self.policy = policy
        self.timeout = own.webhook_timeout
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(own.webhook_timeout),
            # per-host semaphores bound the connections; the pool must not add its own wait
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,  # a redirect could point past the URL policy
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, delivery: WebhookDelivery) -> Outcome:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(delivery)
        except TimeoutError:
            return Outcome(error=f"no answer within {self.timeout:g} s")

    async def _send(self, delivery: WebhookDelivery) -> Outcome:
        try:
            await self.policy.check(delivery.url, "client_callback_url")
        except RequestError as exc:
            if "cannot resolve" in exc.message:  # DNS trouble: worth another try
                return Outcome(error=exc.message)
            return Outcome(refused=True, error=f"refused by the URL policy: {exc.message}")
        headers = webhook_headers(self.keys, delivery.id, delivery.body)
        try:
            async with self.http.stream(
                "POST", delivery.url, content=delivery.body, headers=headers
            ) as response:
                retry_after = parse_retry_after(response.headers.get("retry-after"), utcnow())
                await _drain(response)
                return Outcome(status_code=response.status_code, retry_after=retry_after)
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}".rstrip(": "))


async def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end, so its connection goes back to the pool (an unread
    body closes it: measured, a new TCP connection per delivery); a long one is dropped."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > DRAIN_LIMIT:
            return
