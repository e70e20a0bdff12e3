"""Loading Hugging Face causal LMs safely, and sequence log-probabilities of responses.

Weights are loaded as safetensors only and ``trust_remote_code`` stays off unless the
config asks; a registered alias (``gym``, ``gym-skills``: the embedded base models, which the
gym registers with :func:`register_model_alias`) resolves to its directory. A directory
holding a LoRA adapter (``adapter_config.json``) loads as its base model plus the adapter.
Log-probabilities are always computed in float32 (or wider) from the model's logits.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rspo.forward import (  # noqa: F401  (re-exported: callers reach them here too)
    cached_probe,
    forget_probes,
    forward_accepts,
    forward_target,
    padded_sequence_logprobs,
    token_logprobs,
)
from rspo.utils import plugins
from rspo.utils.hf_config import has_stateful_rope
from rspo.utils.memory import device_memory, weight_bytes
from rspo.utils.onednn import route_linear

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: weight files rspo refuses to read (pickle-based formats)
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
#: files one of which a local tokenizer needs
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def resolve_dtype(dtype: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``model.dtype`` as a torch dtype; ``auto`` = bfloat16 on a CUDA device that supports
    it, else float32 (not the checkpoint's dtype, unlike transformers' ``auto``)."""
    if dtype == "auto":
        dev = resolve_device(device) if isinstance(device, str) else device
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(
            f"model.dtype: unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}, auto"
        )
    return _DTYPES[dtype]


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a peft adapter (``adapter_config.json``)."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def _looks_local(path: str) -> bool:
    """Whether ``path`` can only mean a local directory (hub ids are ``name`` or ``org/name``)."""
    return (
        Path(path).is_absolute()
        or path.startswith((".", "~"))
        or "\\" in path
        or path.count("/") > 1
    )


#: model name -> function returning its local directory. The gym registers ``gym`` and
#: ``gym-skills`` (plug-in group ``rspo.models``), so this layer never imports the gym.
MODEL_ALIASES: dict[str, Callable[[], Path]] = {}


def register_model_alias(name: str, locate: Callable[[], Path]) -> None:
    """Make ``model.path: <name>`` resolve to ``locate()`` (called on use, so a missing asset
    fails when it is asked for, with the locator's own message)."""
    MODEL_ALIASES[name] = locate


