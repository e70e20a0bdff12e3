"""User code named in a config: ``package.module:attr`` or ``path/to/file.py:attr``, and
the plug-in modules of ``run.imports``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


def load_callable(
    spec: str, what: str = "function", error: type[Exception] = ValueError
) -> Callable[..., Any]:
    """Resolve ``"package.module:attr.path"`` (a module on sys.path or in the working
    directory) or ``"path/to/file.py:attr"`` (loaded from the file) to a callable;
    ``error`` (prefixed by ``what``, the setting) names the spec when it cannot."""
    module_name, sep, attr_path = spec.rpartition(":")
    if not sep or not module_name or not attr_path:  # a malformed setting: ValueError
        raise ValueError(
            f"{what} must look like 'package.module:function' (or 'path/to/file.py:function'),"
            f" got {spec!r}"
        )
    try:  # the same search as run.imports: a file, or a module on sys.path or in the cwd
        module = _import(module_name)
    except Exception as e:  # ImportError, SyntaxError, errors raised at import time
        raise error(
            f"{what}: could not import {module_name!r} for {spec!r}: {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise error(f"{what}: {module_name!r} has no attribute {attr_path!r} ({spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what}: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def import_modules(names: list[str]) -> list[ModuleType]:
    """Import each of ``names`` once per process (``run.imports``): a dotted module name
    (searched on sys.path, then in the working directory, as ``python -m`` would) or a
    ``path/to/file.py``; plug-ins register judges and regularizers as they are imported.
    ImportError names the entry that failed."""
    out = []
    for name in names:
        try:
            out.append(_import(name))
        except ImportError as e:
            raise ImportError(f"could not import {name!r}: {e}") from e
        except Exception as e:  # SyntaxError, FileNotFoundError, errors raised at import time
            raise ImportError(f"could not import {name!r}: {type(e).__name__}: {e}") from e
    return out


def _import(name: str) -> ModuleType:
    """``path/to/file.py`` loaded from the file, else a dotted module name."""
    return _import_file(Path(name)) if name.endswith(".py") else _import_name(name)


def _import_name(name: str) -> ModuleType:
    """A dotted module, searched on sys.path, then in the working directory."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        cwd = str(Path.cwd())
        top = name.split(".")[0]
        if (
            e.name != top
            or cwd in sys.path
            or not (Path(cwd, f"{top}.py").is_file() or Path(cwd, top).is_dir())
        ):
            raise
        sys.path.append(cwd)  # the console script does not put it there; python -m does
        return importlib.import_module(name)


def _import_file(path: Path) -> ModuleType:
    """A module loaded from a file, once per resolved path (a second import would register
    its judges again, as other classes)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    mod_id = f"rspo_user_module_{path.stem}_{digest}"
    if mod_id in sys.modules:
        return sys.modules[mod_id]
    spec = importlib.util.spec_from_file_location(mod_id, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_id] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_id]
        raise
    return module
