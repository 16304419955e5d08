"""httpx requests over aiohttp (core/http_transport.py), against real local servers: answers,
streaming with bounded read-ahead, httpx's exceptions for timeouts and refused connections,
TLS, redirects not followed and cookies not kept, idle connections the server closed, and
the same under uvloop (what `comfyui-server serve` runs on)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import uvloop
from aiohttp import web
from comfyui_server.core.http_transport import READ_BUFFER, HttpClient
from comfyui_server.core.testing.server import free_port

BIG = 16 * 1024 * 1024


async def _routes() -> web.Application:
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"method": request.method, "size": len(body)})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = BIG
        await response.prepare(request)
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(BIG // len(chunk)):
            await response.write(chunk)
        return response

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("session", "s3cret")
        return response

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/headers", headers)
    app.router.add_get("/big", big)
    app.router.add_get("/stall", stall)
    return app


async def serve(ssl_context: ssl.SSLContext | None = None, **options) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(await _routes(), shutdown_timeout=0.2, **options)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner, url = await serve()
    yield url
    await runner.cleanup()


def client(timeout: float = 5.0, **options) -> HttpClient:
    return HttpClient(timeout=httpx.Timeout(timeout), **options)


async def test_requests_and_json_bodies_round_trip(server):
    async with client() as http:
        for _ in range(3):  # the same keep-alive connection, reused
            response = await http.request("POST", server + "/echo", json={"x": "y" * 1000})
            assert response.status_code == 200
            assert response.json()["size"] == len(b'{"x":"') + 1000 + len(b'"}')
        # a larger body arrives whole
        response = await http.request("POST", server + "/echo", content=b"z" * 200_000)
        assert response.json() == {"method": "POST", "size": 200_000}


async def test_a_large_answer_streams_whole_and_is_not_read_ahead_unbounded(server):
    async with client() as http:
        async with http.stream("GET", server + "/big") as response:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
            assert received == BIG
        # a reader that stops reading leaves the rest in the kernel, not in our memory
        async with http.stream("GET", server + "/big") as response:
            chunks = response.aiter_raw()
            first = await anext(chunks)
            await asyncio.sleep(0.5)
            buffered = response.stream.response.content.total_bytes - len(first)
            assert 0 < buffered <= 2 * READ_BUFFER + 1024 * 1024  # plus the kernel's socket read
            rest = sum([len(c) async for c in chunks])
            assert len(first) + rest == BIG


async def test_redirects_are_not_followed_and_cookies_not_kept(server):
    async with client() as http:
        response = await http.request("GET", server + "/redirect")
        assert response.status_code == 302
        assert response.headers["location"] == "/echo"
        await http.request("GET", server + "/set-cookie")
        echoed = await http.request("GET", server + "/headers")
        assert "cookie" not in echoed.json()


async def test_a_silent_server_gives_httpx_read_timeout(server):
    async with client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.request("GET", server + "/stall")


async def test_a_refused_connection_gives_httpx_connect_error():
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.request("GET", f"http://127.0.0.1:{free_port()}/")


async def test_an_idle_connection_the_server_closed_is_replaced(tmp_path):
    runner, url = await serve(keepalive_timeout=0.1)
    try:
        async with client() as http:
            assert (await http.request("GET", url + "/echo")).status_code == 200
            await asyncio.sleep(0.4)  # the server has closed the kept connection
            assert (await http.request("GET", url + "/echo")).status_code == 200
    finally:
        await runner.cleanup()


def _self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context that trusts only this certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_path, key_path)
    return server_side, ssl.create_default_context(cafile=str(cert_path))


async def test_tls_is_verified(tmp_path):
    server_side, trusting = _self_signed(tmp_path)
    runner, url = await serve(server_side)
    try:
        async with client(ssl_context=trusting) as http:
            response = await http.request("POST", url + "/echo", content=b"abc")
            assert response.json() == {"method": "POST", "size": 3}
        async with client() as http:  # the CA bundle does not know this certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.request("GET", url + "/echo")
    finally:
        await runner.cleanup()


def test_the_same_on_uvloop(tmp_path):
    async def scenario() -> None:
        runner, url = await serve()
        try:
            async with client(timeout=0.3) as http:
                assert (await http.request("POST", url + "/echo", content=b"xy")).json()[
                    "size"
                ] == 2
                async with http.stream("GET", url + "/big") as response:
                    assert sum([len(c) async for c in response.aiter_raw()]) == BIG
                with pytest.raises(httpx.ReadTimeout):
                    await http.request("GET", url + "/stall")
        finally:
            await runner.cleanup()

    uvloop.run(scenario())
