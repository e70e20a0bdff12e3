"""Preference models behind one interface: ``prefer(prompts, a, b) -> P(a ≻ b)``.

Built-in judges (``python``, ``reward_model``, ``pairwise_lm``, ``openai``, ``pairrm``)
register themselves when first needed; build them with :func:`build_judge`.
"""

from rspo.judges.base import (
    Judge,
    JudgeError,
    available_judges,
    build_judge,
    chunk_slices,
    register_judge,
)
from rspo.judges.cache import CachedJudge, JudgementCache, judgement_key
from rspo.judges.symmetric import SymmetricJudge, batched_prefer, symmetric_prefer

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


def _load_builtin() -> None:
    """Import the modules that register built-in judges (kept lazy: some need torch/HF)."""
    import importlib

    for mod in ("python_fn", "reward_model", "pairwise_lm", "openai_compat", "pairrm"):
        try:
            importlib.import_module(f"rspo.judges.{mod}")
        except ModuleNotFoundError as e:  # module not written yet / optional dependency
            if e.name != f"rspo.judges.{mod}":
                raise
    for mod in ("rspo.gym.judges", "rspo.gym.skills.judges", "rspo.gym.skills.rm"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name not in (mod, "rspo.gym", "rspo.gym.skills"):
                raise
