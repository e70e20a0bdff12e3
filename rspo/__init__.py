"""rspo: regularized self-play preference optimization for language models.

The Python API (imported lazily, so ``import rspo`` stays cheap)::

    import rspo

    cfg = rspo.load_config("my.yaml", overrides={"training.lr": 1e-6})
    result = rspo.run(cfg)            # result.run_dir, result.checkpoint, result.metrics

Extension points: subclass :class:`Judge` (``@register_judge("name")``) or
:class:`Regularizer` (``@register_regularizer``), or name a model directory
(``register_model_alias``); name the module in ``run.imports``.

Layers (each depends only on those above it in this list):
``objectives`` (pure torch losses and regularizers) -> ``game`` (exact tabular games)
-> ``judges`` -> ``generation`` / ``training`` / ``evaluation`` -> ``selfplay`` -> ``cli``;
``config`` (the typed configuration) is a foundation any layer may import, ``gym`` (the
embedded default) a plug-in on top. No import cycles (tests/test_import_cycles.py).

A lower layer finds what an upper one adds through plug-in groups (:mod:`rspo.utils.plugins`,
entry points inside rspo): below, this package declares the gym in the judge registry's
group, so ``gym-proxy`` and the other gym judges are found wherever a judge is named, while
``rspo.judges`` never imports ``rspo.gym``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rspo._version import __version__
from rspo.utils import plugins as _plugins

# the embedded gym registers its judges and base models (it declares their modules when
# imported)
_plugins.declare("rspo.judges", "rspo.gym")
_plugins.declare("rspo.models", "rspo.gym")

#: public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "Config": "rspo.config",
    "ConfigError": "rspo.config",
    "load_config": "rspo.config",
    "run": "rspo.api",
    "RunResult": "rspo.api",
    "Judge": "rspo.judges.base",
    "JudgeError": "rspo.judges.base",
    "register_judge": "rspo.judges.base",
    "build_judge": "rspo.judges.base",
    "RSPOLoss": "rspo.objectives",
    "Regularizer": "rspo.objectives",
    "register_regularizer": "rspo.objectives",
    "register_model_alias": "rspo.modeling",
}

__all__ = [
    "Config",
    "ConfigError",
    "Judge",
    "JudgeError",
    "RSPOLoss",
    "Regularizer",
    "RunResult",
    "__version__",
    "build_judge",
    "load_config",
    "register_judge",
    "register_model_alias",
    "register_regularizer",
    "run",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from rspo.api import RunResult, run
    from rspo.config import Config, ConfigError, load_config
    from rspo.judges.base import Judge, JudgeError, build_judge, register_judge
    from rspo.modeling import register_model_alias
    from rspo.objectives import Regularizer, RSPOLoss, register_regularizer


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562), so ``import rspo`` is cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rspo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API plus the module's own attributes."""
    return sorted(set(globals()) | set(__all__))
