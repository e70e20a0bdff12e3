"""``rspo select``: the best evaluated iteration of a run by one metric (early stopping).

Reads ``RUN_DIR/metrics.jsonl`` (one row per evaluated iteration). The checkpoint of
iteration t ≥ 1 is ``RUN_DIR/iter_NNN/checkpoint``; iteration 0 is the initial policy π_0,
whose checkpoint is the run's ``model.path`` (from ``RUN_DIR/config.yaml``; ``gym`` and
``gym-skills`` resolve to the shipped base models). Rows where the metric is missing, null,
not a number or NaN are skipped; ties go to the earliest iteration (the least trained).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rspo.utils.io import read_jsonl


def _number(v: Any) -> float | None:
    """``v`` as a finite-or-infinite float, or None (bools, lists, null and NaN are not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) else float(v)


def _initial_model(run_dir: Path) -> Path:
    """Iteration 0's checkpoint: the run's ``model.path``, resolved to a directory on disk."""
    import yaml

    from rspo.modeling import resolve_model_path

    cfg_file = run_dir / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise FileNotFoundError(
            f"{run_dir}: iteration 0 is the initial model, named by model.path in "
            f"{cfg_file}, which cannot be read ({e.strerror})"
        ) from None
    model = (cfg.get("model") or {}).get("path") if isinstance(cfg, dict) else None
    if not isinstance(model, str) or not model:
        raise ValueError(f"{cfg_file}: no model.path; iteration 0's model is unknown")
    path = Path(resolve_model_path(model)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: iteration 0 is the initial model {model!r} (model.path in "
            f"{cfg_file}), which is not a directory on disk (a hub id?); download it, or "
            "select among the trained iterations"
        )
    return path


def select_iteration(run_dir: str | Path, metric: str, minimize: bool = False) -> dict[str, Any]:
    """``{"iteration", "checkpoint", "value"}`` of the run's best evaluated iteration by
    ``metric`` (highest, or lowest with ``minimize``); the checkpoint exists on disk."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist (or is not a directory)")
    file = root / "metrics.jsonl"
    if not file.is_file():
        raise FileNotFoundError(
            f"{root} holds no metrics.jsonl: not an rspo run, or no iteration evaluated yet"
        )
    rows = [r for r in read_jsonl(file) if isinstance(r, dict) and "iteration" in r]
    if not rows:
        raise ValueError(f"{file}: no evaluated iteration (the file holds no rows)")
    scored = [(r["iteration"], _number(r.get(metric))) for r in rows]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        names = sorted({k for r in rows for k, v in r.items() if k != "iteration" and _number(v)
                        is not None})  # fmt: skip
        seen = "no evaluated iteration has it" if any(metric in r for r in rows) else "no such"
        raise ValueError(
            f"{file}: metric {metric!r}: {seen} numeric value; metrics with numeric values: "
            f"{', '.join(names) or 'none'}"
        )
    sign = -1.0 if minimize else 1.0
    t, value = max(scored, key=lambda tv: (sign * tv[1], -tv[0]))  # ties: earliest iteration
    if t == 0:
        ck = _initial_model(root)
    else:
        ck = root / f"iter_{int(t):03d}" / "checkpoint"
        if not ck.is_dir():
            kept = [
                r for r, _ in scored if r and (root / f"iter_{int(r):03d}" / "checkpoint").is_dir()
            ]
            raise FileNotFoundError(
                f"{root}: the best iteration by {metric} is {t} ({value:g}), but its checkpoint "
                f"{ck} is not on disk (deleted, e.g. by run.keep_checkpoints: last); "
                f"evaluated iterations whose checkpoints remain: {kept or 'none'}"
            )
    return {"iteration": int(t), "checkpoint": str(ck), "value": value}
