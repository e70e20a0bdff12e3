"""A model's forward: which keyword arguments reach it, cached answers to probes of what it
supports, and log-probabilities of responses on a right-padded batch.

The layer under model loading (:mod:`rspo.modeling`), packing (:mod:`rspo.packing`) and
the KV-cache sampling loop (:mod:`rspo.generation.hf_decode`): it imports none of them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence

import torch


def _pack(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+response ids, attention mask, and a mask of response-token targets."""
    lens = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lens)
    ids = torch.full((len(lens), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(lens), width), dtype=torch.long)
    tgt = torch.zeros((len(lens), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        tgt[i, len(p) : len(seq)] = True
    return ids.to(device), attn.to(device), tgt.to(device)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, computed in float32 (float64 stays float64).

    bf16/fp16 logits are upcast before the normalisation, so the log-probs carry float32
    precision of the (rounded) logits rather than bf16's ~3 significant digits.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def forward_target(model: torch.nn.Module) -> torch.nn.Module:
    """The model whose ``forward`` signature says which keyword arguments reach it (a peft
    wrapper forwards ``**kwargs`` to its base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def forward_accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether keyword ``name`` reaches the model's forward (``logits_to_keep``, ``cache``)."""
    fwd = getattr(forward_target(model), "forward", None)
    try:
        return fwd is not None and name in inspect.signature(fwd).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


#: probe answers by model structure (see :func:`_probe_key`), shared by reloads of one model
_PROBED: dict[tuple, bool] = {}


def _probe_key(model: torch.nn.Module, name: str, extra: tuple) -> tuple | None:
    """What a probe's answer depends on: the model class, its config (not the path it came
    from), dtype, device, attention implementation and the probe's arguments. None when the
    model has no config to key on (then only the model object caches)."""
    cfg = getattr(model, "config", None)
    param = next(model.parameters(), None)
    if cfg is None or not hasattr(cfg, "to_dict") or param is None:
        return None
    try:
        fields = {
            k: v
            for k, v in cfg.to_dict().items()
            if k not in ("_name_or_path", "transformers_version")
        }
        text = json.dumps(fields, sort_keys=True, default=str)
    except (TypeError, ValueError):  # e.g. mixed key types: key on the object only
        return None
    return (
        name,
        type(model),
        text,
        getattr(cfg, "_attn_implementation", None),
        param.dtype,
        param.device,
        extra,
    )


def cached_probe(
    model: torch.nn.Module, name: str, check: Callable[[], bool], extra: tuple = ()
) -> bool:
    """``check()`` once per model structure (class, config, dtype, device, ``extra``; run by
    :func:`_run_probe`), the answer also kept on the model as ``_rspo_<name>_ok``: a probe of
    what the model supports,
    which a reload of the same checkpoint or the next iteration's checkpoint need not repeat
    (:func:`forget_probes` clears it)."""
    attr = f"_rspo_{name}_ok"
    key = _probe_key(model, name, extra)
    cached = getattr(model, attr, None) if key is None else _PROBED.get(key)
    if cached is None:
        cached = _run_probe(model, check)
        if key is not None:
            _PROBED[key] = cached
    try:
        setattr(model, attr, cached)  # a record of the answer, for inspection
    except AttributeError:  # pragma: no cover - exotic module types
        pass
    return cached


def _run_probe(model: torch.nn.Module, check: Callable[[], bool]) -> bool:
    """``check()`` in eval mode without gradients, the training flag restored after. An
    exception means the model does not support what is probed (False), except running out
    of memory: that says nothing about the model (and must not be cached as an answer)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return bool(check())
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - e.g. a model that cannot take the probed input
        return False
    finally:
        model.train(was_training)


def forget_probes(model: torch.nn.Module) -> None:
    """Drop the answers of :func:`cached_probe` for this model and every model of its
    structure, so it is probed again."""
    for attr in [a for a in model.__dict__ if a.startswith("_rspo_") and a.endswith("_ok")]:
        delattr(model, attr)
    for key in [k for k in _PROBED if _probe_key(model, k[0], k[-1]) == k]:
        del _PROBED[key]


def padded_sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """log π(response | prompt) summed over response tokens from a right-padded batch whose
    LM head runs only from the shortest prompt's last token on (see
    :func:`rspo.modeling.sequence_logprobs`, which also packs)."""
    device = next(model.parameters()).device
    ids, attn, tgt = _pack(prompt_ids, response_ids, pad_id, device)
    first = max(0, min(len(p) for p in prompt_ids) - 1)  # earliest position predicting a response
    keep = ids.shape[1] - first
    kw = {"logits_to_keep": keep} if forward_accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=ids, attention_mask=attn, **kw).logits
    logits = logits[:, -keep:-1] if logits.shape[1] == keep else logits[:, first:-1]
    logp = token_logprobs(logits, ids[:, first + 1 :])
    return (logp * tgt[:, first + 1 :]).sum(-1)
