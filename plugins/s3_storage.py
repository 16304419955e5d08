"""Output files in an S3 bucket (AWS, MinIO, Cloudflare R2, moto...), handed to clients as
presigned GET URLs made afresh on every read, so a stored link never stays expired.

Inactive unless S3_BUCKET is set: `store` then answers None and local storage (trylast)
serves. When S3 fails, `store` raises and core keeps the file in the fallback folder with
error code 2, so an S3 outage never loses an output.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
import obstore
from comfyui_server.core import (
    Artifact,
    ConfigError,
    OutputRef,
    Settings,
    SizedStream,
    StoredOutput,
    Task,
    hookimpl,
)
from comfyui_server.core.paths import safe_relative_path
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

log = logging.getLogger(__name__)

STORAGE = "s3"
MIN_PART = 5 * 1024 * 1024
"""S3 refuses multipart parts under 5 MiB (except the last)."""
MAX_PRESIGN_TTL = 7 * 24 * 3600
"""SigV4 presigned URLs cannot outlive seven days."""
PLACEHOLDERS = (
    "prefix",
    "task_id",
    "client_task_id",
    "comfyui_task_id",
    "workflow",
    "node_id",
    "subfolder",
    "filename",
    "path",
    "date",
)

# mimetypes depends on the host's /etc/mime.types (webp, flac and wav vary); pin what
# ComfyUI nodes write so a bucket serves the same Content-Type wherever we run.
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".m4a": "audio/mp4",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".glb": "model/gltf-binary",
}


class S3Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    """Only with temporary credentials (STS)."""
    s3_bucket: str | None = None
    """Unset: the plugin is inactive and local storage serves."""
    s3_region_name: str | None = None
    s3_endpoint_url: str | None = None
    """An S3-compatible service (MinIO, R2, moto); unset means AWS."""
    s3_key_prefix: str = ""
    s3_key_template: str = "{prefix}{task_id}/{path}"
    s3_presign_ttl: Annotated[int, msgspec.Meta(ge=1, le=MAX_PRESIGN_TTL)] = 3600
    s3_addressing: Literal["path", "virtual"] | None = None
    """Default: virtual-hosted for AWS, path-style when S3_ENDPOINT_URL is set."""
    s3_multipart_chunk: Annotated[int, msgspec.Meta(ge=MIN_PART)] = MIN_PART
    """Part size; larger files go up in parts of this size, smaller ones in one PUT."""
    s3_max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Parts of one file in flight at once. Each holds a part in memory, so memory per
    upload is about this times S3_MULTIPART_CHUNK; 2 keeps a large output near 10 MB."""
    s3_connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    s3_retry_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Seconds one request keeps retrying before the output goes to the fallback folder
    (obstore's own default is three minutes, too long to hold a task)."""


def check_template(template: str) -> None:
    """Fail at start-up, not on the first output, when the template cannot make keys."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"S3_KEY_TEMPLATE: {exc}") from None
    unknown = fields - set(PLACEHOLDERS)
    if unknown:
        raise ConfigError(
            f"S3_KEY_TEMPLATE: unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PLACEHOLDERS)}"
        )
    if not fields & {"filename", "path"}:
        raise ConfigError("S3_KEY_TEMPLATE must contain {filename} or {path}, or keys collide")
    sample = {name: 1 if name == "task_id" else "x" for name in PLACEHOLDERS}
    try:
        template.format_map(sample)
    except (ValueError, KeyError, IndexError) as exc:  # e.g. a format spec that does not fit
        raise ConfigError(f"S3_KEY_TEMPLATE: {exc!r}") from None


def output_key(template: str, prefix: str, task: Task, artifact: Artifact) -> str:
    """The object key. Every value that comes from ComfyUI or the client is made a safe
    relative path before it is placed, and the whole key once more after, so no `..`,
    root or drive from a name can lead outside the prefix."""

    def safe(value: str | None) -> str:
        return safe_relative_path(value) if value and value.strip() else ""

    filename = safe(artifact.filename) or "output"
    subfolder = safe(artifact.subfolder)
    values = {
        "prefix": prefix,
        "task_id": task.id,
        "client_task_id": safe(task.client_task_id),
        "comfyui_task_id": safe(task.comfyui_task_id),
        "workflow": safe(task.workflow),
        "node_id": safe(artifact.node_id),
        "subfolder": subfolder,
        "filename": filename,
        "path": f"{subfolder}/{filename}" if subfolder else filename,
        "date": task.created_at.strftime("%Y-%m-%d"),
    }
    return safe_relative_path(template.format_map(values))


def content_type_of(artifact: Artifact) -> str:
    suffix = PurePosixPath(artifact.filename).suffix.lower()
    return CONTENT_TYPES.get(suffix) or artifact.content_type or "application/octet-stream"


def store_options(own: S3Settings) -> dict[str, Any]:
    """Keyword arguments for `S3Store`. Keys given in settings are passed explicitly, so a
    configured key pair is never silently replaced by instance metadata; with neither key
    set, obstore's AWS credential chain applies (environment, web identity, instance role)."""
    endpoint = own.s3_endpoint_url
    addressing = own.s3_addressing or ("path" if endpoint else "virtual")
    config: dict[str, Any] = {"virtual_hosted_style_request": addressing == "virtual"}
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"S3_ENDPOINT_URL must be an http(s) URL, got {endpoint!r}")
        if addressing == "virtual" and not parts.netloc.startswith(f"{own.s3_bucket}."):
            # obstore wants the bucket inside a virtual-hosted endpoint; users give the service.
            parts = parts._replace(netloc=f"{own.s3_bucket}.{parts.netloc}")
        config["endpoint"] = urlunsplit(parts).rstrip("/")
    if own.s3_region_name:
        config["region"] = own.s3_region_name
    if own.aws_access_key_id:
        config["access_key_id"] = own.aws_access_key_id
        config["secret_access_key"] = own.aws_secret_access_key
        if own.aws_session_token:
            config["session_token"] = own.aws_session_token
    return {
        "bucket": own.s3_bucket,
        "config": config,
        "client_options": {
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": dt.timedelta(seconds=own.s3_connect_timeout),
        },
        "retry_config": {"retry_timeout": dt.timedelta(seconds=own.s3_retry_timeout)},
    }


