"""A fake ``vllm`` following vLLM's documented offline API (real vLLM needs CUDA).

Sleep-mode rules are enforced (level 2 discards the weights, so generating without
``reload_weights`` fails) and sampling is rspo's seeded HF sampler on the weights the engine
has loaded, so a run through it must reproduce the HF backend's run exactly. Imported by
``test_vllm_backend.py`` and, as the package ``vllm`` (``tests/fake_vllm`` on PYTHONPATH),
by torchrun subprocesses, where each engine appends what it was built with and what it
generated to ``$RSPO_FAKE_VLLM_LOG/rank<RANK>.jsonl``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rspo.generation import SamplingParams
from rspo.generation.hf import HFBackend
from rspo.modeling import load_model, load_tokenizer


def _trace(event: dict[str, Any]) -> None:
    """One line per engine event for a test in another process (when asked for)."""
    where = os.environ.get("RSPO_FAKE_VLLM_LOG")
    if where:
        rank = os.environ.get("RANK", "0")
        with open(Path(where) / f"rank{rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


class FakeSamplingParams:
    """Stores its keyword arguments (vLLM's SamplingParams is a struct of them)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.kw = kw


@dataclass
class FakeCompletionOutput:
    token_ids: list[int]
    finish_reason: str
    stop_reason: Any = None
    index: int = 0


@dataclass
class FakeRequestOutput:
    outputs: list[FakeCompletionOutput]


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeLLM:
    """Offline engine: weights from ``model`` (safetensors), sleep levels 1/2, LoRA requests."""

    instances: list[FakeLLM] = []  # engines created (reset per test)
    batch_size = int(os.environ.get("RSPO_FAKE_VLLM_BATCH", "64"))  # per HF sampler call
    keep_stop_token = True  # whether token_ids end with the stop token

    def __init__(self, model: str, **kw: Any) -> None:
        self.model, self.kw, self.log = model, kw, [("init", model)]
        self.tok = load_tokenizer(kw["tokenizer"])
        self.weights: Any = load_model(model)  # "on the GPU"
        self.backup: Any = None
        self.kv = True
        self.adapters: dict[int, Any] = {}
        FakeLLM.instances.append(self)
        _trace({"init": model, "kw": {k: str(v) for k, v in kw.items()}})

    def sleep(self, level: int = 1) -> None:
        assert self.weights is not None and self.kv, "sleep while asleep"
        self.log.append(("sleep", level))
        self.backup = self.weights if level == 1 else None  # level 2 forgets the weights
        self.weights, self.kv = None, False

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.log.append(("wake_up", tuple(tags) if tags else None))
        if tags is None or "weights" in tags:
            self.weights = self.backup if self.backup is not None else "garbage"
        if tags is None or "kv_cache" in tags:
            self.kv = True

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list:
        assert method == "reload_weights" and self.weights is not None
        self.log.append(("reload_weights", sorted(p.name for p in Path(self.model).iterdir())))
        self.weights = load_model(self.model)  # re-reads the model directory
        return [None]

    def reset_prefix_cache(self) -> bool:
        self.log.append(("reset_prefix_cache",))
        return True

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        assert self.kv and isinstance(self.weights, torch.nn.Module), "engine not awake"
        self.log.append(("generate", lora_request.lora_path if lora_request else None))
        _trace({"generate": [s.seed for s in sampling_params]})
        model = self.weights
        if lora_request is not None:
            assert self.kw.get("enable_lora")
            if lora_request.lora_int_id not in self.adapters:
                from rspo.training.peft import load_adapter_model

                self.adapters[lora_request.lora_int_id] = load_adapter_model(
                    lora_request.lora_path, base_path=self.model
                )
            model = self.adapters[lora_request.lora_int_id]
        sp0 = sampling_params[0]
        stops = set(sp0.stop_token_ids or []) | (
            set() if sp0.ignore_eos else {self.tok.eos_token_id}
        )
        assert stops == {self.tok.eos_token_id}  # what rspo's HF sampler stops at
        assert all({**s.kw, "seed": 0} == {**sp0.kw, "seed": 0} for s in sampling_params)
        params = SamplingParams(
            sp0.max_tokens, sp0.temperature, sp0.top_p, 0 if sp0.top_k in (0, -1) else sp0.top_k
        )
        comps = HFBackend(model, self.tok, batch_size=FakeLLM.batch_size).generate(
            [p["prompt_token_ids"] for p in prompts], [s.seed for s in sampling_params], params
        )
        outs = []
        for c in comps:
            ids = list(c.ids)
            if c.finished and not FakeLLM.keep_stop_token:
                ids = ids[:-1]
            reason = "stop" if c.finished else "length"
            outs.append(FakeRequestOutput([FakeCompletionOutput(ids, reason)]))
        return outs
