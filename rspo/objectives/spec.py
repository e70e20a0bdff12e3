"""Regularizer specs: ``"forward_kl"``, ``"0.5*forward_kl + 0.5*reverse_kl"``,
``"1*forward_kl[ratio] + 5*reverse_kl[k2]"`` (bracket = estimator; grammar:
:mod:`rspo.objectives.terms`)."""

from __future__ import annotations

from .mixture import Mixture
from .regularizer import DEFAULT_LOG_CLIP, Regularizer
from .terms import parse_terms, spec_terms


def parse_regularizer(spec: str, log_clip: float | None = DEFAULT_LOG_CLIP) -> Regularizer:
    """Parse ``"[w*]name[est] + ..."`` into a Regularizer (a Mixture unless one unit-weight term).

    Errors name the offending term. ``log_clip`` applies to every component.
    """
    return _sum(parse_terms(spec, log_clip))


def get_regularizer(
    spec: str | Regularizer | None, log_clip: float | None = DEFAULT_LOG_CLIP
) -> Regularizer | None:
    """None / "" / "none" → None; a spec string → parsed with ``log_clip`` (the clip R of
    every component); a Regularizer → itself (its own clip)."""
    if isinstance(spec, Regularizer):
        return spec
    terms = spec_terms(spec, log_clip)
    return None if terms is None else _sum(terms)


def _sum(terms: list[tuple[float, Regularizer]]) -> Regularizer:
    """One unit-weight term as itself, else the Mixture of the terms."""
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return Mixture(terms)
