"""Tiny local models and judges for pipeline tests (built on the fly, nothing downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer


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


def count_a_judge(prompt: str, a: str, b: str) -> float:
    """Fixed-answer judge: more letters 'a' wins, P = σ(#a(a) − #a(b))."""
    return 1.0 / (1.0 + math.exp(-(a.count("a") - b.count("a"))))


def count_a_correct(prompt: str, response: str) -> bool:
    """'Accuracy' for the count-a task: the response contains at least two 'a's."""
    return response.count("a") >= 2
