"""Train π_{t+1} from π_t on one iteration's dataset with the RSPO loss.

Log-probs under π_t and π_ref are precomputed, so only the trained model is in memory.
Per-sample loss terms are summed and divided by the global batch counts, so the loss and
its gradient do not depend on how a batch is split into micro-batches or over data-parallel
ranks (each rank takes a contiguous slice of every global batch; gradients are summed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rspo.config import TrainingConfig
from rspo.distributed import DistContext
from rspo.modeling import sequence_logprobs, use_packing
from rspo.objectives import RSPOLoss, SampleBatch
from rspo.training.checkpoint import (
    load_model_state,
    load_train_state,
    recover_state_dir,
    save_train_state,
    trainable_parameters,
)
from rspo.training.deepspeed import DeepSpeedPolicy
from rspo.training.fsdp import (
    load_fsdp_optimizer,
    save_fsdp_state,
    shard_policy,
    training_engine,
)
from rspo.utils.seeds import derive_seed


@dataclass
class TrainExample:
    """One response y ~ π_t with its win rate and precomputed log-probs."""

    prompt_ids: list[int]
    response_ids: list[int]
    win_rate: float
    logp_t: float
    logp_ref: float
    group: int  # prompt index
    label: int = 0  # +1 chosen / -1 rejected for pair losses


@dataclass
class RefExample:
    """A response y' ~ π_ref (forward-KL NLL estimator) with its reference log-prob."""

    prompt_ids: list[int]
    response_ids: list[int]
    logp_ref: float
    group: int


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW or RMSprop over the trainable parameters, in the order saved states index them."""
    params = list(trainable_parameters(model).values())
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batches(n_units: int, unit: int, cfg: TrainingConfig, seed: int) -> list[list[int]]:
    """Unit indices per optimizer step over all epochs (seeded shuffle per epoch)."""
    per_step = max(1, cfg.batch_size // unit)
    out = []
    for epoch in range(cfg.epochs):
        g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        order = torch.randperm(n_units, generator=g).tolist()
        out += [order[s : s + per_step] for s in range(0, n_units, per_step)]
    return out


def train_policy(
    model: torch.nn.Module,
    examples: Sequence[TrainExample],
    loss_fn: RSPOLoss,
    cfg: TrainingConfig,
    seed: int,
    pad_id: int,
    state_dir: Path | None = None,
    ref_examples: Sequence[RefExample] = (),
    log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run the optimizer over ``examples``; resumes from ``state_dir`` if it holds a state
    (``on_resume`` gets the step training starts after, 0 for a fresh start, before any step).

    Pair losses (``sppo_hard``, ``inpo``) expect ``examples`` ordered as (chosen, rejected)
    pairs; the pairs are never split across micro-batches. With ``dist`` (several ranks,
    same model and data on each) every rank trains on its slice of each global batch, the
    summed gradients make the optimizer step identical everywhere, and rank 0 saves state.
    """
    dist = dist or DistContext()
    pairwise = loss_fn.loss_type in ("sppo_hard", "inpo")
    unit = 2 if pairwise else 1
    if pairwise and (len(examples) % 2 or cfg.micro_batch_size % 2):
        raise ValueError("pair losses need an even number of examples and an even micro_batch_size")
    if not examples:  # e.g. every prompt tied under a pair loss: nothing to train on
        return {}
    if loss_fn.needs_ref_samples and not ref_examples:
        raise ValueError("the regularizer's estimator needs samples from π_ref, none were given")
    ref_by_group: dict[int, list[RefExample]] = {}
    for r in ref_examples:
        ref_by_group.setdefault(r.group, []).append(r)

    engine = training_engine(dist)
    fsdp = engine == "fsdp"
    sharded = engine in ("fsdp", "deepspeed")  # every rank must run the same passes
    packing = use_packing(model, cfg.packing, pad_id)  # probed before sharding
    if dist.enabled:  # all ranks must agree: a packed micro-batch is one forward, not two
        packing = dist.sum_floats({"p": float(packing)})["p"] == dist.world_size
    found = None if state_dir is None else dist.from_main(recover_state_dir, state_dir)
    if found is not None:  # every rank, before sharding: the saved full weights
        load_model_state(found, model)
    if fsdp:
        shard_policy(model)
    optimizer = build_optimizer(model, cfg)
    ds = DeepSpeedPolicy(model, optimizer, cfg, dist) if engine == "deepspeed" else None
    start = 0
    if found is not None:  # one format for all engines: any of them, any world size, resumes
        if ds is not None:
            start = ds.load_state(found)
        elif fsdp:
            start = load_fsdp_optimizer(found, model, optimizer, dist)
        else:
            start = load_train_state(found, optimizer)["step"]
    if on_resume is not None:
        on_resume(start)
    steps = _batches(len(examples) // unit, unit, cfg, seed)
    restore = disable_dropout(model) if cfg.disable_dropout else []
    model.train()
    last: dict[str, float] = {}
    for step in range(start, len(steps)):
        # dropout (a LoRA adapter's, or training.disable_dropout off) draws from a generator
        # seeded per step and rank: a run resumed after step k draws what it would have
        torch.manual_seed(derive_seed(seed, "step", step, dist.rank))
        idx = [u * unit + j for u in steps[step] for j in range(unit)]
        totals = accumulate_gradients(
            ds.forward_model if ds is not None else model,
            examples,
            idx,
            loss_fn,
            cfg.micro_batch_size,
            pad_id,
            ref_by_group,
            pairwise,
            shard=(dist.rank, dist.world_size),
            lockstep=sharded,
            packing=packing,
            backward=ds.backward if ds is not None else None,
        )
        if dist.enabled:
            if not sharded:  # FSDP and DeepSpeed reduce-scatter (sum) during backward
                dist.all_reduce_grads(list(model.parameters()))
            totals = _reduce_totals(totals, dist)
        if ds is not None:  # clips, steps and zeroes the partitioned gradients
            gnorm = ds.step()
        elif fsdp:  # DTensor norm over all shards; inf = measure without clipping
            gnorm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.max_grad_norm or float("inf")
            ).full_tensor()
        else:
            gnorm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if cfg.max_grad_norm
                else torch.sqrt(
                    sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None)
                )
            )
        if ds is None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        last = {"step": step + 1, **totals, "grad_norm": float(gnorm)}
        if not math.isfinite(last.get("loss", 0.0)):
            raise FloatingPointError(
                f"training loss is {last['loss']} at step {step + 1}; lower lr or eta"
            )
        if log is not None:
            log(last)
        if (
            state_dir is not None
            and cfg.save_steps
            and (step + 1) % cfg.save_steps == 0
            and step + 1 < len(steps)
        ):
            if ds is not None:  # collectives: gathered to rank 0, written as one process would
                ds.save_state(state_dir, step + 1)
            elif fsdp:
                save_fsdp_state(state_dir, model, optimizer, step + 1, dist)
            else:  # rank 0 writes; its error is raised everywhere
                dist.from_main(save_train_state, state_dir, model, optimizer, step + 1, {})
        if on_step is not None:
            on_step(step + 1)
    model.eval()
    for conf, attr, value in restore:  # the saved config keeps the checkpoint's values
        setattr(conf, attr, value)
    if not sharded:
        dist.check_in_sync(model, "trained policy")
    return last


