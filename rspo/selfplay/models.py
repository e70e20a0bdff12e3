"""Which models a self-play run holds in memory, and when.

The policy trained in iteration t − 1 stays resident: it samples iteration t, stays beside
π_ref while π_ref's log-probs are computed and while π_ref samples responses for the
forward-KL ``nll`` estimator (two models without gradients, plus a KV cache: less than the
training step's weights + gradients + optimizer state), and is the model iteration t trains,
with no reload. π_ref itself is loaded for each iteration's scoring and dropped before
training and generation, unless ``model.keep_reference`` holds it for the whole run
(:func:`rspo.modeling.holds_reference`; auto: when its weights take at most 5% of the
device's memory). Any other read-only model (π_t on a resumed run) is dropped when another
is asked for. With LoRA there is one model in all: π_t, π_ref (adapter disabled) and the
trained policy share it. With the vLLM backend the engine sleeps whenever a Hugging Face
model needs the GPU.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from rspo.config import Config
from rspo.distributed import DistContext
from rspo.generation import GenerationBackend, build_backend
from rspo.modeling import (
    free_memory,
    holds_reference,
    is_adapter_dir,
    load_configured,
    load_trainable,
    resolve_dtype,
    resolve_model_path,
)
from rspo.utils.hf_config import has_stateful_rope


class PolicyModels:
    """Hands out the models of one run: ``get`` (no grad), ``trainable``, ``generator``."""

    def __init__(self, cfg: Config, device: torch.device, dist: DistContext | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.dist = dist or DistContext()
        self.lora = None
        if cfg.model.lora is not None:
            from rspo.training.peft import LoraPolicy

            self.lora = LoraPolicy(cfg.model, cfg.run.seed, device)
        self._cache: dict[str, Any] = {}
        self._kept: str | None = None  # the trained policy held from training to training
        #: π_ref's path (set by the loop; MPO moves it) and whether it is held once loaded
        self.reference: str | None = None
        self._keep_ref: bool | None = None  # decided at π_ref's first load
        self._vllm: Any = None
        self.max_len: int | None = None  # longest prompt + response of the run (vLLM engine)
        if cfg.generation.backend == "vllm":
            from rspo.generation.vllm import import_vllm

            import_vllm()  # a missing extra fails here, before the run directory is touched

    def _load(self, path: str) -> Any:
        return load_configured(path, self.cfg.model, self.device)

    def resident(self) -> list[Any]:
        """The models held now (for memory checks)."""
        held = list(self._cache.values())
        if self.lora is not None and self.lora.model is not None:
            held.append(self.lora.model)
        return held

    def drop_cache(self, keep: str | None = None) -> None:
        """Forget the read-only models (π_t, π_ref) but the one at ``keep`` and a held π_ref;
        free their memory."""
        held = self.reference if self._keep_ref else None
        gone = [p for p in self._cache if p not in (keep, held)]
        if gone:
            refs = [weakref.ref(self._cache.pop(p)) for p in gone]
            if self._kept in gone:
                self._kept = None
            free_memory(refs)

    def get(self, path: str) -> Any:
        """The policy at ``path`` for no-grad use. The previous model is dropped (unless LoRA),
        except the kept trained policy, which stays beside π_ref while scoring, and a held
        π_ref; asking for the kept policy (generation) drops everything else."""
        self._sleep_engine()
        if self.lora is not None and self.lora.serves(path):
            self.drop_cache()
            return self.lora.get(path)
        if path not in self._cache:
            self.drop_cache(keep=self._kept)
            self._cache[path] = self._load(path)
            if path == self.reference and self._keep_ref is None:
                self._keep_ref = self._hold_reference(self._cache[path])
        elif path == self._kept:
            self.drop_cache(keep=path)
        return self._cache[path]

    def _hold_reference(self, model: Any) -> bool:
        c = self.cfg
        return holds_reference(c.model.keep_reference, c.generation.backend, model, self.device)

    def trainable(self, path: str) -> Any:
        """A model initialised to the policy at ``path``, to be trained (nothing else held):
        the kept trained policy itself when it is that policy (no reload), else a fresh load."""
        self._sleep_engine()
        if path == self._kept and path in self._cache:
            self.drop_cache(keep=path)
            self._kept = None
            return self._cache.pop(path)  # equal to the checkpoint it was saved as
        self.drop_cache()
        c = self.cfg
        return load_trainable(
            path, c.model, self.device, c.training.gradient_checkpointing, self.lora
        )

    def keep(self, path: str, model: Any) -> None:
        """Hold a just-trained policy as the read-only model at ``path`` (its checkpoint): the
        next generation samples from it and the next training starts from it without
        reloading; skipped for LoRA, sharded or checkpointed models (their training form is
        not the one generation wants) and dynamic-RoPE models (their state is not saved)."""
        if (
            self.lora is not None
            or has_stateful_rope(model.config)  # a reload (resume) would score differently
            or hasattr(model, "_rspo_tied")  # FSDP-sharded
            or self.cfg.training.gradient_checkpointing
            or self.cfg.generation.backend != "hf"
        ):
            return
        self.drop_cache()
        model.eval()
        self._cache[path] = model
        self._kept = path

    def generator(self, path: str, tokenizer: Any, logprobs: bool = False) -> GenerationBackend:
        """A backend sampling from the policy at ``path`` (HF: ``logprobs`` records log π)."""
        g = self.cfg.generation
        if g.backend == "hf" or not self._engine_serves(path):
            return build_backend(
                "hf", self.get(path), tokenizer, g.batch_size, logprobs=logprobs, decode=g.hf_decode
            )
        self.drop_cache()  # the engine holds its own weights
        if self.lora is not None:
            self.lora.park()  # the HF copy of the base waits in CPU RAM while vLLM runs
        engine = self._engine(tokenizer)
        engine.set_policy(self._engine_path(path))
        return engine

    def _engine_serves(self, path: str) -> bool:
        """vLLM serves the base and this run's policies; other models use the HF backend."""
        if self.lora is not None:
            return self.lora.serves(path)  # the base or an adapter on it
        return not is_adapter_dir(path)

    def _engine_path(self, path: str) -> str:
        if self.lora is not None and self.lora.is_base(path):
            return self.lora.base_path
        return resolve_model_path(path)

    def _engine(self, tokenizer: Any) -> Any:
        if self._vllm is None:
            m, g = self.cfg.model, self.cfg.generation
            lora_rank = m.lora.r if m.lora is not None else None
            # vLLM sizes the KV cache for max_model_len (else the model's whole context, which
            # may not fit gpu_memory_utilization); vllm_kwargs may still set it
            extra = {"max_model_len": self.max_len} if self.max_len else {}
            free_memory()  # vLLM checks the driver's free memory against its share
            self._vllm = build_backend(
                "vllm",
                resolve_model_path(m.path),
                tokenizer,
                dtype=str(resolve_dtype(m.dtype, self.device)).removeprefix("torch."),
                seed=self.cfg.run.seed,
                gpu_memory_utilization=g.vllm_gpu_memory_utilization,
                lora_rank=lora_rank,
                live_dir=Path(self.cfg.run.output) / "vllm_live",
                trust_remote_code=m.trust_remote_code,
                engine_kwargs={**extra, **g.vllm_kwargs},
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        return self._vllm

    def _sleep_engine(self) -> None:
        if self._vllm is not None:
            self._vllm.sleep()

    def release(self) -> None:
        """Drop every model (end of the run)."""
        self._keep_ref = None
        self.drop_cache()
        if self.lora is not None:
            self.lora.release()
        if self._vllm is not None:
            self._vllm.sleep()
        free_memory()
