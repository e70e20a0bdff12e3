"""Stage 3, score: the training set of an iteration from its samples and their judgments.

1. win rates p̂_k = mean_j P(y_k ≻ y_j) of each prompt's samples (:mod:`.estimate`);
2. which samples to train on: all of them, or the best and worst (``objective.samples:
   best_worst`` and the pair losses, which skip prompts the judge found all tied);
3. log π_t and log π_ref of those samples (log π_t as recorded while sampling, if it was);
4. π_ref's own samples with their log π_ref, for the forward-KL ``nll`` estimator;
5. the coefficient λ: fixed, or adapted toward ``objective.adaptive_target``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rspo.selfplay.adaptive import measure, update_coef
from rspo.selfplay.estimate import best_worst, win_rates
from rspo.selfplay.generate import sample_records
from rspo.selfplay.resume import fill_records
from rspo.utils.io import read_json, read_jsonl

if TYPE_CHECKING:
    from rspo.config import ObjectiveConfig
    from rspo.generation import SamplingParams
    from rspo.selfplay.ops import ModelOps

Row = dict[str, Any]
LogProbs = Callable[[str, list[list[int]], list[list[int]]], list[float]]

PAIR_LOSSES = ("sppo_hard", "inpo")


def training_set(
    gens: dict[int, dict[str, Any]],
    judgments: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    objective: ObjectiveConfig,
    include_self_match: bool,
    logprobs: LogProbs,
    policy: str,
    ref: str,
    ref_samples: Callable[[list[int]], dict[int, list[list[int]]]] | None,
    previous: Path | None,
    coef: tuple[float, float | None] | None = None,
) -> tuple[dict[str, Any], int]:
    """``dataset.json``'s content and the number of prompts skipped as tied. ``gens`` and
    ``judgments``: the iteration's records; ``logprobs(path, prompts, responses)``; π_t at
    ``policy``, π_ref at ``ref``; ``ref_samples(prompt indices)``: π_ref's samples (None when
    the loss needs none); ``previous``: the previous iteration's dataset.json (its λ);
    ``coef``: (λ, the value it was set on) decided outside (``objective.adaptive: kpi``)."""
    rows, tied = training_rows(gens, judgments, objective, include_self_match)
    lp_t, lp_ref = sample_logprobs(rows, gens, prompt_ids, logprobs, policy, ref)
    for r, a, b in zip(rows, lp_t, lp_ref):
        r["logp_t"], r["logp_ref"] = a, b
    ref_rows = []
    if ref_samples is not None:
        idx = sorted({r["prompt_index"] for r in rows})
        samples = ref_samples(idx)
        ref_rows = reference_rows(idx, samples, prompt_ids, logprobs, ref)
    coef, measured = coef or adaptive_coef(objective, rows, previous)
    return {"coef": coef, "measured": measured, "examples": rows, "ref_examples": ref_rows}, tied


def choose_samples(p_hat: list[float], objective: ObjectiveConfig) -> list[tuple[int, int]] | None:
    """``(k, label)`` of the samples to train on: every sample (label 0), or the best (1) and
    worst (−1); None when a pair loss finds no chosen/rejected pair (all tied)."""
    pair_loss = objective.loss_type in PAIR_LOSSES
    if objective.samples == "best_worst" or pair_loss:
        b, w = best_worst(p_hat)
        if pair_loss and p_hat[b] - p_hat[w] <= 1e-9:
            return None  # the judge preferred none of them: no chosen/rejected pair
        return [(b, 1), (w, -1)]
    return [(k, 0) for k in range(len(p_hat))]


def training_rows(
    gens: dict[int, dict[str, Any]],
    judgments: list[dict[str, Any]],
    objective: ObjectiveConfig,
    include_self_match: bool,
) -> tuple[list[Row], int]:
    """One row per chosen sample (prompt, sample index, win rate, label, response ids), in
    judgment order; and the number of prompts skipped as tied."""
    rows, tied = [], 0
    for j in judgments:
        i = j["prompt_index"]
        p_hat = win_rates(j["P"], include_self_match)
        chosen = choose_samples(p_hat, objective)
        if chosen is None:
            tied += 1
            continue
        resp = gens[i]["responses"]
        for k, label in chosen:
            rows.append(
                {
                    "prompt_index": i,
                    "k": k,
                    "win_rate": p_hat[k],
                    "label": label,
                    "response_ids": resp[k]["ids"],
                }
            )
    return rows, tied


def sample_logprobs(
    rows: list[Row],
    gens: dict[int, dict[str, Any]],
    prompt_ids: list[list[int]],
    logprobs: LogProbs,
    policy: str,
    ref: str,
) -> tuple[list[float], list[float]]:
    """log π_t and log π_ref of each row's response: log π_t as recorded while sampling
    (else a forward of π_t), log π_ref by a forward of π_ref (log π_t when π_ref is π_t)."""
    prompts = [prompt_ids[r["prompt_index"]] for r in rows]
    resps = [r["response_ids"] for r in rows]
    recorded = [gens[r["prompt_index"]]["responses"][r["k"]].get("logp") for r in rows]
    if rows and None not in recorded:  # log π_t recorded while sampling
        lp_t = recorded
    else:
        lp_t = logprobs(policy, prompts, resps)
    lp_ref = lp_t if ref == policy else logprobs(ref, prompts, resps)
    return lp_t, lp_ref


def reference_rows(
    idx: list[int],
    samples: dict[int, list[list[int]]],
    prompt_ids: list[list[int]],
    logprobs: LogProbs,
    ref: str,
) -> list[Row]:
    """π_ref's samples of the prompts ``idx`` with their log π_ref (one forward of π_ref)."""
    rp = [prompt_ids[i] for i in idx for _ in samples[i]]
    rr = [s for i in idx for s in samples[i]]
    lr = logprobs(ref, rp, rr)
    groups = [i for i in idx for _ in samples[i]]
    return [
        {"prompt_index": g, "response_ids": s, "logp_ref": v} for g, s, v in zip(groups, rr, lr)
    ]