DROPOUT_MODULES = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


def _dropout_like(attr: str, value: Any) -> bool:
    return (
        isinstance(value, float)
        and value > 0
        and any(k in attr for k in ("dropout", "pdrop", "jitter"))
    )


def disable_dropout(model: torch.nn.Module) -> list[tuple[Any, str, float]]:
    """Zero the dropout probabilities and router-noise levels inside ``model``: modules,
    float attributes such as ``attention_dropout`` or ``jitter_noise`` that forwards read
    when training, and the same settings of its config (some models read them there at
    every forward); not a LoRA adapter's own ``lora_dropout``. Returns the config values
    it changed as (config, attribute, value), for the caller to put back before saving."""
    for name, m in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(m, DROPOUT_MODULES) and m.p > 0:
            m.p = 0.0
        for attr, v in list(vars(m).items()):
            if _dropout_like(attr, v):
                setattr(m, attr, 0.0)
    changed: list[tuple[Any, str, float]] = []
    conf = getattr(model, "config", None)
    for c in {id(x): x for x in (conf, getattr(conf, "get_text_config", lambda: None)())}.values():
        if c is None:
            continue
        for attr, v in list(vars(c).items()):
            if _dropout_like(attr, v):
                changed.append((c, attr, v))
                setattr(c, attr, 0.0)
    return changed


