"""One attempt on the wire against receivers that misbehave after answering: the status
line decides the outcome, whatever the body does next."""

from __future__ import annotations

import asyncio

import pytest
from comfyui_server.core.models import WebhookDelivery, utcnow
from comfyui_server.core.urls import UrlPolicy
from comfyui_server.plugins.webhook import WebhookSettings
from comfyui_server.plugins.webhook.sender import Sender


async def receiver(answer: bytes, then: str) -> tuple[asyncio.Server, str]:
    """A raw HTTP/1.1 peer: reads the request, writes `answer`, then stalls or hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        if then == "stall":
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook"


def delivery(url: str) -> WebhookDelivery:
    now = utcnow()
    return WebhookDelivery(
        id="msg_" + "0" * 32,
        task_id=1,
        event="task.completed",
        url=url,
        body=b"{}",
        expires_at=now,
    )


@pytest.mark.parametrize("then", ["stall", "hang up"])
async def test_a_200_whose_body_never_completes_is_delivered(then):
    server, url = await receiver(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", then)
    sender = Sender(WebhookSettings(webhook_timeout=3), [], UrlPolicy(("127.0.0.1",)))
    try:
        outcome = await asyncio.wait_for(sender.send(delivery(url)), 10)
    finally:
        await sender.close()
        server.close()
    assert outcome.status_code == 200 and outcome.delivered, outcome


async def test_no_status_line_within_the_timeout_is_no_answer():
    server, url = await receiver(b"", "stall")
    sender = Sender(WebhookSettings(webhook_timeout=0.5), [], UrlPolicy(("127.0.0.1",)))
    try:
        outcome = await sender.send(delivery(url))
    finally:
        await sender.close()
        server.close()
    assert outcome.status_code is None and not outcome.delivered
    assert "no answer within 0.5 s" in outcome.error
