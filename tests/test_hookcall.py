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


async def test_call_all_skips_and_reports_who_returned_and_who_failed():
    first, second = Recorder(), Recorder()
    pm = manager(first, Broken(), second)  # called p2, p1 (raises), p0
    done: list[str] = []
    failed: list[str] = []
    await call_all(pm.hook.on_result, isolate=True, done=done, failed=failed, task="t", result="r")
    assert done == ["p2", "p0"]
    assert failed == ["p1"]
    await call_all(pm.hook.on_result, isolate=True, skip={"p2", "p1"}, task="u", result="r")
    assert first.calls == [("t", "r"), ("u", "r")]
    assert second.calls == [("t", "r")]


class Lifecycle:
    """Records its plugin's startup and shutdown; `fail` makes its startup raise."""

    def __init__(self, log: list[str], name: str, *, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    @hookimpl
    def startup(self, app, settings):
        self.log.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")

    @hookimpl
    def shutdown(self, app):
        self.log.append(f"stop {self.name}")


async def test_a_failed_start_stops_exactly_the_plugins_that_had_started(tmp_path):
    from comfyui_server.core.app import create_app
    from comfyui_server.core.config import get_settings
    from litestar.testing import AsyncTestClient

    log: list[str] = []
    pm = create_plugin_manager(load_entrypoints=False, validate=False)
    # pluggy calls the last registered first: started, then broken, then never
    pm.register(Lifecycle(log, "never"), name="never")
    pm.register(Lifecycle(log, "broken", fail=True), name="broken")
    pm.register(Lifecycle(log, "started"), name="started")
    app = create_app(get_settings({"DATA_DIR": str(tmp_path)}, env_file=None), pm)
    with pytest.raises(BaseException) as failed:  # the test client wraps it in a group
        async with AsyncTestClient(app):
            pass
    assert "broken cannot start" in repr(failed.value.exceptions)
    assert log == ["start started", "start broken", "stop started"]
