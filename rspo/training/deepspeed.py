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
        from rspo.training.checkpoint import tied_duplicates

        ds = import_deepspeed()
        dtype = next(model.parameters()).dtype
        self.config = deepspeed_config(cfg, dist.world_size, dtype)
        self.world = dist.world_size
        self.dist = dist
        # rspo's optimizer hyper-parameters, for the saved training state
        self.groups = [
            {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ]
        tied = tied_duplicates(model)
        self.engine, _, _, _ = ds.initialize(model=model, optimizer=optimizer, config=self.config)
        self.stage = int(self.config["zero_optimization"]["stage"])
        self.forward_model = EngineForward(self.engine)  # what the forwards must call
        model._rspo_tied = tied  # read back by full_state_dict (and marks the model sharded)
        model._rspo_deepspeed = self

    def _flat_partitions(self) -> list[torch.Tensor]:
        """This rank's flat fp32 partitions, the tensors the wrapped torch optimizer steps
        (stage 3 lists them in its param groups only during a step)."""
        zero = self.engine.optimizer
        for attr in (
            "fp32_partitioned_groups_flat",  # stage 3
            "single_partition_of_fp32_groups",  # stages 1-2
            "fp32_groups_flat_partition",  # BF16_Optimizer (stage 1 with bf16 weights)
        ):
            flat = getattr(zero, attr, None)
            if flat:
                return list(flat)
        raise RuntimeError(f"{type(zero).__name__}: no fp32 partitions found to save or load")

    def _named(self) -> list[tuple[str, torch.nn.Parameter]]:
        from rspo.training.checkpoint import trainable_parameters

        return list(trainable_parameters(self.engine.module).items())

    def save_state(self, state_dir: Path, step: int) -> None:
        """Gather the fp32 master weights and optimizer state parameter by parameter, one
        tensor at a time (DeepSpeed's tensor-fragment API), and write them on rank 0 as one
        process would: safetensors, resumable by any engine and number of processes. Every
        rank must call it; an error writing on rank 0 is raised on every rank."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        from rspo.training.checkpoint import write_train_state

        main = self.dist.is_main
        base = self.engine.optimizer.optimizer
        flat = [base.state[f] for f in self._flat_partitions()]
        keys = [k for k, v in flat[0].items() if k != "step" and torch.is_tensor(v)]
        weights = {n: b.detach().cpu() for n, b in _persistent_buffers(self.engine.module)}
        opt: dict[int, dict[str, Any]] = {}
        for i, (name, p) in enumerate(self._named()):
            shape = tuple(getattr(p, "ds_shape", p.shape))
            # collectives (every rank, same order); on the CPU before the next is gathered
            full = safe_get_full_fp32_param(p)
            weights[name] = full.reshape(shape).cpu() if main else None
            st = {"step": flat[0]["step"].detach().cpu().clone()}
            for k in keys:
                full = safe_get_full_optimizer_state(p, k)
                st[k] = full.reshape(shape).cpu() if main else None
            del full
            opt[i] = st
        groups = [{**g, "params": list(range(len(opt)))} for g in self.groups]
        self.dist.from_main(write_train_state, state_dir, weights, opt, groups, step, {})

    def load_state(self, found: Path) -> int:
        """Put a saved training state's fp32 master weights and optimizer state into the
        partitions (each rank reads the saved tensors one at a time and keeps its part); the
        step it was saved after. The module's weights were loaded before
        ``deepspeed.initialize``. A parameter without saved state (it never had a gradient
        when another engine saved) keeps zero moments."""
        from safetensors import safe_open

        meta = json.loads((Path(found) / "trainer_state.json").read_text())
        with safe_open(str(Path(found) / "optimizer.safetensors"), "pt") as o:
            names = set(o.keys())
            steps = sorted(k for k in names if k.endswith(".step"))
            step = o.get_tensor(steps[0]) if steps else torch.tensor(meta["step"])
            keys = sorted({k.split(".", 1)[1] for k in names} - {"step"})
            base = self.engine.optimizer.optimizer
            for f in self._flat_partitions():  # the optimizer creates its state lazily
                base.state[f] = {
                    "step": step.float().clone(),
                    **{k: torch.zeros_like(f) for k in keys},
                }
            link = getattr(self.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
            if link is not None:  # stages 1-2: point each parameter's fragments at that state
                link()
            with safe_open(str(Path(found) / "model.safetensors"), "pt") as w:
                for i, (name, p) in enumerate(self._named()):
                    _set_full(p, w.get_tensor(name).float())
                    for k in keys:
                        if f"{i}.{k}" in names:
                            _set_full(p, o.get_tensor(f"{i}.{k}").float(), k)
        return int(meta["step"])

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


def _set_full(p: torch.nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """This rank's part of a full fp32 master weight (``key`` None) or optimizer state.
    At stage 3 the value is padded first: DeepSpeed 0.19's ``safe_set_full_*`` cuts the
    unpadded value at padded partition offsets and overruns it on the last rank when the
    parameter's size does not divide by the number of processes."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not hasattr(p, "ds_id"):  # stages 1-2
        if key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)
        return
    zero = p._z3_optimizer
    part, group = zero._get_fp32_opt_state_partition(
        p, release_swap_buffers=False, optim_state_key=key
    )
    n, rank = part.numel(), zero._get_param_partition_rank(p)
    flat = value.flatten().to(part.device)
    flat = torch.nn.functional.pad(flat, (0, max(0, n * (rank + 1) - flat.numel())))
    part.data.copy_(flat.narrow(0, n * rank, n))
    if zero._swappable_optimizer_subgroup(group):  # NVMe offload: write it back, as DeepSpeed does
        zero._optimizer_states_and_gradient_swap_out(group)


def _persistent_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Buffers a state dict holds (ZeRO replicates them; parameters are gathered apart)."""
    out = []
    for prefix, m in module.named_modules():
        for name, b in m.named_buffers(recurse=False):
            if b is not None and name not in m._non_persistent_buffers_set:
                out.append((f"{prefix}.{name}" if prefix else name, b))
    return out


def deepspeed_of(model: torch.nn.Module) -> DeepSpeedPolicy | None:
    """The DeepSpeed wrapper a model trains under, if any."""
    return model.__dict__.get("_rspo_deepspeed")
