"""Entry points inside rspo: how a lower layer finds what upper layers add to its registry
without importing them.

A registry names a *group* (``"rspo.judges"``); a package names the modules that register
into the group when imported (:func:`declare`), and the registry imports the declared modules
on its first lookup by name (:func:`load`), as ``importlib.metadata`` entry points do for
installed packages. Declarations are names, not imports: the judge layer never imports the
gym, and ``rspo/__init__.py`` (the top of the layering) declares the gym, so a gym judge
named anywhere (a config, ``rspo.build_judge("gym-proxy")``) is found. docs/design.md.
"""

from __future__ import annotations

import importlib

#: group -> declared modules, in declaration order
_GROUPS: dict[str, list[str]] = {}
#: (group, module) pairs already imported (or skipped: not installed)
_LOADED: set[tuple[str, str]] = set()


def declare(group: str, *modules: str) -> None:
    """Name modules that register into ``group`` when imported (imported by :func:`load`)."""
    names = _GROUPS.setdefault(group, [])
    names.extend(m for m in modules if m not in names)


def load(group: str) -> None:
    """Import the modules declared for ``group`` that are not imported yet, and those they
    declare in turn. A module that is not there (``ModuleNotFoundError`` naming it or a
    package above it: an optional part left out) is skipped; any other error is raised, and
    the module is tried again on the next call."""
    names = _GROUPS.get(group, [])
    i = 0
    while i < len(names):  # importing a module may declare more
        mod = names[i]
        i += 1
        if (group, mod) in _LOADED:
            continue
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not e.name or not (mod == e.name or mod.startswith(e.name + ".")):
                raise
        _LOADED.add((group, mod))
