"""Timed rspo self-play iterations and locally built models, shared by the benchmarks.

``rspo_iterations`` drives the real loop (:class:`rspo.selfplay.loop.SelfPlayRun`, its run
directory, judge cache and checkpoints) stage by stage and times each stage, plus the
model loads and checkpoint saves inside the stages. Nothing is downloaded: the policy is
the shipped gym model or a Llama built here from a config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import StageTimer

STAGES = ("generate", "judge", "score", "train")

#: the paper's headline regularizer (README's worked config): IS forward + reverse KL
HEADLINE_REGULARIZER = "forward_kl[ratio] + 10*reverse_kl[k2]"


def build_policy_dir(path: Path, hidden: int, layers: int, heads: int, seed: int = 0) -> Path:
    """A randomly initialised Llama policy + byte tokenizer saved under ``path`` (safetensors)."""
    from rspo.gym.model import build_tiny_llama
    from rspo.gym.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer()
    model = build_tiny_llama(tok, hidden, layers, heads, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def build_judge_model_dir(path: Path, kind: str, hidden: int = 64, layers: int = 2) -> Path:
    """A small random judge model: ``reward`` (sequence classifier) or ``pairwise`` (causal LM)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rspo.gym.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer(model_max_length=2048)
    extra = {"num_labels": 1} if kind == "reward" else {}
    config = LlamaConfig(
        vocab_size=264,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )
    cls = LlamaForSequenceClassification if kind == "reward" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def param_count(path: str | Path) -> int:
    """Number of parameters stored in a safetensors model directory."""
    from safetensors import safe_open

    n = 0
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        for k in f.keys():
            n += math.prod(f.get_slice(k).get_shape())
    return n


def selfplay_config(s: dict[str, Any], output: Path) -> dict[str, Any]:
    """The rspo config dict of one benchmark setting (one optimizer step per iteration)."""
    samples = s["prompts"] * s["k"]
    return {
        "preset": "gym",  # the gym's values (rspo/configs/gym.yaml) under the ones below
        "model": {
            "path": s.get("model", "gym"),
            "device": "cpu",
            "cpu_linear": s.get("cpu_linear", "auto"),
        },
        "data": {"prompts": "gym", "num_prompts": s["prompts"]},
        "generation": {
            "num_samples": s["k"],
            "max_new_tokens": s["max_new_tokens"],
            "temperature": 1.0,
            "batch_size": samples,
        },
        "judge": {"name": s.get("judge", "gym-proxy"), "kwargs": s.get("judge_kwargs", {})},
        "objective": {
            "eta": 10.0,
            "regularizer": s.get("regularizer", HEADLINE_REGULARIZER),
            "coef": s.get("coef", 0.2),
        },
        "training": {
            "batch_size": samples,
            "micro_batch_size": s.get("micro_batch_size", samples),
            "epochs": 1,
            "lr": 1e-5,
            "save_steps": 0,
        },
        "evaluation": {"enabled": False},
        "run": {
            "iterations": s["warmup"] + s["measured"],
            "output": str(output),
            "seed": s.get("seed", 0),
            "num_threads": s.get("threads", 1),
            "keep_freed_memory": s.get("keep_freed_memory", True),
        },
    }


def _instrument(timer: StageTimer) -> Callable[[], None]:
    """Time model loads, checkpoint saves, no-grad and grad forwards, backward, optimizer
    steps and fsyncs inside rspo's stages (behaviour unchanged); returns an undo function."""
    import os
    import sys

    import torch
    from transformers import PreTrainedModel

    from rspo import modeling
    from rspo.selfplay import loop  # noqa: F401  (imports the modules to instrument)
    from rspo.training import trainer

    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, key: str) -> None:
        orig = getattr(owner, attr)

        def timed(*a: Any, **k: Any) -> Any:
            with timer(key):
                return orig(*a, **k)

        patches.append((owner, attr, orig))
        setattr(owner, attr, timed)

    def wrap_imports(fn: Any, key: str) -> None:
        """Wrap ``fn`` wherever an rspo module imported it by name (not in rspo.modeling,
        whose own helpers call each other)."""
        for name, mod in list(sys.modules.items()):
            if name.startswith("rspo.") and mod is not modeling:
                if getattr(mod, fn.__name__, None) is fn:
                    wrap(mod, fn.__name__, key)

    wrap_imports(modeling.load_model, "load")
    wrap_imports(modeling.batched_sequence_logprobs, "nograd_fwd")
    wrap(PreTrainedModel, "save_pretrained", "save")
    if getattr(trainer, "sequence_logprobs", None) is modeling.sequence_logprobs:
        wrap(trainer, "sequence_logprobs", "grad_fwd")
    wrap(torch.Tensor, "backward", "backward")
    wrap(os, "fsync", "fsync")
    orig_build = getattr(trainer, "build_optimizer", None)

    def build(*a: Any, **k: Any) -> Any:
        opt = orig_build(*a, **k)
        step = opt.step

        def timed_step(*sa: Any, **sk: Any) -> Any:
            with timer("optimizer"):
                return step(*sa, **sk)

        opt.step = timed_step
        return opt

    if orig_build is not None:
        patches.append((trainer, "build_optimizer", orig_build))
        trainer.build_optimizer = build

    def restore() -> None:
        for owner, attr, orig in reversed(patches):
            setattr(owner, attr, orig)

    return restore


def rspo_iterations(s: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``warmup + measured`` iterations; per-iteration stage seconds and counts."""
    from rspo.config import config_from_dict
    from rspo.selfplay import loop
    from rspo.utils.io import read_jsonl

    cfg = config_from_dict(selfplay_config(s, workdir / "run"))
    run = loop.SelfPlayRun(cfg, log=lambda _msg: None, fresh=True)
    timer = StageTimer()
    restore = _instrument(timer)
    iters = []
    try:
        t0 = time.perf_counter()
        run.setup()
        setup_s = time.perf_counter() - t0
        for t in range(1, s["warmup"] + s["measured"] + 1):
            rec: dict[str, Any] = {"iteration": t}
            stats0 = dict(getattr(run.judge, "stats", {}))
            cpu0 = time.process_time()
            for name in STAGES:
                timer.pop()
                t0 = time.perf_counter()
                getattr(run, f"stage_{name}")(t)
                rec[name] = time.perf_counter() - t0
                for key, sec in timer.pop().items():
                    rec[f"{name}_{key}"] = sec
            rec["cpu"] = time.process_time() - cpu0
            rec["total"] = sum(rec[n] for n in STAGES)
            gens = read_jsonl(run.rd.iter_dir(t) / "generations.jsonl")
            lens = [len(r["ids"]) for g in gens for r in g["responses"]]
            rec["samples"] = len(lens)
            rec["tokens"] = sum(lens)
            rec["finished"] = sum(r["finished"] for g in gens for r in g["responses"]) / len(lens)
            stats = getattr(run.judge, "stats", {})
            rec["judge_calls"] = stats.get("inner_calls", 0) - stats0.get("inner_calls", 0)
            rec["judge_pairs"] = stats.get("inner_pairs", 0) - stats0.get("inner_pairs", 0)
            iters.append(rec)
    finally:
        restore()
    return {"setup": setup_s, "iterations": iters, "measured": iters[s["warmup"] :]}
