"""Stage 5, evaluate: generate on held-out prompts, judge against π_ref, summarise.

:func:`evaluate_policy` takes what it needs as arguments (the config, the model
operations, the prompts, the policy and π_ref paths, the judges, the output files), so the
training loop (:mod:`rspo.selfplay.loop`) and ``rspo eval`` (:mod:`rspo.selfplay.standalone`)
call it alike. Every file it writes is read back by a resumed evaluation
(:mod:`rspo.selfplay.resume`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rspo.generation import SamplingParams
from rspo.selfplay.generate import sample_records
from rspo.selfplay.resume import computed_once, copy_missing, extend_records
from rspo.selfplay.usage import judge_usage, usage_metrics
from rspo.utils.imports import load_callable as _load

if TYPE_CHECKING:
    from rspo.config import Config, EvaluationConfig, JudgeConfig
    from rspo.data import PromptSet
    from rspo.distributed import DistContext
    from rspo.selfplay.ops import ModelOps

Log = Callable[[str], None]


def load_callable(spec: str, what: str = "evaluation function") -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function``; errors name the spec."""
    return _load(spec, what)


def method_name(cfg: Any) -> str:
    """The objective in a few characters, e.g. ``sppo``, ``rspo+forward_kl[ratio]@0.2``,
    ``mpo+reverse_kl@2+magnet5`` (what tells runs of a study apart in alpaca_eval)."""
    o = cfg.objective
    name = o.preset or o.loss_type
    reg = "".join(o.regularizer.split())
    if reg and o.coef:
        name += f"+{reg}@{o.coef:g}"
    if o.magnet_refresh:
        name += f"+magnet{o.magnet_refresh}"
    if o.adaptive != "none":
        name += f"+adaptive_{o.adaptive}"
    if o.eta != type(o)().eta:
        name += f"+eta{o.eta:g}"
    return name.replace("/", "_")


def evaluate_policy(
    cfg: Config,
    ops: ModelOps,
    *,
    prompts: PromptSet,
    policy: str,
    ref: str,
    judge: Any,
    proxy_judge: Any,
    out: Path,
    baseline: Path,
    iteration: int,
    generator: str,
    log: Log,
    spot_judge: Any = None,
) -> dict[str, Any]:
    """Metrics of the policy at ``policy`` vs π_ref (at ``ref``) on the eval ``prompts``.

    ``judge`` gives the (gold) win rate, ``proxy_judge`` (the training judge)
    ``proxy_win_rate``. Outputs go to ``out``; π_ref's responses to ``baseline`` (shared by
    the run's evaluations). ``model_outputs.json`` names its generator ``generator``, and
    ``annotations.json`` holds every judged pair (AlpacaEval style). Besides the gold
    metrics the row carries ``proxy_win_rate`` and ``kl_ref`` (:func:`proxy_metrics`,
    :func:`kl_metrics`), and with ``spot_judge`` the spot check on the same pairs
    (:func:`rspo.selfplay.spot.spot_check_metrics`)."""
    e, k, dist = cfg.evaluation, cfg.evaluation.num_samples, ops.dist
    respond = partial(responses, cfg, ops, prompts.ids)
    base = respond(ref, baseline, "eval", e.temperature, k)
    if policy == ref:  # π_0 is π_ref: same model and seeds would sample the baseline again
        dist.main_only(copy_missing, out / "eval_outputs.jsonl", base)
        pol = base
    else:
        pol = respond(policy, out / "eval_outputs.jsonl", "eval", e.temperature, k)
    # sample j of the policy meets sample j of π_ref, k pairs per prompt
    texts = [p for p in prompts.texts for _ in range(k)]
    a = [x for r in pol for x in r["responses"][:k]]
    b = [x for r in base for x in r["responses"][:k]]
    ta, tb = [x["text"] for x in a], [x["text"] for x in b]
    usage_before = judge_usage(judge)
    probs = ops.prefer(judge, texts, ta, tb, cfg.judge.batch_size)  # split over the ranks
    usage = usage_metrics(dist, usage_before, judge_usage(judge))
    div = None  # diversity samples: the win-rate samples when they serve, else their own
    if e.diversity_samples >= 2:
        same = k >= e.diversity_samples and e.diversity_temperature == e.temperature
        div_file, div_t = out / "eval_samples.jsonl", e.diversity_temperature
        div = pol if same else respond(policy, div_file, "div", div_t, e.diversity_samples)
    correct = accuracy(e.accuracy_fn, texts, ta, k) if e.accuracy_fn else None
    metrics = dist.from_main(gold_metrics, cfg, texts, a, b, probs, correct, div)  # on rank 0
    if e.subset_fn:
        metrics.update(subset_metrics(e.subset_fn, prompts.texts, probs, metrics))
    proxy = proxy_probs(ops, proxy_judge, cfg.judge, out / "proxy_judgments.json", texts, ta, tb)
    metrics.update(proxy_metrics(cfg, ops, proxy))
    kl_file = out / "kl_logprobs.json"
    metrics.update(
        kl_metrics(cfg, ops, prompts.ids, kl_file, policy, ref, pol, div, iteration, log)
    )
    metrics.update(usage)
    if spot_judge is not None:  # the spot check: an independent judge on these pairs
        from rspo.selfplay.spot import spot_check_metrics

        spot = spot_check_metrics(cfg, dist, log, spot_judge, iteration, out, texts, a, b, proxy)
        metrics.update(spot)
    write_outputs(dist, out, prompts.texts, pol, (texts, ta, tb), probs, ref, generator, judge)
    return {"iteration": iteration, **metrics}


