"""The built wheel carries every package and data file: installed into a clean venv, its
console script lists the plugins and loads the workflows' JSON and TOML files."""

import json
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_every_python_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for dotted, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((dotted, *relative)))
    data_only = {
        "comfyui_server.plugins.dashboard.static",
        "comfyui_server.plugins.dashboard.templates",
    }
    assert found == listed - data_only


@pytest.mark.xdist_group("wheel")
def test_wheel_installed_in_a_clean_venv_runs_the_cli(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("comfyui_server-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    cli = env_dir / "bin" / "comfyui-server"
    run = {"capture_output": True, "text": True, "check": True, "timeout": 120, "cwd": tmp_path}
    plugins = {
        p["name"] for p in json.loads(subprocess.run([str(cli), "plugins", "--json"], **run).stdout)
    }
    assert {
        "least_queue",
        "local_storage",
        "s3_storage",
        "database",
        "webhook",
        "spec_builder",
        "cleanup",
        "metrics",
        "dashboard",
        "demo",
    } <= plugins
    workflows = {
        w["name"]
        for w in json.loads(subprocess.run([str(cli), "workflows", "--json"], **run).stdout)
    }
    assert {"blank", "invert", "text2img", "img2img"} <= workflows
    assert "swatch" not in workflows  # the example plugin is not part of the wheel
