"""httpx clients for the per-task hot path, on a plain asyncio socket layer.

httpx runs on httpcore, which by default reaches the socket through anyio: every read and
write enters an anyio cancel scope and a `fail_after`. For the three requests comfyui-server
makes per task (POST /prompt, GET /view, the webhook) that layer cost about 0.1 ms of CPU
per request under uvloop on a 2-core machine (0.72 -> 0.61 ms per GET; bench case g
measures it in every run), 0.2 ms under plain asyncio. httpcore accepts its
network layer as a plug-in (`network_backend`), so this module gives it one built on an
`asyncio.Protocol`, wraps the pool as an httpx transport, and sends httpx requests straight
to it (`HttpClient`): the API stays httpx's, with its exceptions, timeouts, streaming and
TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import certifi
import httpcore
import httpx


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One TLS context for every pool: each context loads the CA bundle again (about 23 ms
    and 0.7 MB apiece, measured with 50 endpoints)."""
    return ssl.create_default_context(cafile=certifi.where())


READ_AHEAD = 1024 * 1024
"""Bytes received but not yet read at which the socket stops reading: a large /view
answer waits in the kernel, not in our memory."""


class _Socket(asyncio.Protocol):
    """Bytes received and not yet read, end of stream, and flow control both ways, for one
    connection. httpcore reads from one task at a time, so one waiter is enough."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = bytearray()
        self.ended = False
        self.error: Exception | None = None
        self.reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio's classes
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_AHEAD and self.transport and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def take(self, max_bytes: int) -> bytes:
        if len(self.buffer) <= max_bytes:
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
        if self.reading_paused and len(self.buffer) < READ_AHEAD // 2 and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def eof_received(self) -> bool:
        self.ended = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_readable(self) -> None:
        self._readable = asyncio.get_running_loop().create_future()
        await self._readable

    @property
    def writing_paused(self) -> bool:
        return self._writable is not None

    async def wait_writable(self) -> None:
        if self._writable is not None:  # shielded: a timed-out writer must not cancel it
            await asyncio.shield(self._writable)


@contextlib.contextmanager
def _timeout_as(error: type[Exception], timeout: float | None) -> Iterator[None]:
    """asyncio's timeout, raised as httpcore's `error` (what httpx maps to its own)."""
    try:
        yield
    except TimeoutError as exc:
        raise error(f"no progress within {timeout} s") from exc


WRITE_COALESCE = 64 * 1024
"""Bytes of a request held back before they go out; the rest goes when the answer is
awaited. h11 hands over a request's head and its body separately: one send per POST
instead of two (0.63 -> 0.61 ms of client CPU per POST, and one wake-up of the receiver
instead of two; on this 2-core machine a send that wakes the peer measured 25 us of CPU
but 210-310 us of wall time, the kernel running the peer first)."""


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, sock: _Socket) -> None:
        self.sock = sock
        self._unsent: list[bytes] = []
        self._unsent_size = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        sock = self.sock
        if self._unsent:  # httpcore reads once the request is written: send it now
            await self._flush(timeout)
        if not sock.buffer and not sock.ended:
            with _timeout_as(httpcore.ReadTimeout, timeout):
                async with asyncio.timeout(timeout):
                    await sock.wait_readable()
        if sock.buffer:
            return sock.take(max_bytes)
        if sock.error is not None:
            raise httpcore.ReadError(str(sock.error) or type(sock.error).__name__)
        return b""  # the peer closed the connection: httpcore's signal for it

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        sock = self.sock
        if sock.transport is None or sock.transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        if not buffer:
            return
        self._unsent.append(buffer)
        self._unsent_size += len(buffer)
        if self._unsent_size >= WRITE_COALESCE:
            await self._flush(timeout)

    async def _flush(self, timeout: float | None) -> None:
        sock, unsent = self.sock, self._unsent
        data = unsent[0] if len(unsent) == 1 else b"".join(unsent)
        unsent.clear()
        self._unsent_size = 0
        if sock.transport is None or sock.transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        sock.transport.write(data)
        if sock.writing_paused:
            with _timeout_as(httpcore.WriteTimeout, timeout):
                async with asyncio.timeout(timeout):
                    await sock.wait_writable()

    async def aclose(self) -> None:
        if self.sock.transport is not None:
            self.sock.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        assert self.sock.transport is not None
        try:
            with _timeout_as(httpcore.ConnectTimeout, timeout):
                async with asyncio.timeout(timeout):
                    transport = await loop.start_tls(
                        self.sock.transport,
                        self.sock,
                        ssl_context,
                        server_hostname=server_hostname,
                    )
        except OSError as exc:  # ssl.SSLError is one
            self.sock.transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        self.sock.transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self.sock.transport
        if info == "is_readable":  # httpcore's check that an idle connection is still good
            return bool(self.sock.buffer) or self.sock.ended
        if transport is None:
            return None
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return transport.get_extra_info(names.get(info, info))


class AsyncioNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on asyncio's own transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        sock = _Socket()
        try:
            with _timeout_as(httpcore.ConnectTimeout, timeout):
                async with asyncio.timeout(timeout):
                    await loop.create_connection(
                        lambda: sock,
                        host,
                        port,
                        local_addr=(local_address, 0) if local_address else None,
                    )
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        raw = sock.transport.get_extra_info("socket") if sock.transport else None
        for option in socket_options or ():
            if raw is not None:
                raw.setsockopt(*option)
        return _Stream(sock)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        sock = _Socket()
        try:
            with _timeout_as(httpcore.ConnectTimeout, timeout):
                async with asyncio.timeout(timeout):
                    await loop.create_unix_connection(lambda: sock, path)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _Stream(sock)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as httpx's of the same name, as httpx's own transport does."""
    try:
        yield
    except (
        httpcore.TimeoutException,
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpcore.ProxyError,
    ) as exc:
        mapped = getattr(httpx, type(exc).__name__, httpx.TransportError)
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self.inner:
                yield part

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self.inner.aclose()


class AsyncioTransport(httpx.AsyncBaseTransport):
    """An httpx transport: one httpcore connection pool on `AsyncioNetwork`."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        max_keepalive_connections: int | None = None,
        keepalive_expiry: float | None = 5.0,
    ) -> None:
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or shared_tls(),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=AsyncioNetwork(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self.pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


class HttpClient:
    """httpx.Request in, httpx.Response out, straight through an `AsyncioTransport`.

    httpx.AsyncClient's own layer (merging base URL, headers and cookies, the cookie jar,
    auth, redirects, event hooks) cost 0.12 ms of CPU per request (0.61 -> 0.49 ms per GET
    under uvloop) and does nothing here: ComfyUI sets no cookies, and webhook receivers'
    cookies and redirects must not be followed anyway. Connections are not limited here
    (callers bound their work); proxies and netrc from the environment are not read."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout,
        max_keepalive_connections: int,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = AsyncioTransport(
            ssl_context=ssl_context, max_keepalive_connections=max_keepalive_connections
        )
        self._extensions = {"timeout": timeout.as_dict()}
        self._headers = headers or {}

    def _build(self, method: str, url: str, headers: dict[str, str] | None, **options: Any):
        merged = {**self._headers, **headers} if headers else self._headers
        return httpx.Request(method, url, headers=merged, extensions=self._extensions, **options)

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
