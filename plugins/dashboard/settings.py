"""The dashboard's own settings, read from the same environment as core's."""

from __future__ import annotations

from typing import Annotated

import msgspec


class DashboardSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    dashboard_secret: str | None = None
    """Key that signs the sign-in cookie (16+ characters). Unset: a random one per process,
    so sessions end when the server restarts and do not carry across replicas."""
    dashboard_session_hours: Annotated[float, msgspec.Meta(gt=0)] = 12.0
    """How long a sign-in lasts."""
    dashboard_thumbnail_px: Annotated[int, msgspec.Meta(ge=32, le=1024)] = 256
    """Longest side of a thumbnail, in pixels."""
    dashboard_thumbnail_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    """Largest output file the dashboard downloads to make a thumbnail from."""
