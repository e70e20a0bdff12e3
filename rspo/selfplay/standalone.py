"""``rspo eval``: evaluate any model directory against the reference policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rspo.config import Config
from rspo.utils.io import atomic_write_json


def evaluate_model(cfg: Config, model_path: str, out: str | None = None) -> dict[str, Any]:
    """Generate on the eval prompts with ``model_path`` and judge against ``model.ref_path``.

    Writes ``eval_outputs.jsonl``, ``model_outputs.json`` (AlpacaEval format) and
    ``metrics.json`` to ``out`` (default ``<run.output>/eval``).
    """
    from rspo.selfplay.evaluate import evaluate_iteration
    from rspo.selfplay.loop import SelfPlayRun

    out_dir = Path(out or Path(cfg.run.output) / "eval")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output=str(out_dir)))
    run = SelfPlayRun(cfg, fresh=True)
    run.setup()
    metrics = evaluate_iteration(run, 0, model_path, d=out_dir)
    metrics["model"] = model_path
    run.dist.main_only(atomic_write_json, out_dir / "metrics.json", metrics)
    return metrics
