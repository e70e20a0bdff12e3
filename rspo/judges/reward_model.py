"""Judge ``reward_model``: a local scalar reward model, P(a ≻ b) = σ((r_a − r_b) / T)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from rspo.judges import _hf
from rspo.judges.base import Judge, chunk_slices, register_judge

log = logging.getLogger(__name__)


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _free_pad_id(batch: list[list[int]], preferred: int, vocab_size: int) -> int:
    """A pad id absent from every sequence, so "last non-pad token" pooling finds the end."""
    used = {t for ids in batch for t in ids}
    if preferred not in used:
        return preferred
    for cand in range(vocab_size - 1, -1, -1):
        if cand not in used:
            return cand
    raise RuntimeError("every vocabulary id occurs in the batch; cannot pick a pad id")


@register_judge("reward_model")
class RewardModelJudge(Judge):
    """Bradley–Terry judge from any ``AutoModelForSequenceClassification`` reward model.

    Each response is scored once per call (with its own tokenizer and chat template, or
    ``prompt + separator + response`` when there is none); P = σ((r_a − r_b)/temperature).
    """

    def __init__(
        self,
        model: str | Path,
        temperature: float = 1.0,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        use_chat_template: bool | None = None,
        separator: str = "",
        label_index: int | None = None,
        tokenizer: str | Path | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        if not temperature > 0:
            raise ValueError(f"reward_model judge: temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"reward_model judge: batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model)
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self.separator = separator
        _hf.load_onto(
            self, AutoModelForSequenceClassification, model, tokenizer, dtype, device,
            use_chat_template, max_length, trust_remote_code, local_files_only,
        )  # fmt: skip
        n_labels = self.model.config.num_labels
        if label_index is None:
            if n_labels != 1:
                raise ValueError(
                    f"reward_model judge: {self.model_path!r} has {n_labels} output labels; "
                    "set label_index to the one holding the reward"
                )
            label_index = 0
        if not 0 <= label_index < n_labels:
            raise ValueError(f"label_index {label_index} out of range for {n_labels} labels")
        self.label_index = label_index
        # the tokenizer is part of what the judge computes: another one, another cache key
        self._fingerprint = _hf.fingerprint(model) + (
            f"+tok:{_hf.fingerprint(tokenizer)}" if tokenizer is not None else ""
        )
        self._dtype_name = str(self.model.dtype).removeprefix("torch.")

    @property
    def judge_id(self) -> str:
        return (
            f"reward_model[model={self.model_path},fp={self._fingerprint},T={self.temperature},"
            f"max_length={self.max_length},chat={self.use_chat_template},"
            f"sep={self.separator!r},label={self.label_index},dtype={self._dtype_name}]"
        )

    def _encode(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        if self.use_chat_template:
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
            text = tok.apply_chat_template(messages, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt + self.separator + response, add_special_tokens=True)["input_ids"]

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scalar reward r(prompt, response) for each pair, in order."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        ids = [self._encode(p, r) for p, r in zip(prompts, responses)]
        if self.max_length is not None:
            n_cut = sum(len(x) > self.max_length for x in ids)
            if n_cut:
                log.warning(
                    "reward_model judge: %d of %d sequences exceed max_length=%d and were "
                    "truncated from the left",
                    n_cut,
                    len(ids),
                    self.max_length,
                )
                ids = [x[-self.max_length :] for x in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        rewards = [0.0] * len(ids)
        preferred = self.tokenizer.pad_token_id
        vocab = self.model.get_input_embeddings().num_embeddings
        for sl in chunk_slices(len(order), self.batch_size):
            idx = order[sl]
            batch = [ids[i] for i in idx]
            pad = _free_pad_id(batch, preferred, vocab)
            width = max(len(x) for x in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):
                input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[row, : len(x)] = 1
            self.model.config.pad_token_id = pad
            out = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            )
            r = out.logits[:, self.label_index].float().cpu().tolist()
            for i, v in zip(idx, r):
                rewards[i] = v
        return rewards

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        unique: dict[tuple[str, str], int] = {}
        for p, a, b in zip(prompts, responses_a, responses_b):
            unique.setdefault((p, a), len(unique))
            unique.setdefault((p, b), len(unique))
        keys = list(unique)
        r = self.score([k[0] for k in keys], [k[1] for k in keys])
        return [
            sigmoid((r[unique[(p, a)]] - r[unique[(p, b)]]) / self.temperature)
            for p, a, b in zip(prompts, responses_a, responses_b)
        ]
