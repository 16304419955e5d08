"""A real S3 HTTP server for tests: moto's ThreadedMotoServer on 127.0.0.1 and a free port.

One server per test process (xdist workers each get their own), a fresh bucket per test.
Tests can stop it and start it again on the same port to play an S3 outage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

# Dummy, explicit credentials: without them the AWS chain would ask the instance metadata.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


class MotoServer:
    """The process's moto server; `stop()` closes its socket so clients are refused at once
    (moto's own stop leaves the socket listening, and clients would hang instead)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.stop()
        server._server.server_close()


class S3Server:
    """What a test sees: the endpoint, its own bucket, an S3 client, and the outage switch."""

    def __init__(self, moto: MotoServer, bucket: str) -> None:
        self._moto = moto
        self.bucket = bucket
        self.region = REGION

    @property
    def endpoint_url(self) -> str:
        return self._moto.endpoint_url

    @cached_property
    def client(self):
        """A boto3 client: checks what obstore wrote with an independent implementation."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def env(self, **extra: str) -> dict[str, str]:
        """Server settings for this bucket; retries are short so an outage is seen quickly."""
        return {
            **CREDENTIALS,
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION_NAME": REGION,
            "S3_CONNECT_TIMEOUT": "1",
            "S3_RETRY_TIMEOUT": "0.5",
            **extra,
        }

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", ()))

    def get(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and Content-Type."""
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        return response["Body"].read(), response["ContentType"]

    def stop(self) -> None:
        self._moto.stop()

    def start(self) -> None:
        self._moto.start()

    @contextmanager
    def down(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    moto = MotoServer()
    moto.start()
    yield moto
    moto.stop()


@pytest.fixture
def s3_server(moto_server: MotoServer) -> Iterator[S3Server]:
    """A running S3 server with a new, empty bucket; up again after the test."""
    moto_server.start()
    server = S3Server(moto_server, f"test-{uuid.uuid4().hex[:16]}")
    server.client.create_bucket(Bucket=server.bucket)
    yield server
    moto_server.start()
