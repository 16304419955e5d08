"""What the dashboard's routes need at request time, set by `startup` (the plugin's hooks
run once per app, so module-level state is enough, as in the other built-in plugins)."""

from __future__ import annotations

from typing import Any

from .session import Signer
from .settings import DashboardSettings
from .thumbnails import Thumbnailer


class _State:
    engine: Any = None
    pm: Any = None
    keyring: Any = None
    settings: Any = None
    """Core `Settings`."""
    own: DashboardSettings = DashboardSettings()
    signer: Signer | None = None
    thumbnailer: Thumbnailer | None = None


state = _State()