def check_settings(own: S3Settings) -> None:
    if bool(own.aws_access_key_id) != bool(own.aws_secret_access_key):
        given, missing = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if own.aws_access_key_id
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise ConfigError(
            f"{missing} is not set but {given} is: set both, or neither to use the AWS "
            "credential chain (environment, instance role)"
        )
    check_template(own.s3_key_template)


@dataclass(frozen=True, slots=True)
class Bucket:
    store: S3Store
    settings: S3Settings

    def key(self, task: Task, artifact: Artifact) -> str:
        own = self.settings
        return output_key(own.s3_key_template, own.s3_key_prefix, task, artifact)

    async def put(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> int:
        """Upload a stream, holding at most one part in memory: a file that fits in one
        part goes up in a single PUT (one request, not three), a larger one in parts."""
        attributes = {"Content-Type": content_type}
        part_size = self.settings.s3_multipart_chunk
        stream = SizedStream(chunks, small=part_size)
        whole = await stream.whole()
        if whole is not None:
            await obstore.put_async(
                self.store, key, whole, attributes=attributes, use_multipart=False
            )
        else:
            await obstore.put_async(
                self.store,
                key,
                stream.chunks(),
                attributes=attributes,
                use_multipart=True,
                chunk_size=part_size,
                max_concurrency=self.settings.s3_max_concurrency,
            )
        return stream.size

    async def check(self) -> None:
        """List one page under the prefix: fails when the bucket is missing, unreachable
        or the credentials are wrong."""
        stream = obstore.list(self.store, self.settings.s3_key_prefix or None, chunk_size=1)
        try:
            await anext(stream)
        except StopAsyncIteration:
            pass


class S3UploadError(Exception):
    """Carries obstore's first line, not its debug dump, into the task's error message."""


def first_line(exc: BaseException) -> str:
    """obstore's messages carry a multi-line debug dump after the useful first line."""
    return str(exc).split("\n", 1)[0] or type(exc).__name__


class _State:
    bucket: Bucket | None = None


_state = _State()


@hookimpl
async def startup(settings: Settings) -> None:
    own = settings.load(S3Settings)
    _state.bucket = None
    if not own.s3_bucket:
        return
    check_settings(own)
    options = store_options(own)
    try:
        s3 = S3Store(**options)
    except Exception as exc:
        raise ConfigError(f"S3_BUCKET/S3_ENDPOINT_URL/S3_REGION_NAME: {exc}") from None
    bucket = Bucket(store=s3, settings=own)
    # A bucket that is down now must not stop start-up: outputs go to the fallback folder
    # until it is back, and no task is lost.
    try:
        await asyncio.wait_for(bucket.check(), timeout=2 * own.s3_connect_timeout)
    except Exception as exc:
        log.warning(
            "S3 bucket %r is not reachable (%s); outputs go to the fallback folder until it "
            "is: check S3_BUCKET, S3_ENDPOINT_URL, S3_REGION_NAME and the credentials",
            own.s3_bucket,
            first_line(exc),
        )
    _state.bucket = bucket


@hookimpl
def shutdown() -> None:
    _state.bucket = None


@hookimpl
async def store(artifact: Artifact, task: Task) -> StoredOutput | None:
    bucket = _state.bucket
    if bucket is None:
        return None
    key = bucket.key(task, artifact)
    try:
        size = await bucket.put(key, artifact.chunks(), content_type_of(artifact))
    except ObstoreError as exc:
        raise S3UploadError(f"S3 upload of {key!r} failed: {first_line(exc)}") from exc
    return StoredOutput(key=key, size=size, storage=STORAGE)


@hookimpl
async def output_url(output: OutputRef) -> str | None:
    bucket = _state.bucket
    if output.storage != STORAGE or bucket is None:
        return None
    ttl = dt.timedelta(seconds=bucket.settings.s3_presign_ttl)
    try:
        return await obstore.sign_async(bucket.store, "GET", output.key, ttl)
    except ObstoreError as exc:
        # e.g. the credential chain is unreachable: a record without a link beats no record
        log.warning("cannot presign %r: %s", output.key, first_line(exc))
        return None
