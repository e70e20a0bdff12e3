"""Regularizer specs: ``"forward_kl"``, ``"0.5*forward_kl + 0.5*reverse_kl"``,
``"1*forward_kl[ratio] + 5*reverse_kl[k2]"`` (bracket = estimator)."""

from __future__ import annotations

import math
import re

from .mixture import Mixture
from .registry import available_regularizers, regularizer_class
from .regularizer import DEFAULT_LOG_CLIP, Regularizer

# split on '+' except inside an exponent such as 1e+3
_SPLIT = re.compile(r"(?<![0-9.][eE])\+")
_TERM = re.compile(
    r"(?:(?P<w>[^*\[\]]*?)\s*\*\s*)?(?P<name>[^\s*\[\]]+)\s*(?:\[(?P<est>[^\]]*)\])?"
)


def parse_regularizer(spec: str, log_clip: float | None = DEFAULT_LOG_CLIP) -> Regularizer:
    """Parse ``"[w*]name[est] + ..."`` into a Regularizer (a Mixture unless one unit-weight term).

    Errors name the offending term. ``log_clip`` applies to every component.
    """
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
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return Mixture(terms)


def get_regularizer(
    spec: str | Regularizer | None, log_clip: float | None = DEFAULT_LOG_CLIP
) -> Regularizer | None:
    """None / "" / "none" → None; a spec string → parsed with ``log_clip`` (the clip R of
    every component); a Regularizer → itself (its own clip)."""
    if spec is None:
        return None
    if isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, str):
        if spec.strip().lower() in ("", "none"):
            return None
        return parse_regularizer(spec, log_clip)
    raise TypeError(f"regularizer must be a spec string, a Regularizer or None, got {spec!r}")
