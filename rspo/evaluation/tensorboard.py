"""Run-metrics logging: an fsynced ``metrics.jsonl`` plus an optional TensorBoard mirror.

The JSONL file is the record of truth (one object per ``log`` call, flushed and fsynced so
a finished line survives a crash; a torn last line from an earlier crash is trimmed when
the logger reopens the run). TensorBoard is a convenience, asked for explicitly: scalars
are mirrored to a ``SummaryWriter`` with ``use_tensorboard=True`` (``pip install
'rspo[tensorboard]'``). Self-play runs report through ``run.report_to`` instead
(:mod:`rspo.evaluation.trackers`).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import time
from pathlib import Path
from typing import Any

from rspo.utils.io import append_jsonl, read_jsonl

__all__ = ["MetricsLogger", "tensorboard_available"]


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (its ``tensorboard`` dep exists)."""
    return importlib.util.find_spec("tensorboard") is not None


def _jsonable(v: Any) -> Any:
    """Make ``v`` strict-JSON-safe: numpy scalars/arrays to Python, NaN/inf to ``None``."""
    if hasattr(v, "tolist") and callable(v.tolist):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class MetricsLogger:
    """Append metric rows to ``run_dir/metrics.jsonl`` and mirror scalars to TensorBoard.

    ``use_tensorboard``: ``False`` (default) = no mirror, ``True`` = mirror (``ImportError``
    if tensorboard is missing), ``None`` = if installed. Usable as a context manager.
    """

    def __init__(self, run_dir: str | Path, use_tensorboard: bool | None = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if self.path.exists():
            read_jsonl(self.path, tolerate_torn_tail=True)  # trims a crash-torn last line
        self._writer = None
        if use_tensorboard is True or (use_tensorboard is None and tensorboard_available()):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if use_tensorboard:
                    raise
            else:
                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    @property
    def tensorboard(self) -> bool:
        """Whether scalars are being mirrored to TensorBoard."""
        return self._writer is not None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> dict[str, Any]:
        """Append ``{"step", "time", **metrics}`` as one fsynced JSON line; mirror every
        finite real-valued metric (not bools) as a TensorBoard scalar at ``step``.
        Returns the record written."""
        record = {"step": step, "time": time.time(), **_jsonable(dict(metrics))}
        append_jsonl(self.path, [record])
        if self._writer is not None:
            for k, v in metrics.items():
                if hasattr(v, "item") and callable(v.item):  # numpy or torch scalar
                    try:
                        v = v.item()
                    except (ValueError, RuntimeError):  # more than one element: not a scalar
                        continue
                if isinstance(v, numbers.Real) and not isinstance(v, bool):
                    if math.isfinite(float(v)):
                        self._writer.add_scalar(str(k), float(v), global_step=step)
            self._writer.flush()
        return record

    def read(self) -> list[dict[str, Any]]:
        """All rows logged so far in this run directory."""
        return read_jsonl(self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
