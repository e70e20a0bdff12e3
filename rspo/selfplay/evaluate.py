"""Per-iteration evaluation: generate on held-out prompts, judge against π_ref, summarise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rspo.generation import SamplingParams
from rspo.utils.faults import fault_point
from rspo.utils.imports import load_callable as _load
from rspo.utils.io import append_jsonl, atomic_write_json, read_json, read_jsonl

if TYPE_CHECKING:
    from rspo.selfplay.loop import SelfPlayRun


def load_callable(spec: str, what: str = "evaluation function") -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function``; errors name the spec."""
    return _load(spec, what)


def _method(cfg: Any) -> str:
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


def _eval_judge(run: SelfPlayRun):
    if not hasattr(run, "_eval_judge"):
        from rspo.config import evaluation_judge
        from rspo.judges import build_judge
        from rspo.judges.cache import CachedJudge

        name, kwargs = evaluation_judge(run.cfg)
        run._eval_judge = CachedJudge(
            build_judge(name, **kwargs),
            run.cache_path("eval_judge_cache.sqlite"),
            run.cfg.judge.batch_size,
        )
    return run._eval_judge


def judge_usage(judge: Any) -> dict[str, int] | None:
    """A copy of the ``usage`` counters of ``judge`` or of a judge it wraps (the ``openai``
    judge's calls and tokens), or None when none reports usage."""
    while judge is not None:
        usage = getattr(judge, "usage", None)
        if isinstance(usage, dict):
            return dict(usage)
        judge = getattr(judge, "judge", None)
    return None


def usage_metrics(run: SelfPlayRun, before: dict | None, after: dict | None) -> dict[str, int]:
    """``judge_calls`` and, when the responses reported them (or no call was made: 0),
    ``judge_prompt_tokens`` and ``judge_completion_tokens``: what the evaluation judge was
    paid for between ``before`` and ``after``, summed over ranks (cached verdicts cost
    nothing and are not counted)."""
    if before is None or after is None:
        return {}
    delta = {k: after[k] - before.get(k, 0) for k in after}
    total = {k: sum(d[k] for d in run.dist.all_gather(delta)) for k in delta}
    out = {"judge_calls": total.get("calls", 0)}
    if total.get("calls_with_usage") or not out["judge_calls"]:  # no call: 0 tokens paid
        out["judge_prompt_tokens"] = total.get("prompt_tokens", 0)
        out["judge_completion_tokens"] = total.get("completion_tokens", 0)
    return out


def _responses(
    run: SelfPlayRun, path: str, file, tag: str, temperature: float, k: int = 1
) -> list[dict]:
    """Generate (or read back) ``k`` responses per eval prompt from the model at ``path``."""
    have = run.dist.from_main(read_jsonl, file, tolerate_torn_tail=True)
    n = len(run.eval_prompts.ids)
    if len(have) >= n:
        return have[:n]
    e = run.cfg.evaluation
    params = SamplingParams(e.max_new_tokens, temperature, 1.0, 0)
    # records are written in one append: a torn one is redone from the start of its batch
    # (generate calls of generation.batch_size sequences), so the batches match a whole run
    per = run.cfg.generation.batch_size // math.gcd(run.cfg.generation.batch_size, k)
    start = len(have) // per * per
    idx = list(range(start, n))
    recs = run.sample_records(path, run.eval_prompts.ids, idx, k, (run.cfg.run.seed, tag), params)
    recs = recs[len(have) - start :]
    run.dist.main_only(append_jsonl, file, recs)
    fault_point(f"evaluate_{tag}", len(have) + len(recs))
    return have + recs


def _copy_missing(file, records: list[dict]) -> None:
    """Append to ``file`` the ``records`` it does not hold yet (resumable like ``_responses``)."""
    append_jsonl(file, records[len(read_jsonl(file, tolerate_torn_tail=True)) :])


def _stored(file, n: int) -> Any:
    """The JSON ``file`` holds (None when absent or not of ``n`` items: redone)."""
    try:
        have = read_json(file)
    except (OSError, ValueError):
        return None
    lists = have.values() if isinstance(have, dict) else [have]
    return have if all(isinstance(v, list) and len(v) == n for v in lists) else None


def proxy_probs(run: SelfPlayRun, d, texts: list[str], ta: list[str], tb: list[str]) -> list[float]:
    """P(policy ≻ π_ref) by the *training* judge (``run.judge``, its cache included) on the
    eval pairs, both orders as training asks them (``judge.both_orders``); kept in
    ``proxy_judgments.json`` so a resumed evaluation never asks the judge again."""
    from rspo.judges.symmetric import symmetric_prefer

    file = d / "proxy_judgments.json"
    have = run.dist.from_main(_stored, file, len(texts))
    if have is not None:
        return have
    judge, both = run.judge, run.cfg.judge.both_orders
    probs = run.dist.shard_map(
        lambda sl: symmetric_prefer(judge, texts[sl], ta[sl], tb[sl], both_orders=both),
        len(texts),
        run.cfg.judge.batch_size,
    )
    run.dist.main_only(atomic_write_json, file, [float(p) for p in probs])
    return probs


