"""Name → :class:`Regularizer` class registry."""

from __future__ import annotations

import re
from collections.abc import Callable

from .regularizer import Regularizer

_REGISTRY: dict[str, type[Regularizer]] = {}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def register_regularizer(
    cls: type[Regularizer] | str | None = None, *, name: str | None = None
) -> Callable | type[Regularizer]:
    """Register a Regularizer class under ``name`` (default ``cls.name``); usable as decorator.

    ``@register_regularizer``, ``@register_regularizer("name")`` and
    ``register_regularizer(Cls)`` all work. Re-registering a name with a *different*
    class raises ValueError.
    """
    if isinstance(cls, str):
        name, cls = cls, None

    def deco(c: type[Regularizer]) -> type[Regularizer]:
        if not (isinstance(c, type) and issubclass(c, Regularizer)):
            raise TypeError(f"register_regularizer needs a Regularizer subclass, got {c!r}")
        key = name or c.name
        if not key or not _NAME.fullmatch(key) or key.lower() == "none":
            raise ValueError(f"invalid regularizer name {key!r} (need an identifier, not 'none')")
        old = _REGISTRY.get(key)
        if old is not None and old is not c:
            raise ValueError(
                f"regularizer name {key!r} is already registered to "
                f"{old.__module__}.{old.__qualname__}"
            )
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def available_regularizers() -> list[str]:
    """Sorted names of all registered regularizers."""
    return sorted(_REGISTRY)


def regularizer_class(name: str) -> type[Regularizer]:
    """The class registered under ``name``; ValueError listing valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown regularizer {name!r}; valid: {', '.join(available_regularizers())}"
        ) from None
