"""The on-disk run directory: layout, stage markers, config compatibility on resume.

runs/NAME/config.yaml          resolved config (resume refuses a changed one)
runs/NAME/run.json             versions and creation time
runs/NAME/metrics.jsonl        one row per evaluated iteration (rebuilt from iter dirs)
runs/NAME/iter_001/            generations.jsonl, judgments.jsonl, dataset.json,
                               train_log.jsonl, checkpoint/, eval_outputs.jsonl,
                               model_outputs.json, metrics.json, *.done markers
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import yaml

from rspo.config import Config, ConfigError, deep_merge, diff_configs
from rspo.utils.io import atomic_write_json, atomic_write_text, read_json, read_jsonl

#: keys that may change between a run and its resumption
RESUMABLE_KEYS = ("run.iterations", "run.output", "run.keep_checkpoints", "run.num_threads")


def saved_config_diff(cfg_path: Path, cfg: Config) -> list[str]:
    """Dotted keys where the run's saved ``config.yaml`` and ``cfg`` differ; keys added to
    rspo after the run was made count as their defaults."""
    old = yaml.safe_load(Path(cfg_path).read_text(encoding="utf-8")) or {}
    return diff_configs(deep_merge(Config().to_dict(), old), cfg.to_dict())


class RunDir:
    """Paths and completion markers of one self-play run.

    ``writer=False`` (data-parallel ranks other than 0) reads the same paths but never writes.
    """

    def __init__(self, root: str | Path, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t:03d}"

    def done(self, t: int, stage: str) -> bool:
        return (self.iter_dir(t) / f"{stage}.done").exists()

    def mark_done(self, t: int, stage: str, info: dict[str, Any] | None = None) -> None:
        if not self.writer:
            return
        atomic_write_json(self.iter_dir(t) / f"{stage}.done", {"time": time.time(), **(info or {})})

    def checkpoint(self, t: int) -> Path:
        return self.iter_dir(t) / "checkpoint"

    def init(self, cfg: Config, fresh: bool = False) -> bool:
        """Create the run dir or check it matches ``cfg``; returns True when resuming."""
        if not self.writer:
            raise RuntimeError("RunDir.init is rank 0's job (writer=False here)")
        cfg_path = self.root / "config.yaml"
        if cfg_path.exists() and not fresh:
            diff = [k for k in saved_config_diff(cfg_path, cfg) if k not in RESUMABLE_KEYS]
            if diff:
                raise ConfigError(
                    f"run directory {self.root} was made with a different config; differing keys: "
                    f"{', '.join(diff)}. Use another --output, or --overwrite to start over."
                )
            atomic_write_text(cfg_path, cfg.to_yaml())
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, cfg.to_yaml())
        import torch
        import transformers

        import rspo

        atomic_write_json(
            self.root / "run.json",
            {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "rspo": rspo.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        )
        return False

    def check_prompts(self, sets: dict[str, Any], resuming: bool) -> None:
        """``prompts.jsonl``: every prompt as the judge (``text``) and the policy (``ids``) see
        it, written when the run starts. Records refer to prompts by index, so a resumed run
        must load the same prompts: a prompt file edited since is an error naming the prompt."""
        path = self.root / "prompts.jsonl"
        rows = [
            {"split": split, "index": i, "text": text, "ids": list(ids)}
            for split, ps in sets.items()
            for i, (text, ids) in enumerate(zip(ps.texts, ps.ids))
        ]
        if resuming and path.exists():
            old = read_jsonl(path)
            keys = {"train": "data.prompts", "eval": "data.eval_prompts"}
            for split, key in keys.items():
                was = [r for r in old if r["split"] == split]
                now = [r for r in rows if r["split"] == split]
                if len(was) != len(now):
                    raise ConfigError(
                        f"{key}: {len(now)} {split} prompts now, {len(was)} when this run "
                        f"started ({path}); restore the prompt file"
                    )
                for a, b in zip(was, now):
                    if a != b:
                        what = "its token ids differ" if a["text"] == b["text"] else (
                            f"{a['text'][:60]!r}, now {b['text'][:60]!r}"
                        )  # fmt: skip
                        raise ConfigError(
                            f"{key}: {split} prompt {a['index']} is not the one this run "
                            f"started with ({path}: {what}); its records refer to prompts by "
                            "position: restore the prompt file (or the tokenizer), or start "
                            "over with --overwrite or another --output"
                        )
            return
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def rebuild_metrics(self) -> list[dict[str, Any]]:
        """Rewrite metrics.jsonl from every iter_*/metrics.json (idempotent across resumes)."""
        rows = []
        for d in sorted(self.root.glob("iter_*")):
            m = d / "metrics.json"
            if m.exists():
                rows.append(read_json(m))
        if not self.writer:
            return rows
        atomic_write_text(self.root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return rows
