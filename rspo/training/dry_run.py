"""``rspo train --dry-run``: one step at the longest sequences a run can see, to surface OOM early.

Runs the real code paths on random token ids of the maximum lengths
(``data.max_prompt_length`` prompt + ``generation.max_new_tokens`` response) with the
judges loaded (they stay resident during a run): a forced full-length HF generate call of
``generation.batch_size`` sequences, the π_t/π_ref scoring pass, and one optimizer step on a
worst-case micro-batch (every sample from another prompt, so each brings its K π_ref
samples when the regularizer needs them). A π_ref the run would hold
(``model.keep_reference``) is held through every phase. Reports peak memory and timings;
writes nothing.
Launch it exactly like the run (same accelerate config and process count).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from rspo.config import Config, ConfigError, check_trainable, evaluation_judge
from rspo.distributed import init_distributed, quiet_deepspeed_on_cpu
from rspo.modeling import (
    batched_sequence_logprobs,
    holds_reference,
    load_configured,
    load_tokenizer,
    load_trainable,
    use_packing,
)
from rspo.objectives import RSPOLoss
from rspo.training.deepspeed import DeepSpeedPolicy
from rspo.training.fsdp import check_launch, engine_label, shard_policy, training_engine
from rspo.training.trainer import RefExample, TrainExample, accumulate_gradients, build_optimizer
from rspo.utils.hf_config import context_length


def check_context(model: torch.nn.Module, cfg: Config) -> int:
    """The longest sequence the run builds; a ConfigError if it exceeds the model's context."""
    longest = cfg.data.max_prompt_length + max(
        cfg.generation.max_new_tokens,
        cfg.evaluation.max_new_tokens if cfg.evaluation.enabled else 0,
    )
    ctx = context_length(model.config)  # as the run checks it (rope scaling extends it)
    if ctx is not None and longest > ctx:
        raise ConfigError(
            f"data.max_prompt_length ({cfg.data.max_prompt_length}) + the longest response "
            f"(generation.max_new_tokens {cfg.generation.max_new_tokens}, evaluation."
            f"max_new_tokens {cfg.evaluation.max_new_tokens}) = {longest} tokens exceeds the "
            f"context of {cfg.model.path} ({ctx} tokens: max_position_embeddings, extended "
            "by any rope scaling); lower them"
        )
    return longest


