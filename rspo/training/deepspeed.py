"""ZeRO-sharded training of the policy with DeepSpeed (``accelerate launch`` + zero3.yaml).

The optional extra ``[deepspeed]``. rspo keeps its own loop (micro-batches, loss, lockstep
padding passes) and hands DeepSpeed the model and rspo's optimizer: ``deepspeed.initialize``
partitions parameters (stage 3), gradients (2, 3) and optimizer state (1-3) over the ranks,
``backward`` reduce-scatters, ``step`` clips and steps. DeepSpeed averages gradients over
ranks; rspo's loss is already normalised by the global sample counts, so each backward is
scaled by the world size (summed gradients, as with DDP and FSDP2). The stage and offload
devices come from the accelerate config's environment (``ACCELERATE_DEEPSPEED_*``) or a
DeepSpeed JSON named by it; batch sizes, accumulation, clipping, precision and the optimizer
are rspo's (``training.*``, ``model.dtype``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from rspo.config import ConfigError, TrainingConfig
from rspo.distributed import DistContext

#: keys of a DeepSpeed JSON that rspo sets itself (from training.* and model.dtype)
OWNED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
    "fp16",
    "bf16",
)


def import_deepspeed() -> Any:
    """``deepspeed`` (its log on stderr, warnings only), or a ConfigError saying how to
    install it."""
    try:
        # DeepSpeed's logger writes to the stdout of its import; rspo's stdout carries reports
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed
            import deepspeed.ops
            from deepspeed.utils import logger
    except ImportError as e:
        raise ConfigError(
            "launched with a DeepSpeed accelerate config (ACCELERATE_USE_DEEPSPEED=true) but "
            f"deepspeed cannot be imported ({e}); pip install 'rspo[deepspeed]', or launch "
            "with rspo/configs/accelerate/fsdp2.yaml (torch FSDP2, same ZeRO-3 sharding)"
        ) from e
    # a shared-memory op for CPU tensor-parallel inference, compiled with g++ at start-up on
    # CPU; training does not use it
    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False
    logger.setLevel(logging.WARNING)  # not its per-initialize INFO lines
    return deepspeed


def zero_stage() -> int:
    """The ZeRO stage the launcher asked for (``ACCELERATE_DEEPSPEED_ZERO_STAGE``, default 3)."""
    raw = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    if raw not in ("1", "2", "3"):
        raise ConfigError(f"accelerate config: zero_stage {raw!r} is not supported; use 1, 2 or 3")
    return int(raw)


def _user_config() -> dict[str, Any]:
    """The DeepSpeed JSON of ``deepspeed_config_file`` in the accelerate config, if any."""
    name = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if not name or name.lower() == "none":
        return {}
    path = Path(name)
    try:
        conf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"deepspeed_config_file {path}: cannot read it as JSON ({e})") from e
    if not isinstance(conf, dict):
        raise ConfigError(f"deepspeed_config_file {path}: expected a JSON object")
    clash = [k for k in ("optimizer", "scheduler") if k in conf]
    if clash:
        raise ConfigError(
            f"deepspeed_config_file {path}: {', '.join(clash)} are set by rspo "
            "(training.optimizer, training.lr); remove them from the file"
        )
    return conf


def deepspeed_config(cfg: TrainingConfig, world_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed config of one training run: ZeRO section from the launcher (or its
    JSON), everything about batches, clipping and precision from rspo."""
    user = _user_config()
    zero = dict(user.get("zero_optimization", {}))
    from_env = "ACCELERATE_DEEPSPEED_ZERO_STAGE" in os.environ
    zero["stage"] = zero_stage() if from_env else int(zero.get("stage", 3))
    for kind in ("optimizer", "param"):
        device = os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{kind.upper()}_DEVICE", "none")
        if device not in ("none", ""):
            zero[f"offload_{kind}"] = {"device": device}
    conf = {k: v for k, v in user.items() if k not in OWNED}
    conf.update(
        {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "train_batch_size": cfg.micro_batch_size * world_size,
            # rspo runs as many backward passes per step as its micro-batches need
            "managed_gradient_accumulation": False,
            "gradient_clipping": float(cfg.max_grad_norm or 0.0),
            "zero_optimization": zero,
            # weights in model.dtype; bf16 keeps fp32 master weights in the optimizer
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": False},
            "zero_allow_untested_optimizer": True,  # rspo's AdamW / RMSprop
            "zero_force_ds_cpu_optimizer": False,  # offload with a torch optimizer
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
    )
    return conf


class DeepSpeedPolicy:
    """The policy under a DeepSpeed engine for one iteration's training."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainingConfig,
        dist: DistContext,
    ) -> None:
        from rspo.training.fsdp import tied_duplicates

        ds = import_deepspeed()
        dtype = next(model.parameters()).dtype
        self.config = deepspeed_config(cfg, dist.world_size, dtype)
        self.world = dist.world_size
        tied = tied_duplicates(model)
        self.engine, _, _, _ = ds.initialize(model=model, optimizer=optimizer, config=self.config)
        self.stage = int(self.config["zero_optimization"]["stage"])
        # rspo calls the module, not engine.forward, whose first act is this: without it the
        # ZeRO optimizer's micro-step count stays 0 and each micro-batch's gradient replaces
        # the previous one instead of adding to it
        opt = self.engine.optimizer
        clear = getattr(opt, "clear_backward_seen_flag", None)
        self._hook = (
            model.register_forward_pre_hook(lambda *_: clear()) if callable(clear) else None
        )
        model._rspo_tied = tied  # read back by full_state_dict (and marks the model sharded)
        model._rspo_deepspeed = self

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through the engine; scaled so the ranks' gradients sum, not average."""
        self.engine.backward(loss * self.world)

    def step(self) -> float:
        """Clip (``gradient_clipping``), step and zero the gradients; the norm before clipping."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unpartitioned weights on rank 0's CPU (empty elsewhere); every rank must call it."""
        if self.stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.engine.global_rank != 0:
            return {}
        return {k: v.detach().to("cpu", copy=True) for k, v in (sd or {}).items()}

    def release(self) -> None:
        """Free the engine's buffers and optimizer state (the module is not reused)."""
        if self._hook is not None:
            self._hook.remove()
        self.engine.destroy()
        module = self.engine.module
        for attr in ("_rspo_deepspeed",):
            module.__dict__.pop(attr, None)
        self.engine = None  # type: ignore[assignment]


def deepspeed_of(model: torch.nn.Module) -> DeepSpeedPolicy | None:
    """The DeepSpeed wrapper a model trains under, if any."""
    return model.__dict__.get("_rspo_deepspeed")
