"""Issue 18: ``objective.adaptive: kpi``, λ steered by the direction of a KPI.

λ for iteration t (the coefficient π_t is trained with, fixed in its score stage) reads the
metrics of the evaluated iterations before t:

- t = 1: λ_1 = ``objective.coef`` (the start).
- KPI_{t−1} = the KPI in iteration t−1's metrics (the policy π_t about to be trained). When
  it was not measured there (a spot-check KPI on an iteration the spot check skipped, a
  null value): λ_t = λ_{t−1}, held (logged).
- KPI_s = the KPI of the last iteration s < t−1 that measured it (the previous measurement;
  with ``spot_check.every: 1``, s = t−2). None (KPI_{t−1} is the first measurement): held.
- Else λ_t = :func:`rspo.selfplay.adaptive.update_coef_kpi`\\ (λ_{t−1}, KPI_{t−1} − KPI_s):
  clip(λ_{t−1} · kpi_step^(−clip(ΔKPI / kpi_scale, −1, 1)), coef_min, coef_max).

Each decision is a log line; λ_t is ``coef`` in dataset.json and metrics.jsonl, KPI_{t−1}
the dataset's ``measured``.
"""

from __future__ import annotations

import math
from typing import Any

from rspo.selfplay.adaptive import update_coef_kpi
from rspo.utils.io import read_json


def _kpi_of(run: Any, s: int) -> float | None:
    """The KPI in iteration s's metrics.json (None: not measured, not evaluated)."""
    f = run.rd.iter_dir(s) / "metrics.json"
    row = run.dist.from_main(lambda: read_json(f) if f.exists() else {})
    v = row.get(run.cfg.objective.kpi)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def kpi_coef(run: Any, t: int) -> tuple[float, float | None]:
    """(λ_t, KPI_{t−1}) by the rule of this module's docstring."""
    o = run.cfg.objective
    if t == 1:
        return o.coef, None
    f = run.rd.iter_dir(t - 1) / "dataset.json"
    prev = float(run.dist.from_main(read_json, f)["coef"])
    now = _kpi_of(run, t - 1)
    if now is None:
        run.log(f"iteration {t}: λ held at {prev:g} ({o.kpi} not measured at iteration {t - 1})")
        return prev, None
    before = next(
        ((s, v) for s in range(t - 2, -1, -1) if (v := _kpi_of(run, s)) is not None), None
    )
    if before is None:
        run.log(f"iteration {t}: λ held at {prev:g} ({o.kpi} {now:.4f}: its first measurement)")
        return prev, now
    s, was = before
    coef = update_coef_kpi(prev, now - was, o.kpi_step, o.kpi_scale, o.coef_min, o.coef_max)
    run.log(
        f"iteration {t}: λ {prev:g} -> {coef:g} ({o.kpi} {was:.4f} at iteration {s} -> "
        f"{now:.4f} at iteration {t - 1})"
    )
    return coef, now
