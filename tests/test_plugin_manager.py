"""Loading plugins: entry points in a fixed order, disabling, and loud conflicts."""

import pytest
from comfyui_server.core import Workflow, hookimpl
from comfyui_server.core.config import get_settings
from comfyui_server.core.errors import PluginValidationError
from comfyui_server.core.plugins import create_plugin_manager
from comfyui_server.core.workflows import WorkflowError, collect_workflows

BUILTINS = {
    "least_queue",
    "local_storage",
    "database",
    "webhook",
    "spec_builder",
    "text2img",
    "img2img",
    "demo",
}


def test_builtins_come_from_our_entry_points():
    pm = create_plugin_manager()
    infos = {i.name: i for i in pm.plugin_infos()}
    assert BUILTINS <= set(infos)
    for name in BUILTINS:
        assert infos[name].distribution == "comfyui-server"
        assert infos[name].builtin
        assert pm.get_plugin(name) is not None


def test_hooks_are_listed_per_plugin():
    infos = {i.name: i for i in create_plugin_manager().plugin_infos()}
    assert infos["least_queue"].hooks == ("schedule_endpoint",)
    assert "store" in infos["local_storage"].hooks
    assert "notify" in infos["webhook"].hooks
    assert infos["demo"].hooks == ("register_workflows",)


def test_disabled_plugin_is_not_imported_but_listed():
    pm = create_plugin_manager(disabled=["webhook"])
    assert pm.get_plugin("webhook") is None
    info = {i.name: i for i in pm.plugin_infos()}["webhook"]
    assert info.disabled and info.hooks == ()


def test_unknown_disabled_name_is_an_error():
    with pytest.raises(PluginValidationError, match="webhok"):
        create_plugin_manager(disabled=["webhok"])


def test_disabling_the_only_store_is_an_error():
    with pytest.raises(PluginValidationError, match="'store'"):
        create_plugin_manager(disabled=["local_storage", "s3_storage"])


class Misspelt:
    @hookimpl
    def on_reslt(self, task, result):
        pass


class AsyncRegistration:
    @hookimpl
    async def register_workflows(self, register):
        pass


class Wrapper:
    @hookimpl(wrapper=True)
    def store(self, artifact, task):
        return (yield)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (Misspelt(), "on_reslt"),
        (AsyncRegistration(), "must be a plain def"),
        (Wrapper(), "wrappers are not supported"),
    ],
)
def test_bad_plugins_fail_loudly(plugin, message):
    with pytest.raises(PluginValidationError, match=message):
        create_plugin_manager(extra_plugins=[("bad", plugin)])


class DuplicateBlank:
    @hookimpl
    def register_workflows(self, register):
        register(Workflow.from_data("blank", {"1": {"class_type": "SaveImage", "inputs": {}}}))


def test_duplicate_workflow_names_both_plugins():
    pm = create_plugin_manager(extra_plugins=[("mine", DuplicateBlank())])
    with pytest.raises(WorkflowError, match="'blank' is registered by both") as info:
        collect_workflows(pm, get_settings({}))
    assert "'demo'" in str(info.value) and "'mine'" in str(info.value)


def test_replacing_a_workflow_by_disabling_its_plugin():
    pm = create_plugin_manager(disabled=["demo"], extra_plugins=[("mine", DuplicateBlank())])
    registry = collect_workflows(pm, get_settings({}))
    assert registry.owner("blank") == "mine"
