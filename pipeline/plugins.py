"""Finding plugins by entry-point name, loading only the one asked for.

Listing names never imports anything, so a broken plugin (missing module, import error, bad
object) stays invisible until it is chosen, and then fails with one line naming the plugin and
the cause. The distribution that ships Vitrine itself is ``vitrine-search`` (``vitrine`` on the
package index is an unrelated project).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any


class PluginError(RuntimeError):
    """A configured plugin is not installed or cannot be loaded."""


def installed(group: str) -> list[str]:
    """Names registered under ``group``, sorted, without importing any of them."""
    return sorted({ep.name for ep in entry_points(group=group)})


def _describe(ep: EntryPoint) -> str:
    source = f" from {ep.dist.name}" if ep.dist is not None else ""
    return f"{ep.group} plugin {ep.name!r} ({ep.value}{source})"


def load(group: str, name: str) -> Any:
    """Import and return the object behind entry point ``name`` of ``group``.

    Raises ``PluginError`` (one line: plugin, target, distribution and cause) if no plugin has
    that name or importing it fails for any reason.
    """
    found = list(entry_points(group=group, name=name))
    if not found:
        raise PluginError(
            f"unknown {group} plugin {name!r}; installed: {', '.join(installed(group)) or 'none'}"
        )
    ep = found[0]
    try:
        return ep.load()
    except Exception as exc:  # a plugin's import may fail in any way; all mean "broken"
        raise PluginError(f"{_describe(ep)} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def broken(group: str, name: str, cause: str) -> PluginError:
    """The error for a plugin that loaded but does not keep its contract."""
    found = list(entry_points(group=group, name=name))
    where = _describe(found[0]) if found else f"{group} plugin {name!r}"
    return PluginError(f"{where} is broken: {cause}")
