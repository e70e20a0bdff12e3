"""``rspo sweep``: a grid of objectives × coefficients × seeds, each a normal run directory.

Runs go in parallel worker processes (``parallel``), each resumable like any run, so an
interrupted sweep continues where it stopped. Writes ``table.md``/``table.csv`` (mean ±
95% t-interval over seeds per setting, best LC marked), plots and ``report.html``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rspo.config import (
    ConfigError,
    check_trainable,
    config_from_dict,
    deep_merge,
    load_yaml_file,
)
from rspo.utils.io import atomic_write_json, atomic_write_text, read_jsonl

METRICS = (
    "win_rate",
    "lc_win_rate",
    "avg_length",
    "accuracy",
    "self_bleu",
    "proxy_win_rate",
    "kl_ref",
)
#: per-iteration metrics averaged over seeds (the frontier plot's curves)
CURVE_METRICS = ("win_rate", "proxy_win_rate", "kl_ref", "kl_ref_per_token", "lc_win_rate")
#: issue 18: spot-check metrics, added to the tables and curves when a run reports them
SPOT_METRICS = ("spot_win_rate", "spot_lc_win_rate", "spot_agreement")


def _metrics(per_run: list[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`METRICS`, plus :data:`SPOT_METRICS` when a run has a spot check."""
    spot = any(r.get(m) is not None for r in per_run for m in SPOT_METRICS)
    return METRICS + SPOT_METRICS if spot else METRICS


def _alarm(rows: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    """The first iteration whose over-optimization alarm fired, and why (None, None: none)."""
    for r in rows:
        if r.get("overoptimization"):
            return int(r["iteration"]), r.get("overoptimization_reason")
    return None, None


@dataclass
class SweepRun:
    """One (setting, coefficient, seed) cell of the grid."""

    setting: str
    coef: float | None
    seed: int
    config: dict[str, Any]
    output: Path

    @property
    def label(self) -> str:
        return self.setting if self.coef is None else f"{self.setting}@{self.coef:g}"


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML: ``base`` (config dict), ``settings`` (name -> {objective..., coefs}),
    ``seeds``, ``parallel``, ``output``. Errors name the file and key."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"sweep config {p} does not exist")
    spec = load_yaml_file(p) or {}
    allowed = {"base", "settings", "seeds", "parallel", "output"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{p}: unknown sweep key {unknown[0]!r}; valid: {', '.join(sorted(allowed))}"
        )
    if not spec.get("settings"):
        raise ConfigError(f"{p}: 'settings' must list at least one setting")
    return spec


def expand(spec: dict[str, Any], output: str | Path | None = None) -> list[SweepRun]:
    """All runs of the grid, each with a validated config."""
    out = Path(output or spec.get("output", "runs/sweep"))
    base = spec.get("base") or {}
    runs = []
    for name, setting in spec["settings"].items():
        setting = dict(setting or {})
        coefs = setting.pop("coefs", None) or [None]
        for coef in coefs:
            for seed in spec.get("seeds", [0]):
                cfg = deep_merge(base, setting)
                if coef is not None:
                    cfg = deep_merge(cfg, {"objective": {"coef": coef}})
                label = name if coef is None else f"{name}@{coef:g}"
                cfg = deep_merge(
                    cfg, {"run": {"seed": seed, "output": str(out / label / f"seed{seed}")}}
                )
                try:  # every cell's config (regularizer spec included) before any run
                    check_trainable(config_from_dict(cfg))
                except ConfigError as e:
                    raise ConfigError(f"sweep setting {label!r}: {e}") from e
                cell = out / label / f"seed{seed}"
                if any(r.output == cell for r in runs):
                    raise ConfigError(
                        f"sweep setting {name!r}: two cells write {cell} (a repeated coefficient "
                        "or seed); list each once"
                    )
                runs.append(SweepRun(name, coef, seed, cfg, cell))
    return runs


def _run_one(run: SweepRun, log) -> float:
    """Run (or resume) one cell in a subprocess; returns its wall time in seconds, summed
    over the attempts this sweep timed (an interrupted one counts until the interruption)."""
    done, spent = run.output / "sweep.done", run.output / "sweep.seconds"
    if done.exists() and not _changed(run):
        return float(done.read_text() or 0)
    run.output.mkdir(parents=True, exist_ok=True)
    cfg_path = run.output.parent / f"seed{run.seed}.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(run.config, sort_keys=False))
    done.unlink(missing_ok=True)  # a resumed cell is unfinished until this attempt succeeds
    before = float(spent.read_text() or 0) if spent.exists() else 0.0
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rspo.cli", "train", "--config", str(cfg_path)],
            capture_output=True,
            text=True,
            env=env,
        )
    finally:
        dt = before + time.perf_counter() - t0
        atomic_write_text(spent, f"{dt:.2f}")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SweepError(f"sweep run {run.label} seed {run.seed} failed: {tail[0]}", proc.stderr)
    atomic_write_text(done, f"{dt:.2f}")
    log(f"{run.label} seed {run.seed}: {dt:.0f}s")
    return dt