def resolve_model_path(path: str) -> str:
    """A registered alias (``gym``, ``gym-skills``) -> its directory; local dirs are checked.

    A local directory needs ``config.json`` and ``*.safetensors`` weights: pickle-based
    weights (``pytorch_model.bin``, ``*.pt``...) are refused, never read. A path that can
    only be local and does not exist is a FileNotFoundError naming it.
    """
    if path not in MODEL_ALIASES:
        plugins.load("rspo.models")
    if path in MODEL_ALIASES:
        return str(MODEL_ALIASES[path]())
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"model path {p} is a file; expected a model directory")
        if is_adapter_dir(p):
            if not (p / "adapter_model.safetensors").exists():
                raise FileNotFoundError(
                    f"adapter directory {p} has no adapter_model.safetensors (rspo loads "
                    "safetensors only and never unpickles adapter_model.bin)"
                )
            return str(p)
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model directory {p} has no config.json")
        if not list(p.glob("*.safetensors")):
            pickled = sorted(f.name for pat in _PICKLE_WEIGHTS for f in p.glob(pat))
            if pickled:
                raise FileNotFoundError(
                    f"model directory {p} has no *.safetensors weights, only "
                    f"{', '.join(pickled)}: rspo loads safetensors only and never unpickles "
                    "weights. Convert once with a trusted loader, e.g. "
                    "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, "
                    "safe_serialization=True)"
                )
            raise FileNotFoundError(
                f"model directory {p} has no *.safetensors weights (rspo loads safetensors only)"
            )
        return str(p)
    if _looks_local(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    return path


def _check_tokenizer_files(path: str) -> None:
    p = Path(path)
    if p.is_dir() and not any((p / f).exists() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model directory {p} has no tokenizer files (expected one of "
            f"{', '.join(_TOKENIZER_FILES)}); save the tokenizer next to the weights with "
            "tokenizer.save_pretrained(dir)"
        )


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: transformers' bars of every load and save of weights (several an iteration; in a log
#: file each leaves ``\r``-joined lines): hidden; download bars are kept
QUIET_BARS = ("Loading weights", "Writing model shards")


@contextlib.contextmanager
def quiet_weight_bars() -> Iterator[None]:
    """Inside the block, transformers shows no "Loading weights"/"Writing model shards" bar."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # a transformers without tqdm hooks: all its bars off for the block
        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was:
                hf_logging.enable_progress_bar()
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in QUIET_BARS:
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)


def _from_pretrained(loader, path: str, what: str, trust_remote_code: bool, **kwargs):
    """``loader.from_pretrained`` with errors that name the path and the rspo setting."""
    try:
        with quiet_weight_bars():
            return loader.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise ValueError(
                f"{path} needs custom {what} code (auto_map), which rspo does not run unless "
                "asked: review the code, then set model.trust_remote_code: true "
                "(trust_remote_code=True)"
            ) from e
        if not Path(path).exists():
            raise FileNotFoundError(
                f"model path {path!r} is not a local directory and its {what} could not be "
                f"loaded from the Hugging Face hub: {first}"
            ) from e
        raise ValueError(f"could not load the {what} from {path}: {first}") from e


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; it must have an EOS token (PAD falls back to EOS)."""
    path = resolve_model_path(path)
    _check_tokenizer_files(path)
    tok = _from_pretrained(AutoTokenizer, path, "tokenizer", trust_remote_code)
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer at {path} has no eos_token, so generation could not stop; set one "
            "(tokenizer.eos_token = ...; tokenizer.save_pretrained(dir)) before self-play"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def check_same_tokenizer(
    tok: PreTrainedTokenizerBase, path: str, what: str, trust_remote_code: bool = False
) -> None:
    """``path``'s model must read the policy's token ids (π_ref scores the policy's samples
    token by token): its tokenizer, when the directory has one, must hold every policy
    token with the same id (extra tokens of its own are fine). ``what`` names the setting in
    the error; a hub id is not checked (no download just for this)."""
    p = Path(path)
    if not (p.is_dir() and any((p / f).exists() for f in _TOKENIZER_FILES)):
        return  # a hub id or an adapter directory without one: the base's tokenizer
    other = _from_pretrained(AutoTokenizer, str(p), "tokenizer", trust_remote_code)
    mine, theirs = tok.get_vocab(), other.get_vocab()
    if not mine.items() <= theirs.items():  # extra tokens of its own are fine
        diff = sorted(set(mine.items()) - set(theirs.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"{what}={path}: its tokenizer differs from model.path's ({len(theirs)} vs "
            f"{len(mine)} tokens; policy tokens it reads otherwise: {diff}); π_ref scores "
            "the policy's token ids, so it must share the policy's tokenizer"
        )


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing``: hide that
    FutureWarning (nothing for the user to change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        yield


def require_peft() -> Any:
    """Import peft or fail with the install command."""
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "model.lora needs the optional extra: pip install 'rspo[peft]' (peft>=0.21)"
        ) from e
    return peft


def quantization_kwargs(device: torch.device, compute_dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` settings for 4-bit NF4 weights; a clear error off CUDA or without
    bitsandbytes."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"model.load_in_4bit: 4-bit (QLoRA) weights need a CUDA device, but the model "
            f"device is {device} (model.device); set load_in_4bit: false on this machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": q, "device_map": {"": device}}


def load_model(
    path: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    cpu_linear: str = "auto",
) -> PreTrainedModel:
    """Load a causal LM from safetensors onto ``device``.

    An adapter directory loads its base (``base_model_name_or_path``) plus the adapter, in
    eval mode; ``load_in_4bit`` quantizes the weights to NF4 (CUDA + bitsandbytes only).
    ``cpu_linear`` (``model.cpu_linear``) routes a float32 CPU model's linear layers
    (:func:`rspo.utils.onednn.route_linear`).
    """
    path = resolve_model_path(path)
    if is_adapter_dir(path):
        return load_adapter_model(
            path, dtype, device, trust_remote_code, load_in_4bit, cpu_linear=cpu_linear
        )
    dev = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs = {}
    if load_in_4bit:
        kwargs = quantization_kwargs(dev, torch_dtype)
    model = _from_pretrained(
        AutoModelForCausalLM,
        path,
        "model",
        trust_remote_code,
        dtype=torch_dtype,
        use_safetensors=True,
        **kwargs,
    )
    if load_in_4bit:
        return model
    model = model.to(dev)
    route_linear(model, cpu_linear)
    return model


def load_adapter_model(
    path: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    base_path: str | None = None,
    cpu_linear: str = "auto",
) -> Any:
    """Base model (``base_path`` or the adapter's ``base_model_name_or_path``) + adapter, eval
    (``cpu_linear``: see :func:`rspo.modeling.load_model`)."""
    peft = require_peft()
    base_path = base_path or read_adapter_config(path).get("base_model_name_or_path")
    if not base_path:
        raise ValueError(
            f"{path}/adapter_config.json names no base_model_name_or_path; load it with "
            "model.path set to its base model and model.lora set"
        )
    base = load_model(
        base_path, dtype, device, trust_remote_code, load_in_4bit, cpu_linear=cpu_linear
    )
    with quiet_peft():
        model = peft.PeftModel.from_pretrained(base, path, is_trainable=False, use_safetensors=True)
    return model.eval()


def load_configured(path: str, model_cfg: Any, device: str | torch.device) -> PreTrainedModel:
    """:func:`load_model` with ``model_cfg``'s (a :class:`rspo.config.ModelConfig`) dtype,
    trust_remote_code and cpu_linear: how a run loads π_t and π_ref."""
    m = model_cfg
    return load_model(path, m.dtype, device, m.trust_remote_code, cpu_linear=m.cpu_linear)


def load_trainable(
    path: str, model_cfg: Any, device: torch.device, checkpointing: bool, lora: Any = None
) -> torch.nn.Module:
    """The policy at ``path`` as training takes it: under fresh-or-loaded LoRA adapters on a
    frozen (maybe 4-bit) base when ``lora`` (a :class:`rspo.training.peft.LoraPolicy`) is
    given, else the full model (``model_cfg``: dtype, trust_remote_code); with gradient
    checkpointing when asked. The run and its dry run build it the same way."""
    if lora is not None:
        model = lora.trainable(path)
    else:
        model = load_configured(path, model_cfg, device)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward (non-reentrant, so frozen inputs need no grads)."""
    if getattr(model, "is_activation_checkpointing", False):
        return  # already on (a LoRA model is prepared once per iteration)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # the KV cache is useless (and warned about) in training


#: ``model.keep_reference: auto`` holds π_ref when its weights take at most this share of
#: the device's memory (training alone holds weights, gradients and two AdamW moments)
KEEP_REFERENCE_FRACTION = 0.05


def holds_reference(mode: str, backend: str, model: torch.nn.Module, device: torch.device) -> bool:
    """Whether a run holds π_ref (``model``) in memory for its whole length
    (``model.keep_reference``): on (HF backend), off, or auto (HF backend and weights at most
    :data:`KEEP_REFERENCE_FRACTION` of ``device``'s memory); never for dynamic-RoPE models,
    whose frequencies change with the inputs seen (a fresh load each iteration scores as a
    resumed run would)."""
    if mode == "off" or backend != "hf" or has_stateful_rope(model.config):
        return False  # (vLLM: the engine sizes itself on the GPU memory left free)
    if mode == "on":
        return True
    total = device_memory(device)
    return total is not None and weight_bytes(model) <= KEEP_REFERENCE_FRACTION * total


def free_memory(dropped: Sequence[weakref.ref] = ()) -> None:
    """Make a dropped model's memory free: collect garbage, return cached CUDA blocks.

    With ``dropped`` (weak references to what was just released) the full collection, which
    costs ~0.2 s per call with transformers loaded, runs only if one of them is still
    alive, i.e. held by a reference cycle; models usually die by reference counting.
    """
    if not dropped or any(r() is not None for r in dropped):
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_adapter_config(path: str | Path) -> dict:
    """The ``adapter_config.json`` of an adapter directory."""
    f = Path(path).expanduser() / "adapter_config.json"
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not a readable adapter config ({e})") from e


def sequence_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    packing: bool = False,
) -> torch.Tensor:
    """log π(response | prompt) summed over response tokens, float32, one value per pair.

    Gradients flow when called outside ``torch.no_grad``. Logits are upcast to float32 so
    bf16 models give stable log-probs (float64 models stay float64). ``packing`` computes
    each shared prompt once (:mod:`rspo.packing`); the default is a right-padded batch whose
    LM head runs only from the shortest prompt's last token on.
    """
    if packing:
        from rspo.packing import packed_sequence_logprobs

        return packed_sequence_logprobs(model, prompt_ids, response_ids, pad_id)
    return padded_sequence_logprobs(model, prompt_ids, response_ids, pad_id)


@torch.no_grad()
def batched_sequence_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    packing: bool = False,
) -> list[float]:
    """:func:`sequence_logprobs` without gradients, in batches (for π_t and π_ref scoring)."""
    model.eval()
    out: list[float] = []
    for s in range(0, len(prompt_ids), batch_size):
        lp = sequence_logprobs(
            model,
            prompt_ids[s : s + batch_size],
            response_ids[s : s + batch_size],
            pad_id,
            packing,
        )
        out.extend(lp.tolist())
    return out


def _on_cuda(model: torch.nn.Module) -> bool:
    """Whether ``model``'s first parameter lives on a CUDA device."""
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cuda"


def use_packing(model: torch.nn.Module, mode: str, pad_id: int) -> bool:
    """Resolve ``training.packing`` (auto | on | off) for ``model``; ``on`` raises if unusable.

    ``auto`` is off on CUDA: the one GPU measurement (benchmarks/results/gpu_smoke_h200,
    hf.dry.json vs plain.dry.json) found a packed training step 1.6x slower there; packing
    saves recomputing the prompt, which pays on a CPU, not on a GPU with work to spare.
    """
    if mode == "off" or (mode == "auto" and _on_cuda(model)):
        return False
    from rspo.packing import attention_implementation, packing_supported

    ok = packing_supported(model, pad_id)
    if mode == "on" and not ok:
        impl = attention_implementation(model)
        raise ValueError(
            f"training.packing: on, but this model (attention implementation {impl!r}) does "
            "not give the padded forward's log-probs on packed input (it needs sdpa or eager "
            "attention and position_ids); set training.packing: auto or off"
        )
    return ok
