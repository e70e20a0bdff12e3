"""What iteration t works with: which policy samples (π_t), which is π_ref, which prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rspo.config import Config
    from rspo.selfplay.rundir import RunDir


def policy_path(cfg: Config, rd: RunDir, t: int) -> str:
    """π_t: the initial model for t = 1, else the checkpoint of iteration t − 1."""
    return cfg.model.path if t == 1 else str(rd.checkpoint(t - 1))


def ref_anchor(magnet_refresh: int, t: int) -> int:
    """The iteration whose output is π_ref in iteration t (0: the initial model): with MPO's
    ``objective.magnet_refresh: m`` the policy at the last refresh, else always 0."""
    return ((t - 1) // magnet_refresh) * magnet_refresh if magnet_refresh else 0


def ref_path(cfg: Config, rd: RunDir, t: int) -> str:
    """π_ref, or the MPO magnet (policy at the last refresh) when magnet_refresh is set."""
    if cfg.objective.magnet_refresh:
        anchor = ref_anchor(cfg.objective.magnet_refresh, t)
        return cfg.model.path if anchor == 0 else str(rd.checkpoint(anchor))
    return cfg.model.ref_path or cfg.model.path


def prompt_indices(n: int, per_iteration: int, t: int) -> list[int]:
    """The training prompts of iteration t: all ``n``, or the next ``per_iteration`` of them
    (``data.prompts_per_iteration``), wrapping around."""
    if not per_iteration or per_iteration >= n:
        return list(range(n))
    start = ((t - 1) * per_iteration) % n
    return [(start + j) % n for j in range(per_iteration)]
