"""Tell the client about its task: POST the task record to its `client_callback_url`.

This module holds the plugin's settings. Its first paragraph repeats the package's because
docs/reference/configuration.md introduces the plugin's variables with it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    webhook_secret: tuple[str, ...] = ()
    """Signing secrets, base64 after an optional `whsec_` prefix; several (comma-separated)
    sign with each, for rotation. Empty: deliveries are sent unsigned."""
    webhook_retry_window: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds after the event during which a delivery is retried."""
    webhook_backoff_base: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Delay before the first retry; doubled for each later one."""
    webhook_backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Longest delay between two attempts."""
    webhook_max_per_host: Annotated[int, msgspec.Meta(ge=1)] = 4
    """Requests in flight at once to one receiver (scheme, host, port)."""
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Seconds one attempt may take, from resolving the host to the answer's status."""
    webhook_progress_interval: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """At most one `task.progress` per task per this many seconds."""
    webhook_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """How often the outbox is read for deliveries left by a restart or another replica."""
