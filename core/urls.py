"""Which URLs we fetch from or call back to: http(s) only, and no loopback, private or
link-local address unless the operator allows it (URL_ALLOWLIST). Checked after DNS
resolution, so a public name that points inside the network is refused too."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from .errors import RequestError


class UrlPolicy:
    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in allowlist:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower())

    def _allowed_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if any(ip in net for net in self.networks):
            return True
        return ip.is_global and not ip.is_multicast

    async def check(self, url: str, field: str) -> None:
        """Raise RequestError naming `field` unless `url` may be fetched or called."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"{field} must be an http(s) URL", field=field, status_code=422)
        host = parts.hostname.lower()
        if host in self.hosts:
            return
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, parts.port or 80, type=socket.SOCK_STREAM
                )
            except OSError:
                raise RequestError(
                    f"{field}: cannot resolve host {host!r}", field=field, status_code=422
                ) from None
            ips = [ipaddress.ip_address(info[4][0]) for info in infos]
        for ip in ips:
            if not self._allowed_ip(ip):
                raise RequestError(
                    f"{field}: {host} resolves to the non-public address {ip}; add it to "
                    "URL_ALLOWLIST to allow it",
                    field=field,
                    status_code=422,
                )
