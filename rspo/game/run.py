"""Body of the ``rspo game`` CLI command: run tabular self-play and report convergence."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import numpy as np

from .dynamics import selfplay, time_average
from .equilibrium import exploitability, regularized_nash, resolve_regularizer
from .games import make_game, validate_distribution


def make_ref(n: int, seed: int, kind: str | np.ndarray = "random") -> np.ndarray:
    """Reference policy: 'uniform', 'random' (seeded softmax of N(0, 1) logits) or an array."""
    if isinstance(kind, str):
        if kind == "uniform":
            return np.full(n, 1.0 / n)
        if kind == "random":
            z = np.random.default_rng([int(seed), 1]).normal(size=n)
            p = np.exp(z - z.max())
            return p / p.sum()
        raise ValueError(f"unknown ref {kind!r}; valid: uniform, random, or an array")
    return validate_distribution(kind, n, "ref", positive=True)


def run_game(
    game: str,
    n: int,
    regularizer: str,
    tau: float,
    eta: float,
    iters: int,
    seed: int,
    every: int = 100,
    as_json: bool = False,
    plot: str | None = None,
    out: TextIO | None = None,
    *,
    ref: str | np.ndarray = "random",
    magnet_every: int | None = None,
) -> dict:
    """Run exact self-play on a tabular game, print exploitability every ``every`` iterations.

    Human table, or with ``as_json`` one JSON object per line (keys iter, exploitability,
    distance_to_nash (L1), avg_exploitability, avg_distance_to_nash). With ``magnet_every``
    (MPO) the target is the unregularized (τ = 0) equilibrium. ``out`` defaults to the
    ``sys.stdout`` of the call (not of the import). Returns a summary dict.
    """
    out = sys.stdout if out is None else out
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if plot:
        check_plot_path(plot)  # before the run, not after it
    P = make_game(game, n, seed)
    ref_vec = make_ref(n, seed, ref)
    reg = resolve_regularizer(regularizer if tau > 0 else None, tau)
    target_tau = 0.0 if magnet_every else tau
    target_reg = None if magnet_every else reg
    nash = regularized_nash(P, ref_vec, target_reg, target_tau)
    traj = selfplay(P, ref_vec, reg, tau, eta, iters, magnet_every=magnet_every)
    avg = time_average(traj)

    steps = list(range(0, iters + 1, every))
    if steps[-1] != iters:
        steps.append(iters)
    rows = []
    for t in steps:
        rows.append(
            {
                "iter": t,
                "exploitability": exploitability(traj[t], P, ref_vec, target_reg, target_tau),
                "distance_to_nash": float(np.abs(traj[t] - nash).sum()),
                "avg_exploitability": exploitability(avg[t], P, ref_vec, target_reg, target_tau),
                "avg_distance_to_nash": float(np.abs(avg[t] - nash).sum()),
            }
        )
    if as_json:
        for r in rows:
            out.write(json.dumps(r) + "\n")
    else:
        spec = "none" if reg is None else reg.spec
        out.write(
            f"game={game} n={n} regularizer={spec} tau={tau:g} eta={eta:g} iters={iters} "
            f"seed={seed}" + (f" magnet_every={magnet_every}" if magnet_every else "") + "\n"
        )
        out.write(f"{'iter':>8}  {'exploitability':>14}  {'L1_to_nash':>12}  {'avg_exploit':>12}\n")
        for r in rows:
            out.write(
                f"{r['iter']:>8d}  {r['exploitability']:>14.6e}  {r['distance_to_nash']:>12.4e}"
                f"  {r['avg_exploitability']:>12.4e}\n"
            )
    if plot:
        _plot(rows, plot, f"{game} n={n} {regularizer} τ={tau:g} η={eta:g}")
    last = rows[-1]
    return {
        "game": game,
        "n": n,
        "regularizer": None if reg is None else reg.spec,
        "tau": tau,
        "eta": eta,
        "iters": iters,
        "seed": seed,
        "magnet_every": magnet_every,
        "ref": ref_vec.tolist(),
        "nash": nash.tolist(),
        "final_policy": traj[-1].tolist(),
        "final_exploitability": last["exploitability"],
        "final_distance_to_nash": last["distance_to_nash"],
        "avg_exploitability": last["avg_exploitability"],
        "avg_distance_to_nash": last["avg_distance_to_nash"],
        "history": rows,
        "plot": plot,
    }


def check_plot_path(path: str) -> None:
    """A plot can be saved at ``path``: its folder exists and its extension is an image
    format matplotlib writes (ValueError naming the problem otherwise)."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = Path(path)
    if not p.parent.is_dir():
        raise ValueError(f"--plot {path}: folder {p.parent} does not exist; create it first")
    if p.is_dir():
        raise ValueError(f"--plot {path}: is a directory; give a file name such as plot.png")
    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if p.suffix and p.suffix[1:].lower() not in kinds:
        raise ValueError(
            f"--plot {path}: unknown image format {p.suffix!r}; use one of "
            f"{', '.join('.' + k for k in sorted(kinds))}"
        )


def _plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iter"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("exploitability", "exploitability (last)"),
        ("avg_exploitability", "exploitability (average)"),
        ("distance_to_nash", "L1 to equilibrium (last)"),
    ]:
        ax.semilogy(it, [max(abs(r[key]), 1e-16) for r in rows], label=label)
    ax.set_xlabel("iteration")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
