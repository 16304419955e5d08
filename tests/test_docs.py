"""The documentation says what the code does: every hook, setting and route is documented,
the generated reference pages are current, the site's pages and links hang together, and
the quickstart works when followed to the letter.

These tests read Markdown only; the MkDocs build itself runs in `nox -s docs`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import httpx
import msgspec
from comfyui_server.core import docs_gen
from comfyui_server.core.config import Settings, get_settings
from comfyui_server.core.plugins import create_plugin_manager
from comfyui_server.core.testing.server import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HEADING = re.compile(r"^#{1,6} (?P<text>.+?)(?: \{#[\w-]+\})?\s*$", re.MULTILINE)


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def headings(text: str) -> set[str]:
    return {m.group("text").replace("`", "").strip() for m in HEADING.finditer(text)}


# ---- hooks --------------------------------------------------------------------------------


def hookspecs() -> dict[str, tuple[str, ...]]:
    pm = create_plugin_manager(load_entrypoints=False, validate=False)
    return {
        name: tuple(getattr(pm.hook, name).spec.argnames)
        for name in dir(pm.hook)
        if not name.startswith("_")
    }


def test_every_hook_has_a_section_headed_with_its_signature():
    found = headings(page("reference/hooks.md"))
    specs = hookspecs()
    assert specs, "no hookspecs found"
    missing = [
        f"{name}({', '.join(args)})"
        for name, args in specs.items()
        if f"{name}({', '.join(args)})" not in found
    ]
    assert not missing, f"docs/reference/hooks.md has no section for {missing}"


def test_no_hook_section_outlives_its_hook():
    specs = hookspecs()
    signature = re.compile(r"^(\w+)\((.*)\)$")
    stale = []
    for text in headings(page("reference/hooks.md")):
        m = signature.match(text)
        if m and specs.get(m.group(1)) != tuple(a for a in m.group(2).split(", ") if a):
            stale.append(text)
    assert not stale, f"sections for hooks that do not exist (any more): {stale}"


# ---- settings -----------------------------------------------------------------------------


def settings_structs_by_convention() -> list[type[msgspec.Struct]]:
    """Found independently of docs_gen: core Settings, and every Struct in a plugin module
    whose fields are all read from upper-case variables."""
    found: list[type[msgspec.Struct]] = [Settings]
    package = importlib.import_module("comfyui_server.plugins")
    for info in pkgutil.walk_packages(package.__path__, prefix="comfyui_server.plugins."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, msgspec.Struct)
                and obj.__module__ == module.__name__
            ):
                fields = msgspec.inspect.type_info(obj).fields
                if fields and all(f.encode_name.isupper() for f in fields):
                    found.append(obj)
    return found


def test_every_setting_is_in_the_configuration_reference():
    text = page("reference/configuration.md")
    structs = settings_structs_by_convention()
    assert len(structs) > 1, "no plugin settings found"
    missing = [
        f"{struct.__name__}: {field.encode_name}"
        for struct in structs
        for field in msgspec.inspect.type_info(struct).fields
        if not field.encode_name.startswith("__") and f"| `{field.encode_name}` |" not in text
    ]
    assert not missing, f"settings missing from docs/reference/configuration.md: {missing}"


def test_the_generator_finds_every_settings_struct():
    generated = {struct for _, struct in docs_gen.settings_structs()}
    assert set(settings_structs_by_convention()) <= generated


def test_every_error_code_is_in_the_table():
    text = page("reference/error-codes.md")
    from comfyui_server.core.errors import ErrorCode

    for code in ErrorCode:
        assert f"| {int(code)} | `{code.name}`" in text, code


# ---- routes -------------------------------------------------------------------------------


def documented_routes(text: str) -> list[tuple[str, re.Pattern[str]]]:
    """(METHOD, path pattern) for every `METHOD /path` the page mentions; `{x}` matches one
    path segment, so `/api/v1/workflows/{name}/tasks` covers each workflow's route."""
    routes = []
    for method, path in re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[\w/{}.-]*)", text):
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path.rstrip(".")))
        routes.append((method, re.compile(pattern + r"\Z")))
    return routes


# Routes of features whose documentation is still to be written ("METHOD /path": why).
# Each entry must still be a route; delete it once api.md describes the route.
PENDING_ROUTES: dict[str, str] = {}


def test_every_route_is_in_the_api_page(tmp_path):
    from comfyui_server.core.app import create_app

    app = create_app(get_settings({"DATA_DIR": str(tmp_path)}, env_file=None))
    documented = documented_routes(page("api.md"))
    missing, seen_pending = [], set()
    for path, item in app.openapi_schema.paths.items():
        for method in ("get", "post", "put", "patch", "delete"):
            if getattr(item, method, None) is None:
                continue
            route = f"{method.upper()} {path}"
            if route in PENDING_ROUTES:
                seen_pending.add(route)
            elif not any(m == method.upper() and p.match(path) for m, p in documented):
                missing.append(route)
    assert not missing, f"routes not described in docs/api.md: {missing}"
    assert seen_pending == set(PENDING_ROUTES), "PENDING_ROUTES names a route that is gone"


def test_the_api_page_documents_no_route_that_does_not_exist(tmp_path):
    from comfyui_server.core.app import create_app

    app = create_app(get_settings({"DATA_DIR": str(tmp_path)}, env_file=None))
    real = [
        (method.upper(), path)
        for path, item in app.openapi_schema.paths.items()
        for method in ("get", "post", "put", "patch", "delete")
        if getattr(item, method, None) is not None
    ]
    stale = [
        f"{m} {p.pattern}"
        for m, p in documented_routes(page("api.md"))
        if not any(m == rm and p.match(rp) for rm, rp in real)
    ]
    assert not stale, f"docs/api.md describes routes the app does not have: {stale}"


