"""Preference models behind one interface: ``prefer(prompts, a, b) -> P(a ≻ b)``."""

from rspo.judges.base import Judge, JudgeError, available_judges, build_judge, register_judge

__all__ = ["Judge", "JudgeError", "available_judges", "build_judge", "register_judge"]


def _load_builtin() -> None:
    """Import the modules that register built-in judges (kept lazy: some need torch/HF)."""
    import importlib

    for mod in ("python_fn", "reward_model", "pairwise_lm", "openai_compat", "pairrm"):
        try:
            importlib.import_module(f"rspo.judges.{mod}")
        except ModuleNotFoundError as e:  # module not written yet / optional dependency
            if e.name != f"rspo.judges.{mod}":
                raise
    try:
        importlib.import_module("rspo.gym.judges")
    except ModuleNotFoundError as e:
        if e.name != "rspo.gym.judges" and e.name != "rspo.gym":
            raise