def shard_positions(n_units: int, unit: int, rank: int, world: int) -> list[int]:
    """Positions (of ``n_units * unit``) in rank ``rank``'s contiguous slice of a global batch.

    Units (single samples, or chosen/rejected pairs) are split as evenly as possible,
    the first ``n_units % world`` ranks taking one more.
    """
    base, extra = divmod(n_units, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return list(range(start * unit, stop * unit))


def accumulate_gradients(
    model: torch.nn.Module,
    examples: Sequence[TrainExample],
    idx: Sequence[int],
    loss_fn: RSPOLoss,
    micro_batch_size: int,
    pad_id: int,
    ref_by_group: dict[int, list[RefExample]] | None = None,
    pairwise: bool = False,
    shard: tuple[int, int] = (0, 1),
    lockstep: bool = False,
    packing: bool = False,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Backward the loss of the global batch ``idx`` in micro-batches; returns its metrics.

    Each micro-batch's per-sample terms are divided by the global counts, so the
    accumulated gradient equals the full-batch gradient whatever ``micro_batch_size`` is.
    A prompt's π_ref samples go with the micro-batch holding its first policy sample.
    ``shard=(rank, world)``: only this rank's slice of ``idx`` is run; the metrics are its
    share (they add up over ranks). ``lockstep`` (FSDP, DeepSpeed): every rank runs as many
    forward and backward passes as rank 0, padding with zero-weighted one-token passes.
    ``packing``: one prefix-shared forward per micro-batch, π_ref samples packed with the
    policy samples. ``backward``: how a loss is back-propagated (default ``loss.backward()``).
    """
    backward = backward or torch.Tensor.backward
    device = next(model.parameters()).device
    ref_by_group = ref_by_group or {}
    unit = 2 if pairwise else 1
    first: dict[int, int] = {}  # group -> position of its first sample in the global batch
    for pos, i in enumerate(idx):
        first.setdefault(examples[i].group, pos)
    n_ref = sum(len(ref_by_group.get(g, [])) for g in first)
    mine = shard_positions(len(idx) // unit, unit, *shard)
    micro_pos = [mine[s : s + micro_batch_size] for s in range(0, len(mine), micro_batch_size)]
    micro = [[idx[p] for p in m] for m in micro_pos]
    ref_micro: list[list[RefExample]] = []
    for m in micro_pos:
        refs: list[RefExample] = []
        for p in m:
            g = examples[idx[p]].group
            if first[g] == p:
                refs += ref_by_group.get(g, [])
        ref_micro.append(refs)
    totals: dict[str, float] = {}
    for m, refs in zip(micro, ref_micro):
        ex = [examples[i] for i in m]
        seqs: list[TrainExample | RefExample] = list(ex)
        if packing and loss_fn.needs_ref_samples:
            seqs += refs  # same prompts: one packed forward for both
        lp_all = sequence_logprobs(
            model,
            [e.prompt_ids for e in seqs],
            [e.response_ids for e in seqs],
            pad_id,
            packing,
        )
        lp = lp_all[: len(ex)]
        dtype = lp.dtype

        def t(vals: list[float], dtype=dtype) -> torch.Tensor:
            return torch.tensor(vals, dtype=dtype, device=device)

        batch = SampleBatch(
            logp_theta=lp,
            logp_t=t([e.logp_t for e in ex]),
            logp_ref=t([e.logp_ref for e in ex]),
            win_rate=t([e.win_rate for e in ex]),
            label=t([e.label for e in ex]) if pairwise else None,
        )
        if loss_fn.needs_ref_samples and refs:
            batch.ref_logp_theta = (
                lp_all[len(ex) :]
                if packing
                else sequence_logprobs(
                    model, [r.prompt_ids for r in refs], [r.response_ids for r in refs], pad_id
                )
            )
            batch.ref_logp_ref = t([r.logp_ref for r in refs])
        loss, metrics = loss_fn(
            batch,
            num_samples=len(idx),
            num_ref_samples=n_ref if loss_fn.needs_ref_samples else None,
        )
        if lockstep and loss_fn.needs_ref_samples and not refs and not packing:
            loss = loss + _padding_pass(model, pad_id)  # (packed: one forward either way)
        backward(loss)
        for k, v in metrics.items():  # *_mean weighted by the micro-batch's share
            _combine(totals, k, float(v) * (len(m) / len(idx) if k.endswith("_mean") else 1.0))
    if lockstep:  # rank 0 holds the longest slice
        most = len(shard_positions(len(idx) // unit, unit, 0, shard[1]))
        for _ in range(len(micro), -(-most // micro_batch_size)):
            loss = _padding_pass(model, pad_id)
            if loss_fn.needs_ref_samples and not packing:
                loss = loss + _padding_pass(model, pad_id)
            backward(loss)
    return totals


def _combine(totals: dict[str, float], k: str, v: float) -> None:
    """Add one part of a step's metric: *_max take the maximum, the rest (loss terms, shares
    of a mean) add up."""
    totals[k] = max(totals.get(k, -math.inf), v) if k.endswith("_max") else totals.get(k, 0.0) + v


def _reduce_totals(totals: dict[str, float], dist: DistContext) -> dict[str, float]:
    """A step's metrics over ranks, combined as over micro-batches."""
    out: dict[str, float] = {}
    for d in dist.all_gather(totals):
        for k, v in d.items():
            _combine(out, k, v)
    return out


def _padding_pass(model: torch.nn.Module, pad_id: int) -> torch.Tensor:
    """A one-token forward times 0: a rank with less data keeps FSDP's collectives in step."""
    lp = sequence_logprobs(model, [[pad_id]], [[pad_id]], pad_id)
    return lp.sum() * 0.0
