"""`comfyui-server`: serve, inspect plugins and workflows, run a ComfyUI emulator.

Plugins add commands through `register_commands(cli)`. That hook runs while the command
group is being built, so `--disable` is read from argv before click parses it (as pytest's
`-p no:NAME` is).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import msgspec

from .config import ConfigError, Settings, get_settings
from .errors import ComfyServerError
from .logs import configure as configure_logging
from .plugins import PluginManager, create_plugin_manager
from .workflows import collect_workflows

TABLE_COLUMNS = ("NAME", "DISTRIBUTION", "VERSION", "KIND", "STATUS", "HOOKS")


class Context(msgspec.Struct):
    settings: Settings
    pm: PluginManager


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--disable",
    "disabled",
    multiple=True,
    metavar="NAME",
    help="Do not load this plugin (repeatable); adds to DISABLED_PLUGINS.",
)
@click.option("--env-file", default=".env", show_default=True, help="Read settings from this file.")
@click.pass_context
def cli(ctx: click.Context, disabled: tuple[str, ...], env_file: str) -> None:
    """comfyui-server: any ComfyUI workflow as a REST endpoint, over a fleet of ComfyUI."""
    if ctx.obj is None:  # invoked without main() (click's test runner, for instance)
        ctx.obj = _build_context(env_file, disabled)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--hook", "hook_filter", metavar="HOOK", help="Only plugins implementing HOOK.")
@click.pass_obj
def plugins(obj: Context, as_json: bool, hook_filter: str | None) -> None:
    """List every plugin: loaded, built-in or third-party, and disabled ones."""
    infos = obj.pm.plugin_infos()
    if hook_filter:
        infos = [i for i in infos if hook_filter in i.hooks]
    if as_json:
        click.echo(json.dumps([msgspec.to_builtins(i) for i in infos], indent=2))
        return
    rows = [TABLE_COLUMNS] + [
        (
            i.name,
            i.distribution,
            i.version or "-",
            "built-in" if i.builtin else "external",
            "disabled" if i.disabled else "enabled",
            ", ".join(i.hooks) or "-",
        )
        for i in infos
    ]
    click.echo(_table(rows))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def workflows(ctx: click.Context, as_json: bool) -> None:
    """List the deployed workflows and their parameters."""
    if ctx.invoked_subcommand is not None:
        return
    from .api.catalog import workflow_info

    registry = collect_workflows(ctx.obj.pm, ctx.obj.settings)
    infos = [workflow_info(w, registry.owner(w.name)) for w in registry]
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(infos), indent=2))
        return
    rows = [("NAME", "PLUGIN", "PARAMS", "DESCRIPTION")] + [
        (
            i.name,
            i.plugin,
            ", ".join(p.name + ("" if p.required else "?") for p in i.params) or "-",
            i.description,
        )
        for i in infos
    ]
    click.echo(_table(rows))


@workflows.command("new")
@click.argument("name")
@click.option(
    "--from",
    "export",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The workflow exported from ComfyUI with 'Export (API)'.",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    help="Where to write NAME.json and NAME.toml [WORKFLOWS_DIR].",
)
@click.option("--all-params", is_flag=True, help="Write every candidate param uncommented.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.pass_obj
def workflows_new(
    obj: Context, name: str, export: str, folder: str | None, all_params: bool, force: bool
) -> None:
    """Deploy an export: copy it to NAME.json and draft NAME.toml beside it."""
    from .workflow_tools import draft_spec
    from .workflows import Workflow

    folder = folder or obj.settings.workflows_dir
    if not folder:
        raise click.UsageError("give --dir or set WORKFLOWS_DIR")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise click.BadParameter("letters, digits, '_', '-' and '.' only", param_hint="NAME")
    text = Path(export).read_text(encoding="utf-8")
    try:
        graph = json.loads(text)
        Workflow.from_data(name, json.loads(text), source=export)
    except ValueError as exc:
        raise click.ClickException(f"{export}: {exc}") from None
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    json_file, toml_file = target / f"{name}.json", target / f"{name}.toml"
    for path in (json_file, toml_file):
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; use --force to overwrite it")
    json_file.write_text(text, encoding="utf-8")
    toml_file.write_text(draft_spec(graph, active=all_params), encoding="utf-8")
    click.echo(f"wrote {json_file} and {toml_file}; edit the TOML, then restart the server")


@workflows.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def workflows_check(obj: Context, as_json: bool) -> None:
    """Which endpoint can run which workflow, from each endpoint's /object_info."""
    import asyncio

    import httpx

    from .workflow_tools import check_matrix, endpoint_node_classes

    registry = collect_workflows(obj.pm, obj.settings)

    async def probe():
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            return await endpoint_node_classes(obj.settings.comfyui_endpoints, http)

    matrix = check_matrix(registry, asyncio.run(probe()))
    if as_json:
        click.echo(json.dumps(matrix, indent=2))
        return
    endpoints = list(next(iter(matrix.values()), {}))
    rows = [("WORKFLOW", *endpoints)] + [
        (name, *(row[e] for e in endpoints)) for name, row in matrix.items()
    ]
    click.echo(_table(rows))


