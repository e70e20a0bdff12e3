"""LoRA/QLoRA with peft: one base model serves π_t (adapter on) and π_ref (adapter off).

``LoraPolicy`` loads the base once, wraps it with a seeded fresh adapter (B = 0, so π_1 is
exactly the base) and swaps adapter weights in and out of that one instance: the policy of
iteration t is the adapter saved in checkpoint t − 1, the reference is the same model under
peft's ``disable_adapter()``. Adapters are read and written as safetensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from rspo.config import LoraConfig, ModelConfig
from rspo.modeling import (  # noqa: F401  (load_adapter_model, quantization_kwargs: re-exported)
    is_adapter_dir,
    load_adapter_model,
    load_model,
    quantization_kwargs,
    quiet_peft,
    read_adapter_config,
    require_peft,
    resolve_device,
    resolve_model_path,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_lora_settings(m: ModelConfig) -> None:
    """Fail early (before the run directory is touched) on a missing peft or 4-bit support."""
    if m.lora is not None:
        require_peft()
    if m.load_in_4bit:
        quantization_kwargs(resolve_device(m.device), torch.bfloat16)


def check_target_modules(base_path: str, c: LoraConfig, trust_remote_code: bool) -> None:
    """Every name in ``model.lora.target_modules`` must be a module of the base model.

    Checked on a weightless (meta-device) instance built from the config, so a typo fails
    in seconds, before any weights are read.
    """
    if isinstance(c.target_modules, str):
        return  # "all-linear" or a regex: peft resolves it when the adapter is added
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        conf = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(conf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return  # the loader reports an unreadable model with its own clear error
    names = [name for name, _ in meta.named_modules()]
    unknown = [t for t in c.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in meta.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ValueError(
            f"model.lora.target_modules: {unknown} not found in the model at {base_path}; "
            f'its linear layers are {linear} (or use "all-linear")'
        )


def peft_lora_config(c: LoraConfig) -> Any:
    """The peft ``LoraConfig`` for rspo's ``model.lora`` section."""
    peft = require_peft()
    return peft.LoraConfig(
        r=c.r,
        lora_alpha=c.alpha,
        lora_dropout=c.dropout,
        target_modules=c.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors`` in an adapter directory."""
    f = Path(path) / ADAPTER_WEIGHTS
    if not f.is_file():
        raise FileNotFoundError(f"adapter directory {path} has no {ADAPTER_WEIGHTS}")
    return load_file(str(f))


class _AdapterDisabled(torch.nn.Module):
    """A view of a peft model that runs with its adapter disabled (the base model π_ref)."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.peft_model = peft_model

    @property
    def config(self) -> Any:
        return self.peft_model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)


def _absolute(path: str) -> str:
    """A local directory as an absolute path; a hub id unchanged."""
    p = Path(path)
    return str(p.resolve()) if p.is_dir() else path


class LoraPolicy:
    """One base model with one LoRA adapter whose weights follow the requested policy path.

    ``get(path)`` and ``trainable(path)`` return views of the same instance: a later call
    with another path changes what an earlier returned object computes.
    """

    def __init__(self, m: ModelConfig, seed: int, device: torch.device) -> None:
        check_lora_settings(m)
        self.cfg = m
        self.seed = seed
        self.device = device
        # absolute: adapter_config.json records it, and a checkpoint must load from anywhere
        self.base_path = _absolute(resolve_model_path(m.path))
        if m.lora is not None:
            check_target_modules(self.base_path, m.lora, m.trust_remote_code)
        self.model: Any = None
        self.loaded: str | None = None  # adapter dir whose weights are in the model
        self._init_state: dict[str, torch.Tensor] = {}
        self._parked = False

    def serves(self, path: str) -> bool:
        """Whether ``path`` is the base or one of its adapters (else load it separately)."""
        return is_adapter_dir(path) or self.is_base(path)

    def is_base(self, path: str) -> bool:
        """Whether ``path`` names the base model (π_ref, and π_1)."""
        try:
            return _absolute(resolve_model_path(path)) == self.base_path
        except FileNotFoundError:
            return False

    def _ensure(self) -> Any:
        """Load the base once and add the fresh adapter (seeded, so resumed runs match)."""
        if self.model is not None and self._parked:
            self.model.to(self.device)
            self._parked = False
        if self.model is None:
            peft = require_peft()
            c = self.cfg
            base = load_model(
                self.base_path,
                c.dtype,
                self.device,
                c.trust_remote_code,
                c.load_in_4bit,
                cpu_linear=c.cpu_linear,
            )
            if c.load_in_4bit:
                base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
            with torch.random.fork_rng(devices=[]), quiet_peft():
                torch.manual_seed(self.seed)
                try:
                    self.model = peft.get_peft_model(base, peft_lora_config(c.lora))
                except ValueError as e:
                    raise ValueError(
                        f"model.lora.target_modules={c.lora.target_modules!r} does not fit "
                        f"the model at {self.base_path}: {e}"
                    ) from e
            self._init_state = {k: v.detach().clone() for k, v in self._state().items()}
        return self.model

    def _state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def _load(self, path: str) -> None:
        """Put the adapter weights of ``path`` (or the fresh init for the base) in the model."""
        from peft import set_peft_model_state_dict

        model = self._ensure()
        if self.loaded == path:
            return
        if self.is_base(path):
            state = self._init_state
        else:
            self._check_compatible(path)
            state = load_adapter_weights(path)
        res = set_peft_model_state_dict(model, state)
        extra = [k for k in res.unexpected_keys if "lora_" in k]
        missing = [k for k in res.missing_keys if "lora_" in k]
        if extra or missing:
            raise ValueError(
                f"adapter {path} does not match model.lora.target_modules="
                f"{self.cfg.lora.target_modules!r}: "
                + (f"unexpected {extra[:2]}" if extra else f"missing {missing[:2]}")
            )
        self.loaded = path

    def _check_compatible(self, path: str) -> None:
        """Rank and alpha must match model.lora (else shapes or scaling would be wrong)."""
        saved = read_adapter_config(path)
        want = self.cfg.lora
        for key, mine, name in (("r", want.r, "r"), ("lora_alpha", want.alpha, "alpha")):
            if saved.get(key) is not None and float(saved[key]) != float(mine):
                raise ValueError(
                    f"adapter {path} has {key}={saved[key]} but model.lora.{name}={mine}; "
                    "set model.lora to the settings it was trained with"
                )

    def get(self, path: str) -> torch.nn.Module:
        """π at ``path`` for no-grad use: the base with the adapter disabled, or base + adapter."""
        model = self._ensure()
        if self.is_base(path):
            return _AdapterDisabled(model).eval()
        self._load(path)
        return model.eval()

    def trainable(self, path: str) -> Any:
        """The model holding π at ``path`` with only its adapter weights requiring grad."""
        self._load(path)
        self._ensure()
        self.loaded = None  # training changes the weights: reload from disk next time
        for name, p in self.model.named_parameters():
            p.requires_grad_("lora_" in name)
        return self.model

    def park(self) -> None:
        """Move the model to CPU RAM while another engine uses the GPU (not for 4-bit)."""
        if self.model is not None and self.device.type != "cpu" and not self.cfg.load_in_4bit:
            self.model.to("cpu")
            self._parked = True
            from rspo.modeling import free_memory

            free_memory()

    def release(self) -> None:
        """Drop the model (all of it: base and adapter)."""
        self.model, self.loaded = None, None
