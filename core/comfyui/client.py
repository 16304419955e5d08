"""ComfyUI's HTTP API, as recorded from the real server (see docs/comfyui-protocol.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from .. import __version__
from ..errors import EndpointUnavailable
from ..http_transport import HttpClient


class PromptRejected(Exception):
    """POST /prompt answered 400: the graph failed ComfyUI's validation."""

    def __init__(self, body: Any) -> None:
        self.body = body
        super().__init__(describe_rejection(body))


def describe_rejection(body: Any) -> str:
    """A one-line reason from ComfyUI's 400 body, naming the nodes and inputs at fault."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the prompt: {body!r}"[:500]
    error = body.get("error") or {}
    parts = [str(error.get("message") or error.get("type") or "rejected")]
    if error.get("details"):
        parts.append(str(error["details"]))
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", ()):
            reason = err.get("details") or err.get("message")
            parts.append(f"node {node_id} ({node.get('class_type')}): {reason}")
    return "; ".join(parts)[:1000]


def parse_endpoint(spec: str) -> tuple[str, float]:
    """`host:port` (the seed's notation) or a URL, optionally with `?weight=N` for an
    endpoint N times as fast as a plain one: (base URL without a trailing slash, weight)."""
    spec = spec.strip()
    if "://" not in spec:
        spec = f"http://{spec}"
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a ComfyUI endpoint: {spec!r}")
    weight = 1.0
    for key, value in parse_qsl(parts.query):
        if key != "weight":
            raise ValueError(f"{spec!r}: unknown option {key!r} (only weight)")
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not weight > 0:
            raise ValueError(f"{spec!r}: weight must be a positive number")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), weight


def endpoint_url(spec: str) -> str:
    return parse_endpoint(spec)[0]


def endpoint_name(url: str) -> str:
    return urlsplit(url).netloc


class ComfyUIClient:
    """One ComfyUI instance over its own connection pool (closed with the endpoint).
    Connection failures and 5xx become EndpointUnavailable, which the engine treats as
    "try elsewhere"."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self.name = endpoint_name(url)
        # never waits for a connection: the engine already bounds the work per endpoint
        self.http = HttpClient(
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers={"user-agent": f"comfyui-server/{__version__}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "/ws"

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(f"{self.name}: {method} {path}: {exc!r}") from exc
        if response.status_code >= 500:
            raise EndpointUnavailable(
                f"{self.name}: {method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response

    async def post_prompt(self, prompt: dict[str, Any], *, client_id: str, prompt_id: str) -> dict:
        body = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        response = await self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            try:
                raise PromptRejected(response.json())
            except ValueError:
                raise PromptRejected(response.text) from None
        response.raise_for_status()
        return response.json()

    async def upload_image(self, data: bytes, filename: str, subfolder: str = "") -> str:
        """Upload to the input folder; returns the name LoadImage takes (`subfolder/name`)."""
        files = {"image": (filename, data, "application/octet-stream")}
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true"}
        response = await self._request("POST", "/upload/image", files=files, data=fields)
        response.raise_for_status()
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    async def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry, or None while it is unknown or unfinished."""
        response = await self._request("GET", f"/history/{prompt_id}")
        response.raise_for_status()
        return response.json().get(prompt_id)

    async def queue(self) -> dict:
        response = await self._request("GET", "/queue")
        response.raise_for_status()
        return response.json()

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        response = await self._request("POST", "/queue", json={"delete": prompt_ids})
        response.raise_for_status()

    async def delete_history(self, prompt_ids: list[str]) -> None:
        response = await self._request("POST", "/history", json={"delete": prompt_ids})
        response.raise_for_status()

    async def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = await self._request("POST", "/interrupt", json=body)
        response.raise_for_status()

    async def object_info(self) -> dict:
        response = await self._request("GET", "/object_info")
        response.raise_for_status()
        return response.json()

    async def system_stats(self) -> dict:
        response = await self._request("GET", "/system_stats")
        response.raise_for_status()
        return response.json()

    async def view(self, filename: str, subfolder: str, type_: str) -> AsyncIterator[bytes]:
        """Stream one file from /view, chunk by chunk, never whole."""
        params = {"filename": filename, "subfolder": subfolder, "type": type_}
        try:
            async with self.http.stream("GET", self.url + "/view", params=params) as response:
                if response.status_code != 200:
                    raise FileNotFoundError(
                        f"{self.name}: /view {subfolder}/{filename} ({type_}): "
                        f"HTTP {response.status_code}"
                    )
                async for chunk in response.aiter_bytes(256 * 1024):
                    yield chunk
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(f"{self.name}: /view {filename}: {exc!r}") from exc
