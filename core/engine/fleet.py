"""The ComfyUI endpoints this server sends work to, each with its websocket monitor."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import httpx

from ..comfyui.client import ComfyUIClient, endpoint_url
from ..comfyui.monitor import EndpointMonitor
from ..errors import ConfigError
from ..models import EndpointState


class Fleet:
    def __init__(
        self,
        specs: Iterable[str],
        http: httpx.AsyncClient,
        *,
        capacity: int,
        on_change: Callable[[], None],
        on_started: Callable[[str], None],
        on_progress: Callable[[str, str | None, int | None, int | None], None] | None = None,
        **monitor_options: float,
    ) -> None:
        self.monitors: dict[str, EndpointMonitor] = {}
        for spec in specs:
            try:
                url = endpoint_url(spec)
            except ValueError as exc:
                raise ConfigError(f"COMFYUI_ENDPOINTS: {exc}") from None
            client = ComfyUIClient(url, http)
            if client.name in self.monitors:
                raise ConfigError(f"COMFYUI_ENDPOINTS: {client.name} is listed twice")
            self.monitors[client.name] = EndpointMonitor(
                client,
                capacity=capacity,
                on_change=on_change,
                on_started=on_started,
                on_progress=on_progress,
                **monitor_options,
            )

    def start(self) -> None:
        for monitor in self.monitors.values():
            monitor.start()

    async def close(self) -> None:
        for monitor in self.monitors.values():
            await monitor.close()

    def states(self) -> list[EndpointState]:
        return [m.state() for m in self.monitors.values()]

    def get(self, name: str | None) -> EndpointMonitor | None:
        return self.monitors.get(name) if name else None

    def free_slots(self) -> int:
        return sum(
            max(0, m.capacity - len(m.watches)) for m in self.monitors.values() if m.status == "up"
        )
