"""Prefix-shared packing: score K responses to one prompt in a single row, prompt computed once.

A padded batch of (prompt, response) pairs repeats each prompt K times and pads every
row to the longest pair. Packing instead lays out one *group* per prompt as
``prompt, r_1, ..., r_K`` with position ids restarting after the prompt for every
response and a 4-D attention mask in which a response token sees the prompt and the
earlier tokens of its own response only. A group is split (the prompt repeated) where it
would exceed twice the longest single pair, and groups are placed into rows by first-fit
decreasing, at the row width (one to two longest groups) of least estimated cost: padding
costs the linear layers, width costs attention. The log-probabilities equal the padded
computation's up to float rounding; on the gym's iterations it is about half the tokens
(K = 2). Needs an attention
implementation that takes a custom 4-D mask (``sdpa`` or ``eager``) and a model that
reads ``position_ids``; :func:`packing_supported` checks a model once against the padded
forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rspo.forward import cached_probe, forward_accepts, padded_sequence_logprobs, token_logprobs

#: attention implementations that accept a custom 4-D mask (bool for sdpa, additive for eager)
MASKABLE = ("sdpa", "eager")


@dataclass
class PackedBatch:
    """Row-packed token ids, positions, attention mask and where each response token sits."""

    input_ids: torch.Tensor  # (rows, width)
    position_ids: torch.Tensor  # (rows, width)
    allowed: torch.Tensor  # (rows, 1, width, width) bool: query may attend to key
    src: torch.Tensor  # (n_tokens, 2) row, position whose logits predict the token
    target: torch.Tensor  # (n_tokens,) token id
    owner: torch.Tensor  # (n_tokens,) index of the (prompt, response) pair
    n: int  # number of pairs


def _groups(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], cap: int
) -> tuple[list[list[int]], list[int]]:
    """Pair indices grouped by identical prompt (order of first appearance), and each group's
    length in tokens; a group whose prompt + responses would exceed ``cap`` tokens is split,
    each part repeating the prompt."""
    where: dict[tuple[int, ...], int] = {}
    groups: list[list[int]] = []
    sizes: list[int] = []
    for i, p in enumerate(prompts):
        key = tuple(p)
        g = where.get(key)
        if g is None or sizes[g] + len(responses[i]) > cap:
            where[key] = g = len(groups)
            groups.append([])
            sizes.append(len(p))
        groups[g].append(i)
        sizes[g] += len(responses[i])
    return groups, sizes


def _rows(lengths: Sequence[int], cap: int) -> tuple[list[list[int]], list[int]]:
    """Groups placed into rows of at most ``cap`` tokens by first-fit decreasing: group
    indices per row and each row's fill."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for gi in sorted(range(len(lengths)), key=lambda g: (-lengths[g], g)):
        for r, used in enumerate(fill):
            if used + lengths[gi] <= cap:
                rows[r].append(gi)
                fill[r] += lengths[gi]
                break
        else:
            rows.append([gi])
            fill.append(lengths[gi])
    return rows, fill


#: row widths tried, as multiples of the longest group
WIDTHS = (1.0, 1.125, 1.25, 1.375, 1.5, 1.75, 2.0)


#: a wider layout may hold at most this much more attention (rows x width^2: the 4-D mask,
#: and the scores of implementations that materialise them) than the tightest layout
ATTENTION_SLACK = 1.25


def _layout(lengths: Sequence[int], key_cost: float) -> tuple[list[list[int]], list[int]]:
    """The row layout of least estimated cost ``rows x width x (1 + key_cost x width)``:
    every cell (padding included) costs the per-token linear layers, and attention adds
    ``key_cost`` of that per key of the row. Wider rows waste less padding but attend over
    more keys, so the width is picked among :data:`WIDTHS` x the longest group. The chosen
    layout never has more cells than the tightest one (so no more activation memory), and
    at most :data:`ATTENTION_SLACK` x its rows x width^2."""
    longest = max(lengths)
    best: tuple[float, list[list[int]], list[int]] | None = None
    limit = 0.0
    for cap in sorted({max(longest, int(longest * m)) for m in WIDTHS}):
        rows, fill = _rows(lengths, cap)
        width = max(fill)
        square = len(rows) * width * width
        if best is None:  # the tightest layout (cap = longest group)
            limit = ATTENTION_SLACK * square
        elif square > limit:
            continue
        cost = len(rows) * width * (1.0 + key_cost * width)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, rows, fill)
    assert best is not None
    return best[1], best[2]


