"""core.hookcall: async implementations awaited in pluggy's order, first non-None wins."""

import pytest
from comfyui_server.core import hookimpl
from comfyui_server.core.hookcall import call_all, call_first
from comfyui_server.core.plugins import create_plugin_manager


class AsyncNone:
    @hookimpl(tryfirst=True)
    async def build_prompt(self, workflow):
        return None  # pluggy's own firstresult would stop at this coroutine


class AsyncValue:
    @hookimpl
    async def build_prompt(self, workflow):
        return {"from": "async"}


class SyncLast:
    @hookimpl(trylast=True)
    def build_prompt(self, workflow):
        return {"from": "sync-last"}


class Broken:
    @hookimpl(tryfirst=True)
    async def on_result(self, task, result):
        raise RuntimeError("boom")


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def on_result(self, task, result):
        self.calls.append((task, result))
        return "recorded"


def manager(*plugins):
    pm = create_plugin_manager(load_entrypoints=False, validate=False)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"p{i}")
    return pm


async def test_call_first_skips_async_none_and_awaits_the_next():
    pm = manager(SyncLast(), AsyncValue(), AsyncNone())
    assert await call_first(pm.hook.build_prompt, workflow=None) == {"from": "async"}


async def test_call_first_falls_through_to_trylast():
    pm = manager(SyncLast(), AsyncNone())
    assert await call_first(pm.hook.build_prompt, workflow=None) == {"from": "sync-last"}


async def test_call_first_returns_none_when_nobody_answers():
    pm = manager(AsyncNone())
    assert await call_first(pm.hook.build_prompt, workflow=None) is None


async def test_call_all_isolate_logs_and_continues(caplog):
    recorder = Recorder()
    pm = manager(recorder, Broken())
    results = await call_all(pm.hook.on_result, isolate=True, task="t", result="r")
    assert results == ["recorded"]
    assert recorder.calls == [("t", "r")]
    assert "boom" in caplog.text and "p1" in caplog.text


async def test_call_all_without_isolate_raises():
    pm = manager(Recorder(), Broken())
    with pytest.raises(RuntimeError, match="boom"):
        await call_all(pm.hook.on_result, task="t", result="r")
