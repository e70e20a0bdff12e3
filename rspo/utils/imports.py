"""User functions named in a config: ``package.module:attr`` or ``path/to/file.py:attr``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_callable(
    spec: str, what: str = "function", error: type[Exception] = ValueError
) -> Callable[..., Any]:
    """Resolve ``"package.module:attr.path"`` (or ``"path/to/file.py:attr"``, loaded from
    the file, so no PYTHONPATH is needed) to a callable; ``error`` (prefixed by ``what``,
    the setting) names the spec when it cannot."""
    module_name, sep, attr_path = spec.rpartition(":")
    if not sep or not module_name or not attr_path:  # a malformed setting: ValueError
        raise ValueError(
            f"{what} must look like 'package.module:function' (or 'path/to/file.py:function'),"
            f" got {spec!r}"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {str(path)!r}")
            digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            mod_id = f"rspo_user_fn_{digest}"
            loader_spec = importlib.util.spec_from_file_location(mod_id, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_id] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
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
