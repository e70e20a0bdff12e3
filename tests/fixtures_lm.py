"""Tiny local models and judges for pipeline tests (built on the fly, nothing downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer


def gym_training(**changes: object):
    """A TrainingConfig with the gym preset's values (the tests' scale: AdamW, lr 5e-4...),
    ``changes`` on top; ``TrainingConfig()`` alone is the paper's recipe for a 7B model."""
    import dataclasses

    from rspo.config import load_config

    return dataclasses.replace(load_config(preset="gym").training, **changes)


def make_tiny_model_dir(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random tiny Llama + byte tokenizer saved with save_pretrained (safetensors)."""
    tok = build_byte_tokenizer()
    model = build_tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=2, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def write_prompts(path: Path, n: int, prefix: str = "Say something") -> Path:
    """A JSONL prompt file with ``n`` distinct prompts."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{prefix} #{i}:"}) + "\n")
    return path


def n_lower(text: str) -> int:
    """Number of ASCII lowercase letters in ``text``."""
    return sum(1 for c in text if "a" <= c <= "z")


def lowercase_judge(prompt: str, a: str, b: str) -> float:
    """Fixed-answer judge: more ASCII lowercase letters wins, P = σ(n(a) − n(b))."""
    return 1.0 / (1.0 + math.exp(-(n_lower(a) - n_lower(b))))


def lowercase_correct(prompt: str, response: str) -> bool:
    """'Accuracy' for the lowercase task: at least three lowercase letters."""
    return n_lower(response) >= 3


def parity_subset(prompt: str) -> str:
    """A prompt -> subset label function for evaluation.subset_fn tests."""
    return "odd" if len(prompt) % 2 else "even"


def tiny_run(tmp: Path, model_dir: Path, output: str, /, **sections: dict) -> dict:
    """Config dict of a short self-play run on ``make_pipeline_env``'s model and prompts
    (lowercase judge for training and evaluation); ``sections`` deep-merge on top."""
    from rspo.config import deep_merge

    judge = {"fn": "fixtures_lm:lowercase_judge"}
    base = {
        "preset": "gym",  # the gym's small-model values under the settings below
        "model": {"path": str(model_dir)},
        "data": {"prompts": str(tmp / "train.jsonl"), "eval_prompts": str(tmp / "eval.jsonl")},
        "judge": {"name": "python", "kwargs": judge},
        "objective": {"regularizer": "reverse_kl", "coef": 0.1},
        "training": {"epochs": 1},
        "evaluation": {"judge": "python", "judge_kwargs": judge, "accuracy_fn": "",
                       "diversity_samples": 0},
        "run": {"iterations": 2, "output": output},
    }  # fmt: skip
    return deep_merge(base, sections)


def make_pipeline_env(tmp: Path) -> tuple[Path, Path]:
    """A tiny model plus 12 train and 12 eval prompts under ``tmp`` (the pipeline tests' setup)."""
    model = make_tiny_model_dir(tmp / "model")
    write_prompts(tmp / "train.jsonl", 12)
    write_prompts(tmp / "eval.jsonl", 12, prefix="Evaluate")
    return tmp, model


def tie_judge(prompt: str, a: str, b: str) -> float:
    """A judge that prefers nothing: P = 1/2 for every pair."""
    return 0.5


def ci_subset(prompt: str) -> str:
    """A subset label that collides with a metric rspo reports (win_rate_ci)."""
    return "ci"


def picky_correct(prompt: str, response: str) -> bool:
    """An accuracy_fn that fails on some prompts (a user bug)."""
    if prompt.endswith("#3:"):
        raise KeyError("no answer key for this prompt")
    return True
