"""Loading helpers shared by the local Hugging Face judges (reward model, pairwise LM)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from rspo.utils.hf_config import context_length
from rspo.utils.onednn import route_linear

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → the first CUDA device if there is one, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``"auto"`` (the checkpoint's dtype), a torch dtype, or a name like ``"bfloat16"``."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}") from None


def fingerprint(model: str | Path) -> str:
    """Short hash of a local model dir (config, tokenizer files, weight sizes and edges).

    Cheap even for large checkpoints: weights contribute their size and first/last MiB,
    which differ after any retraining. A hub id that is not a local dir hashes as text.
    """
    path = Path(model)
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(str(model).encode())
        return h.hexdigest()[:12]
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        if f.suffix in (".json", ".jinja", ".txt", ".model") and size < (64 << 20):
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt"):
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def load_tokenizer(
    model: str | Path,
    tokenizer: str | Path | None,
    trust_remote_code: bool,
    local_files_only: bool,
) -> Any:
    """The model's own tokenizer (or ``tokenizer``), right-padded, with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        str(tokenizer or model),
        trust_remote_code=trust_remote_code,
        local_files_only=local_files_only,
    )
    tok.padding_side = "right"  # keeps position ids of real tokens unchanged
    tok.truncation_side = "left"  # keep the end: the response and the answer slot
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise ValueError(f"tokenizer of {str(model)!r} has no pad, eos or unk token to pad with")
    return tok


def wants_chat_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    """Resolve ``use_chat_template``: None means use one if the tokenizer has one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    return has if use_chat_template is None else bool(use_chat_template)


def effective_max_length(tokenizer: Any, max_length: int | None, config: Any = None) -> int | None:
    """``max_length``, else the tokenizer's ``model_max_length`` when that is a real limit;
    never more than the model's own positions (``max_position_embeddings`` / ``n_positions``):
    a longer input crashes a learned-position model and runs a rotary one past its context."""
    if max_length is None:
        mml = getattr(tokenizer, "model_max_length", None)
        max_length = mml if isinstance(mml, int) and mml < 1_000_000 else None
    ctx = context_length(config) if config is not None else None
    if ctx is None:
        return max_length
    return ctx if max_length is None else min(max_length, ctx)


def load_model(
    auto_cls: Any,
    path: str,
    dtype: str | torch.dtype | None,
    device: torch.device,
    trust_remote_code: bool,
    local_files_only: bool,
) -> Any:
    """A judge model from safetensors via ``auto_cls``, on ``device``, in eval mode, with its
    float32 CPU linear layers on oneDNN (:func:`rspo.utils.onednn.route_linear`, auto). Weights
    missing from the checkpoint are an error (transformers would initialise them at random:
    a reward head saved under another name would judge by noise)."""
    from rspo.modeling import quiet_weight_bars

    with quiet_weight_bars():
        model, info = auto_cls.from_pretrained(
            path,
            dtype=resolve_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=local_files_only,
            output_loading_info=True,
        )
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ValueError(
            f"judge model {path}: the checkpoint has no weights for {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''} ({auto_cls.__name__} would initialise them "
            "at random); save the judge with the head this class expects (e.g. a reward "
            "model's `score` layer) or pick the judge type that matches the checkpoint"
        )
    model = model.to(device)
    model.eval()
    route_linear(model)
    return model


def load_onto(
    judge: Any,
    auto_cls: Any,
    model: str | Path,
    tokenizer: str | Path | None,
    dtype: str | torch.dtype | None,
    device: str | torch.device | None,
    use_chat_template: bool | None,
    max_length: int | None,
    trust_remote_code: bool,
    local_files_only: bool,
) -> None:
    """Load a local judge's tokenizer and model (see :func:`load_model`) and set the
    attributes every such judge reads: ``device``, ``tokenizer``, ``use_chat_template``,
    ``model`` and ``max_length`` (the tokenizer's and the model's limit if None). A local
    ``model`` path that does not exist, or holds no safetensors weights, is a
    FileNotFoundError naming the judge."""
    from rspo.modeling import resolve_model_path

    try:
        path = resolve_model_path(str(model))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{judge.name} judge: {e}") from None
    judge.device = resolve_device(device)
    judge.tokenizer = load_tokenizer(path, tokenizer, trust_remote_code, local_files_only)
    judge.use_chat_template = wants_chat_template(judge.tokenizer, use_chat_template)
    judge.model = load_model(
        auto_cls, path, dtype, judge.device, trust_remote_code, local_files_only
    )
    judge.max_length = effective_max_length(judge.tokenizer, max_length, judge.model.config)
