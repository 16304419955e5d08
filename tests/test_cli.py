"""The command line, run as a user runs it: a subprocess of the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "comfyui-server"


def run(*args, env=None, check=True):
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, check=check, env=env, timeout=60
    )


def test_plugins_json_lists_builtins_with_their_hooks():
    plugins = {p["name"]: p for p in json.loads(run("plugins", "--json").stdout)}
    assert plugins["least_queue"]["hooks"] == ["schedule_endpoint"]
    assert "store" in plugins["local_storage"]["hooks"]
    assert "task_store" in plugins["database"]["hooks"]
    assert "notify" in plugins["webhook"]["hooks"]
    assert plugins["demo"]["hooks"] == ["register_workflows"]
    for name in ("least_queue", "local_storage", "database", "webhook", "demo"):
        assert plugins[name]["builtin"] is True
        assert plugins[name]["distribution"] == "comfyui-server"
        assert plugins[name]["disabled"] is False


def test_disable_removes_a_plugin():
    plugins = {
        p["name"]: p for p in json.loads(run("--disable", "webhook", "plugins", "--json").stdout)
    }
    assert plugins["webhook"]["disabled"] is True
    assert plugins["webhook"]["hooks"] == []


def test_disabled_plugins_variable_works_like_the_option(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DISABLED_PLUGINS=webhook\n")
    out = run("--env-file", str(env_file), "plugins", "--json").stdout
    assert {p["name"]: p for p in json.loads(out)}["webhook"]["disabled"] is True


def test_plugins_table_and_hook_filter():
    out = run("plugins", "--hook", "store").stdout.splitlines()
    assert out[0].split()[:3] == ["NAME", "DISTRIBUTION", "VERSION"]
    assert [line.split()[0] for line in out[1:]] == ["local_storage", "s3_storage"]


def test_workflows_lists_builtins_and_the_pip_installed_one():
    workflows = {w["name"]: w for w in json.loads(run("workflows", "--json").stdout)}
    assert workflows["blank"]["plugin"] == "demo"
    assert workflows["swatch"]["plugin"] == "example_swatch"


def test_bad_setting_fails_naming_the_variable(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SERVICE_PORT=http\n")
    result = run("--env-file", str(env_file), "plugins", check=False)
    assert result.returncode == 2
    assert "SERVICE_PORT" in result.stderr


def test_unknown_disabled_plugin_is_an_error():
    result = run("--disable", "nosuch", "plugins", check=False)
    assert result.returncode == 2
    assert "nosuch" in result.stderr
