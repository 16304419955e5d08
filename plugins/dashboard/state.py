"""What the dashboard's routes need at request time. `startup` keeps it on the app
(`app.state.dashboard`) rather than in module globals, so several apps in one process
(tests, embedding) each keep their own secret, keyring and thumbnail folder."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from .session import Signer
from .settings import DashboardSettings
from .thumbnails import Thumbnailer

STATE_KEY = "dashboard"


class DashboardState:
    def __init__(
        self,
        *,
        engine: Any,
        pm: Any,
        keyring: Any,
        settings: Any,
        own: DashboardSettings,
        signer: Signer,
        thumbnailer: Thumbnailer,
    ) -> None:
        self.engine = engine
        self.pm = pm
        self.keyring = keyring
        self.settings = settings
        """Core `Settings`."""
        self.own = own
        self.signer = signer
        self.thumbnailer = thumbnailer


def of(connection: ASGIConnection) -> DashboardState:
    return connection.app.state[STATE_KEY]