def attention_key_cost(config) -> float:
    """Attention cost per key relative to the linear layers' cost per token, from a model
    config: QK^T and AV take 2 x heads x head_dim multiply-adds per key; the q/k/v/o
    projections and a gated MLP take hidden x (2 x heads x head_dim + 2 x kv_heads x head_dim
    + 3 x intermediate) per token (MoE: the experts a token uses). The LM head is left out:
    it runs only where a response token is predicted, whatever the layout. 0 when the config
    does not say (rows then packed as tightly as the widths allow)."""
    cfg = getattr(config, "get_text_config", lambda: config)()
    try:
        h = int(cfg.hidden_size)
        heads = int(getattr(cfg, "num_attention_heads", None) or 1)
        head_dim = int(getattr(cfg, "head_dim", None) or h // heads)
        kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
        moe = getattr(cfg, "moe_intermediate_size", None)
        if moe:
            inter = int(moe) * int(getattr(cfg, "num_experts_per_tok", None) or 1)
        else:
            inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
    except (AttributeError, TypeError, ValueError):  # e.g. per-layer lists: no estimate
        return 0.0
    q = heads * head_dim
    linear = h * (2 * q + 2 * kv * head_dim + 3 * inter)
    return 2.0 * q / linear if linear > 0 else 0.0


def pack(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    key_cost: float | None = None,
) -> PackedBatch:
    """Lay out pairs as prefix-shared groups in rows (first-fit decreasing, deterministic).

    A group holds at most twice the longest single (prompt, response) pair: K long responses
    to one prompt are split into several groups, each repeating the prompt. Attention over a
    packed row also computes the masked-out blocks. With ``key_cost`` (see
    :func:`attention_key_cost`) rows are up to twice the longest group, at the width of least
    estimated cost (:func:`_layout`); without, no longer than the longest group.
    """
    if len(prompts) != len(responses):
        raise ValueError("pack: need one response per prompt")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("pack: every prompt needs at least one token")
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    groups, lengths = _groups(prompts, responses, 2 * longest)
    if key_cost is None:
        rows, fill = _rows(lengths, max(lengths))
    else:
        rows, fill = _layout(lengths, key_cost)
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    src: list[tuple[int, int]] = []
    target: list[int] = []
    owner: list[int] = []
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        at = 0
        for gi in row:
            p = list(prompts[groups[gi][0]])
            P = len(p)
            ids[r, at : at + P] = torch.tensor(p)
            pos[r, at : at + P] = torch.arange(P)
            allowed[r, 0, at : at + P, at : at + P] = causal[:P, :P]
            last_prompt = at + P - 1
            s = at + P
            for i in groups[gi]:
                resp = list(responses[i])
                n = len(resp)
                if n:
                    ids[r, s : s + n] = torch.tensor(resp)
                    pos[r, s : s + n] = torch.arange(P, P + n)
                    allowed[r, 0, s : s + n, at : at + P] = True
                    allowed[r, 0, s : s + n, s : s + n] = causal[:n, :n]
                    src += [(r, last_prompt)] + [(r, s + j) for j in range(n - 1)]
                    target += resp
                    owner += [i] * n
                s += n
            at = s
        for q in range(at, width):  # padding attends to itself (no empty softmax rows)
            allowed[r, 0, q, q] = True
    return PackedBatch(
        ids,
        pos,
        allowed,
        torch.tensor(src, dtype=torch.long).reshape(-1, 2),
        torch.tensor(target, dtype=torch.long),
        torch.tensor(owner, dtype=torch.long),
        len(prompts),
    )


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The attention implementation transformers runs the model with (sdpa, eager, ...)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


def packed_sequence_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """log π(response | prompt) per pair from one prefix-shared packed forward (float32+).

    Same values as :func:`rspo.modeling.sequence_logprobs` up to rounding; gradients flow
    when called outside ``torch.no_grad``.
    """
    impl = attention_implementation(model)
    if impl not in MASKABLE:
        raise ValueError(
            f"packing needs attention implementation sdpa or eager, the model uses {impl!r}; "
            "set training.packing: off"
        )
    device = next(model.parameters()).device
    b = pack(prompts, responses, pad_id, attention_key_cost(model.config))
    mask: torch.Tensor = b.allowed.to(device)
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    # the LM head only where a response token is predicted (not on prompt-only positions)
    used = torch.unique(b.src[:, 1])
    keep = forward_accepts(model, "logits_to_keep")
    logits = model(
        input_ids=b.input_ids.to(device),
        position_ids=b.position_ids.to(device),
        attention_mask=mask,
        **({"logits_to_keep": used.to(device)} if keep else {}),
    ).logits
    col = b.src[:, 1].contiguous()
    if keep and logits.shape[1] == len(used) != b.input_ids.shape[1]:
        col = torch.searchsorted(used, col)
    elif logits.shape[1] != b.input_ids.shape[1]:
        raise ValueError(f"packing: unexpected logits shape {tuple(logits.shape)}")
    src = b.src.to(device)
    picked = logits[src[:, 0], col.to(device)]  # (n_tokens, vocab)
    lp = token_logprobs(picked, b.target.to(device))
    out = torch.zeros(b.n, dtype=lp.dtype, device=device)
    return out.index_add(0, b.owner.to(device), lp)


def has_local_layers(model: torch.nn.Module) -> bool:
    """Whether some layer does not attend to the whole prefix: sliding windows (Mistral v0.1,
    Gemma 2/3), local attention (GPT-Neo), chunked attention (Llama 4) or a non-attention
    layer (recurrent or convolutional hybrids). A packed row's block mask replaces the
    model's own window or chunks, a recurrent layer carries state from one packed sequence
    into the next, and the probe's short sequences could not show either: not packed."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    kinds = [
        str(t)
        for key in ("layer_types", "attention_layers", "layers_block_type")
        for t in (getattr(cfg, key, None) or ())
    ]
    if any(k not in ("full_attention", "global", "attention") for k in kinds):
        return True
    if getattr(cfg, "attention_chunk_size", None):
        return True
    window = getattr(cfg, "sliding_window", None)
    return bool(window) and getattr(cfg, "use_sliding_window", True) is not False


def packing_supported(
    model: torch.nn.Module, pad_id: int, rtol: float = 1e-5, atol: float = 1e-4
) -> bool:
    """Whether packed log-probs match the padded forward on a small probe (once per structure).

    Catches models that take positions from the attention mask instead of ``position_ids``
    or ignore custom masks; models with local, chunked or non-attention layers are refused
    outright (:func:`has_local_layers`). The
    probe has two prompts of different lengths with three and two responses, so both the
    shared prefix and the row packing are exercised.
    """
    return cached_probe(
        model, "packing", lambda: _probe(model, pad_id, rtol, atol), (pad_id, rtol, atol)
    )


def _probe(model: torch.nn.Module, pad_id: int, rtol: float, atol: float) -> bool:
    if attention_implementation(model) not in MASKABLE or has_local_layers(model):
        return False
    vocab = int(getattr(model.config, "vocab_size", 2))
    tok = [t % vocab for t in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)]
    prompts = [tok[:3], tok[:3], tok[:3], tok[2:8], tok[2:8]]
    resps = [tok[4:12], tok[1:8], tok[3:11], tok[:2], tok[5:12]]
    # (run by cached_probe: eval mode, no grad; an exception = cannot take packed input)
    ref = padded_sequence_logprobs(model, prompts, resps, pad_id).double()
    got = packed_sequence_logprobs(model, prompts, resps, pad_id).double()
    wide = next(model.parameters()).dtype in (torch.float32, torch.float64)
    scale = 1.0 if wide else 1e3  # bf16/fp16: rounding differs by ~1e-2 per token
    return bool(torch.allclose(got, ref, rtol=rtol * scale, atol=atol * scale))