def kl_sample_set(run: SelfPlayRun, pol: list[dict], div: list[dict] | None):
    """The policy's eval samples drawn from π itself (temperature 1; evaluation never
    truncates with top-k/top-p): the win-rate samples when ``evaluation.temperature`` is 1,
    else the diversity samples when ``evaluation.diversity_temperature`` is 1; as
    (records, samples per prompt), or None (KL(π‖π_ref) is then not estimated)."""
    e = run.cfg.evaluation
    if e.temperature == 1.0:
        return pol, e.num_samples
    if div is not None and e.diversity_temperature == 1.0:
        return div, e.diversity_samples
    return None


def kl_logratios(run: SelfPlayRun, d, path: str, ref: str, recs: list[dict], k: int) -> list[float]:
    """log π(y) − log π_ref(y) of the first ``k`` samples per prompt of ``recs`` (y ~ π at the
    model at ``path``): one no-grad forward of each model, the scoring code's log-probs;
    exactly 0 when ``path`` is π_ref. Kept in ``kl_logprobs.json`` (resumes read it back)."""
    resps = [x["ids"] for r in recs for x in r["responses"][:k]]
    if path == ref:
        return [0.0] * len(resps)
    file = d / "kl_logprobs.json"
    have = run.dist.from_main(_stored, file, len(resps))
    if have is None:
        prompts = [run.eval_prompts.ids[r["prompt_index"]] for r in recs for _ in range(k)]
        have = {"logp": run._logprobs(path, prompts, resps)}
        have["logp_ref"] = run._logprobs(ref, prompts, resps)
        run.dist.main_only(atomic_write_json, file, have)
        fault_point("evaluate_kl", 1)  # a kill here: the resumed evaluation reads them back
    return [a - b for a, b in zip(have["logp"], have["logp_ref"])]


def overoptimization_metrics(
    run: SelfPlayRun,
    t: int,
    d,
    path: str,
    ref: str,
    pairs: tuple[list[str], list[str], list[str]],
    pol: list[dict],
    div: list[dict] | None,
) -> dict[str, Any]:
    """``proxy_win_rate`` (+ ``_ci``): the training judge's win rate of π vs π_ref on the
    gold win rate's pairs, same cluster bootstrap; ``kl_ref`` (+ ``_ci``, nats) and
    ``kl_ref_per_token``: KL(π‖π_ref) from π's own samples (:mod:`rspo.evaluation.kl`),
    null with a logged note when no temperature-1 samples exist."""
    import numpy as np

    from rspo.evaluation.kl import sequence_kl
    from rspo.evaluation.winrate import win_rate

    e, k = run.cfg.evaluation, run.cfg.evaluation.num_samples
    probs = proxy_probs(run, d, *pairs)
    seed = run.cfg.run.seed
    wr = run.dist.from_main(
        lambda: win_rate(np.reshape(probs, (-1, k)).mean(axis=1), n_boot=e.n_boot, seed=seed)
    )
    out: dict[str, Any] = {"proxy_win_rate": wr.mean, "proxy_win_rate_ci": [wr.lo, wr.hi]}
    chosen = kl_sample_set(run, pol, div)
    if chosen is None:
        run.log(
            f"iteration {t}: kl_ref not estimated (null): evaluation.temperature "
            f"{e.temperature:g} and no diversity samples at temperature 1; KL(π‖π_ref) from "
            "samples needs samples of π itself"
        )
        return {**out, "kl_ref": None, "kl_ref_ci": None, "kl_ref_per_token": None}
    recs, m = chosen
    diffs = kl_logratios(run, d, path, ref, recs, m)
    lengths = [len(x["ids"]) for r in recs for x in r["responses"][:m]]
    kl = run.dist.from_main(sequence_kl, diffs, [0.0] * len(diffs), lengths, m, e.n_boot, seed)
    return {**out, "kl_ref": kl.mean, "kl_ref_ci": [kl.lo, kl.hi], "kl_ref_per_token": kl.per_token}


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


