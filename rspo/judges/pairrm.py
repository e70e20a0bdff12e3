"""Judge ``pairrm``: PairRM through llm-blender (optional extra, separate environment)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from rspo.judges.base import Judge, JudgeError, register_judge
from rspo.judges.reward_model import sigmoid

INSTALL_HINT = (
    "The 'pairrm' judge needs llm-blender: pip install 'rspo[pairrm]' (or pip install "
    "git+https://github.com/yuchenlin/LLM-Blender.git). Known incompatibility: llm-blender "
    "fails to import under transformers>=5 (it imports TRANSFORMERS_CACHE, removed in v5; "
    "yuchenlin/LLM-Blender#33), and rspo requires transformers>=5, so PairRM usually needs "
    "a patched llm-blender or a separate environment. The 'reward_model' and 'pairwise_lm' "
    "judges work without it."
)


def import_llm_blender() -> Any:
    """Import llm_blender, or raise a JudgeError saying how to install it and why it may fail."""
    try:
        return importlib.import_module("llm_blender")
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != "llm_blender":
            raise JudgeError(
                f"llm-blender is installed but its import failed ({e}). " + INSTALL_HINT
            ) from e
        raise JudgeError("llm-blender is not installed. " + INSTALL_HINT) from None
    except ImportError as e:  # typically: cannot import name 'TRANSFORMERS_CACHE'
        raise JudgeError(
            f"llm-blender is installed but its import failed ({e}). " + INSTALL_HINT
        ) from e


@register_judge("pairrm")
class PairRMJudge(Judge):
    """PairRM compares (a, b) jointly; P = σ(logit / temperature).

    ``mode="[A,B]+[B,A]"`` (default) makes llm-blender score both orders itself, so the
    judge counts as symmetric; ``"[A,B]"`` is one pass and order-sensitive.
    """

    def __init__(
        self,
        model: str = "llm-blender/PairRM",
        batch_size: int = 8,
        device: str | None = None,
        temperature: float = 1.0,
        mode: str = "[A,B]+[B,A]",
    ) -> None:
        if mode not in ("[A,B]+[B,A]", "[A,B]"):
            raise ValueError(f"pairrm judge: mode must be '[A,B]+[B,A]' or '[A,B]', got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"pairrm judge: temperature must be > 0, got {temperature}")
        blender_mod = import_llm_blender()
        from rspo.judges._hf import resolve_device

        self.model_path = model
        self.batch_size = batch_size
        self.temperature = float(temperature)
        self.mode = mode
        self.order_sensitive = mode != "[A,B]+[B,A]"
        self.device = str(resolve_device(device))
        self.blender = blender_mod.Blender()
        self.blender.loadranker(model, device=self.device)

    @property
    def judge_id(self) -> str:
        return f"pairrm[model={self.model_path},T={self.temperature},mode={self.mode}]"

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        logits = self.blender.compare(
            list(prompts),
            list(responses_a),
            list(responses_b),
            batch_size=self.batch_size,
            return_logits=True,
            mode=self.mode,
        )
        return [sigmoid(float(x) / self.temperature) for x in logits]
