"""A webhook receiver for tests and benchmarks: a real HTTP server that records each POST."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Delivery:
    __slots__ = ("body", "headers", "path", "received_at", "wall_time")

    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.received_at = time.monotonic()
        self.wall_time = time.time()
        """Unix time of arrival, to compare with times in task records."""

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """Answers `statuses` in turn (then the last one forever) after `delay` seconds, with
    `headers` on every answer (e.g. `{"retry-after": "1"}`)."""

    def __init__(
        self,
        statuses: tuple[int, ...] = (200,),
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.headers = dict(headers or {})
        self.deliveries: list[Delivery] = []
        self._answered_before = 0
        """Deliveries that came before the current `statuses` were set."""
        self.in_flight = 0
        self.max_in_flight = 0
        """Most requests ever handled at once (a sender's concurrency limit shows here)."""
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._cond:
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._cond:
                    receiver.in_flight -= 1
                    index = len(receiver.deliveries) - receiver._answered_before
                    status = receiver.statuses[min(index, len(receiver.statuses) - 1)]
                    headers = dict(receiver.headers)
                    receiver.deliveries.append(
                        Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver._cond.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """From the next request on, answer `statuses` in turn (then the last one forever)."""
        with self._cond:
            self.statuses = list(statuses)
            self._answered_before = len(self.deliveries)
            if headers is not None:
                self.headers = dict(headers)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        """Block until `count` deliveries arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self.deliveries)} of {count} webhook deliveries arrived"
                    )
                self._cond.wait(left)
            return list(self.deliveries)

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
