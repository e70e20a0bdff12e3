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
import shutil
import sys
import weakref
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
    """The ZeRO stage asked for: ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, else the stage of the
    ``deepspeed_config_file`` JSON, else 3."""
    raw = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if raw is None:
        raw = str(_user_config().get("zero_optimization", {}).get("stage", 3))
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
    if not isinstance(conf, dict) or not isinstance(conf.get("zero_optimization", {}), dict):
        raise ConfigError(f"deepspeed_config_file {path}: expected a JSON object")
    clash = [k for k in ("optimizer", "scheduler") if k in conf]
    if clash:
        raise ConfigError(
            f"deepspeed_config_file {path}: {', '.join(clash)} are set by rspo "
            "(training.optimizer, training.lr); remove them from the file"
        )
    return conf


def _zero_section(user: dict[str, Any]) -> dict[str, Any]:
    """The ``zero_optimization`` section: the user's JSON, with the launcher's stage and
    offload devices (``ACCELERATE_DEEPSPEED_*``) over it."""
    zero = dict(user.get("zero_optimization", {}))
    zero["stage"] = zero_stage()
    for kind in ("optimizer", "param"):
        device = os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{kind.upper()}_DEVICE", "none")
        if device not in ("none", ""):
            zero[f"offload_{kind}"] = {"device": device}
    return zero


def deepspeed_config(cfg: TrainingConfig, world_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed config of one training run: ZeRO section from the launcher (or its
    JSON), everything about batches, clipping and precision from rspo."""
    user = _user_config()
    zero = _zero_section(user)
    if zero["stage"] == 1 and zero.get("overlap_comm"):
        raise ConfigError(
            "DeepSpeed zero_stage 1 with overlap_comm: true cannot accumulate several "
            "micro-batches per step as rspo does; use stage 2 or 3, or overlap_comm: false"
        )
    # stage 3 would otherwise replace torch.nn.functional.linear for the whole process
    zero.setdefault("memory_efficient_linear", False)
    conf = {k: v for k, v in user.items() if k not in OWNED}
    bf16 = dtype == torch.bfloat16
    if bf16:  # accumulate and reduce gradients in float32 (the loss is rounding-sensitive)
        conf.setdefault("data_types", {"grad_accum_dtype": "fp32"})
        conf.setdefault("communication_data_type", "fp32")
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
            "bf16": {"enabled": bf16},
            "fp16": {"enabled": False},
            "zero_allow_untested_optimizer": True,  # rspo's AdamW / RMSprop
            "zero_force_ds_cpu_optimizer": False,  # offload with a torch optimizer
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
    )
    return conf


def offload_requested() -> bool:
    """Whether the launcher asked DeepSpeed to offload optimizer state or parameters."""
    zero = _zero_section(_user_config())
    return any(
        (zero.get(f"offload_{k}") or {}).get("device", "none") != "none"
        for k in ("optimizer", "param")
    )


#: subdirectory of an iteration's ``train_state`` holding DeepSpeed's training state
STATE = "deepspeed"


def saved_step(state_dir: Path | None, world_size: int, stage: int) -> int:
    """The optimizer step of the last complete DeepSpeed training state in ``state_dir``
    written with ``world_size`` processes at ZeRO ``stage`` (partitions need the same split),
    else 0. ``rspo.json`` names it and is written only once every rank has saved."""
    if state_dir is None:
        return 0
    d = Path(state_dir) / STATE
    try:
        meta = json.loads((d / "rspo.json").read_text())
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if meta.get("world_size") != world_size or meta.get("stage") != stage:
        return 0
    return step if (d / f"step_{step}").is_dir() else 0


class EngineForward:
    """The trained module as rspo's forwards see it (config, parameters, signature), called
    through the DeepSpeed engine: ``engine.forward`` is where DeepSpeed starts a micro-step
    and hooks the backward prologue (accumulation boundary, offload, micro-step count)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.module, name)


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
        self.forward_model = EngineForward(self.engine)  # what the forwards must call
        model._rspo_tied = tied  # read back by full_state_dict (and marks the model sharded)
        model._rspo_deepspeed = self

    def resume(self, state_dir: Path, step: int) -> None:
        """Load the training state saved after ``step`` (every rank; see :func:`saved_step`)."""
        tag = f"step_{step}"
        path, client = self.engine.load_checkpoint(
            str(Path(state_dir) / STATE), tag=tag, load_lr_scheduler_states=False
        )
        if path is None or (client or {}).get("step") != step:
            raise RuntimeError(f"{Path(state_dir) / STATE / tag}: DeepSpeed state did not load")

    def save(self, state_dir: Path, step: int, is_main: bool) -> None:
        """Save the partitioned training state after ``step``: every rank writes its part;
        once all have (DeepSpeed's closing barrier) rank 0 records it in ``rspo.json``
        (atomically) and drops older states. A kill mid-save leaves the previous state."""
        from rspo.utils.io import atomic_write_json

        d = Path(state_dir) / STATE
        tag = f"step_{step}"
        self.engine.save_checkpoint(str(d), tag=tag, client_state={"step": step}, save_latest=False)
        if is_main:
            meta = {"step": step, "world_size": self.world, "stage": self.stage}
            atomic_write_json(d / "rspo.json", meta)
            for old in d.glob("step_*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

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
        return {k: v.detach().to("cpu") for k, v in (sd or {}).items()}

    def release(self) -> list[weakref.ref]:
        """Remove the engine's hooks, destroy it (optimizer state, buffers) and clear
        DeepSpeed's global references to it; weak references to the engine and its optimizer
        come back, for :func:`rspo.modeling.free_memory` once the module is dropped too
        (parameters keep DeepSpeed attributes that reach the optimizer)."""
        engine = self.engine
        module = engine.module
        module.__dict__.pop("_rspo_deepspeed", None)
        for name in ("module_forward_pre_hook", "module_forward_post_hook"):
            handle = getattr(engine, name, None)
            if handle is not None:  # their closures hold the engine
                handle.remove()
        engine.destroy()  # stage 3: also removes the parameter hooks of every submodule
        _drop_global_references()
        refs = [weakref.ref(engine)]
        if engine.optimizer is not None:
            refs.append(weakref.ref(engine.optimizer))
        self.engine = self.forward_model = None  # type: ignore[assignment]
        return refs


def _drop_global_references() -> None:
    """DeepSpeed (0.19) keeps the last engine's modules reachable from module globals: the
    ZeRO-3 forward-module stack and an ``lru_cache`` on a parameter-coordinator method. Clear
    them, so a dropped engine and its optimizer state can be freed."""
    try:
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import (
            PartitionedParameterCoordinator,
        )
    except ImportError:  # pragma: no cover - other DeepSpeed layouts
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack.clear()
    for attr in vars(PartitionedParameterCoordinator).values():
        todo, depth = [attr], 0
        while todo and depth < 3:  # the cache sits inside a profiling wrapper's closure
            nxt = []
            for fn in todo:
                if hasattr(fn, "cache_clear"):
                    fn.cache_clear()
                    continue
                for cell in getattr(fn, "__closure__", None) or ():
                    with contextlib.suppress(ValueError):  # an empty cell
                        nxt.append(cell.cell_contents)
                nxt += [w for w in (getattr(fn, "__wrapped__", None),) if w is not None]
            todo, depth = [f for f in nxt if callable(f)], depth + 1


def deepspeed_of(model: torch.nn.Module) -> DeepSpeedPolicy | None:
    """The DeepSpeed wrapper a model trains under, if any."""
    return model.__dict__.get("_rspo_deepspeed")
