"""Preference models behind one interface: ``prefer(prompts, a, b) -> P(a ≻ b)``.

Built-in judges (``python``, ``reward_model``, ``pairwise_lm``, ``openai``, ``pairrm``)
register themselves when first needed; build them with :func:`build_judge`. Packages above
this layer add theirs the same way (the gym: ``gym-proxy``, ``gym-gold``...) by declaring
their modules in the ``rspo.judges`` plug-in group (:mod:`rspo.utils.plugins`); this layer
imports none of them.
"""

from rspo.judges.base import (
    PLUGIN_GROUP,
    Judge,
    JudgeError,
    available_judges,
    build_judge,
    chunk_slices,
    register_judge,
)
from rspo.judges.cache import CachedJudge, JudgementCache, judgement_key
from rspo.judges.symmetric import SymmetricJudge, batched_prefer, symmetric_prefer
from rspo.utils import plugins

__all__ = [
    "CachedJudge",
    "Judge",
    "JudgeError",
    "JudgementCache",
    "SymmetricJudge",
    "available_judges",
    "batched_prefer",
    "build_judge",
    "chunk_slices",
    "judgement_key",
    "register_judge",
    "symmetric_prefer",
]


# built-in judges register when first named (some need torch/HF): the judge registry imports
# these on its first lookup (rspo.utils.plugins), skipping one whose module is absent
plugins.declare(
    PLUGIN_GROUP,
    "rspo.judges.python_fn",
    "rspo.judges.reward_model",
    "rspo.judges.pairwise_lm",
    "rspo.judges.openai_compat",
    "rspo.judges.pairrm",
)
