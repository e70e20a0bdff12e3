"""What a Hugging Face model config says about the model, read the same way everywhere."""

from __future__ import annotations

from typing import Any

#: model types whose position ids start after the padding index (RoBERTa's 514 = 512 + 2)
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "roberta-prelayernorm"}


def context_length(config: Any) -> int | None:
    """The longest sequence the model takes, or None when its config names no limit:
    ``max_position_embeddings`` (or ``n_positions``), extended by rope scaling (YaRN etc.),
    less the padding offset of RoBERTa-style position ids."""
    cfg = getattr(config, "get_text_config", lambda: config)()
    ctx = next(
        (
            v
            for k in ("max_position_embeddings", "n_positions")
            if isinstance(v := getattr(cfg, k, None), int) and v > 0
        ),
        None,
    )
    if ctx is None:
        return None
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if isinstance(scaling, dict) and scaling.get("factor"):
        base = scaling.get("original_max_position_embeddings") or ctx
        ctx = max(ctx, int(base * float(scaling["factor"])))
    if getattr(cfg, "model_type", "") in _OFFSET_POSITIONS:  # positions start at pad + 1
        ctx -= int(getattr(cfg, "pad_token_id", None) or 1) + 1
    return ctx


def has_stateful_rope(config: Any) -> bool:
    """Whether the model's rotary embedding changes with what it has seen: transformers'
    dynamic NTK scaling rewrites ``inv_freq`` in place after a sequence longer than the
    cached one, so a model kept in memory would score later inputs unlike a fresh load."""
    cfg = getattr(config, "get_text_config", lambda: config)()
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return False
    kinds = [params] + [v for v in params.values() if isinstance(v, dict)]  # per layer type
    return any("dynamic" in str(k.get("rope_type", k.get("type", ""))) for k in kinds)
