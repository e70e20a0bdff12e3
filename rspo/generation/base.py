"""The generation interface: token ids in, completions out, one seed per sequence.

Each sequence carries its own seed (derived from run seed, iteration, prompt index and
sample index), so samples do not depend on batch composition and a resumed run draws the
same responses as an uninterrupted one. (Up to float rounding: a batch's padding, and the
size of a product, which picks MKL or oneDNN for it (:mod:`rspo.utils.onednn`), round
log-probs differently, which can flip a near-tie draw.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class Completion:
    """One generated response: token ids (EOS included when produced), text, EOS flag and,
    from backends that record it, the response's log-probability under the sampling model."""

    ids: list[int]
    text: str
    finished: bool
    #: log π(ids | prompt) of the sampling model (untempered), when the backend records it
    logprob: float | None = None

    @property
    def truncated(self) -> bool:
        """True when the response hit max_new_tokens without EOS."""
        return not self.finished


def stop_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS, then any ``eos_token_id`` of the
    model's generation config (chat models list their turn end there: Llama 3's
    ``<|eot_id|>``, Phi-3's ``<|end|>``, Gemma's ``<end_of_turn>``)."""
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is None:
        extra = []
    elif isinstance(extra, int):
        extra = [extra]
    out: list[int] = []
    for t in [tokenizer.eos_token_id, *extra]:
        if t is not None and int(t) not in out:
            out.append(int(t))
    return out


def until_eos(row: list[int], eos: int | Sequence[int]) -> list[int]:
    """``row`` up to and including its first stop token (all of it when there is none)."""
    stops = {eos} if isinstance(eos, int) else set(eos)
    for i, t in enumerate(row):
        if t in stops:
            return row[: i + 1]
    return row


class GenerationBackend(ABC):
    """Generates completions for tokenized prompts with per-sequence seeds."""

    name: str = "base"

    @abstractmethod
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], params: SamplingParams
    ) -> list[Completion]:
        """One completion per (prompt, seed) pair, in order."""

    def update_weights(self, model: Any) -> None:
        """Point the backend at new policy weights (backends sharing the model object ignore it)."""
        return None