@cli.group()
def tasks() -> None:
    """Work on recorded tasks."""


@tasks.command("retry-storage")
@click.pass_obj
def tasks_retry_storage(obj: Context) -> None:
    """Store the outputs kept in the fallback folder, then clean their records and files."""
    import asyncio

    from .plugin_context import started_plugins
    from .storage_retry import retry_storage

    async def run():
        async with started_plugins(obj.settings, obj.pm) as store:
            return await retry_storage(store, obj.pm, obj.settings.failed_path)

    report = asyncio.run(run())
    click.echo(
        f"stored {report.files_stored} file(s); {len(report.tasks_fixed)} task(s) clean"
        + (f": {', '.join(map(str, report.tasks_fixed))}" if report.tasks_fixed else "")
    )
    for failure in report.failures:
        click.echo(f"still failing: {failure}", err=True)
    if report.failures:
        sys.exit(1)


@cli.command()
@click.option("--server", "server_url", help="The running server [PUBLIC_URL or host:port].")
@click.option("--key", envvar="COMFYUI_SERVER_KEY", help="API key [COMFYUI_SERVER_KEY].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def endpoints(obj: Context, server_url: str | None, key: str | None, as_json: bool) -> None:
    """Ask the running server about its ComfyUI endpoints."""
    import httpx

    base = (server_url or obj.settings.base_url).rstrip("/") + obj.settings.route_prefix
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(base + "/endpoints", headers=headers, timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {base}: {exc}") from None
    if response.status_code != 200:
        raise click.ClickException(f"{base}/endpoints: HTTP {response.status_code} {response.text}")
    found = response.json()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [("NAME", "STATUS", "QUEUE", "IN FLIGHT", "NODES", "WORKFLOWS", "LAST ERROR")] + [
        (
            e["name"],
            e["status"],
            str(e["queue_remaining"]),
            f"{e['in_flight']}/{e['capacity']}",
            "-" if e["node_classes"] is None else str(e["node_classes"]),
            "-" if e["workflows"] is None else ", ".join(e["workflows"]) or "none",
            e["last_error"] or "-",
        )
        for e in found
    ]
    click.echo(_table(rows))


@cli.command()
@click.option("--host", help="Listen address [SERVICE_HOST].")
@click.option("--port", type=int, help="Listen port [SERVICE_PORT].")
@click.pass_obj
def serve(obj: Context, host: str | None, port: int | None) -> None:
    """Run the server on SERVICE_HOST:SERVICE_PORT."""
    import uvicorn

    from .app import create_app

    settings = obj.settings
    if host or port:
        settings = msgspec.structs.replace(
            settings,
            service_host=host or settings.service_host,
            service_port=port or settings.service_port,
        )
    log_writer = configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, obj.pm)
    logging.getLogger("comfyui_server").info(
        "comfyui-server on %s (API under %s)", settings.base_url, settings.route_prefix
    )
    config = uvicorn.Config(
        app,
        host=settings.service_host,
        port=settings.service_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn ends a signalled shutdown by raising the signal again, which ends the
            # process without atexit: the log lines still queued are written first
            with super().capture_signals():
                try:
                    yield
                finally:
                    log_writer.close()

    # What exists now (imported modules, plugins, workflows) lives as long as the process:
    # kept out of the garbage collector's full passes, which otherwise walk all of it.
    gc.collect()
    gc.freeze()
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises a Ctrl-C it handled
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn.run's code for a failed start-up


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8188, show_default=True, type=int)
@click.option(
    "--node-time",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds each executed node takes.",
)
@click.option("--base-dir", type=click.Path(file_okay=False), help="input/output/temp live here.")
def emulate(host: str, port: int, node_time: float, base_dir: str | None) -> None:
    """Run a ComfyUI emulator (model-free nodes, real HTTP and websocket), for trying the
    server without a GPU."""
    from .testing.emulator import run_emulator

    run_emulator(
        host=host,
        port=port,
        node_time=node_time,
        base_dir=base_dir,
        on_started=lambda emulator: click.echo(f"ComfyUI emulator on {emulator.url}"),
    )


def _argv_option(argv: Sequence[str], name: str) -> list[str]:
    """Values of `--name X` / `--name=X` given before the subcommand."""
    values, it = [], iter(argv)
    for arg in it:
        if arg == name:
            values.append(next(it, ""))
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
        elif not arg.startswith("-"):
            break  # the subcommand: its own options are not ours
    return values


def _build_context(env_file: str, disabled: Sequence[str]) -> Context:
    settings = get_settings(env_file=env_file)
    pm = create_plugin_manager(disabled=[*settings.disabled_plugins, *disabled])
    return Context(settings=settings, pm=pm)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    env_file = (_argv_option(argv, "--env-file") or [".env"])[-1]
    try:
        context = _build_context(env_file, _argv_option(argv, "--disable"))
    except (ConfigError, ComfyServerError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    context.pm.hook.register_commands(cli=cli)
    try:
        cli.main(args=argv, obj=context, prog_name="comfyui-server")
    except ComfyServerError as exc:  # a bad workflow file or setting met while running
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
