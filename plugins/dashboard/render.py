"""Jinja2 templates rendered into Litestar responses.

The dashboard is a plugin, so it cannot set the app's `template_config`; it keeps its own
Jinja environment (autoescaping on) and returns HTML `Response`s, with a strict Content
Security Policy: every script and style is ours, served from /ui/static.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2
from comfyui_server.core import __version__
from litestar import Response
from litestar.enums import MediaType

from .views import human_duration, human_size, human_time

HERE = Path(__file__).parent
PREFIX = "/ui"

SECURITY_HEADERS = {
    # outputs may live elsewhere (presigned S3 links), so images and media may load from
    # any http(s) origin; scripts, styles, forms and frames stay our own
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: http: https:; media-src 'self' http: https:; "
        "script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(duration=human_duration, size=human_size, time=human_time)
_env.globals.update(
    prefix=PREFIX,
    static=lambda name: f"{PREFIX}/static/{name}?v={__version__}",
)


def _iso(moment: dt.datetime | None) -> str:
    return moment.isoformat() if moment else ""


_env.filters["iso"] = _iso


def html(template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("viewer", None)
    context.setdefault("nav", None)
    body = _env.get_template(template).render(**context)
    return Response(
        body, media_type=MediaType.HTML, status_code=status_code, headers=SECURITY_HEADERS
    )