def responses(
    cfg: Config,
    ops: ModelOps,
    prompt_ids: list[list[int]],
    path: str,
    file: Path,
    tag: str,
    temperature: float,
    k: int = 1,
) -> list[dict]:
    """Generate (or read back) ``k`` responses per eval prompt from the model at ``path``."""
    params = SamplingParams(cfg.evaluation.max_new_tokens, temperature, 1.0, 0)
    # records are written in one append: a torn one is redone from the start of its batch
    # (generate calls of generation.batch_size sequences), so the batches match a whole run
    per = cfg.generation.batch_size // math.gcd(cfg.generation.batch_size, k)

    def make(idx: list[int]) -> list[dict]:
        return sample_records(ops, path, prompt_ids, idx, k, (cfg.run.seed, tag), params)

    return extend_records(ops.dist, file, len(prompt_ids), per, make, f"evaluate_{tag}")


def gold_metrics(
    cfg: Config,
    texts: list[str],
    a: list[dict],
    b: list[dict],
    probs: list[float],
    correct: list[bool] | None,
    div: list[dict] | None,
) -> dict[str, Any]:
    """The evaluation judge's metrics of the pairs (``texts``, policy response ``a`` vs
    π_ref's ``b``; :func:`rspo.evaluation.summary.evaluate_responses`): win rates, length
    control, truncation, accuracy (``correct``), diversity (of ``div``'s samples)."""
    from rspo.evaluation.summary import evaluate_responses

    e = cfg.evaluation
    samples = None
    if div is not None:
        samples = [[x["text"] for x in r["responses"][: e.diversity_samples]] for r in div]
    return evaluate_responses(
        texts,
        [x["text"] for x in a],
        [x["text"] for x in b],
        probs,
        [len(x["ids"]) for x in a],
        [len(x["ids"]) for x in b],
        truncated=[not x["finished"] for x in a],
        correct=correct,
        samples_per_prompt=samples,
        n_boot=e.n_boot,
        seed=cfg.run.seed,
        group_size=e.num_samples,
    )


def accuracy(spec: str, texts: list[str], responses: list[str], k: int) -> list[bool]:
    """``evaluation.accuracy_fn(prompt, response)`` of each pair's policy response."""
    fn = load_callable(spec)
    correct = []
    for i, (p, x) in enumerate(zip(texts, responses)):
        try:
            correct.append(bool(fn(p, x)))
        except Exception as err:  # a user function: say which prompt broke it
            raise ValueError(
                f"evaluation.accuracy_fn {spec} failed on eval prompt {i // k} "
                f"({p[:60]!r}): {type(err).__name__}: {err}"
            ) from err
    return correct


def subset_win_rates(
    label_of: Callable[[str], str], prompts: list[str], probs: list[float]
) -> dict[str, float]:
    """``win_rate_<label>``: the mean preference over the pairs of each subset of prompts
    (``probs`` holds an equal number of pairs per prompt, in prompt order)."""
    k = len(probs) // len(prompts)
    by: dict[str, list[float]] = {}
    for i, p in enumerate(prompts):
        by.setdefault(str(label_of(p)), []).extend(probs[i * k : (i + 1) * k])
    return {f"win_rate_{lab}": float(sum(v) / len(v)) for lab, v in sorted(by.items())}


def subset_metrics(
    spec: str, prompts: list[str], probs: list[float], metrics: dict[str, Any]
) -> dict[str, float]:
    """:func:`subset_win_rates` by ``evaluation.subset_fn``; a label naming one of the
    ``metrics`` already reported is an error."""
    subsets = subset_win_rates(load_callable(spec), prompts, probs)
    taken = sorted(set(subsets) & set(metrics))
    if taken:  # e.g. a label "ci" would overwrite win_rate_ci
        raise ValueError(
            f"evaluation.subset_fn {spec}: labels {[k[9:] for k in taken]} name "
            f"metrics rspo reports ({', '.join(taken)}); return other labels"
        )
    return subsets


def proxy_probs(
    ops: ModelOps,
    judge: Any,
    settings: JudgeConfig,
    file: Path,
    texts: list[str],
    ta: list[str],
    tb: list[str],
) -> list[float]:
    """P(policy ≻ π_ref) by the *training* ``judge`` (its cache included) on the eval pairs,
    both orders as training asks them (``judge.both_orders``); kept in ``file``
    (proxy_judgments.json) so a resumed evaluation never asks the judge again."""
    return computed_once(
        ops.dist,
        file,
        len(texts),
        lambda: ops.prefer(judge, texts, ta, tb, settings.batch_size, settings.both_orders),
        saved=lambda probs: [float(p) for p in probs],
    )


