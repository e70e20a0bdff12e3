"""A sampling loop over a Hugging Face model's KV cache that drops finished rows.

``model.generate`` keeps every row of a batch until the last one stops, so a batch whose
responses end after 20 tokens but one runs to 48 pays 48 full-width steps. This loop
calls the same model forward with a ``DynamicCache`` and removes rows from the cache as
they emit EOS (``batch_select_indices``), so a step costs only the rows still running.
Tokens come from the same seeded sampler as the ``generate`` path; whether a model is
driven correctly is checked once per model against ``generate`` (:func:`decode_supported`).
A prompt that appears several times in a batch (K samples per prompt) is prefilled once
and its cache rows copied. Decode steps of SDPA models hand the attention its 4-D boolean
mask directly (one query row per sequence: the 2-D mask itself) while some running row has
padding, so transformers does not rebuild it every step (8% of the gym's generation time),
where a second probe shows the same tokens. Without padding the 2-D mask goes in and
transformers drops it, keeping SDPA's unmasked kernels. Models with local layers, or that
derive more than the mask from it (ALiBi biases), always get the 2-D mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def decode(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    sampler,
    max_new_tokens: int,
    eos: int | Sequence[int],
    step_mask_4d: bool = False,
) -> tuple[list[list[int]], list[bool], list[float]]:
    """Sample up to ``max_new_tokens`` per left-padded row, a row ending at its first stop
    token (``eos``: one id or several); tokens (the stop token included when produced),
    finished flags and summed untempered log-probs per row. ``step_mask_4d``: decode steps
    pass the mask as (rows, 1, 1, keys) booleans (see :func:`step_mask_4d_supported`)."""
    from transformers import DynamicCache

    from rspo.forward import forward_accepts

    stops = {eos} if isinstance(eos, int) else set(eos)
    n = ids.shape[0]
    device = ids.device
    cache = DynamicCache(config=model.config)
    # transformers >= 5.24 calls it ``cache``; older versions ``past_key_values``
    kv = "cache" if forward_accepts(model, "cache") else "past_key_values"
    keep = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    # a prompt sampled K times is prefilled once and its cache rows repeated
    first, copies = _shared_rows(ids, attn)
    pos = (attn[first].cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=ids[first],
        attention_mask=attn[first],
        position_ids=pos,
        **{kv: cache},
        use_cache=True,
        **keep,
    )
    logits = out.logits[:, -1].float()
    if len(first) < n:
        cache.batch_select_indices(copies)
        logits = logits[copies]
    rows = torch.arange(n)  # original index of each cache row
    next_pos = attn.sum(-1)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    logp = torch.zeros(n, dtype=torch.float64)
    # without padding transformers passes no mask at all (SDPA's unmasked kernels: flash,
    # GQA): a 4-D mask is given only while a running row has padding (never regained)
    padded = step_mask_4d and not bool(attn.all())
    for step in range(max_new_tokens):
        pick, lp = sampler.choose(logits, rows)
        logp[rows] += lp.cpu()
        picked = pick.tolist()
        for r, tok in zip(rows.tolist(), picked):
            tokens[r].append(tok)
            finished[r] = tok in stops
        if step == max_new_tokens - 1:
            break
        keep = [j for j, tok in enumerate(picked) if tok not in stops]
        if not keep:
            break
        if len(keep) < len(picked):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            attn, next_pos, pick = attn[sel], next_pos[sel], pick[sel]
            rows = rows[sel.cpu()]
            padded = padded and not bool(attn.all())
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        out = model(
            input_ids=pick[:, None],
            attention_mask=attn.bool()[:, None, None, :] if padded else attn,
            position_ids=next_pos[:, None],
            **{kv: cache},
            use_cache=True,
        )
        next_pos = next_pos + 1
        logits = out.logits[:, -1].float()
    return tokens, finished, logp.tolist()


def _takes_step_mask(model) -> bool:
    """Whether a decode step may pass its mask as (rows, 1, 1, keys) booleans: SDPA models
    whose layers all attend to the whole prefix (a window or chunk would be dropped)."""
    from rspo.packing import attention_implementation, has_local_layers

    return attention_implementation(model) == "sdpa" and not has_local_layers(model)


def _shared_rows(ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first occurrence of each distinct (ids, mask) row, and for every row
    the position of its distinct row among them."""
    seen: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    copies: list[int] = []
    for i, (row, mask) in enumerate(zip(ids.tolist(), attn.tolist())):
        key = tuple(t if m else -1 for t, m in zip(row, mask))
        j = seen.setdefault(key, len(first))
        if j == len(first):
            first.append(i)
        copies.append(j)
    return (torch.tensor(first, device=ids.device), torch.tensor(copies, device=ids.device))


def decode_supported(model, eos: int, pad: int) -> bool:
    """Whether :func:`decode` gives ``generate``'s greedy tokens on a probe (answered once per
    model structure): prompts of different lengths, one left-padded, one repeated (shared
    prefill)."""
    from rspo.forward import cached_probe

    return cached_probe(model, "decode", lambda: _probe(model, eos, pad), (eos, pad))


def step_mask_4d_supported(model, eos: int, pad: int) -> bool:
    """Whether :func:`decode` may pass 4-D step masks: an SDPA model with no local layers
    whose probe gives ``generate``'s tokens that way too (once per model structure)."""
    from rspo.forward import cached_probe

    return _takes_step_mask(model) and cached_probe(
        model, "decode_mask_4d", lambda: _probe(model, eos, pad, True), (eos, pad)
    )


def _probe(model, eos: int, pad: int, step_mask_4d: bool = False) -> bool:
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    from transformers import GenerationConfig

    from rspo.generation.base import SamplingParams, until_eos
    from rspo.generation.sampler import SeededGumbelSampler, left_pad, plain_generation_config

    vocab = int(getattr(model.config, "vocab_size", 2))
    device = next(model.parameters()).device
    prompts = [[t % vocab for t in (3, 5, 7, 11, 13)], [17 % vocab], [17 % vocab]]
    ids, attn = (x.to(device) for x in left_pad(prompts, pad))
    # (run by cached_probe: eval mode, no grad; an exception = use generate)
    with plain_generation_config(model):
        want = model.generate(
            input_ids=ids,
            attention_mask=attn,
            generation_config=GenerationConfig(
                do_sample=False, max_new_tokens=6, pad_token_id=pad, eos_token_id=eos
            ),
        )[:, ids.shape[1] :].tolist()
    sampler = SeededGumbelSampler([0, 1, 2], SamplingParams(6, 0.0))
    got, _, _ = decode(model, ids, attn, sampler, 6, eos, step_mask_4d)
    return got == [until_eos(r, eos) for r in want]
