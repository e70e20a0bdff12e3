"""Experiment trackers (``run.report_to``): TensorBoard, Weights & Biases, MLflow.

What is sent, on the main process only:

* the resolved config, once per tracker run (wandb ``config``, MLflow params as dotted
  keys, TensorBoard text ``config``);
* each optimizer step of each iteration: ``train/<key>`` (``loss``, ``grad_norm``...) and
  ``train/iteration``, at the global step (steps of earlier iterations + this one's);
* each evaluation: ``eval/<key>`` (``win_rate``, ``lc_win_rate``...) at the global step where
  the iteration's training ended (iteration 0, the initial policy, at step 0).

The run directory stays the record of truth: ``trackers.json`` keeps, per tracker, its run
id and the last step and evaluated iteration it was sent. A resumed run (or a tracker added
on resume) first sends what the run directory holds beyond those marks, then continues;
steps redone after a crash (training resumes from its last saved state) are not sent twice.
A crash between sending a step and recording it can repeat that one step; wandb drops it
(its steps only increase), TensorBoard and MLflow keep both copies (equal values).

Settings the trackers read from the environment, as with TRL: ``WANDB_PROJECT`` (default
``rspo``), ``WANDB_MODE`` (``offline``), ``WANDB_DIR``; ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME`` (default ``rspo``).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
from pathlib import Path
from typing import Any

from rspo.config import ConfigError, check_report_to_names, report_to_names
from rspo.utils.io import atomic_write_json, read_json, read_jsonl

__all__ = ["TRACKERS", "RunTrackers", "check_report_to", "resolve_report_to"]

#: tracker name -> (module that must be importable, what to install); the names are
#: ``rspo.config.TRACKER_NAMES``
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install 'rspo[tensorboard]' (or tensorboard)"),
    "wandb": ("wandb", "pip install 'rspo[wandb]' (or wandb)"),
    "mlflow": ("mlflow", "pip install 'rspo[mlflow]' (or mlflow-skinny)"),
}
STATE_FILE = "trackers.json"


def resolve_report_to(report_to: list[str] | str | None) -> list[str]:
    """The tracker names of ``run.report_to`` as TRL reads ``report_to``: a list, one name,
    a comma-separated string, ``none`` (or empty) for none, ``all`` for every installed one."""
    names = report_to_names(report_to)
    if names == ["all"]:
        return [n for n, (mod, _) in TRACKERS.items() if importlib.util.find_spec(mod)]
    return names


def check_report_to(report_to: list[str] | str | None, installed: bool = True) -> list[str]:
    """The tracker names, each known (and with ``installed``, importable); a ConfigError
    naming the tracker and what to install otherwise."""
    check_report_to_names(report_to)
    names = resolve_report_to(report_to)
    for n in names:
        mod, how = TRACKERS[n]
        if installed and importlib.util.find_spec(mod) is None:
            raise ConfigError(
                f"run.report_to: {n} is not installed ({mod} cannot be imported); {how}"
            )
    return names


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Finite real numbers (not bools) of ``metrics`` as ``prefix/key``; a pair of numbers
    (a confidence interval) as ``key_low``/``key_high``."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            out.update(_scalars({f"{k}_low": v[0], f"{k}_high": v[1]}, prefix))
            continue
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}/{k}"] = float(v)
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        if not state:
            import yaml

            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "```", global_step=0)

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rspo"),
            name=run_dir.name,
            id=state.get("id"),
            resume="allow",
            dir=os.environ.get("WANDB_DIR", str(run_dir)),
            config=config,
        )
        state["id"] = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, run_dir: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        if state.get("run_id"):
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rspo")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        state["run_id"] = self.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class RunTrackers:
    """The trackers of ``run.report_to`` for one run directory (main process only)."""

    def __init__(self, names: list[str], run_dir: str | Path, config: dict[str, Any]) -> None:
        self.root = Path(run_dir)
        self.names = list(names)
        self._state: dict[str, dict[str, Any]] = {}
        self._open: dict[str, Any] = {}
        self._offsets: dict[int, int] = {}
        if not self.names:
            return
        saved = read_json(self.root / STATE_FILE) if (self.root / STATE_FILE).exists() else {}
        for n in self.names:
            st = dict(saved.get(n) or {})
            fresh = not st
            self._open[n] = _BACKENDS[n](self.root, st, config)
            st.setdefault("step", -1)
            st.setdefault("iteration", -1)
            self._state[n] = st
            if fresh:
                self._save()
        self.sync()

    def __bool__(self) -> bool:
        return bool(self.names)

    def _save(self) -> None:
        old = read_json(self.root / STATE_FILE) if (self.root / STATE_FILE).exists() else {}
        atomic_write_json(self.root / STATE_FILE, {**old, **self._state})

    def offset(self, t: int) -> int:
        """Optimizer steps of iterations before t (from their ``train.done`` markers)."""
        if t <= 1:
            return 0
        if t not in self._offsets:
            done = self.root / f"iter_{t - 1:03d}" / "train.done"
            steps = read_json(done).get("step", 0) if done.exists() else 0
            self._offsets[t] = self.offset(t - 1) + int(steps or 0)
        return self._offsets[t]

    def log_train(self, t: int, record: dict[str, Any]) -> None:
        """One optimizer step of iteration t (a ``train_log.jsonl`` record)."""
        step = self.offset(t) + int(record["step"])
        values = {**_scalars({k: v for k, v in record.items() if k != "step"}, "train")}
        values["train/iteration"] = float(t)
        self._send(values, step, "step", step)

    def log_eval(self, t: int, metrics: dict[str, Any]) -> None:
        """Iteration t's evaluation (t = 0: the initial policy)."""
        step = self.offset(t + 1) if t > 0 else 0
        values = _scalars({k: v for k, v in metrics.items() if k != "iteration"}, "eval")
        values["eval/iteration"] = float(t)
        self._send(values, step, "iteration", t)

    def _send(self, values: dict[str, float], step: int, mark: str, at: int) -> None:
        sent = False
        for n, tracker in self._open.items():
            if at > self._state[n][mark]:
                tracker.log(values, step)
                self._state[n][mark] = at
                sent = True
        if sent:
            self._save()

    def sync(self) -> None:
        """Send what the run directory holds beyond each tracker's marks, in step order."""
        t = 0
        while (d := self.root / f"iter_{t:03d}").is_dir():
            if t > 0:
                for rec in read_jsonl(d / "train_log.jsonl", tolerate_torn_tail=True):
                    self.log_train(t, rec)
            if (d / "metrics.json").exists() and (t == 0 or (d / "train.done").exists()):
                self.log_eval(t, read_json(d / "metrics.json"))
            t += 1

    def close(self) -> None:
        """Finish every tracker's run (a later resume continues it)."""
        for tracker in self._open.values():
            tracker.close()
        self._open = {}