# ---- generated pages and the site ---------------------------------------------------------


def test_generated_pages_are_up_to_date():
    stale = [
        name
        for name, text in docs_gen.render_all(DOCS).items()
        if not (DOCS / name).is_file() or (DOCS / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, (
        f"{stale} differ from the code; run `python -m comfyui_server.core.docs_gen` "
        "and commit the result"
    )


def test_fallback_descriptions_are_only_used_where_the_source_has_none():
    """A fallback in docs_gen is a stopgap: once the field has a docstring, delete it."""
    docs_gen.fallbacks_used.clear()
    docs_gen.render_all(DOCS)
    unused = set(docs_gen.FALLBACK_DOCS) - docs_gen.fallbacks_used
    assert not unused, f"delete these from docs_gen.FALLBACK_DOCS: {sorted(unused)}"


def nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.MULTILINE)


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    listed = nav_pages()
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert not [p for p in listed if not (DOCS / p).is_file()], "nav names missing pages"
    assert not [p for p in on_disk if p not in listed], "pages missing from mkdocs.yml nav"


def test_relative_links_point_at_pages_that_exist():
    broken = []
    for md in DOCS.rglob("*.md"):
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).resolve().is_file():
                broken.append(f"{md.relative_to(DOCS)}: {target}")
    assert not broken, broken


# ---- the quickstart, followed literally -----------------------------------------------------


def shell_blocks(text: str) -> list[str]:
    """Commands of the ```sh blocks, one per entry, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def curl_request(command: str, base: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, url, headers, body) of a `curl` command line."""
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, url, headers, body = "GET", None, {}, None
    it = iter(args[1:])
    for arg in it:
        if arg in ("-s", "-N"):
            continue
        if arg == "-X":
            method = next(it)
        elif arg == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            body = next(it)
            method = "POST" if method == "GET" else method
        elif arg.startswith("http"):
            url = arg.replace("http://127.0.0.1:8000", base)
        else:
            raise AssertionError(f"the test does not know curl option {arg!r}: {command}")
    assert url, command
    return method, url, headers, body


def cli() -> list[str]:
    script = Path(sys.executable).with_name("comfyui-server")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from comfyui_server.core.cli import main; main()"]


def start(command: list[str], env: dict[str, str], cwd: Path, ready: str) -> subprocess.Popen:
    """Start a process and wait for the line it prints once it listens."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if ready in line:
            # keep reading, or a full pipe would block the process's logging
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process
    process.kill()
    raise AssertionError(f"{command} did not print {ready!r}:\n{''.join(seen)}")


def wait_until(predicate, timeout: float = 20.0):
    """Poll `predicate` (connection errors count as "not yet") until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def test_the_quickstart_works_as_written(tmp_path):
    text = page("quickstart.md")
    commands = shell_blocks(text)
    # the commands it tells users to run
    assert ".venv/bin/comfyui-server emulate --port 8188" in commands
    assert any(c.endswith(".venv/bin/comfyui-server serve") for c in commands)
    # the "ports already taken" form, which is how this test runs them (free ports)
    assert "COMFYUI_ENDPOINTS=127.0.0.1:8189 SERVICE_PORT=8001 .venv/bin/comfyui-server serve" in (
        commands
    )

    emulator_port, server_port = free_port(), free_port()
    setting_names = {
        row[0] for _, s in docs_gen.settings_structs() for row in docs_gen.settings_rows(s)
    }
    env = {k: v for k, v in os.environ.items() if k not in setting_names}  # a clean shell
    server_env = {
        **env,
        "COMFYUI_ENDPOINTS": f"127.0.0.1:{emulator_port}",
        "SERVICE_PORT": str(server_port),
    }
    processes = []
    try:
        processes.append(
            start(
                [*cli(), "emulate", "--port", str(emulator_port)],
                env,
                tmp_path,
                f"ComfyUI emulator on http://127.0.0.1:{emulator_port}",
            )
        )
        processes.append(
            start(
                [*cli(), "serve"],
                server_env,
                tmp_path,
                f"comfyui-server on http://127.0.0.1:{server_port} (API under /api/v1)",
            )
        )
        base = f"http://127.0.0.1:{server_port}"
        wait_until(lambda: httpx.get(base + "/health").status_code == 200)  # uvicorn listens
        curls = [c for c in commands if c.startswith("curl ")]
        assert curls, "the quickstart has no requests"
        records: dict[int, dict] = {}
        for command in curls:
            method, url, headers, body = curl_request(command, base)
            if url.endswith("/endpoints"):  # "within a few seconds ... shows it up"
                wait_until(lambda url=url: httpx.get(url).json()[0]["status"] == "up")
                continue
            response = httpx.request(method, url, headers=headers, content=body, timeout=30)
            assert response.status_code == 200, (command, response.text)
            if re.search(r"/tasks/\d+$", url):  # "a moment later, read it back"
                record = wait_until(
                    lambda url=url: (
                        (r := httpx.get(url).json())["status"]
                        in ("completed", "failed", "cancelled")
                        and r
                    )
                )
                records[record["id"]] = record
            elif method == "POST":
                record = response.json()
                assert record["status"] == "queued", record
                records.setdefault(record["id"], record)
        first = records[1]  # "1 on a fresh database", as the page says
        assert first["client_task_id"] == "my-1"
        assert first["status"] == "completed", first
        assert first["error_code"] == 0
        (output,) = first["outputs"]
        image = httpx.get(output["url"])
        assert image.status_code == 200
        from PIL import Image

        with Image.open(BytesIO(image.content)) as picture:  # "a 64x64 orange square"
            assert picture.size == (64, 64)
            assert picture.convert("RGB").getpixel((0, 0)) == (0xFF, 0x80, 0x00)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
