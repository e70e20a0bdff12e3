"""Issue 18: the spot check and the over-optimization alarm.

The operating model: self-play trains on a cheap judge; a small, expensive, independent
judge (the *spot judge*) confirms its gains on a fixed random subset of the eval prompts,
and an alarm fires when the two disagree (docs/operations.md).

- :func:`spot_check_metrics` (called by the evaluation): the spot judge on the pairs the
  evaluation already sampled (π_t's and π_ref's responses; nothing is sampled again) for the
  subset's prompts, cached (``spot_judge_cache.sqlite``) and kept per iteration
  (``spot_judgments.json``), so a resumed or re-run evaluation never pays twice.
- :func:`alarm_metrics` (called after the evaluation): the alarm rule, :func:`alarm_reasons`.
- :func:`stop_after`: ``run.stop_on_overoptimization``.

The pure parts (:func:`spot_prompts`, :func:`is_checked`, :func:`verdict`, :func:`agreement`,
:func:`alarm_reasons`) take plain values; :func:`spot_check_metrics` takes what it needs; the
alarm and the stop take the run (``cfg``, ``dist``, ``log``, ``rd``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rspo.selfplay.usage import judge_usage, usage_metrics
from rspo.utils.io import atomic_write_json, read_json

#: a verdict within this of ½ is a tie
TIE_TOL = 1e-9
#: where the spot judge's verdicts are cached (run.cache_dir, else the run directory)
CACHE_FILE = "spot_judge_cache.sqlite"
#: the spot judge's verdicts of one evaluated iteration
JUDGMENTS_FILE = "spot_judgments.json"


# ---------------------------------------------------------------- pure parts


def spot_prompts(n: int, num_prompts: int, seed: int) -> list[int]:
    """Sorted indices of the spot subset: ``min(num_prompts, n)`` of the ``n`` eval prompts
    drawn without replacement by ``random.Random(seed)``; the same at every iteration."""
    return sorted(random.Random(seed).sample(range(n), min(num_prompts, n)))


def is_checked(t: int, every: int, last: int) -> bool:
    """Whether iteration ``t`` is spot-checked: iteration 0 (π_0, the baseline the first
    comparison needs), every ``every``-th iteration, and the run's last (``last``)."""
    return t == 0 or t % every == 0 or t == last


def verdict(p: float, tol: float = TIE_TOL) -> int:
    """+1 when P(policy ≻ π_ref) = ``p`` prefers the policy's response, −1 π_ref's, 0 a tie
    (|p − ½| ≤ ``tol``)."""
    return 0 if abs(p - 0.5) <= tol else (1 if p > 0.5 else -1)


def agreement(
    train: Sequence[float], spot: Sequence[float], identical: Sequence[bool]
) -> tuple[float | None, int]:
    """The fraction of the pairs whose two responses differ on which the training judge's
    and the spot judge's verdicts (:func:`verdict`) are the same: both prefer the policy's
    response, both prefer π_ref's, or both call it a tie (one judge's tie against the other's
    preference disagrees). Pairs of identical responses are left out (every judge ties them:
    they say nothing). Returns (fraction, pairs counted); (None, 0) when none differ."""
    if not len(train) == len(spot) == len(identical):
        raise ValueError(f"mismatched lengths: {len(train)}, {len(spot)}, {len(identical)}")
    same = [verdict(a) == verdict(b) for a, b, i in zip(train, spot, identical) if not i]
    return (sum(same) / len(same), len(same)) if same else (None, 0)


def _num(row: dict[str, Any] | None, key: str) -> float | None:
    v = (row or {}).get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def alarm_reasons(
    prev: dict[str, Any] | None, cur: dict[str, Any], min_agreement: float | None
) -> list[str]:
    """Why the metrics row ``cur`` of a spot-checked iteration raises the over-optimization
    alarm ([] when it does not), ``prev`` being the row of the previous spot-checked
    iteration (None: there is none). Two rules:

    1. *divergence*: the training judge's win rate rose (``proxy_win_rate`` of ``cur`` >
       that of ``prev``) while the spot judge's fell beyond its interval (``spot_win_rate``
       of ``cur`` < the lower end of ``prev``'s ``spot_win_rate_ci``);
    2. *disagreement*: ``spot_agreement`` < ``min_agreement`` (not checked when either is
       None)."""
    out = []
    p0, p1 = _num(prev, "proxy_win_rate"), _num(cur, "proxy_win_rate")
    s0, s1 = _num(prev, "spot_win_rate"), _num(cur, "spot_win_rate")
    ci = (prev or {}).get("spot_win_rate_ci")
    lo = _num({"lo": ci[0]}, "lo") if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    if None not in (p0, p1, s0, s1, lo) and p1 > p0 and s1 < lo:
        out.append(
            f"training judge's win rate rose ({p0:.3f} -> {p1:.3f}, proxy_win_rate) while the "
            f"spot judge's fell ({s0:.3f} -> {s1:.3f}, below the previous check's interval "
            f"[{ci[0]:.3f}, {ci[1]:.3f}])"
        )
    a = _num(cur, "spot_agreement")
    if min_agreement is not None and a is not None and a < min_agreement:
        out.append(
            f"the training and spot judges agree on {a:.3f} of the pairs, below "
            f"evaluation.spot_check.min_agreement {min_agreement:g}"
        )
    return out