def proxy_metrics(cfg: Config, ops: ModelOps, probs: list[float]) -> dict[str, Any]:
    """``proxy_win_rate`` (+ ``_ci``): the training judge's win rate of π vs π_ref from its
    ``probs`` on the gold win rate's pairs (:func:`proxy_probs`), same cluster bootstrap."""
    import numpy as np

    from rspo.evaluation.winrate import win_rate

    e, k, seed = cfg.evaluation, cfg.evaluation.num_samples, cfg.run.seed
    wr = ops.dist.from_main(
        lambda: win_rate(np.reshape(probs, (-1, k)).mean(axis=1), n_boot=e.n_boot, seed=seed)
    )
    return {"proxy_win_rate": wr.mean, "proxy_win_rate_ci": [wr.lo, wr.hi]}


def kl_sample_set(e: EvaluationConfig, pol: list[dict], div: list[dict] | None):
    """The policy's eval samples drawn from π itself (temperature 1; evaluation never
    truncates with top-k/top-p): the win-rate samples when ``evaluation.temperature`` is 1,
    else the diversity samples when ``evaluation.diversity_temperature`` is 1; as
    (records, samples per prompt), or None (KL(π‖π_ref) is then not estimated)."""
    if e.temperature == 1.0:
        return pol, e.num_samples
    if div is not None and e.diversity_temperature == 1.0:
        return div, e.diversity_samples
    return None


def kl_logratios(
    ops: ModelOps,
    prompt_ids: list[list[int]],
    file: Path,
    path: str,
    ref: str,
    recs: list[dict],
    k: int,
) -> list[float]:
    """log π(y) − log π_ref(y) of the first ``k`` samples per prompt of ``recs`` (y ~ π at the
    model at ``path``): one no-grad forward of each model, the scoring code's log-probs;
    exactly 0 when ``path`` is π_ref. Kept in ``file`` (kl_logprobs.json; resumes read it)."""
    resps = [x["ids"] for r in recs for x in r["responses"][:k]]
    if path == ref:
        return [0.0] * len(resps)

    def both() -> dict[str, list[float]]:
        prompts = [prompt_ids[r["prompt_index"]] for r in recs for _ in range(k)]
        have = {"logp": ops.logprobs(path, prompts, resps)}
        have["logp_ref"] = ops.logprobs(ref, prompts, resps)
        return have

    have = computed_once(ops.dist, file, len(resps), both, stage="evaluate_kl")
    return [a - b for a, b in zip(have["logp"], have["logp_ref"])]


def kl_metrics(
    cfg: Config,
    ops: ModelOps,
    prompt_ids: list[list[int]],
    file: Path,
    path: str,
    ref: str,
    pol: list[dict],
    div: list[dict] | None,
    iteration: int,
    log: Log,
) -> dict[str, Any]:
    """``kl_ref`` (+ ``_ci``, nats) and ``kl_ref_per_token``: KL(π‖π_ref) from π's own samples
    (:mod:`rspo.evaluation.kl`), null with a logged note when no temperature-1 samples exist."""
    from rspo.evaluation.kl import sequence_kl

    e, seed = cfg.evaluation, cfg.run.seed
    chosen = kl_sample_set(e, pol, div)
    if chosen is None:
        log(
            f"iteration {iteration}: kl_ref not estimated (null): evaluation.temperature "
            f"{e.temperature:g} and no diversity samples at temperature 1; KL(π‖π_ref) from "
            "samples needs samples of π itself"
        )
        return {"kl_ref": None, "kl_ref_ci": None, "kl_ref_per_token": None}
    recs, m = chosen
    diffs = kl_logratios(ops, prompt_ids, file, path, ref, recs, m)
    lengths = [len(x["ids"]) for r in recs for x in r["responses"][:m]]
    kl = ops.dist.from_main(sequence_kl, diffs, [0.0] * len(diffs), lengths, m, e.n_boot, seed)
    return {"kl_ref": kl.mean, "kl_ref_ci": [kl.lo, kl.hi], "kl_ref_per_token": kl.per_token}


def write_outputs(
    dist: DistContext,
    out: Path,
    prompts: list[str],
    pol: list[dict],
    pairs: tuple[list[str], list[str], list[str]],
    probs: list[float],
    ref: str,
    generator: str,
    judge: Any,
) -> None:
    """``model_outputs.json`` (the policy's first response per prompt, AlpacaEval format)
    and ``annotations.json`` (every judged pair, so the win rate can be recomputed without
    the judge), on rank 0."""
    from rspo.evaluation.alpaca import write_alpaca_outputs, write_annotations
    from rspo.judges.symmetric import SymmetricJudge

    texts, ta, tb = pairs
    first = [r["responses"][0]["text"] for r in pol]
    dist.main_only(write_alpaca_outputs, out / "model_outputs.json", prompts, first, generator)
    dist.main_only(
        write_annotations,
        out / "annotations.json",
        texts,
        tb,
        ta,
        probs,
        ref,
        generator,
        SymmetricJudge(judge).judge_id,
    )