class SweepError(RuntimeError):
    """A cell's ``rspo train`` failed; ``stderr`` holds its output."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def _changed(run: SweepRun) -> bool:
    """Whether a finished cell's run directory holds another config than the sweep gives
    now: a raised ``run.iterations`` resumes it (True); any other key is an error naming it
    (the cell's results would otherwise silently stand for a config they did not run)."""
    from rspo.selfplay.rundir import RESUMABLE_KEYS, saved_config_diff

    saved = run.output / "config.yaml"
    if not saved.exists():
        return True
    diff = saved_config_diff(saved, config_from_dict(run.config))
    fixed = [k for k in diff if k not in RESUMABLE_KEYS]
    if fixed:
        raise ConfigError(
            f"sweep cell {run.label} seed {run.seed} ({run.output}) finished with another "
            f"config; differing keys: {', '.join(fixed)}. Use another sweep output, or delete "
            "that cell to rerun it"
        )
    # issue 18: stop_on_overoptimization turned off continues a cell its alarm stopped
    return "run.iterations" in diff or "run.stop_on_overoptimization" in diff


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return float(arr.mean()), 0.0
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean()), float(half)


def aggregate(runs: list[SweepRun]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-run final rows and per-setting rows (mean ± 95% CI over seeds)."""
    per_run = []
    for r in runs:
        rows = read_jsonl(r.output / "metrics.jsonl")
        if not rows:
            continue
        final = rows[-1]
        alarm, reason = _alarm(rows)
        secs = (
            (r.output / "sweep.done").read_text() if (r.output / "sweep.done").exists() else "nan"
        )
        per_run.append(
            {
                "setting": r.label,
                "regularizer": r.setting,
                "coef": r.coef,
                "seed": r.seed,
                "method": r.setting,
                "iteration": final["iteration"],
                "seconds": float(secs),
                "seconds_per_iteration": float(secs) / max(1, final["iteration"]),
                **{m: final.get(m) for m in METRICS + SPOT_METRICS},
                "coef_final": final.get("coef"),
                "alarm_iteration": alarm,
                "alarm_reason": reason,
            }
        )
    metrics = _metrics(per_run)
    if metrics == METRICS:  # no spot check anywhere: the columns as before issue 18
        for r in per_run:
            for m in SPOT_METRICS + ("alarm_iteration", "alarm_reason"):
                del r[m]
    table = []
    for label in dict.fromkeys(r["setting"] for r in per_run):
        rs = [r for r in per_run if r["setting"] == label]
        row: dict[str, Any] = {
            "setting": label,
            "regularizer": rs[0]["regularizer"],
            "coef": rs[0]["coef"],
            "seeds": len(rs),
        }
        for m in (*metrics, "seconds_per_iteration"):
            vals = [r[m] for r in rs if r[m] is not None]
            if vals:
                row[m], row[f"{m}_ci"] = _interval(vals)
        if metrics != METRICS:  # runs of this setting whose alarm fired
            row["alarms"] = sum(r["alarm_iteration"] is not None for r in rs)
        table.append(row)
    if table:
        best = max(table, key=lambda r: r.get("lc_win_rate", -1))
        base = next((r for r in table if r["regularizer"] == "sppo"), None)
        for r in table:
            r["best"] = r is best
            if base and base.get("seconds_per_iteration"):
                r["cost_vs_sppo"] = r["seconds_per_iteration"] / base["seconds_per_iteration"]
    return per_run, table


def aggregate_iterations(runs: list[SweepRun]) -> list[dict[str, Any]]:
    """Per setting and iteration: each of :data:`CURVE_METRICS` averaged over the seeds that
    reached that iteration, with ``<metric>_ci`` = [lo, hi], the 95% t-interval over seeds
    (one seed: that run's own interval, if its row has one); ``seeds`` counts them."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        for row in read_jsonl(r.output / "metrics.jsonl"):
            by.setdefault((r.label, int(row["iteration"])), []).append(row)
    curves = CURVE_METRICS
    if any(row.get("spot_win_rate") is not None for rows in by.values() for row in rows):
        curves += SPOT_METRICS + ("coef",)  # issue 18: the spot check and λ per iteration
    out = []
    for (label, it), rows in by.items():
        agg: dict[str, Any] = {"setting": label, "iteration": it, "seeds": len(rows)}
        for m in curves:
            vals = [r[m] for r in rows if r.get(m) is not None]
            if not vals:
                agg[m], agg[f"{m}_ci"] = None, None
                continue
            mean, half = _interval(vals)
            own = rows[0].get(f"{m}_ci") if len(rows) == 1 else None
            agg[m], agg[f"{m}_ci"] = mean, own if own else [mean - half, mean + half]
        out.append(agg)
    order = list(dict.fromkeys(r.label for r in runs))
    return sorted(out, key=lambda a: (order.index(a["setting"]), a["iteration"]))


def _fmt(row: dict[str, Any], m: str) -> str:
    if m not in row:
        return "-"
    if row.get("seeds", 2) < 2:  # one seed: no interval to report
        return f"{row[m]:.3f} (1 seed)"
    return f"{row[m]:.3f} ± {row[m + '_ci']:.3f}"


def write_sweep_reports(
    out: Path,
    per_run: list[dict[str, Any]],
    table: list[dict[str, Any]],
    iterations: list[dict[str, Any]] | None = None,
) -> None:
    """table.md / table.csv / runs.csv (/ iterations.csv), plots and report.html; with
    ``iterations`` (:func:`aggregate_iterations`) also the frontier plot."""
    from rspo.evaluation.plots import plot_frontier, plot_length_vs_winrate
    from rspo.evaluation.report import write_csv, write_html_report

    out.mkdir(parents=True, exist_ok=True)
    metrics = _metrics(per_run)
    alarms = "alarms | " if metrics != METRICS else ""
    lines = [
        "| setting | seeds | " + " | ".join(metrics) + f" | {alarms}s/iter (×SPPO) |",
        "|---" * (len(metrics) + 3 + bool(alarms)) + "|",
    ]
    for r in table:
        name = f"**{r['setting']}** (best LC)" if r.get("best") else r["setting"]
        nan = float("nan")
        spi, rel = r.get("seconds_per_iteration", nan), r.get("cost_vs_sppo", nan)
        cost = f"{spi:.1f} ({rel:.2f}×)"
        fired = f"{r.get('alarms', 0)}/{r['seeds']} | " if alarms else ""
        lines.append(
            f"| {name} | {r['seeds']} | "
            + " | ".join(_fmt(r, m) for m in metrics)
            + f" | {fired}{cost} |"
        )
    fired = [r for r in per_run if r.get("alarm_iteration") is not None]
    if fired:  # issue 18: which runs' over-optimization alarm fired, and why
        lines += ["", "Over-optimization alarms (first per run):"]
        lines += [
            f"- {r['setting']} seed {r['seed']}: iteration {r['alarm_iteration']}: "
            f"{r['alarm_reason']}"
            for r in fired
        ]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    write_csv(table, out / "table.csv")
    write_csv(per_run, out / "runs.csv")
    summary: dict[str, Any] = {"settings": table, "runs": per_run}
    if iterations is not None:
        summary["iterations"] = iterations
        write_csv(iterations, out / "iterations.csv")
    atomic_write_json(out / "summary.json", summary)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    imgs = [
        plot_lc_vs_coef(table, plots / "lc_vs_coef.png"),
        plot_length_vs_winrate(per_run, plots / "length_vs_winrate.png"),
    ]
    if iterations is not None:  # one curve per setting, seeds averaged per iteration
        curves: dict[str, list[dict[str, Any]]] = {}
        for row in iterations:
            curves.setdefault(row["setting"], []).append(row)
        imgs.append(plot_frontier(curves, plots / "frontier.png"))
    write_html_report(
        out / "report.html",
        "rspo sweep: regularizers × coefficients",
        table,
        [str(i) for i in imgs],
        notes="\n".join(lines),
    )


def plot_lc_vs_coef(table: list[dict[str, Any]], out_png: Path) -> str:
    """LC win rate (mean ± CI over seeds) against the coefficient, one line per regularizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, reg in enumerate(dict.fromkeys(r["regularizer"] for r in table)):
        color = colors[i % len(colors)]  # one colour per setting, reference lines included
        rs = sorted(
            (r for r in table if r["regularizer"] == reg and "lc_win_rate" in r),
            key=lambda r: r["coef"] or 0.0,
        )
        if not rs:
            continue
        if rs[0]["coef"] is None:  # no grid (SPPO, adaptive): a horizontal reference line
            ax.axhline(rs[0]["lc_win_rate"], ls="--", lw=1, label=reg, color=color)
            continue
        xs = [r["coef"] for r in rs]
        ax.errorbar(
            xs,
            [r["lc_win_rate"] for r in rs],
            yerr=[r["lc_win_rate_ci"] for r in rs],
            marker="o",
            capsize=3,
            label=reg,
            color=color,
        )
    ax.set_xscale("log")
    coefs = sorted({r["coef"] for r in table if r.get("coef")})
    if coefs:  # label the grid's coefficients, nothing in between
        ax.set_xticks(coefs, [f"{c:g}" for c in coefs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("coefficient λ")
    ax.set_ylabel("LC win rate vs π_ref (gold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return str(out_png)


def run_sweep(
    path: str | Path, output: str | None = None, parallel: int | None = None, log=print
) -> list[dict[str, Any]]:
    """Run every cell (skipping finished ones), then aggregate and write reports."""
    spec = load_sweep(path)
    out = Path(output or spec.get("output", "runs/sweep"))
    runs = expand(spec, out)
    workers = parallel or int(spec.get("parallel", 1))
    log(f"sweep: {len(runs)} runs, {workers} in parallel -> {out}")
    for r in runs:  # a finished cell that ran another config is refused before any work
        if (r.output / "sweep.done").exists():
            _changed(r)
    failed: list[SweepError] = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for f in as_completed([pool.submit(_run_one, r, log) for r in runs]):
            try:
                f.result()
            except SweepError as e:  # start no new cell; the running ones finish
                failed.append(e)
                pool.shutdown(wait=False, cancel_futures=True)
            except CancelledError:
                pass
    finally:  # any other error or Ctrl-C: queued cells are dropped, not run
        pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        raise SweepError(
            f"{failed[0]} ({len(failed)} cell(s) failed; finished cells are kept and a rerun "
            "resumes the rest)",
            failed[0].stderr,
        )
    per_run, table = aggregate(runs)
    write_sweep_reports(out, per_run, table, aggregate_iterations(runs))
    log((out / "table.md").read_text())
    return table
