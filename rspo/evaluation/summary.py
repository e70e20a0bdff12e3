"""One call that turns a round of generated, judged responses into a flat metrics row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rspo.evaluation.diversity import distinct_n, mean_over_groups, self_bleu
from rspo.evaluation.length_control import lc_win_rate
from rspo.evaluation.lengths import length_stats
from rspo.evaluation.winrate import as_preferences, win_rate

__all__ = ["evaluate_responses"]


def evaluate_responses(
    prompts: Sequence[str],
    policy_responses: Sequence[str],
    baseline_responses: Sequence[str],
    probs: Sequence[float] | np.ndarray,
    policy_token_lengths: Sequence[int] | np.ndarray,
    baseline_token_lengths: Sequence[int] | np.ndarray,
    truncated: Sequence[bool] | None = None,
    correct: Sequence[bool] | None = None,
    samples_per_prompt: list[list[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    group_size: int = 1,
) -> dict[str, Any]:
    """Evaluate policy responses against baseline responses, ``group_size`` per prompt.

    ``probs[i]`` = P(policy ≻ baseline | prompts[i]) from the judge. With ``group_size`` k > 1
    every per-response sequence holds k consecutive pairs per prompt (``prompts`` repeated);
    the win rate is the mean over pairs and its interval resamples whole prompts (a cluster
    bootstrap), since samples of one prompt are not independent. Returns a flat,
    JSON-serialisable dict: ``win_rate``, ``win_rate_ci`` ([lo, hi], bootstrap 95%),
    ``lc_win_rate`` (length control on token lengths), ``avg_length`` (policy tokens),
    ``baseline_avg_length``, ``avg_chars``, ``truncation_rate`` and ``accuracy`` (``None``
    when the flags are not given), ``self_bleu`` (3-gram), ``distinct_1``, ``distinct_2``
    (means over prompts of the metric among that prompt's samples; ``None`` without
    ``samples_per_prompt``) and ``n_prompts``. All win rates are fractions in [0, 1].
    """
    if group_size < 1 or len(prompts) % group_size:
        raise ValueError(f"{len(prompts)} responses do not split into groups of {group_size}")
    n = len(prompts)
    sizes = {
        "policy_responses": len(policy_responses),
        "baseline_responses": len(baseline_responses),
        "probs": len(probs),
        "policy_token_lengths": len(policy_token_lengths),
        "baseline_token_lengths": len(baseline_token_lengths),
    }
    if truncated is not None:
        sizes["truncated"] = len(truncated)
    if correct is not None:
        sizes["correct"] = len(correct)
    bad = {k: v for k, v in sizes.items() if v != n}
    if samples_per_prompt is not None and len(samples_per_prompt) != n // group_size:
        bad["samples_per_prompt"] = len(samples_per_prompt)
    if bad:
        raise ValueError(f"{n} prompts but mismatched lengths: {bad}")
    p = as_preferences(probs)
    wr = win_rate(p.reshape(-1, group_size).mean(axis=1), n_boot=n_boot, seed=seed)
    lc = lc_win_rate(p, policy_token_lengths, baseline_token_lengths)
    pol = length_stats(policy_token_lengths, texts=policy_responses, truncated=truncated)
    base = length_stats(baseline_token_lengths)
    out: dict[str, Any] = {
        "win_rate": wr.mean,
        "win_rate_ci": [wr.lo, wr.hi],
        "lc_win_rate": lc.lc_win_rate,
        "avg_length": pol.mean_tokens,
        "baseline_avg_length": base.mean_tokens,
        "avg_chars": pol.mean_chars,
        "truncation_rate": pol.truncation_rate,
        "accuracy": None if correct is None else float(np.mean([bool(c) for c in correct])),
        "self_bleu": None,
        "distinct_1": None,
        "distinct_2": None,
        "n_prompts": n // group_size,
    }
    if samples_per_prompt is not None:
        out["self_bleu"] = mean_over_groups(samples_per_prompt, lambda g: self_bleu(g, n=3))
        out["distinct_1"] = mean_over_groups(samples_per_prompt, lambda g: distinct_n(g, 1), 1)
        out["distinct_2"] = mean_over_groups(samples_per_prompt, lambda g: distinct_n(g, 2), 1)
    return out
