"""The ComfyUI endpoints this server sends work to, each with its websocket monitor."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..comfyui.client import ComfyUIClient, endpoint_name, parse_endpoint
from ..comfyui.monitor import EndpointMonitor
from ..errors import ConfigError
from ..models import EndpointState


class Fleet:
    """Endpoints by name. COMFYUI_ENDPOINTS gives the first ones; `add` and `remove` change
    the fleet at run time (in this process only: a restart reads COMFYUI_ENDPOINTS again)."""

    def __init__(
        self,
        specs: Iterable[str],
        *,
        capacity: int,
        on_change: Callable[[], None],
        on_started: Callable[[str], None],
        on_progress: Callable[[str, str | None, int | None, int | None], None] | None = None,
        **monitor_options: float,
    ) -> None:
        self.capacity = capacity
        self.on_change = on_change
        self._callbacks = {"on_started": on_started, "on_progress": on_progress}
        self.monitor_options = monitor_options
        self.monitors: dict[str, EndpointMonitor] = {}
        self.running = False
        for spec in specs:
            try:
                self._make(spec)
            except ValueError as exc:
                raise ConfigError(f"COMFYUI_ENDPOINTS: {exc}") from None

    def _make(self, spec: str) -> EndpointMonitor:
        url, weight = parse_endpoint(spec)
        if endpoint_name(url) in self.monitors:
            raise ValueError(f"{endpoint_name(url)} is listed twice")
        client = ComfyUIClient(url)
        monitor = self.monitors[client.name] = EndpointMonitor(
            client,
            capacity=self.capacity,
            on_change=self.on_change,
            weight=weight,
            **self._callbacks,
            **self.monitor_options,
        )
        return monitor

    def start(self) -> None:
        self.running = True
        for monitor in self.monitors.values():
            monitor.start()

    async def close(self) -> None:
        self.running = False
        for monitor in self.monitors.values():
            await monitor.close()
            await monitor.client.aclose()

    def add(self, spec: str) -> EndpointMonitor:
        """Add an endpoint; ValueError when the spec is bad or the endpoint known."""
        monitor = self._make(spec)
        if self.running:
            monitor.start()
        return monitor

    def drain(self, name: str) -> EndpointMonitor:
        """Send no new work to the endpoint; `remove` forgets it once its work is done."""
        monitor = self.monitors[name]
        monitor.draining = True
        self.on_change()
        return monitor

    async def remove(self, name: str) -> None:
        monitor = self.drain(name)
        await monitor.idle.wait()
        await monitor.close()
        await monitor.client.aclose()
        if self.monitors.get(name) is monitor:
            del self.monitors[name]
        self.on_change()

    def states(self) -> list[EndpointState]:
        return [m.state() for m in self.monitors.values()]

    def get(self, name: str | None) -> EndpointMonitor | None:
        return self.monitors.get(name) if name else None

    def total_slots(self) -> int:
        """Prompts the endpoints that take work could hold at once."""
        return sum(
            m.capacity for m in self.monitors.values() if m.status == "up" and not m.draining
        )

    def free_slots(self) -> int:
        return sum(
            max(0, m.capacity - len(m.watches))
            for m in self.monitors.values()
            if m.status == "up" and not m.draining
        )