# ---------------------------------------------------------------- the spot judge


def build_spot_judge(cfg: Any):
    """The configured spot judge (not yet cached), or None without a spot check; a bad name
    or setting is a ConfigError naming ``evaluation.spot_check`` (raised at setup, before
    the run directory is touched)."""
    from rspo.config import ConfigError
    from rspo.judges import build_judge

    s = cfg.evaluation.spot_check
    if s is None or not cfg.evaluation.enabled:
        return None
    try:
        return build_judge(s.judge, **s.judge_kwargs)
    except (ValueError, TypeError, ImportError) as e:
        raise ConfigError(f"evaluation.spot_check.judge: {e}") from e


def cached_spot_judge(cfg: Any, judge: Any, root: Path) -> Any:
    """The spot judge behind its on-disk cache (``judge.batch_size`` pairs per call, each
    call's verdicts committed at once) under ``run.cache_dir`` or the run directory ``root``;
    None when ``judge`` is."""
    from rspo.judges.cache import CachedJudge
    from rspo.selfplay.inputs import cache_path

    if judge is None:
        return None
    return CachedJudge(judge, cache_path(cfg, root, CACHE_FILE), cfg.judge.batch_size)


def _stored(file: Path, prompts: list[int], n: int) -> list[float] | None:
    try:
        have = read_json(file)
    except (OSError, ValueError):
        return None
    ok = isinstance(have, dict) and have.get("prompts") == prompts and len(have.get("p", [])) == n
    return [float(p) for p in have["p"]] if ok else None


# ---------------------------------------------------------------- in a run


