"""httpx requests over aiohttp's connection pool, for the requests made per task.

comfyui-server makes three HTTP requests of its own per task (POST /prompt, GET /view, the
webhook). Through httpx.AsyncClient on its default transport (httpcore, h11, anyio) one
small request cost 0.72 ms of client CPU under uvloop on the 2-core bench machine; that was
the largest part of the server's CPU per task. httpx lets the wire be replaced through its
transport API, so `AiohttpTransport` sends httpx requests over aiohttp's client (a C HTTP
parser and a pooled connector; aiohttp is already here, it is the server library ComfyUI
and our emulator run on), and `HttpClient` sends them straight to that transport, skipping
AsyncClient's cookie jar, auth, redirect and header-merging layer. Callers keep httpx's
Request, Response and exceptions. Measured per GET when this was written (bench case g):
0.72 ms through AsyncClient, 0.27 ms this way, 0.16 ms for aiohttp's own API;
docs/benchmarks.md has the current figures.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import certifi
import httpx
import msgspec

READ_BUFFER = 256 * 1024
"""aiohttp's read buffer per response (it stops reading at twice this): a large /view
answer waits in the kernel, not in our memory."""


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One TLS context for every pool: each context loads the CA bundle again (about 23 ms
    and 0.7 MB apiece, measured with 50 endpoints)."""
    return ssl.create_default_context(cafile=certifi.where())


def _as_httpx(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's failure as the httpx exception a caller of httpx expects."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS verification
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError | OSError):
        kind = httpx.ReadError
    else:
        kind = httpx.TransportError
    return kind(message, request=request)


_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)


class _Body(httpx.AsyncByteStream):
    """A response body as aiohttp receives it; closing it before the end drops the
    connection, reading it to the end returns the connection to the pool."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.response = response
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            raise _as_httpx(exc, self.request) from exc

    async def aclose(self) -> None:
        self.response.release()


@functools.lru_cache(maxsize=256)
def _parsed(url: str) -> httpx.URL:
    """httpx parses a URL string on every request (15 us); the same few URLs (an
    endpoint's /prompt, a client's callback) come back for every task."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _timeout(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one aiohttp connector: unlimited connections (callers bound
    their work), idle ones kept `keepalive_expiry` seconds; no redirects followed, no
    cookies kept, no proxy or netrc read from the environment, nothing decompressed
    (httpx decodes what it reads). Request bodies are read whole before sending: ours are
    prompts, webhook payloads and images bounded by MAX_IMAGE_BYTES."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, keepalive_expiry: float = 5.0
    ) -> None:
        self.ssl_context = ssl_context or shared_tls()
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """Made at the first request: aiohttp binds a session to the running loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                ssl=self.ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                read_bufsize=READ_BUFFER,
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeouts = request.extensions.get("timeout", {})
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name not in ("host", "content-length")  # aiohttp writes both itself
        ]
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(timeouts.get("connect"), timeouts.get("read")),
            )
        except _FAILURES as exc:
            raise _as_httpx(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={"reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class HttpClient:
    """httpx.Request in, httpx.Response out, straight through an `AiohttpTransport`.

    httpx.AsyncClient's own layer (merging base URL, headers and cookies, the cookie jar,
    auth, redirects, event hooks) cost 0.12 ms of CPU per request and does nothing here:
    ComfyUI sets no cookies, and webhook receivers' cookies and redirects must not be
    followed anyway."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = AiohttpTransport(ssl_context=ssl_context)
        self._extensions = {"timeout": timeout.as_dict()}
        self._headers = headers or {}

    def _build(self, method: str, url: str, headers: dict[str, str] | None, **options: Any):
        merged = {**self._headers, **headers} if headers else self._headers
        if "json" in options:  # msgspec: a 14-node prompt encoded in a fifth of the time
            options["content"] = msgspec.json.encode(options.pop("json"))
            merged = {**merged, "content-type": "application/json"}
        return httpx.Request(
            method, _parsed(url), headers=merged, extensions=self._extensions, **options
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        response.request = request  # raise_for_status and error messages name it
        return response

    async def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **options: Any
    ) -> httpx.Response:
        """The whole answer, read (`json=`, `content=`, `params=`, `data=`, `files=` as
        httpx.Request takes them)."""
        response = await self._send(self._build(method, url, headers, **options))
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **options: Any
    ) -> AsyncIterator[httpx.Response]:
        """The answer with its body unread, closed on leaving."""
        response = await self._send(self._build(method, url, headers, **options))
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
