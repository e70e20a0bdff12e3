"""Fully sharded training of the policy with torch FSDP2 (``accelerate launch`` + fsdp2.yaml),
and the choice of training engine (DDP, FSDP2, DeepSpeed: :mod:`rspo.training.deepspeed`).

While π_{t+1} trains, its parameters, gradients and optimizer state are split over the
ranks (ZeRO-3 style): each decoder layer and the root module are ``fully_shard``-ed.
Gradients are summed, not averaged, because the loss is already normalised by the
global sample counts. Every rank must run the same number of forward/backward passes, so
ranks with a shorter slice of a global batch run zero-weighted padding passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rspo.config import Config, ConfigError
from rspo.distributed import DistContext, launcher_engine
from rspo.training.checkpoint import tied_duplicates


def training_engine(dist: DistContext) -> str:
    """``ddp`` (replicated model, summed gradients), ``fsdp`` (FSDP2) or ``deepspeed``
    (ZeRO stage 1-3; needs the ``[deepspeed]`` extra), from the accelerate launch config."""
    engine = launcher_engine()
    if engine == "deepspeed":
        from rspo.training.deepspeed import import_deepspeed, offload_requested, zero_stage

        zero_stage()  # a bad stage or a missing package fails here, before any work
        import_deepspeed()
        if not dist.enabled and offload_requested():
            raise ConfigError(
                "DeepSpeed offload in a single process is not supported: rspo drives DeepSpeed "
                "only with several processes (one process trains the whole model in place); "
                "launch 2 or more processes, or use model.lora / model.load_in_4bit (QLoRA) or "
                "training.gradient_checkpointing to fit one GPU"
            )
        return "deepspeed" if dist.enabled else "ddp"
    if engine == "fsdp":
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ConfigError(
                f"accelerate config: fsdp_version {version} is not supported; rspo shards "
                "with FSDP2 (set fsdp_version: 2, as in rspo/configs/accelerate/fsdp2.yaml)"
            )
        return "fsdp" if dist.enabled else "ddp"
    return "ddp"


def engine_label(engine: str, world_size: int) -> str:
    """How the run log and the dry-run report name a training engine."""
    if world_size == 1:
        return "single-process"
    if engine == "deepspeed":
        from rspo.training.deepspeed import zero_stage

        return f"deepspeed-zero{zero_stage()}"
    return {"ddp": "replicated", "fsdp": "fsdp2-sharded"}[engine]


def check_launch(cfg: Config, engine: str, world_size: int) -> None:
    """Refuse combinations not built yet, before any work: LoRA under FSDP2/DeepSpeed, a
    tensor-parallel vLLM engine in several processes (each rank runs its own engine)."""
    if engine in ("fsdp", "deepspeed") and cfg.model.lora is not None:
        what = "FSDP2 (ACCELERATE_USE_FSDP)" if engine == "fsdp" else "DeepSpeed"
        raise ConfigError(
            f"model.lora with {what}-sharded training is not supported yet; "
            "LoRA trains a small adapter on a frozen base, so launch with "
            "rspo/configs/accelerate/ddp.yaml or plain torchrun (replicated), or QLoRA "
            "(model.load_in_4bit) for a base that does not fit one GPU"
        )
    if engine == "deepspeed":  # a bad deepspeed_config_file fails now, not after generation
        from rspo.training.deepspeed import deepspeed_config

        deepspeed_config(cfg.training, world_size, torch.float32)
    tp = cfg.generation.vllm_kwargs.get("tensor_parallel_size", 1)
    if cfg.generation.backend == "vllm" and world_size > 1 and tp != 1:
        raise ConfigError(
            f"generation.vllm_kwargs.tensor_parallel_size {tp} in {world_size} processes: each "
            "rank runs its own vLLM engine on its own GPU (tensor_parallel_size 1); to spread "
            "one engine over several GPUs, launch one process"
        )


def shard_policy(model: torch.nn.Module) -> torch.nn.Module:
    """``fully_shard`` each decoder layer (``model._no_split_modules``) and then the root."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    tied = tied_duplicates(model)
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    for m in list(model.modules()):
        if type(m).__name__ in layer_names:
            fully_shard(m, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks
            m.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL)
    model._rspo_tied = tied  # read back by full_state_dict
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_policy` or trains under DeepSpeed."""
    return hasattr(model, "_rspo_tied")


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on rank 0's CPU (empty on other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from rspo.training.deepspeed import deepspeed_of

    ds = deepspeed_of(model)
    if ds is not None:
        sd = ds.full_state_dict()
    else:
        sd = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    for name in getattr(model, "_rspo_tied", ()):
        sd.pop(name, None)
    return sd


def release(model: torch.nn.Module) -> list:
    """Undo a DeepSpeed engine around ``model`` once its weights are saved; weak references
    to what must die with the module (for :func:`rspo.modeling.free_memory`)."""
    from rspo.training.deepspeed import deepspeed_of

    ds = deepspeed_of(model)
    return ds.release() if ds is not None else []


def save_fsdp_state(
    state_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    dist: DistContext,
) -> None:
    """Gather the sharded weights and optimizer state to rank 0's CPU and write them as one
    process would (:func:`rspo.training.checkpoint.write_train_state`): safetensors, and
    resumable with any number of processes or engine. Every rank must call it; an error
    writing on rank 0 is raised on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from rspo.training.checkpoint import trainable_parameters, write_train_state

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, osd = get_state_dict(model, optimizer, options=opts)

    def write() -> None:  # rank 0 holds the full state
        for name in getattr(model, "_rspo_tied", ()):
            weights.pop(name, None)
        index = {n: i for i, n in enumerate(trainable_parameters(model))}
        state = {index[fqn]: st for fqn, st in osd["state"].items()}
        groups = [{**g, "params": [index[f] for f in g["params"]]} for g in osd["param_groups"]]
        write_train_state(state_dir, weights, state, groups, step, {})

    dist.from_main(write)


def load_fsdp_optimizer(
    found: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: DistContext
) -> int:
    """Load a saved optimizer state into the sharded optimizer (rank 0 reads the file, then
    sends each rank its shards); the step it was saved after. Weights are loaded before
    sharding. An error reading on rank 0 is raised on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from rspo.training.checkpoint import read_train_state, trainable_parameters

    osd: dict = {}

    def read() -> int:
        meta, state = read_train_state(found)
        names = list(trainable_parameters(model))
        osd["state"] = {names[i]: st for i, st in state.items()}
        osd["param_groups"] = [
            {**g, "params": [names[i] for i in g["params"]]} for g in meta["param_groups"]
        ]
        return int(meta["step"])

    step = dist.from_main(read)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, optimizer, osd, options=opts)
    return step
