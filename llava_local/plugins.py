"""Plugins: the commands and front-ends that packages built on the runtime register, found through entry points.

Contract:
- `plugins(group) -> {name: Plugin}` lists the entry points of `group` (`llava_local.commands`,
  `llava_local.frontends`) sorted by name, without importing anything. If two distributions register one name, the
  first found wins.
- `load_plugin(plugin)` imports the target (a module, or `module:attr`). The extra a plugin needs comes from the
  entry point's `[extra]` annotation or the module's `EXTRA` attribute; if that extra's requirements are not all
  installed, it raises `MissingExtra` (a `LlavaLocalError`: "`convert` needs the [convert] extra (missing: torch):
  pip install 'llava-local[convert]'"), so a command never starts half-installed.
- `Plugin.missing_extra_errors()` turns a `ModuleNotFoundError` for an optional dependency, raised while the plugin
  runs (heavy imports live inside `run`), into the same one-line message.
The runtime names no package built on it: what exists is whatever the installed distributions declare.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import LlavaLocalError

DIST = "llava-local"


class MissingExtra(LlavaLocalError):
    """A plugin's optional dependencies are not installed."""


@dataclass(frozen=True)
class Plugin:
    """One registered entry point (not yet imported)."""

    name: str
    value: str  # "module" or "module:attr", without the extras annotation
    extras: tuple[str, ...]  # from "module [extra1,extra2]"
    dist: str  # the distribution that registered it

    @property
    def module(self) -> str:
        return self.value.partition(":")[0]

    @contextlib.contextmanager
    def missing_extra_errors(self, extras: tuple[str, ...] = ()) -> Iterator[None]:
        """Re-raise a ModuleNotFoundError of an optional dependency as MissingExtra naming the extra."""
        try:
            yield
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if not top or top == self.module.split(".")[0]:
                raise LlavaLocalError(f"`{self.name}` cannot run: this installation has no {e.name} module; "
                                      f"reinstall {self.dist}") from None
            declared = self.extras + tuple(e for e in extras if e not in self.extras)
            extra = (next((x for x in declared if _norm(top) in map(_norm, extra_requirements(self.dist, x))), None)
                     or _extra_providing(self.dist, top) or next(iter(declared), None))
            if extra is None:
                raise
            raise MissingExtra(f"`{self.name}` needs {top}: pip install '{self.dist}[{extra}]'") from None


def plugins(group: str) -> dict[str, Plugin]:
    """Registered entry points of `group`, sorted by name (the first registration of a name wins)."""
    found: dict[str, Plugin] = {}
    for ep in md.entry_points(group=group):
        if ep.name in found:
            continue
        value, extras = _split_value(ep.value)
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else DIST
        found[ep.name] = Plugin(ep.name, value, extras, dist)
    return dict(sorted(found.items()))


def load_plugin(plugin: Plugin) -> Any:
    """Import the plugin's target; MissingExtra when its extra is not installed."""
    module = import_module_of(plugin)
    for extra, missing in missing_extras(plugin, module).items():
        raise MissingExtra(f"`{plugin.name}` needs the [{extra}] extra (missing: {', '.join(missing)}): "
                           f"pip install '{plugin.dist}[{extra}]'")
    _, _, attr = plugin.value.partition(":")
    return getattr(module, attr) if attr else module


def import_module_of(plugin: Plugin) -> Any:
    """The plugin's module, imported (without checking its extras)."""
    with plugin.missing_extra_errors():
        return importlib.import_module(plugin.module)


def missing_extras(plugin: Plugin, module: Any) -> dict[str, list[str]]:
    """{extra: its requirements that are not installed} for each extra the plugin declares and lacks."""
    out = {}
    for extra in plugin.extras + tuple(e for e in module_extras(module) if e not in plugin.extras):
        missing = missing_requirements(plugin.dist, extra)
        if missing:
            out[extra] = missing
    return out


def module_extras(obj: Any) -> tuple[str, ...]:
    """The extras a loaded plugin declares with its `EXTRA` attribute (a name or a tuple of names)."""
    value = getattr(obj, "EXTRA", None)
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def missing_requirements(dist: str, extra: str) -> list[str]:
    """The requirements of `dist[extra]` that are not installed (by distribution name)."""
    return [name for name in extra_requirements(dist, extra) if not _installed(name)]


def extra_requirements(dist: str, extra: str) -> list[str]:
    """Distribution names `dist[extra]` adds (its requirements whose marker is `extra == "<extra>"`)."""
    try:
        requires = md.requires(dist) or []
    except md.PackageNotFoundError:
        return []
    names = []
    for req in requires:
        spec, _, marker = req.partition(";")
        if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
            if match:
                names.append(match.group(1))
    return names


def _extra_providing(dist: str, module: str) -> str | None:
    """The extra of `dist` whose requirements include a distribution named like import name `module`."""
    try:
        provided = md.metadata(dist).get_all("Provides-Extra") or []
    except md.PackageNotFoundError:
        return None
    want = _norm(module)
    for extra in provided:
        if any(_norm(name) in (want, f"py{want}") for name in extra_requirements(dist, extra)):
            return extra
    return None


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        # Installed without metadata (vendored, conda oddities): importable is good enough.
        return importlib.util.find_spec(_norm(name)) is not None


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _split_value(value: str) -> tuple[str, tuple[str, ...]]:
    """'module:attr [a, b]' -> ('module:attr', ('a', 'b'))."""
    match = re.fullmatch(r"\s*([^\s\[]+)\s*(?:\[([^\]]*)\])?\s*", value)
    if not match:
        return value.strip(), ()
    extras = tuple(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
    return match.group(1), extras
