"""Stage 1, generate: K seeded samples per prompt from a policy, as run-dir records.

Each sequence has its own seed, derived from (run seed, tag, prompt index, sample index),
so samples do not depend on batching or on where a resumed run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rspo.generation import SamplingParams
from rspo.modeling import resolve_dtype
from rspo.utils.seeds import derive_seed

if TYPE_CHECKING:
    from rspo.config import Config
    from rspo.selfplay.ops import ModelOps


def sampling_params(cfg: Config) -> SamplingParams:
    """The training samples' settings (``generation.*``)."""
    g = cfg.generation
    return SamplingParams(g.max_new_tokens, g.temperature, g.top_p, g.top_k)


def records_logprobs(cfg: Config, device: torch.device) -> bool:
    """``generation.logprobs``: record log π_t while sampling (HF backend; auto = float32)."""
    g, m = cfg.generation, cfg.model
    if g.logprobs == "off" or g.backend != "hf":
        return False
    return g.logprobs == "on" or resolve_dtype(m.dtype, device) == torch.float32


def sample_records(
    ops: ModelOps,
    path: str,
    prompt_ids: list[list[int]],
    idx: list[int],
    k: int,
    seed_parts: tuple,
    params: SamplingParams,
    unit: int | None = None,
    logprobs: bool = False,
) -> list[dict[str, Any]]:
    """``k`` samples from the policy at ``path`` per prompt index of ``idx``, as records
    ``{"prompt_index", "responses": [{"ids", "text", "finished"}, ...]}``; sequence j of
    prompt i is seeded ``seed_parts + (i, j)``. With ``logprobs`` each response also carries
    ``logp`` = log π(response) at sampling. ``unit``: sequences per generate call."""
    ids = [prompt_ids[i] for i in idx for _ in range(k)]
    seeds = [derive_seed(*seed_parts, i, j) for i in idx for j in range(k)]
    comps = ops.sample(path, ids, seeds, params, unit, logprobs)

    def rec(c) -> dict[str, Any]:
        r = {"ids": c.ids, "text": c.text, "finished": c.finished}
        if logprobs and c.logprob is not None:
            r["logp"] = c.logprob
        return r

    return [
        {"prompt_index": i, "responses": [rec(c) for c in comps[n * k : (n + 1) * k]]}
        for n, i in enumerate(idx)
    ]
