"""The terms of a regularizer spec: ``"[w*]name[est] + ..."`` -> (weight, Regularizer) pairs.

The grammar alone, below :class:`~rspo.objectives.mixture.Mixture` (which takes spec strings
as components) and :mod:`rspo.objectives.spec` (which sums the terms into one regularizer).
"""

from __future__ import annotations

import math
import re

from .registry import available_regularizers, regularizer_class
from .regularizer import DEFAULT_LOG_CLIP, Regularizer

# split on '+' except inside an exponent such as 1e+3
_SPLIT = re.compile(r"(?<![0-9.][eE])\+")
_TERM = re.compile(
    r"(?:(?P<w>[^*\[\]]*?)\s*\*\s*)?(?P<name>[^\s*\[\]]+)\s*(?:\[(?P<est>[^\]]*)\])?"
)


def parse_terms(
    spec: str, log_clip: float | None = DEFAULT_LOG_CLIP
) -> list[tuple[float, Regularizer]]:
    """The (weight, regularizer) terms of ``spec``; errors name the offending term.
    ``log_clip`` applies to every term."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty regularizer spec {spec!r}")
    terms: list[tuple[float, Regularizer]] = []
    for raw in _SPLIT.split(spec):
        tok = raw.strip()
        if not tok:
            raise ValueError(f"empty term in regularizer spec {spec!r} (stray '+')")
        m = _TERM.fullmatch(tok)
        if m is None:
            raise ValueError(
                f"cannot parse term {tok!r} in regularizer spec {spec!r}; expected "
                "[WEIGHT*]NAME[ESTIMATOR], e.g. '0.5*forward_kl[is]'"
            )
        weight = 1.0
        if m.group("w") is not None:
            try:
                weight = float(m.group("w"))
            except ValueError:
                raise ValueError(
                    f"bad weight {m.group('w')!r} in term {tok!r} of regularizer spec {spec!r}"
                ) from None
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(
                    f"weight in term {tok!r} of regularizer spec {spec!r} must be finite and > 0"
                )
        name = m.group("name")
        if name not in available_regularizers():
            raise ValueError(
                f"unknown regularizer {name!r} in term {tok!r} of spec {spec!r}; "
                f"valid: {', '.join(available_regularizers())}"
            )
        cls = regularizer_class(name)
        est = m.group("est")
        if est is not None:
            est = est.strip()
            if est not in cls.estimators:
                raise ValueError(
                    f"unknown estimator {est!r} in term {tok!r} of spec {spec!r}; "
                    f"valid for {name}: {', '.join(cls.estimators)}"
                )
        terms.append((weight, cls(estimator=est, log_clip=log_clip)))
    return terms


def spec_terms(
    spec: str | Regularizer | None, log_clip: float | None = DEFAULT_LOG_CLIP
) -> list[tuple[float, Regularizer]] | None:
    """None / "" / "none" -> None; a spec string -> its terms (parsed with ``log_clip``); a
    Regularizer -> its components (its own clip)."""
    if spec is None:
        return None
    if isinstance(spec, Regularizer):
        return spec.components()
    if isinstance(spec, str):
        if spec.strip().lower() in ("", "none"):
            return None
        return parse_terms(spec, log_clip)
    raise TypeError(f"regularizer must be a spec string, a Regularizer or None, got {spec!r}")
