"""Per-iteration evaluation: generate on held-out prompts, judge against π_ref, summarise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rspo.generation import SamplingParams
from rspo.utils.faults import fault_point
from rspo.utils.imports import load_callable as _load
from rspo.utils.io import append_jsonl, read_jsonl

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
            build_judge(name, **kwargs), run.cache_path("eval_judge_cache.sqlite")
        )
    return run._eval_judge


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
    several methods can go to alpaca_eval side by side)."""
    from rspo.evaluation.alpaca import write_alpaca_outputs
    from rspo.evaluation.summary import evaluate_responses
    from rspo.judges.symmetric import symmetric_prefer

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
    probs = run.dist.shard_map(  # judge calls split over the data-parallel ranks
        lambda sl: symmetric_prefer(judge, texts[sl], ta[sl], tb[sl]),
        len(texts),
        run.cfg.judge.batch_size,
    )
    samples = None
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
    first = [r["responses"][0]["text"] for r in pol]
    run.dist.main_only(
        write_alpaca_outputs,
        d / "model_outputs.json",
        run.eval_prompts.texts,
        first,
        generator or f"{_method(run.cfg)}/iter_{t:03d}",
    )
    return {"iteration": t, **metrics}
