"""The Python entry point: :func:`run` a :class:`~rspo.config.Config`, get a :class:`RunResult`.

``rspo.run(rspo.load_config("my.yaml"))`` does what ``rspo train --config my.yaml`` does:
check the config, then run (or resume) every self-play iteration in ``run.output``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rspo.config import Config


@dataclass
class RunResult:
    """What a finished run left: its directory, the last policy and the evaluations."""

    #: the run directory (``run.output``)
    run_dir: Path
    #: the final policy's checkpoint (``iter_NNN/checkpoint``, NNN = run.iterations)
    checkpoint: Path
    #: one dict per evaluated iteration (0 = the initial policy), as in metrics.jsonl;
    #: empty when evaluation.enabled is false
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: the configuration the run used
    config: Config | None = None

    @property
    def final_metrics(self) -> dict[str, Any] | None:
        """The last evaluated iteration's metrics (None without evaluation)."""
        return self.metrics[-1] if self.metrics else None


def run(
    config: Config,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> RunResult:
    """Run (or resume) regularized self-play for ``config``, as ``rspo train`` does.

    The config is validated first (``run.imports`` are imported then, so plug-in judges
    and regularizers resolve); ``overwrite`` deletes ``run.output`` before starting, else
    a run directory holding the same config resumes. ``log`` receives progress lines
    (None: silent).
    """
    from rspo.config import check_trainable
    from rspo.distributed import init_distributed
    from rspo.selfplay.loop import run_selfplay
    from rspo.selfplay.rundir import remove_output

    if not isinstance(config, Config):
        raise TypeError(
            f"rspo.run needs a Config (rspo.load_config(...) or rspo.Config()), got "
            f"{type(config).__name__}"
        )
    config.validate()
    check_trainable(config)  # before overwrite deletes anything
    out = Path(config.run.output)
    if overwrite:
        init_distributed(config.model.device).from_main(remove_output, out)
    rows = run_selfplay(config, log=log if log is not None else _quiet)
    return RunResult(
        run_dir=out,
        checkpoint=out / f"iter_{config.run.iterations:03d}" / "checkpoint",
        metrics=list(rows),
        config=config,
    )


def _quiet(msg: str) -> None:
    """A log that drops every line."""
