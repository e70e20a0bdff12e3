"""Judge ``python``: any Python function ``f(prompt, a, b) -> P(a ≻ b)``."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rspo.judges.base import Judge, JudgeError, register_judge
from rspo.utils.imports import load_callable as _load


def load_callable(spec: str) -> Callable[..., Any]:
    """Resolve ``"package.module:attr.path"`` (or ``"path/to/file.py:attr"``) to a callable."""
    return _load(spec, "python judge: fn", JudgeError)


def _code_fingerprint(fn: Callable[..., Any]) -> str:
    """Short hash of what the function computes, so edits invalidate caches and the same code
    gets the same key in every process: its bytecode, the names it calls (``max`` -> ``min``
    changes only ``co_names``), constants, default arguments and nested code (comprehensions,
    lambdas) hashed the same way, never by ``repr`` (which holds memory addresses)."""
    h = hashlib.sha256()
    while isinstance(fn, functools.partial):  # the bound arguments are part of the judge
        h.update(_stable_repr((fn.args, sorted(fn.keywords.items()))).encode())
        fn = fn.func
    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    if code is None:
        return "nocode"
    _hash_code(code, h)
    for d in (getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None)):
        h.update(_stable_repr(d).encode("utf-8", "replace"))
    for cell in getattr(fn, "__closure__", None) or ():  # values a factory closed over
        try:
            h.update(_stable_repr(cell.cell_contents).encode("utf-8", "replace"))
        except ValueError:  # an empty cell
            pass
    return h.hexdigest()[:12]


def _hash_code(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _hash_code(c, h)
        else:
            h.update(_stable_repr(c).encode("utf-8", "replace"))


def _stable_repr(value: Any) -> str:
    """``repr`` that is the same in every process: object addresses removed
    (``<object at 0x7f...>``), set elements sorted (their order follows PYTHONHASHSEED)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(_stable_repr(v) for v in value)) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_stable_repr(v) for v in value) + ")"
    if isinstance(value, dict):
        items = sorted(f"{_stable_repr(k)}:{_stable_repr(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


@register_judge("python")
class PythonJudge(Judge):
    """Calls a user function per pair, or once per batch with ``batched=True``.

    ``fn(prompt, a, b, **kwargs) -> float`` (or, batched, ``fn(prompts, as, bs, **kwargs)
    -> list[float]``); given as a callable or ``"module:function"``. ``version`` is a
    free string added to ``judge_id`` to invalidate caches when behaviour changes.
    """

    def __init__(
        self,
        fn: str | Callable[..., Any],
        batched: bool = False,
        order_sensitive: bool = False,
        kwargs: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> None:
        if isinstance(fn, str):
            self.spec = fn
            self.fn = load_callable(fn)
        elif callable(fn):
            qual = getattr(fn, "__qualname__", type(fn).__qualname__)
            self.spec = f"{getattr(fn, '__module__', '?')}:{qual}"
            self.fn = fn
        else:
            raise TypeError(f"python judge: fn must be a callable or 'module:function', got {fn!r}")
        self.batched = batched
        self.order_sensitive = order_sensitive
        self.kwargs = dict(kwargs or {})
        self.version = version

    @property
    def judge_id(self) -> str:
        parts = [f"fn={self.spec}", f"code={_code_fingerprint(self.fn)}"]
        if self.batched:
            parts.append("batched")
        if self.kwargs:
            parts.append("kwargs=" + json.dumps(self.kwargs, sort_keys=True, default=repr))
        if self.version is not None:
            parts.append(f"version={self.version}")
        return f"python[{','.join(parts)}]"

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        if self.batched:
            try:
                out = self.fn(list(prompts), list(responses_a), list(responses_b), **self.kwargs)
            except Exception as e:
                raise JudgeError(
                    f"python judge {self.spec!r} raised {type(e).__name__}: {e}"
                ) from e
            try:
                n_out = len(out)  # a 0-d array or tensor has no len
            except TypeError:
                n_out = None
            if isinstance(out, (str, bytes)) or n_out is None:
                raise JudgeError(
                    f"python judge {self.spec!r} (batched) returned {out!r}; expected one number "
                    f"per pair ({len(prompts)} of them)"
                )
            return [self._as_float(p, i) for i, p in enumerate(out)]
        out = []
        for i, triple in enumerate(zip(prompts, responses_a, responses_b)):
            try:
                p = self.fn(*triple, **self.kwargs)
            except Exception as e:
                raise JudgeError(
                    f"python judge {self.spec!r} raised {type(e).__name__} on pair {i}: {e}"
                ) from e
            out.append(self._as_float(p, i))
        return out

    def _as_float(self, p: Any, i: int) -> float:
        try:
            return float(p)
        except (TypeError, ValueError) as e:
            raise JudgeError(
                f"python judge {self.spec!r} returned {p!r} for pair {i}; expected a number"
            ) from e
