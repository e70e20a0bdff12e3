"""Loading Hugging Face causal LMs safely, and sequence log-probabilities of responses.

Weights are loaded as safetensors only and ``trust_remote_code`` stays off unless the
config asks; ``gym`` resolves to the embedded base model shipped with rspo.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> str:
    """``gym`` -> the shipped base model directory; local dirs are checked for weights."""
    if path == "gym":
        from rspo.gym.base import base_model_path

        return str(base_model_path())
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"model path {p} is a file; expected a model directory")
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model directory {p} has no config.json")
        if not list(p.glob("*.safetensors")):
            raise FileNotFoundError(
                f"model directory {p} has no *.safetensors weights (rspo loads safetensors only)"
            )
    return path


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; it must have an EOS token (PAD falls back to EOS)."""
    path = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no eos_token; set one before self-play")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    path: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM from safetensors onto ``device``."""
    path = resolve_model_path(path)
    if dtype not in _DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(resolve_device(device) if isinstance(device, str) else device)


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


def sequence_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """log π(response | prompt) summed over response tokens, float32, one value per pair.

    Gradients flow when called outside ``torch.no_grad``. Logits are upcast to float32 so
    bf16 models give stable log-probs (float64 models stay float64).
    """
    device = next(model.parameters()).device
    ids, attn, tgt = _pack(prompt_ids, response_ids, pad_id, device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = ids[:, 1:]
    mask = tgt[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


@torch.no_grad()
def batched_sequence_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
) -> list[float]:
    """:func:`sequence_logprobs` without gradients, in batches (for π_t and π_ref scoring)."""
    model.eval()
    out: list[float] = []
    for s in range(0, len(prompt_ids), batch_size):
        lp = sequence_logprobs(
            model, prompt_ids[s : s + batch_size], response_ids[s : s + batch_size], pad_id
        )
        out.extend(lp.tolist())
    return out
