"""Per-iteration metric plots for comparing methods (SPPO vs RSPO variants) across rounds.

Figures are drawn with matplotlib's object API and the Agg canvas, never pyplot, so they
work headless and do not change the global backend of a caller's session.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_frontier", "plot_length_vs_winrate", "plot_metrics_per_iteration"]

_LABELS = {
    "win_rate": "win rate",
    "lc_win_rate": "LC win rate",
    "avg_length": "mean length (tokens)",
    "self_bleu": "Self-BLEU-3 (lower = diverse)",
}


def _num(v: Any) -> float | None:
    """``v`` as a finite float, else ``None`` (missing metrics are skipped, not plotted)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _by_method(records: Sequence[dict[str, Any]]) -> OrderedDict[str, list[dict[str, Any]]]:
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in records:
        groups.setdefault(str(r.get("method", "run")), []).append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: _num(r.get("iteration")) or 0.0)
    return groups


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str | Path) -> str:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return str(out)


def plot_metrics_per_iteration(
    records: Sequence[dict[str, Any]],
    out_png: str | Path,
    metrics: Sequence[str] = ("win_rate", "lc_win_rate", "avg_length", "self_bleu"),
) -> str:
    """One subplot per metric, x = iteration, one line per method; the ``win_rate`` panel
    shades each method's ``win_rate_ci`` band when rows carry it. Returns the PNG path."""
    if not metrics:
        raise ValueError("no metrics to plot")
    from matplotlib.ticker import MaxNLocator

    groups = _by_method(records)
    fig = _figure(4.2 * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = {m: f"C{k % 10}" for k, m in enumerate(groups)}
    for ax, metric in zip(axes, metrics):
        for method, rows in groups.items():
            pts = [(_num(r.get("iteration")), _num(r.get(metric)), r) for r in rows]
            pts = [(x, y, r) for x, y, r in pts if x is not None and y is not None]
            if not pts:
                continue
            xs, ys = [x for x, _, _ in pts], [y for _, y, _ in pts]
            ax.plot(xs, ys, marker="o", color=colors[method], label=method)
            if metric == "win_rate":
                band = [(x, r.get("win_rate_ci")) for x, _, r in pts]
                band = [(x, ci) for x, ci in band if isinstance(ci, (list, tuple)) and len(ci) == 2]
                if band:
                    ax.fill_between(
                        [x for x, _ in band],
                        [float(ci[0]) for _, ci in band],
                        [float(ci[1]) for _, ci in band],
                        color=colors[method],
                        alpha=0.2,
                        linewidth=0,
                    )
        ax.set_title(_LABELS.get(metric, metric))
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.88))
    else:
        fig.tight_layout()
    return _save(fig, out_png)


def plot_length_vs_winrate(
    records: Sequence[dict[str, Any]],
    out_png: str | Path,
    x: str = "avg_length",
    y: str = "win_rate",
) -> str:
    """Scatter of ``y`` against ``x``, one point per row (a method's iteration or a run),
    coloured by method and labelled with the iteration. Returns the PNG path."""
    groups = _by_method(records)
    fig = _figure(5.5, 4.2)
    ax = fig.subplots()
    for k, (method, rows) in enumerate(groups.items()):
        pts = [(_num(r.get(x)), _num(r.get(y)), r.get("iteration")) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{k % 10}", label=method)
        for px, py, it in pts:
            if it is not None:
                ax.annotate(str(it), (px, py), textcoords="offset points", xytext=(4, 4), size=8)
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, out_png)


def _ci(v: Any) -> tuple[float, float] | None:
    """A ``[lo, hi]`` interval as two finite floats, else ``None``."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = _num(v[0]), _num(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def plot_frontier(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    out_png: str | Path,
    x: str = "kl",
    proxy: bool = True,
    title: str = "gold win rate vs KL from π_ref (over-optimization frontier)",
) -> str:
    """Gold ``win_rate`` against ``kl_ref`` = KL(π‖π_ref) (nats, sequence level; ``x="sqrt_kl"``
    plots √KL, Gao et al.'s axis), one curve per method through its iterations (each point
    labelled with its iteration, error bars from ``win_rate_ci``/``kl_ref_ci``); with
    ``proxy`` the training judge's ``proxy_win_rate`` is drawn dashed in the same colour.
    ``runs`` maps a method to its metrics rows. A method without an iteration-0 row starts
    at (0, ½): π_0 = π_ref. Rows whose ``kl_ref`` is null (evaluation temperature ≠ 1) are
    left out. Returns the PNG path."""
    if x not in ("kl", "sqrt_kl"):
        raise ValueError(f"x must be 'kl' or 'sqrt_kl', got {x!r}")

    def tx(v: float) -> float:  # a sampled KL may be slightly negative: √ of 0 then
        return math.sqrt(max(v, 0.0)) if x == "sqrt_kl" else v

    fig = _figure(6.4, 4.6)
    ax = fig.subplots()
    plotted = 0
    for k, (method, rows) in enumerate(runs.items()):
        color = f"C{k % 10}"
        rows = sorted(rows, key=lambda r: _num(r.get("iteration")) or 0.0)
        pts = [r for r in rows if _num(r.get("kl_ref")) is not None]
        if not pts:
            continue
        if not any(_num(r.get("iteration")) == 0 for r in pts):
            origin = {"iteration": 0, "kl_ref": 0.0, "win_rate": 0.5, "proxy_win_rate": 0.5}
            pts = [origin, *pts]
        for key, style, name in (
            ("win_rate", "-", f"{method} (gold)"),
            ("proxy_win_rate", "--", f"{method} (proxy)"),
        ):
            if key == "proxy_win_rate" and not proxy:
                continue
            cur = [r for r in pts if _num(r.get(key)) is not None]
            if not cur:
                continue
            xs = [tx(_num(r["kl_ref"])) for r in cur]
            ys = [_num(r[key]) for r in cur]
            face = color if style == "-" else "white"
            ax.plot(xs, ys, style, marker="o", color=color, mfc=face, label=name)
            plotted += 1
            for r, px, py in zip(cur, xs, ys):
                yci, xci = _ci(r.get(f"{key}_ci")), _ci(r.get("kl_ref_ci"))
                if yci or xci:
                    ax.errorbar(
                        [px],
                        [py],
                        yerr=None if yci is None else [[py - yci[0]], [yci[1] - py]],
                        xerr=None if xci is None else [[px - tx(xci[0])], [tx(xci[1]) - px]],
                        fmt="none",
                        ecolor=color,
                        alpha=0.35,
                        lw=1,
                    )
                if style == "-" and r.get("iteration") is not None:
                    ax.annotate(
                        str(r["iteration"]), (px, py), textcoords="offset points",
                        xytext=(4, 4), size=7, color=color,
                    )  # fmt: skip
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    if x == "sqrt_kl":
        ax.set_xlabel("√KL(π‖π_ref)  (√nats, sequence level)")
    else:
        ax.set_xlabel("KL(π‖π_ref)  (nats, sequence level)")
    ax.set_ylabel("win rate vs π_ref")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "no kl_ref in these rows\n(evaluated at temperature ≠ 1?)",
            ha="center", va="center", transform=ax.transAxes, color="0.4",
        )  # fmt: skip
    fig.tight_layout()
    return _save(fig, out_png)