class _Peak:
    """Peak memory per phase: CUDA max_memory_allocated, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device  # e.g. cuda:1 in a single process: its counters, not cuda:0's
        self.cuda = device.type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "process peak RSS"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _random_ids(n: int, length: int, vocab: int, g: torch.Generator) -> list[list[int]]:
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def dry_run(cfg: Config) -> dict[str, Any]:
    """Generate, score and take one optimizer step at maximum lengths; return memory and times."""
    dist = init_distributed(cfg.model.device)
    device = dist.device(cfg.model.device)
    quiet_deepspeed_on_cpu(device)
    check_trainable(cfg)
    engine = training_engine(dist)
    check_launch(cfg, engine, dist.world_size)  # what the real run would refuse, refused here
    fsdp = engine == "fsdp"
    m, o, tr = cfg.model, cfg.objective, cfg.training
    peak, phases = _Peak(device), {}

    def phase(name: str, fn):
        peak.start()
        t0 = time.perf_counter()
        out = fn()
        if peak.cuda:
            torch.cuda.synchronize(device)
        phases[name] = {"seconds": time.perf_counter() - t0, "peak_memory_bytes": peak.read()}
        return out

    tok = load_tokenizer(m.path, m.trust_remote_code)
    model, judges = phase("load", lambda: _load(cfg, device))
    check_context(model, cfg)
    # (an odd micro-batch under a pair loss was refused by the config's validation)
    loss_fn = RSPOLoss(o.eta, o.regularizer or None, o.coef, o.loss_type, o.tau, o.is_clip)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    P, R, K = cfg.data.max_prompt_length, cfg.generation.max_new_tokens, cfg.generation.num_samples
    mb, pad = tr.micro_batch_size, tok.pad_token_id
    vocab = min(model.config.vocab_size, len(tok))
    g = torch.Generator().manual_seed(cfg.run.seed + dist.rank)

    # π_ref as the run holds it (model.keep_reference): resident through generation and
    # training; otherwise loaded for scoring only (the policy itself when it is π_ref)
    same_ref = not m.ref_path or m.ref_path == m.path
    held = None
    if m.lora is None and m.keep_reference != "off":
        probe = model if same_ref else load_configured(m.ref_path, m, device)
        if holds_reference(m.keep_reference, cfg.generation.backend, probe, device):
            held = probe if not same_ref else load_configured(m.path, m, device)
        del probe
    if cfg.generation.backend == "hf":
        phase("generate", lambda: _generate_full(model, tok, cfg, vocab, g))
    prompts = _random_ids(mb, P, vocab, g)
    resps = _random_ids(mb, R, vocab, g)
    n_ref = mb * K if loss_fn.needs_ref_samples else 0
    ref_prompts = [p for p in prompts for _ in range(K)][:n_ref]
    ref_resps = _random_ids(n_ref, R, vocab, g)

    packing = use_packing(model, tr.packing, pad)  # as the run would (probed before sharding)

    def score() -> tuple[list[float], list[float], list[float]]:
        lp_t = batched_sequence_logprobs(model, prompts, resps, pad, mb, packing)
        ref = held if held is not None else model
        if held is None and not same_ref:
            ref = load_configured(m.ref_path, m, device)
        lp_ref = batched_sequence_logprobs(ref, prompts, resps, pad, mb, packing)
        lr = (
            batched_sequence_logprobs(ref, ref_prompts, ref_resps, pad, mb, packing)
            if n_ref
            else []
        )
        del ref
        return lp_t, lp_ref, lr

    lp_t, lp_ref, lr = phase("score", score)
    examples = [
        TrainExample(p, r, 0.25 + 0.5 * (i % 2), a, b, i, 1 - 2 * (i % 2))
        for i, (p, r, a, b) in enumerate(zip(prompts, resps, lp_t, lp_ref))
    ]
    refs: dict[int, list[RefExample]] = {}
    for j, (p, r, v) in enumerate(zip(ref_prompts, ref_resps, lr)):
        refs.setdefault(j // K, []).append(RefExample(p, r, v, j // K))
    model.train()

    def step() -> dict[str, float]:
        if fsdp:
            shard_policy(model)
        optimizer = build_optimizer(model, tr)
        ds = DeepSpeedPolicy(model, optimizer, tr, dist) if engine == "deepspeed" else None
        totals = accumulate_gradients(
            ds.forward_model if ds is not None else model,
            examples,
            list(range(mb)),
            loss_fn,
            mb,
            pad,
            refs,
            loss_fn.pairwise,
            packing=packing,
            backward=ds.backward if ds is not None else None,
        )
        if ds is not None:
            ds.step()
            ds.release()
            return totals
        if not fsdp:
            dist.all_reduce_grads(list(model.parameters()))
        if tr.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return totals

    totals = phase("train_step", step)
    peak_bytes = max(v["peak_memory_bytes"] for v in phases.values())
    per_rank = dist.all_gather(peak_bytes)
    steps_per_batch = max(1, tr.batch_size // (mb * dist.world_size))
    return {
        "device": str(device),
        "world_size": dist.world_size,
        "engine": engine_label(engine, dist.world_size),
        "dtype": m.dtype,
        "lora": m.lora is not None,
        "load_in_4bit": m.load_in_4bit,
        "gradient_checkpointing": tr.gradient_checkpointing,
        "trainable_parameters": n_trainable,
        "prompt_tokens": P,
        "response_tokens": R,
        "micro_batch_size": mb,
        "packing": packing,
        "ref_sequences_in_micro_batch": n_ref,
        "reference_held": held is not None,  # model.keep_reference: in every phase's peak
        "generate_batch": cfg.generation.batch_size if "generate" in phases else 0,
        "memory_kind": peak.kind,
        "peak_memory_bytes": max(per_rank),  # the largest over ranks
        "peak_memory_gib": round(max(per_rank) / 2**30, 3),
        "peak_memory_bytes_per_rank": per_rank,
        "phases": phases,  # rank 0's
        "step_time_s": phases["train_step"]["seconds"],
        # micro-batches per optimizer step per rank x one micro-batch's time (upper bound)
        "est_optimizer_step_s": steps_per_batch * phases["train_step"]["seconds"],
        "judges_loaded": len(judges),
        "loss": totals.get("loss"),
    }


def _load(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, list[Any]]:
    """The policy as the run trains it (LoRA adapters on a frozen, maybe 4-bit, base; gradient
    checkpointing) and the judges it keeps resident (training judge, evaluation judge)."""
    from rspo.judges import build_judge

    m, lora = cfg.model, None
    if m.lora is not None:  # the base (4-bit with load_in_4bit) under fresh adapters
        from rspo.training.peft import LoraPolicy

        lora = LoraPolicy(m, cfg.run.seed, device)
    model = load_trainable(m.path, m, device, cfg.training.gradient_checkpointing, lora)
    judges = [build_judge(cfg.judge.name, **cfg.judge.kwargs)]
    if cfg.evaluation.enabled:
        name, kwargs = evaluation_judge(cfg)
        judges.append(build_judge(name, **kwargs))
    return model, judges


@torch.no_grad()
def _generate_full(model, tok, cfg: Config, vocab: int, g: torch.Generator) -> None:
    """One generate call of ``generation.batch_size`` max-length prompts, forced to full length."""
    from transformers import GenerationConfig

    n, P, R = cfg.generation.batch_size, cfg.data.max_prompt_length, cfg.generation.max_new_tokens
    if cfg.evaluation.enabled:  # evaluation samples with the same batch, maybe longer
        R = max(R, cfg.evaluation.max_new_tokens)
    ids = torch.tensor(_random_ids(n, P, vocab, g), device=next(model.parameters()).device)
    model.eval()
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_config=GenerationConfig(
            do_sample=False,
            max_new_tokens=R,
            min_new_tokens=R,  # EOS suppressed: every sequence runs to the cap
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        ),
    )