def spot_check_metrics(
    cfg: Any,
    dist: Any,
    log: Any,
    judge: Any,
    t: int,
    d: Path,
    texts: list[str],
    a: list[dict],
    b: list[dict],
    proxy: Sequence[float],
) -> dict[str, Any]:
    """The spot check by ``judge`` (:func:`cached_spot_judge`) of evaluated iteration ``t``
    (outputs in ``d``; ``dist`` splits the calls over ranks): ``texts``, ``a``, ``b``
    and ``proxy`` are the evaluation's pairs (``evaluation.num_samples`` consecutive pairs
    per eval prompt; ``a`` the policy's and ``b`` π_ref's response records, with ``text``
    and ``ids``) and the training judge's P(policy ≻ π_ref) on them. {} when the spot check
    is off or ``t`` is not a checked iteration (:func:`is_checked`).

    Returns ``spot_win_rate`` (+ ``_ci``: the same cluster bootstrap as ``win_rate``),
    ``spot_lc_win_rate``, ``spot_agreement`` (:func:`agreement`; null when every pair is
    identical, e.g. π_0 against π_ref = π_0), ``spot_pairs``, ``spot_judge_calls``
    (judgements the spot judge was asked for: one per pair and presentation order; cached
    verdicts cost none), and when the judge reports usage ``spot_judge_prompt_tokens``,
    ``spot_judge_completion_tokens`` and, with prices set, ``spot_judge_cost``."""
    import numpy as np

    from rspo.evaluation.length_control import lc_win_rate
    from rspo.evaluation.winrate import win_rate
    from rspo.judges.symmetric import symmetric_prefer

    s = cfg.evaluation.spot_check
    if s is None or judge is None or not is_checked(t, s.every, cfg.run.iterations):
        return {}
    k = cfg.evaluation.num_samples
    n = len(texts) // k
    prompts = spot_prompts(n, s.num_prompts, s.seed)
    if s.num_prompts > n and t == 0:
        log(f"evaluation.spot_check.num_prompts {s.num_prompts}: {n} eval prompts; using all")
    idx = [i * k + j for i in prompts for j in range(k)]
    st, sa, sb = [texts[i] for i in idx], [a[i]["text"] for i in idx], [b[i]["text"] for i in idx]
    identical = [x == y for x, y in zip(sa, sb)]
    file = d / JUDGMENTS_FILE
    q = dist.from_main(_stored, file, prompts, len(idx))
    usage0, calls = judge_usage(judge), 0
    if q is None:
        ask = [i for i, same in enumerate(identical) if not same]  # identical: a tie, free
        pairs0 = judge.stats["inner_pairs"]
        got = dist.shard_map(
            lambda sl: symmetric_prefer(
                judge, [st[i] for i in ask[sl]], [sa[i] for i in ask[sl]], [sb[i] for i in ask[sl]]
            ),
            len(ask),
            cfg.judge.batch_size,
        )
        q = [0.5] * len(idx)
        for i, p in zip(ask, got):
            q[i] = float(p)
        calls = sum(dist.all_gather(judge.stats["inner_pairs"] - pairs0))  # over the ranks
        judge_id = judge.judge_id
        dist.main_only(atomic_write_json, file, {"prompts": prompts, "judge": judge_id, "p": q})
    # what those calls cost (nothing when read back from spot_judgments.json)
    usage = usage_metrics(dist, usage0, judge_usage(judge))
    la = [len(a[i]["ids"]) for i in idx]
    lb = [len(b[i]["ids"]) for i in idx]
    train = [float(proxy[i]) for i in idx]

    def summary() -> dict[str, Any]:
        wr = win_rate(np.reshape(q, (-1, k)).mean(axis=1), n_boot=cfg.evaluation.n_boot,
                      seed=cfg.run.seed)  # fmt: skip
        agree, informative = agreement(train, q, identical)
        return {
            "spot_win_rate": wr.mean,
            "spot_win_rate_ci": [wr.lo, wr.hi],
            "spot_lc_win_rate": lc_win_rate(q, la, lb).lc_win_rate,
            "spot_agreement": agree,
            "spot_agreement_pairs": informative,
            "spot_prompts": len(prompts),
            "spot_pairs": len(idx),
        }

    out = dist.from_main(summary)
    out["spot_judge_calls"] = calls
    if "judge_prompt_tokens" in usage:  # the judge reports usage
        pt, ct = usage["judge_prompt_tokens"], usage["judge_completion_tokens"]
        out["spot_judge_prompt_tokens"], out["spot_judge_completion_tokens"] = pt, ct
        if s.prompt_token_price or s.completion_token_price:
            paid = pt * s.prompt_token_price + ct * s.completion_token_price
            out["spot_judge_cost"] = paid / 1e6  # prices are per million tokens
    agree = out["spot_agreement"]
    log(
        f"iter {t} spot check ({len(prompts)} prompts, {len(idx)} pairs): spot_win_rate "
        f"{out['spot_win_rate']:.3f} [{out['spot_win_rate_ci'][0]:.3f}, "
        f"{out['spot_win_rate_ci'][1]:.3f}], agreement "
        f"{'n/a' if agree is None else f'{agree:.3f}'}, {calls} spot judge calls"
    )
    return out


def _previous_checked(run: Any, t: int) -> dict[str, Any] | None:
    """The metrics row of the last iteration before ``t`` that was spot-checked."""
    for s in range(t - 1, -1, -1):
        f = run.rd.iter_dir(s) / "metrics.json"
        row = run.dist.from_main(lambda f=f: read_json(f) if f.exists() else None)
        if _num(row, "spot_win_rate") is not None:
            return row
    return None


def alarm_metrics(run: Any, t: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """``overoptimization`` (bool) and ``overoptimization_reason`` (null, or why) for a
    spot-checked iteration t ≥ 1 (:func:`alarm_reasons` against the previous checked one);
    {} for others (iteration 0 has optimized nothing). A firing alarm is logged."""
    s = run.cfg.evaluation.spot_check
    if s is None or t == 0 or _num(metrics, "spot_win_rate") is None:
        return {}
    reasons = alarm_reasons(_previous_checked(run, t), metrics, s.min_agreement)
    if reasons:
        run.log(f"WARNING: iteration {t}: over-optimization alarm: {'; '.join(reasons)}")
    why = "; ".join(reasons) or None
    return {"overoptimization": bool(reasons), "overoptimization_reason": why}


def stop_after(run: Any, t: int) -> bool:
    """Whether the run stops after evaluated iteration ``t``: its alarm fired and
    ``run.stop_on_overoptimization`` is on (said in the log, also on every resume)."""
    if not run.cfg.run.stop_on_overoptimization:
        return False
    f = run.rd.iter_dir(t) / "metrics.json"
    row = run.dist.from_main(lambda: read_json(f) if f.exists() else {})
    if not row.get("overoptimization"):
        return False
    why = row.get("overoptimization_reason")
    run.log(
        f"stopping after iteration {t}: over-optimization alarm ({why}) and "
        f"run.stop_on_overoptimization is on. Checkpoints and metrics up to iteration {t} "
        "are kept; to train on, rerun with --run.stop_on_overoptimization false"
    )
    return True
