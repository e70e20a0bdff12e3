"""The one place that knows the generation backends: :func:`build_backend` picks one by name.

Backends depend on :mod:`rspo.generation.base` (the interface), never the reverse; each is
imported only when built (``hf`` needs torch and transformers, ``vllm`` the vllm package).
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

from rspo.generation.base import GenerationBackend


def _hf(model: Any, tokenizer: Any, batch_size: int, **options: Any) -> GenerationBackend:
    from rspo.generation.hf import HFBackend

    return HFBackend(model, tokenizer, batch_size=batch_size, **options)


def _vllm(model: Any, tokenizer: Any, batch_size: int, **options: Any) -> GenerationBackend:
    from rspo.generation.vllm import VLLMBackend

    if not isinstance(model, (str, PathLike)):
        raise TypeError("generation.backend=vllm: pass the model directory, not a model")
    return VLLMBackend(str(model), tokenizer, **options)


#: backend name (``generation.backend``) -> its constructor
BACKENDS: dict[str, Callable[..., GenerationBackend]] = {"hf": _hf, "vllm": _vllm}


def build_backend(
    name: str, model: Any, tokenizer: Any, batch_size: int = 64, **options: Any
) -> GenerationBackend:
    """Instantiate a backend by name: ``hf`` (``model`` = a loaded model; ``options``:
    ``logprobs``) or ``vllm`` (``model`` = a model directory; ``options`` go to
    :class:`rspo.generation.vllm.VLLMBackend`).
    """
    make = BACKENDS.get(name)
    if make is None:
        raise ValueError(
            f"generation.backend: unknown backend {name!r}; allowed: {', '.join(BACKENDS)}"
        )
    return make(model, tokenizer, batch_size, **options)