def reference_samples(
    ops: ModelOps,
    store: Path,
    indices: list[int],
    first_generations: Path | None,
    ref: str,
    prompt_ids: list[list[int]],
    k: int,
    seed_parts: tuple,
    params: SamplingParams,
) -> dict[int, list[list[int]]]:
    """``k`` samples from π_ref (at ``ref``) per prompt index, kept in ``store``: taken from
    ``first_generations`` (iteration 1's, when π_1 = π_ref) where it has them, else sampled
    (seeded ``seed_parts + (i, j)``)."""

    def copied(missing: list[int]) -> list[dict[str, Any]]:
        first = {g["prompt_index"]: g for g in read_jsonl(first_generations)}
        return [
            {"prompt_index": i, "ids": [r["ids"] for r in first[i]["responses"]]}
            for i in missing
            if i in first
        ]

    def sampled(missing: list[int]) -> list[dict[str, Any]]:
        recs = sample_records(ops, ref, prompt_ids, missing, k, seed_parts, params)
        return [
            {"prompt_index": r["prompt_index"], "ids": [x["ids"] for x in r["responses"]]}
            for r in recs
        ]

    sources = [copied, sampled] if first_generations is not None else [sampled]
    have = fill_records(ops.dist, store, indices, *sources)
    return {i: have[i]["ids"] for i in indices}


def adaptive_coef(
    objective: ObjectiveConfig, rows: list[Row], previous: Path | None
) -> tuple[float, float | None]:
    """λ for this iteration and the value it was adapted on (None: not measured): fixed
    (``objective.adaptive: none``), or λ_{t−1} (``objective.coef`` in iteration 1, else the
    λ of ``previous``, the last iteration's dataset.json) moved toward
    ``objective.adaptive_target`` by what ``rows`` measure."""
    o = objective
    if o.adaptive == "none":
        return o.coef, None
    prev = o.coef if previous is None else read_json(previous)["coef"]
    if not rows:  # nothing measured (every prompt tied): keep λ
        return prev, None
    m = measure(
        o.adaptive,
        [r["logp_t"] for r in rows],
        [r["logp_ref"] for r in rows],
        [len(r["response_ids"]) for r in rows],
    )
    return update_coef(prev, m, o.adaptive_target), m
