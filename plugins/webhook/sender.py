"""One attempt on the wire: the URL policy checked again (DNS may have changed since
submission), then the signed POST, all within WEBHOOK_TIMEOUT, its answer turned into an
`Outcome`. Redirects are not followed (one could point past the URL policy)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import httpx
from comfyui_server.core import RequestError
from comfyui_server.core.http_transport import HttpClient
from comfyui_server.core.models import WebhookDelivery, utcnow
from comfyui_server.core.urls import UrlPolicy

from .policy import Outcome, parse_retry_after
from .settings import WebhookSettings
from .signing import webhook_headers

DRAIN_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read to keep its connection; nobody reads the body."""
DRAIN_SECONDS = 1.0
"""How long reading that answer may take."""


class Sender:
    """Sends one attempt: the URL policy again (DNS may have changed since submission),
    then the signed POST, all within WEBHOOK_TIMEOUT."""

    def __init__(self, own: WebhookSettings, keys: Sequence[bytes], policy: UrlPolicy) -> None:
        self.keys = list(keys)
        self.policy = policy
        self.timeout = own.webhook_timeout
        # per-host semaphores bound the connections; the pool must not add its own wait.
        # Redirects are never followed (one could point past the URL policy), nor cookies kept.
        self.http = HttpClient(timeout=httpx.Timeout(own.webhook_timeout))

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, delivery: WebhookDelivery) -> Outcome:
        """The answer's status line is the outcome. Its body is read afterwards only to
        keep the connection; a receiver that said 200 and then stalls or hangs up mid-body
        has still taken the delivery."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(self.timeout):
                    outcome, response = await self._send(delivery, stack)
            except TimeoutError:
                return Outcome(error=f"no answer within {self.timeout:g} s")
            if response is not None:
                await _drain(response)
            return outcome

    async def _send(
        self, delivery: WebhookDelivery, stack: contextlib.AsyncExitStack
    ) -> tuple[Outcome, httpx.Response | None]:
        try:
            await self.policy.check(delivery.url, "client_callback_url")
        except RequestError as exc:
            if "cannot resolve" in exc.message:  # DNS trouble: worth another try
                return Outcome(error=exc.message), None
            return Outcome(refused=True, error=f"refused by the URL policy: {exc.message}"), None
        headers = webhook_headers(self.keys, delivery.id, delivery.body)
        try:
            response = await stack.enter_async_context(
                self.http.stream("POST", delivery.url, content=delivery.body, headers=headers)
            )
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}".rstrip(": ")), None
        retry_after = parse_retry_after(response.headers.get("retry-after"), utcnow())
        return Outcome(status_code=response.status_code, retry_after=retry_after), response


async def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end, so its connection goes back to the pool (an unread
    body closes it: measured, a new TCP connection per delivery); a long, slow or broken
    one is dropped with its connection."""
    read = 0
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > DRAIN_LIMIT:
                    return
