"""``rspo eval``: evaluate any model directory against the reference policy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rspo.config import Config
from rspo.utils.io import atomic_write_json


def evaluate_model(cfg: Config, model_path: str, out: str | None = None) -> dict[str, Any]:
    """Generate on the eval prompts with ``model_path`` and judge against ``model.ref_path``.

    Writes ``eval_outputs.jsonl``, ``model_outputs.json`` (AlpacaEval format) and
    ``metrics.json`` to ``out`` (default ``<run.output>/eval``).
    """
    from rspo.selfplay.evaluate import evaluate_policy
    from rspo.selfplay.inputs import build_eval_judge
    from rspo.selfplay.loop import SelfPlayRun
    from rspo.selfplay.schedule import ref_path

    check_model(model_path)  # before out_dir is created
    out_dir = Path(out or Path(cfg.run.output) / "eval")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output=str(out_dir)))
    run = SelfPlayRun(cfg, fresh=True)
    run.dist.from_main(_refuse_training_run, out_dir)
    try:
        run.setup()  # bad input fails here, before any file in out_dir is removed
        run.dist.from_main(_claim, out_dir, model_path, cfg, run.log)
        name = Path(model_path).resolve()
        label = f"{name.parent.name}/{name.name}" if name.name == "checkpoint" else name.name
        judge = run.eval_judge
        if judge is None:  # evaluation.enabled: false
            judge = build_eval_judge(cfg, run.rd.root)
        metrics = evaluate_policy(
            cfg,
            run.ops,
            prompts=run.eval_prompts,
            policy=model_path,
            ref=ref_path(cfg, run.rd, 1),
            judge=judge,
            proxy_judge=run.judge,
            out=out_dir,
            baseline=run.rd.root / "eval_baseline.jsonl",
            iteration=0,
            generator=label,
            log=run.log,
            spot_judge=run.spot_judge,
        )
        metrics.pop("iteration", None)  # not an iteration of a run: the model is named instead
        metrics["model"] = model_path
        run.dist.main_only(atomic_write_json, out_dir / "metrics.json", metrics)
    finally:
        run.rd.unlock()
    return metrics


def _run_of(path: Path) -> tuple[Path, str] | None:
    """``(run directory, iter_NNN)`` when ``path`` is a training run's checkpoint
    (``<run>/iter_NNN/checkpoint``), else None."""
    from rspo.selfplay.rundir import _is_run

    it = path.parent
    if path.name == "checkpoint" and it.name.startswith("iter_") and _is_run(it.parent):
        return it.parent, it.name
    return None


def default_eval_dir(cfg: Config, model_path: str, output_given: bool = False) -> Path:
    """Where ``rspo eval`` writes without ``--out``: ``<run>/eval/iter_NNN`` for a checkpoint
    of a training run (one folder per checkpoint, so evaluating another keeps these), else
    ``<run.output>/eval``; ``output_given`` (``--output``) makes ``run.output`` win."""
    found = None if output_given else _run_of(Path(model_path).expanduser().resolve())
    if found is not None:
        return found[0] / "eval" / found[1]
    return Path(cfg.run.output) / "eval"


def check_model(model_path: str) -> None:
    """A model ``rspo eval`` can load: a missing path is a FileNotFoundError naming it, and a
    run directory (or one of its iter_NNN folders) names the checkpoints it holds."""
    from rspo.modeling import resolve_model_path
    from rspo.selfplay.rundir import _is_run, iteration_dirs

    p = Path(model_path).expanduser()
    run = (
        p if _is_run(p) else p.parent if p.name.startswith("iter_") and _is_run(p.parent) else None
    )
    if run is not None:
        its = [d for _, d in iteration_dirs(p)] if run == p else [p]
        cks = [str(d / "checkpoint") for d in its if (d / "checkpoint").is_dir()]
        hint = f"e.g. --model {cks[-1]}" if cks else "it holds no checkpoint yet"
        raise FileNotFoundError(
            f"--model {model_path} is a training run's {'directory' if run == p else 'iteration'}"
            f", not a model; give one of its checkpoints, iter_NNN/checkpoint ({hint})"
        )
    resolve_model_path(model_path)


#: what ``rspo eval`` writes for the evaluated model; π_ref's baseline depends on the config
MODEL_FILES = (
    "eval_outputs.jsonl",
    "eval_samples.jsonl",
    "model_outputs.json",
    "metrics.json",
    "annotations.json",
    "proxy_judgments.json",
    "kl_logprobs.json",
    "spot_judgments.json",  # issue 18
)
CLAIM = "eval_for.json"


def _refuse_training_run(out_dir: Path) -> None:
    """``rspo eval`` writes its config and outputs into ``out_dir``: never into a training
    run's directory, whose files it would replace."""
    if not out_dir.is_dir() or (out_dir / CLAIM).exists():
        return
    found = [p.name for p in out_dir.glob("iter_*")] + [p.name for p in out_dir.glob("*.done")]
    found += [n for n in ("metrics.jsonl",) if (out_dir / n).exists()]
    if found:
        raise ValueError(
            f"rspo eval --out {out_dir}: that directory holds a training run ({found[0]}); "
            "evaluating there would replace its files; choose another --out"
        )


def _fingerprint(model_path: str) -> list[list[Any]] | None:
    """Name, size and modification time of a model directory's weight files: a checkpoint
    replaced at the same path (retrained with --overwrite) is another model. None for a
    hub id or the gym (their files do not change under a run)."""
    from rspo.modeling import resolve_model_path

    try:
        d = Path(resolve_model_path(model_path))
    except (OSError, ValueError):
        return None
    if not d.is_dir():
        return None
    files = sorted(f for pat in ("*.safetensors", "*.json") for f in d.glob(pat))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _claim(out_dir: Path, model_path: str, cfg: Config, log: Any) -> None:
    """Make ``out_dir`` hold outputs of this model and config only: outputs another model
    left there are removed (π_ref's baseline too when the config differs), so a resumed
    evaluation continues its own records and never reads back another model's."""
    ref = cfg.model.ref_path or cfg.model.path
    want = {
        "model": str(Path(model_path).resolve()),
        "weights": _fingerprint(model_path),
        "config": cfg.to_dict(),
        "ref_weights": _fingerprint(ref),
    }
    want["config"]["run"] = {k: v for k, v in want["config"]["run"].items() if k != "output"}
    want = json.loads(json.dumps(want, default=str))  # as it reads back
    try:
        have = json.loads((out_dir / CLAIM).read_text())
    except (OSError, ValueError):
        have = None
    if have != want:
        stale = list(MODEL_FILES)
        if have is None or any(have.get(k) != want[k] for k in ("config", "ref_weights")):
            stale.append("eval_baseline.jsonl")
        gone = [f for f in stale if (out_dir / f).exists()]
        for f in gone:
            (out_dir / f).unlink()
        if gone:
            was = (have or {}).get("model", "an unknown model or config")
            log(f"rspo eval: {out_dir} held outputs of {was}; removed {', '.join(gone)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / CLAIM, want)
