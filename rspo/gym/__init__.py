"""The embedded default: a small, verifiable alignment problem that runs on a laptop CPU.

Prompts with checkable answers (:mod:`rspo.gym.tasks`), a mixed-quality SFT corpus
(:mod:`rspo.gym.corpus`), a shipped tiny base policy (:mod:`rspo.gym.base`) and two judges,
``gym-proxy`` for training and ``gym-gold`` for evaluation (:mod:`rspo.gym.judges`).
See docs/gym.md.
"""

from __future__ import annotations

from typing import Any

from rspo.gym.tasks import GymPrompt, check_answer, make_prompts, write_prompts_jsonl
from rspo.utils import plugins

# the gym's judges (gym-proxy, gym-gold, gym-skills-proxy, gym-skills-gold, gym-rm) register
# when first named: the judge registry imports these modules on its first lookup. rspo's top
# package declares rspo.gym itself, so they are found before anything imports the gym.
plugins.declare("rspo.judges", "rspo.gym.judges", "rspo.gym.skills.judges", "rspo.gym.skills.rm")
# and its base models (model.path: gym, gym-skills), on the model registry's first lookup
plugins.declare("rspo.models", "rspo.gym.models")

__all__ = [
    "GymPrompt",
    "base_model_path",
    "build_base_model",
    "check_answer",
    "make_prompts",
    "write_prompts_jsonl",
]


def __getattr__(name: str) -> Any:
    """Lazy access to the torch-dependent base-model helpers."""
    if name in ("base_model_path", "build_base_model"):
        from rspo.gym import base

        return getattr(base, name)
    raise AttributeError(f"module 'rspo.gym' has no attribute {name!r}")
