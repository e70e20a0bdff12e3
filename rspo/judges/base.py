"""The judge interface: text in, preference probabilities out.

A judge answers ``prefer(prompts, responses_a, responses_b) -> list[float]`` with
P(a ≻ b | prompt) for each triple. Judges see text only, never policy token ids, so the
policy and the judge may use different tokenizers.
"""

from __future__ import annotations

import inspect
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rspo.utils import plugins


class JudgeError(RuntimeError):
    """A judge failed or returned something that is not a probability."""


class Judge(ABC):
    """Base class of all preference models.

    Subclasses implement :meth:`_prefer`; :meth:`prefer` validates lengths and values so
    every judge reports bad output the same way. ``order_sensitive`` judges (LLM judges)
    are queried in both presentation orders by :func:`rspo.judges.symmetric_prefer`.
    """

    #: registry name, set by :func:`register_judge`
    name: str = "judge"
    #: whether P(a ≻ b) + P(b ≻ a) may differ from 1 (position bias)
    order_sensitive: bool = False

    @property
    def judge_id(self) -> str:
        """A string that identifies this judge and its settings (used as a cache key)."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.judge_id!r})"

    def _label(self) -> str:
        """``'name'``, plus the judge id when it says more (e.g. which python function)."""
        jid = self.judge_id
        return repr(self.name) if jid == self.name else f"{self.name!r} ({jid})"

    @abstractmethod
    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> Sequence[float]:
        """Return P(a ≻ b) for each triple (no validation needed)."""

    def prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """P(a ≻ b | prompt) for each (prompt, a, b), validated to lie in [0, 1]."""
        n = len(prompts)
        if len(responses_a) != n or len(responses_b) != n:
            raise ValueError(
                f"judge {self.name!r}: prompts, responses_a, responses_b must have equal "
                f"lengths, got {n}, {len(responses_a)}, {len(responses_b)}"
            )
        if n == 0:
            return []
        raw = self._prefer(prompts, responses_a, responses_b)
        try:
            out = [float(p) for p in raw]
        except (TypeError, ValueError) as e:
            raise JudgeError(f"judge {self._label()} returned a non-number: {e}") from e
        if len(out) != n:
            raise JudgeError(f"judge {self._label()} returned {len(out)} results for {n} pairs")
        for i, p in enumerate(out):
            if math.isnan(p) or p < 0.0 or p > 1.0:
                raise JudgeError(
                    f"judge {self._label()} returned {p!r} for pair {i} "
                    f"(prompt {prompts[i][:60]!r});"
                    " a preference probability must lie in [0, 1]"
                )
        return out


_REGISTRY: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    """Class decorator adding a judge factory to the registry under ``name``."""

    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"judge name {name!r} is already registered")
        _REGISTRY[name] = factory
        if isinstance(factory, type):
            factory.name = name
        return factory

    return deco


def chunk_slices(n: int, batch_size: int | None) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` with at most ``batch_size`` items each."""
    if batch_size is None:
        batch_size = max(n, 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


#: the plug-in group of judge modules (:mod:`rspo.utils.plugins`): rspo.judges declares its
#: built-ins, packages above this layer theirs; imported on the first lookup by name
PLUGIN_GROUP = "rspo.judges"


def available_judges() -> list[str]:
    """Names of all registered judges (the declared judge modules imported first)."""
    plugins.load(PLUGIN_GROUP)
    return sorted(_REGISTRY)


#: setting names that hold credentials: refused, so a key never lands in a saved config
#: (names ending in ``_env`` name an environment variable and are fine)
_SECRET_SETTING = re.compile(
    r"(^|[-_])(api[-_]?key|secrets?|password|passwd|authorization|credentials?|"
    r"subscription[-_]?key)($|[-_])|secret|password|"
    r"^token$|(auth|access|bearer|hf|api|refresh|session|id)[-_]?token$",
    re.IGNORECASE,
)  # x-api-key, Ocp-Apim-Subscription-Key, hf_token; not stop_token_ids, eos_token, max_tokens


def _check_no_secrets(name: str, kwargs: Mapping[str, Any], where: str = "") -> None:
    for k, v in kwargs.items():
        if str(k).lower().endswith("_env"):  # names environment variables: no secret itself
            continue
        if _SECRET_SETTING.search(str(k)):
            raise ValueError(
                f"judge {name!r}: setting {where + str(k)!r} looks like a credential; settings "
                "are saved with the run's config, so secrets do not belong there. Export the "
                "key in an environment variable and name it instead (openai: api_key_env: VAR "
                "for the bearer token, header_env: {HEADER: VAR} for other headers)"
            )
        if isinstance(v, Mapping):
            _check_no_secrets(name, v, f"{where}{k}.")


def build_judge(name: str, **kwargs: Any) -> Judge:
    """Instantiate the judge registered as ``name`` with keyword settings.

    Settings named like credentials (``api_key``, ``token``, ``Authorization``...) are
    refused at any depth: configs are saved in run directories, keys belong in env vars.
    """
    if ":" in name:
        factory = _judge_class(name)
    else:
        names = available_judges()
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown judge {name!r}; valid judges: {', '.join(names)}, or "
                "'module:Class' for a Judge subclass in your code"
            )
        factory = _REGISTRY[name]
    _check_no_secrets(name, kwargs)
    _check_judge_id(factory)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins / C callables: let the call report errors
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            valid = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            raise ValueError(
                f"judge {name!r}: {e}; valid settings: {', '.join(valid) or '(none)'}"
            ) from None
    judge = factory(**kwargs)
    if isinstance(judge, Judge) and judge.name == Judge.name:
        judge.name = name  # no name of its own: the one it was built under keys its cache
    return judge


def _judge_class(spec: str) -> type[Judge]:
    """The Judge subclass named by ``"package.module:Class"`` (or ``"file.py:Class"``)."""
    from rspo.utils.imports import load_callable

    cls = load_callable(spec, f"judge {spec!r}")
    if not (isinstance(cls, type) and issubclass(cls, Judge)):
        raise ValueError(
            f"judge {spec!r}: {cls!r} is not a Judge subclass (subclass rspo.Judge and "
            "implement _prefer)"
        )
    return cls


def _check_judge_id(factory: Callable[..., Judge]) -> None:
    """A Judge class whose constructor takes settings must define ``judge_id``: the default
    (the name alone) keys the judgement cache, so two settings would share cached verdicts."""
    if not (isinstance(factory, type) and issubclass(factory, Judge)):
        return
    if factory.judge_id is not Judge.judge_id or factory.__init__ is object.__init__:
        return  # judge_id defined by the class or a base; or no constructor settings
    try:
        params = inspect.signature(factory.__init__).parameters
    except (TypeError, ValueError):
        return
    settings = [p for p in params if p != "self"]
    if settings:
        raise ValueError(
            f"judge class {factory.__module__}.{factory.__qualname__} takes settings "
            f"({', '.join(settings)}) but does not define judge_id; define a judge_id property "
            "that includes every setting that changes its verdicts (it keys the judgement "
            "cache, so without it two settings would share cached verdicts)"
        )
