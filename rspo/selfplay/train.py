"""Stage 4, train: π_{t+1} from π_t on the scored training set, saved as a checkpoint."""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rspo.modeling import free_memory, quiet_weight_bars
from rspo.objectives import RSPOLoss
from rspo.training.fsdp import full_state_dict, is_sharded, release
from rspo.training.trainer import RefExample, TrainExample, train_policy
from rspo.utils.io import writing

if TYPE_CHECKING:
    from rspo.config import Config, ObjectiveConfig
    from rspo.distributed import DistContext
    from rspo.selfplay.models import PolicyModels


def make_loss(objective: ObjectiveConfig, coef: float) -> RSPOLoss:
    """The RSPO loss of ``objective.*`` with regularization coefficient ``coef``."""
    o = objective
    return RSPOLoss(
        eta=o.eta,
        regularizer=o.regularizer or None,
        coef=coef,
        loss_type=o.loss_type,
        tau=o.tau,
        log_clip=o.is_clip,
    )


def training_examples(
    data: dict[str, Any], prompt_ids: list[list[int]]
) -> tuple[list[TrainExample], list[RefExample]]:
    """The trainer's examples from dataset.json's rows (π_t's samples, π_ref's samples)."""
    P = prompt_ids
    ex = [
        TrainExample(
            P[r["prompt_index"]],
            r["response_ids"],
            r["win_rate"],
            r["logp_t"],
            r["logp_ref"],
            r["prompt_index"],
            r["label"],
        )
        for r in data["examples"]
    ]
    refs = [
        RefExample(P[r["prompt_index"]], r["response_ids"], r["logp_ref"], r["prompt_index"])
        for r in data["ref_examples"]
    ]
    return ex, refs


def train_iteration(
    cfg: Config,
    models: PolicyModels,
    tok: Any,
    policy: str,
    data: dict[str, Any],
    prompt_ids: list[list[int]],
    loss_fn: RSPOLoss,
    seed: int,
    out: Path,
    *,
    log: Callable[[dict[str, Any]], Any] | None,
    on_step: Callable[[int], None],
    on_resume: Callable[[int], None],
    dist: DistContext,
) -> dict[str, float]:
    """Train the policy at ``policy`` (π_t) on ``data`` (dataset.json) with ``loss_fn`` (or
    its λ adapted by the score stage) and save it as ``out/checkpoint``; training state is
    saved in ``out/train_state`` until then. Returns the last step's metrics."""
    ex, refs = training_examples(data, prompt_ids)
    model = models.trainable(policy)
    torch.manual_seed(seed)
    if data.get("coef", cfg.objective.coef) != cfg.objective.coef:
        loss_fn = make_loss(cfg.objective, data["coef"])
    last = train_policy(
        model,
        ex,
        loss_fn,
        cfg.training,
        seed,
        tok.pad_token_id,
        state_dir=out / "train_state",
        ref_examples=refs,
        log=log,
        on_step=on_step,
        dist=dist,
        on_resume=on_resume,
    )
    state = full_state_dict(model) if is_sharded(model) else None  # a collective
    dist.main_only(save_checkpoint, out, model, tok, state)
    if is_sharded(model):  # FSDP2 / DeepSpeed: free it all before the next generation
        gone = [*release(model), weakref.ref(model)]  # DeepSpeed: engine, optimizer
        del model
        free_memory(gone)  # sharded modules and engines hold reference cycles
    else:
        models.keep(str(out / "checkpoint"), model)  # = what a reload would give
    return last


def save_checkpoint(out: Path, model: Any, tok: Any, state: dict | None = None) -> None:
    """Swap in ``out/checkpoint`` atomically; drop the training state (rank 0)."""
    ck = out / "checkpoint"
    tmp = ck.with_name("checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # a full disk names the checkpoint and leaves no .tmp; no "Writing model shards" bar
    with writing(tmp, cleanup=tmp), quiet_weight_bars():
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tok.save_pretrained(tmp)
    shutil.rmtree(ck, ignore_errors=True)
    tmp.rename(ck)
    shutil.rmtree(out / "train_state", ignore_errors=True)
