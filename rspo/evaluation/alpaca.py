"""AlpacaEval-format output files, so a policy's responses can be judged by alpaca_eval."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rspo.utils.io import atomic_write_text

__all__ = ["read_alpaca_outputs", "write_alpaca_outputs", "write_annotations"]


def write_alpaca_outputs(
    path: str | Path,
    instructions: Sequence[str],
    outputs: Sequence[str],
    generator: str,
    dataset: str | Sequence[str] = "rspo",
) -> Path:
    """Write ``model_outputs.json`` as AlpacaEval reads it and return its path.

    The file is a JSON list of ``{"instruction", "output", "generator", "dataset"}``
    records (``dataset`` one string for all, or one per instruction, e.g. AlpacaEval's
    ``helpful_base``). If ``path`` is an existing directory the file is created inside it
    as ``model_outputs.json``. Written atomically (temp file + ``os.replace``) so a crash
    never leaves half a file for the evaluator to read.
    """
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    datasets = [dataset] * len(outputs) if isinstance(dataset, str) else list(dataset)
    if len(datasets) != len(outputs):
        raise ValueError(f"{len(datasets)} dataset names for {len(outputs)} outputs")
    path = Path(path)
    if path.is_dir():
        path = path / "model_outputs.json"
    records = [
        {"instruction": str(i), "output": str(o), "generator": generator, "dataset": str(d)}
        for i, o, d in zip(instructions, outputs, datasets)
    ]
    atomic_write_text(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return path


def read_alpaca_outputs(path: str | Path) -> list[dict[str, str]]:
    """Read an AlpacaEval outputs file, checking each record has the four fields."""
    path = Path(path)
    if path.is_dir():
        path = path / "model_outputs.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list")
    for k, r in enumerate(records):
        missing = {"instruction", "output", "generator"} - set(r)
        if missing:
            raise ValueError(f"{path}: record {k} lacks {sorted(missing)}")
    return records


def write_annotations(
    path: str | Path,
    instructions: Sequence[str],
    outputs_1: Sequence[str],
    outputs_2: Sequence[str],
    probs: Sequence[float],
    generator_1: str,
    generator_2: str,
    annotator: str,
) -> Path:
    """Write AlpacaEval-style ``annotations.json``: one record per judged pair with
    ``instruction``, ``output_1`` (the baseline's response), ``output_2`` (the evaluated
    model's), ``generator_1``, ``generator_2``, ``annotator`` and ``preference`` =
    1 + P(output_2 ≻ output_1) in [1, 2] (AlpacaEval's convention: 1 = output_1 preferred,
    2 = output_2). The mean of ``preference − 1`` is the win rate of output_2. Atomic."""
    n = len(instructions)
    if not (len(outputs_1) == len(outputs_2) == len(probs) == n):
        raise ValueError(
            f"{n} instructions but {len(outputs_1)} output_1, {len(outputs_2)} output_2, "
            f"{len(probs)} preferences"
        )
    records = []
    for i, a, b, p in zip(instructions, outputs_1, outputs_2, probs):
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"preference probability {p} outside [0, 1]")
        records.append(
            {
                "instruction": str(i),
                "output_1": str(a),
                "output_2": str(b),
                "generator_1": generator_1,
                "generator_2": generator_2,
                "annotator": annotator,
                "preference": 1.0 + p,
            }
        )
    path = Path(path)
    atomic_write_text(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return path