def evaluate_iteration(
    run: SelfPlayRun, t: int, path: str, d=None, generator: str | None = None
) -> dict[str, Any]:
    """Metrics of the policy at ``path`` vs the reference policy on the eval prompts.

    Outputs go to ``d`` (default: the iteration's directory); ``model_outputs.json`` names
    its generator ``generator`` (default: the objective and the iteration, so files of
    several methods can go to alpaca_eval side by side), and ``annotations.json`` holds every
    judged pair (AlpacaEval style). Besides the gold metrics the row carries
    ``proxy_win_rate`` and ``kl_ref`` (see :func:`overoptimization_metrics`)."""
    from rspo.evaluation.alpaca import write_alpaca_outputs, write_annotations
    from rspo.evaluation.summary import evaluate_responses
    from rspo.judges.symmetric import SymmetricJudge, symmetric_prefer

    e = run.cfg.evaluation
    k = e.num_samples
    d = run.rd.iter_dir(t) if d is None else d
    ref = run._ref_path(1)
    base = _responses(run, ref, run.rd.root / "eval_baseline.jsonl", "eval", e.temperature, k)
    if path == ref:  # π_0 is π_ref: same model and seeds would sample the baseline again
        run.dist.main_only(_copy_missing, d / "eval_outputs.jsonl", base)
        pol = base
    else:
        pol = _responses(run, path, d / "eval_outputs.jsonl", "eval", e.temperature, k)
    # sample j of the policy meets sample j of π_ref, k pairs per prompt
    texts = [p for p in run.eval_prompts.texts for _ in range(k)]
    a = [x for r in pol for x in r["responses"][:k]]
    b = [x for r in base for x in r["responses"][:k]]
    ta, tb, judge = [x["text"] for x in a], [x["text"] for x in b], _eval_judge(run)
    usage_before = judge_usage(judge)
    probs = run.dist.shard_map(  # judge calls split over the data-parallel ranks
        lambda sl: symmetric_prefer(judge, texts[sl], ta[sl], tb[sl]),
        len(texts),
        run.cfg.judge.batch_size,
    )
    usage = usage_metrics(run, usage_before, judge_usage(judge))
    samples = div = None
    if e.diversity_samples >= 2:
        if k >= e.diversity_samples and e.diversity_temperature == e.temperature:
            div = pol  # the win-rate samples already are diversity samples
        else:
            div = _responses(
                run,
                path,
                d / "eval_samples.jsonl",
                "div",
                e.diversity_temperature,
                e.diversity_samples,
            )
        samples = [[x["text"] for x in r["responses"][: e.diversity_samples]] for r in div]
    correct = None
    if e.accuracy_fn:
        fn = load_callable(e.accuracy_fn)
        correct = []
        for i, (p, x) in enumerate(zip(texts, a)):
            try:
                correct.append(bool(fn(p, x["text"])))
            except Exception as err:  # a user function: say which prompt broke it
                raise ValueError(
                    f"evaluation.accuracy_fn {e.accuracy_fn} failed on eval prompt {i // k} "
                    f"({p[:60]!r}): {type(err).__name__}: {err}"
                ) from err
    metrics = run.dist.from_main(  # computed once, on rank 0
        evaluate_responses,
        texts,
        ta,
        tb,
        probs,
        [len(x["ids"]) for x in a],
        [len(x["ids"]) for x in b],
        truncated=[not x["finished"] for x in a],
        correct=correct,
        samples_per_prompt=samples,
        n_boot=e.n_boot,
        seed=run.cfg.run.seed,
        group_size=k,
    )
    if e.subset_fn:
        subsets = subset_win_rates(load_callable(e.subset_fn), run.eval_prompts.texts, probs)
        taken = sorted(set(subsets) & set(metrics))
        if taken:  # e.g. a label "ci" would overwrite win_rate_ci
            raise ValueError(
                f"evaluation.subset_fn {e.subset_fn}: labels {[k[9:] for k in taken]} name "
                f"metrics rspo reports ({', '.join(taken)}); return other labels"
            )
        metrics.update(subsets)
    metrics.update(overoptimization_metrics(run, t, d, path, ref, (texts, ta, tb), pol, div))
    metrics.update(usage)
    from rspo.selfplay.spot import spot_check_metrics  # issue 18: the spot check, on these pairs

    metrics.update(spot_check_metrics(run, t, d, texts, a, b, proxy_probs(run, d, texts, ta, tb)))
    first = [r["responses"][0]["text"] for r in pol]
    name = generator or f"{_method(run.cfg)}/iter_{t:03d}"
    run.dist.main_only(
        write_alpaca_outputs, d / "model_outputs.json", run.eval_prompts.texts, first, name
    )
    run.dist.main_only(  # every judged pair, so the win rate can be recomputed without the judge
        write_annotations,
        d / "annotations.json",
        texts,
        tb,
        ta,
        probs,
        ref,
        name,
        SymmetricJudge(judge).judge_id,
    )
    return {"iteration": t, **metrics}
