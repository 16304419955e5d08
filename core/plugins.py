"""Build the plugin manager: entry points loaded in a fixed order, conflicts made loud.

We read entry points ourselves instead of `load_setuptools_entrypoints`, which silently skips
a second distribution that reuses a name and orders plugins by the file system.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from importlib import metadata
from types import ModuleType

import msgspec
import pluggy

from . import hookspecs
from .errors import PluginValidationError
from .hookspecs import PROJECT

OUR_DISTRIBUTION = "comfyui-server"
REGISTRATION_HOOKS = frozenset(
    {"register_workflows", "register_routes", "register_commands", "task_store"}
)
REQUIRED_HOOKS = ("schedule_endpoint", "build_prompt", "store")


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    distribution: str
    version: str
    builtin: bool
    module: str
    disabled: bool = False
    hooks: tuple[str, ...] = ()


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus our own record of where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def plugin_infos(self) -> list[PluginInfo]:
        """Every known plugin, loaded or disabled, with the hooks it implements."""
        infos = []
        for name, info in sorted(self.infos.items()):
            plugin = self.get_plugin(name)
            hooks = ()
            if plugin is not None:
                hooks = tuple(sorted(c.name for c in self.get_hookcallers(plugin) or ()))
            infos.append(msgspec.structs.replace(info, hooks=hooks))
        return infos


def _entry_points() -> list[tuple[metadata.EntryPoint, metadata.Distribution]]:
    """All entry points of our group, ours first, then by distribution and name."""
    seen: set[str] = set()
    found = []
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"]
        key = dist_name.lower().replace("_", "-")
        if key in seen:  # the same distribution on sys.path twice
            continue
        seen.add(key)
        found.extend((ep, dist) for ep in dist.entry_points if ep.group == PROJECT)

    def order(item: tuple[metadata.EntryPoint, metadata.Distribution]) -> tuple:
        ep, dist = item
        name = dist.metadata["Name"]
        return (name != OUR_DISTRIBUTION, name.lower(), ep.name)

    return sorted(found, key=order)


def _check_unique(entry_points: Iterable[tuple[metadata.EntryPoint, metadata.Distribution]]):
    owners: dict[str, str] = {}
    for ep, dist in entry_points:
        dist_name = dist.metadata["Name"]
        if ep.name in owners:
            raise PluginValidationError(
                f"plugin name {ep.name!r} is declared by both {owners[ep.name]!r} and "
                f"{dist_name!r}; uninstall one of them"
            )
        owners[ep.name] = dist_name


def create_plugin_manager(
    *,
    load_entrypoints: bool = True,
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, object]] = (),
    validate: bool = True,
) -> PluginManager:
    """Build a manager. Disabled names are blocked before import, so a broken plugin can be
    switched off; `extra_plugins` (name, module-or-object) are registered after the entry
    points, which is how tests add a plugin for one case."""
    pm = PluginManager()
    disabled = {name.strip() for name in disabled if name.strip()}
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        eps = _entry_points()
        _check_unique(eps)
        known = {ep.name for ep, _ in eps}
        unknown = disabled - known
        if unknown:
            raise PluginValidationError(
                f"DISABLED_PLUGINS names unknown plugin(s): {', '.join(sorted(unknown))}; "
                f"known plugins: {', '.join(sorted(known))}"
            )
        for ep, dist in eps:
            dist_name = dist.metadata["Name"]
            info = PluginInfo(
                name=ep.name,
                distribution=dist_name,
                version=dist.version,
                builtin=dist_name == OUR_DISTRIBUTION,
                module=ep.value,
                disabled=ep.name in disabled,
            )
            pm.infos[ep.name] = info
            if info.disabled:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginValidationError(
                    f"plugin {ep.name!r} ({dist_name}) failed to import: {exc!r}; "
                    f"disable it with DISABLED_PLUGINS={ep.name}"
                ) from exc
            pm.register(plugin, name=ep.name)
    for name, plugin in extra_plugins:
        register_extra(pm, plugin, name)
    if validate:
        validate_plugins(pm)
    return pm


def register_extra(pm: PluginManager, plugin: object, name: str) -> None:
    """Register a plugin that did not come from an entry point (tests, embedding apps)."""
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    pm.register(plugin, name=name)
    pm.infos[name] = PluginInfo(
        name=name, distribution="(registered)", version="", builtin=False, module=module
    )


def validate_plugins(pm: PluginManager) -> None:
    """Fail loudly on what pluggy accepts silently: misspelt hooks, async registration
    hooks, wrappers on hooks core awaits itself, and a missing provider."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginValidationError(f"plugin {exc.plugin!r}: {exc}") from exc
    for caller_name in dir(pm.hook):
        if caller_name.startswith("_"):
            continue
        caller = getattr(pm.hook, caller_name)
        for impl in caller.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise PluginValidationError(
                    f"plugin {impl.plugin_name!r}: wrappers are not supported on "
                    f"{caller_name!r}; use tryfirst/trylast"
                )
            if caller_name in REGISTRATION_HOOKS and inspect.iscoroutinefunction(impl.function):
                raise PluginValidationError(
                    f"plugin {impl.plugin_name!r}: {caller_name} must be a plain def, "
                    "registration hooks run before the event loop"
                )
    for name in REQUIRED_HOOKS:
        if not getattr(pm.hook, name).get_hookimpls():
            raise PluginValidationError(
                f"no enabled plugin implements {name!r}; is its provider in DISABLED_PLUGINS?"
            )
