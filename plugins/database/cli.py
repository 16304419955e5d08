"""`comfyui-server db upgrade`: apply migrations by hand (for DB_AUTO_MIGRATE=false, or to
migrate once before rolling out replicas)."""

from __future__ import annotations

import asyncio

import click
from comfyui_server.core import Settings
from comfyui_server.core.config import get_settings
from comfyui_server.core.errors import ComfyServerError

from . import store_for
from .migrate import Migration, schema_version, upgrade
from .settings import DatabaseTarget, resolve_target


@click.group()
def db() -> None:
    """The task database (SQLite or PostgreSQL)."""


@db.command("upgrade")
@click.option("--to", "to", type=int, default=None, help="Stop after this schema version.")
def upgrade_command(to: int | None) -> None:
    """Apply pending schema migrations and print each one applied."""
    # The core CLI keeps its Settings (honouring --env-file) on the context object.
    settings = getattr(click.get_current_context().obj, "settings", None)
    if not isinstance(settings, Settings):
        settings = get_settings()
    try:
        target = resolve_target(settings)
        applied, version = asyncio.run(_upgrade(target, to))
    except ComfyServerError as exc:
        raise click.ClickException(str(exc)) from None
    for migration in applied:
        click.echo(f"applied {migration.label}: {migration.description}")
    if not applied:
        click.echo("nothing to apply")
    click.echo(f"{target.display}: schema at version {version}")


async def _upgrade(target: DatabaseTarget, to: int | None) -> tuple[list[Migration], int]:
    store = store_for(target)
    await store.connect()
    try:
        applied = await upgrade(store, to=to)
        return applied, await schema_version(store)
    finally:
        await store.close()
