"""Await hook results correctly: pluggy is synchronous, our runtime hooks may be async.

pluggy's own firstresult would stop at the first coroutine object even when awaiting it
gives None, so core walks the implementations itself, in pluggy's call order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Iterator
from typing import Any

from pluggy import HookCaller, HookImpl

log = logging.getLogger(__name__)


def in_call_order(hook: HookCaller) -> Iterator[HookImpl]:
    """pluggy keeps implementations trylast-first; it calls them from the end."""
    return reversed(hook.get_hookimpls())


async def _call(impl: HookImpl, kwargs: dict[str, Any]) -> Any:
    result = impl.function(*(kwargs[name] for name in impl.argnames))
    if inspect.isawaitable(result):
        result = await result
    return result


async def call_first(hook: HookCaller, /, **kwargs: Any) -> Any:
    """The first non-None result after awaiting, or None. Errors propagate."""
    for impl in in_call_order(hook):
        result = await _call(impl, kwargs)
        if result is not None:
            return result
    return None


async def call_all(
    hook: HookCaller,
    /,
    *,
    isolate: bool = False,
    reverse: bool = False,
    skip: Collection[str] = (),
    done: list[str] | None = None,
    failed: list[str] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Every non-None result, one implementation at a time.

    ``isolate=True`` logs an implementation's error with its plugin's name and goes on, so
    one broken listener cannot lose a task or silence the others; the names of those that
    raised are appended to `failed`. Plugins named in `skip` are not called; the names of
    those that returned are appended to `done` (start-up uses both, so a failed start stops
    exactly the plugins that had started).
    """
    impls = list(in_call_order(hook))
    if reverse:
        impls.reverse()
    results = []
    for impl in impls:
        if impl.plugin_name in skip:
            continue
        try:
            result = await _call(impl, kwargs)
        except Exception:
            if not isolate:
                raise
            log.exception("plugin %r failed in hook %s", impl.plugin_name, hook.name)
            if failed is not None:
                failed.append(impl.plugin_name)
            continue
        if done is not None:
            done.append(impl.plugin_name)
        if result is not None:
            results.append(result)
    return results
