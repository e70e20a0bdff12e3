"""Judge ``pairwise_lm``: a local causal LM asked "A or B?", P from the answer-token logits.

The INPO / RLHFlow pairwise-preference recipe: render the pair into a prompt, run one
forward pass and take P(a ≻ b) = softmax(logit_A, logit_B)[A] at the next-token slot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rspo.judges import _hf
from rspo.judges._template import DEFAULT_PAIR_TEMPLATE, check_template, render_pair
from rspo.judges.base import Judge, chunk_slices, register_judge

log = logging.getLogger(__name__)


@register_judge("pairwise_lm")
class PairwiseLMJudge(Judge):
    """A causal LM judging "which is better, A or B"; order-sensitive (position bias).

    ``template`` has {prompt}, {response_a}, {response_b}; with a chat template it becomes
    the user turn and the answer slot is the start of the assistant turn, then
    ``answer_prefix``. ``choices`` are the two answer strings (one token each in context).
    """

    order_sensitive = True

    def __init__(
        self,
        model: str | Path,
        template: str = DEFAULT_PAIR_TEMPLATE,
        choices: tuple[str, str] | list[str] = ("A", "B"),
        answer_prefix: str = "",
        system_prompt: str | None = None,
        temperature: float = 1.0,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        use_chat_template: bool | None = None,
        tokenizer: str | Path | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        check_template(template)
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"pairwise_lm judge: choices must be two distinct strings: {choices}")
        if not temperature > 0:
            raise ValueError(f"pairwise_lm judge: temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"pairwise_lm judge: batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model)
        self.template = template
        self.choices = (str(choices[0]), str(choices[1]))
        self.answer_prefix = answer_prefix
        self.system_prompt = system_prompt
        self.temperature = float(temperature)
        self.batch_size = batch_size
        _hf.load_onto(
            self, AutoModelForCausalLM, model, tokenizer, dtype, device,
            use_chat_template, max_length, trust_remote_code, local_files_only,
        )  # fmt: skip
        self.choice_ids = self._choice_token_ids()
        # the tokenizer is part of what the judge computes: another one, another cache key
        self._fingerprint = _hf.fingerprint(model) + (
            f"+tok:{_hf.fingerprint(tokenizer)}" if tokenizer is not None else ""
        )
        self._dtype_name = str(self.model.dtype).removeprefix("torch.")

    @property
    def judge_id(self) -> str:
        h = hashlib.sha256(
            repr((self.template, self.answer_prefix, self.system_prompt)).encode()
        ).hexdigest()[:12]
        return (
            f"pairwise_lm[model={self.model_path},fp={self._fingerprint},template={h},"
            f"choices={list(self.choices)},T={self.temperature},max_length={self.max_length},"
            f"chat={self.use_chat_template},dtype={self._dtype_name}]"
        )

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The full judge input text, ending right before the answer token."""
        body = render_pair(self.template, prompt, response_a, response_b)
        if not self.use_chat_template:
            return body + self.answer_prefix
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": body})
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text + self.answer_prefix

    def _encode(self, text: str) -> list[int]:
        # a chat template writes its own special tokens; plain text gets the tokenizer's
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def _choice_token_ids(self) -> tuple[int, int]:
        """Token id of each choice as it would be generated at the answer slot."""
        context = self._encode(self.render("", "", ""))
        ids = []
        for choice in self.choices:
            full = self._encode(self.render("", "", "") + choice)
            if len(full) == len(context) + 1 and full[: len(context)] == context:
                ids.append(full[-1])
                continue
            alone = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            if len(alone) != 1:
                raise ValueError(
                    f"pairwise_lm judge: choice {choice!r} is not a single token for this "
                    f"tokenizer ({alone}); pick other choices (e.g. ' A') or answer_prefix"
                )
            ids.append(alone[0])
        if ids[0] == ids[1]:
            raise ValueError(f"pairwise_lm judge: choices {self.choices} map to the same token")
        return ids[0], ids[1]

    @torch.no_grad()
    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        ids = [self._encode(self.render(*t)) for t in zip(prompts, responses_a, responses_b)]
        if self.max_length is not None and any(len(x) > self.max_length for x in ids):
            n_cut = sum(len(x) > self.max_length for x in ids)
            log.warning(
                "pairwise_lm judge: %d of %d inputs exceed max_length=%d and were truncated "
                "from the left (the answer slot is kept)",
                n_cut,
                len(ids),
                self.max_length,
            )
            ids = [x[-self.max_length :] for x in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [0.0] * len(ids)
        pad = self.tokenizer.pad_token_id
        pair = torch.tensor(self.choice_ids, device=self.device)
        for sl in chunk_slices(len(order), self.batch_size):
            idx = order[sl]
            batch = [ids[i] for i in idx]
            width = max(len(x) for x in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):  # right padding: real tokens keep their positions
                input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[row, : len(x)] = 1
            last = mask.sum(-1) - 1  # index of each row's final real token
            logits = self._last_logits(input_ids.to(self.device), mask.to(self.device), last)
            two = logits[:, pair].double() / self.temperature
            p = torch.softmax(two, dim=-1)[:, 0].cpu().tolist()
            for i, v in zip(idx, p):
                out[i] = v
        return out

    def _last_logits(
        self, input_ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits after each row's last real token, shape (batch, vocab)."""
        keep = torch.unique(last)  # only these positions go through the LM head
        rows = torch.arange(len(last))
        try:
            logits = self.model(
                input_ids=input_ids, attention_mask=mask, logits_to_keep=keep.to(self.device)
            ).logits
            col = torch.searchsorted(keep, last)
        except TypeError:  # model without logits_to_keep support: full logits
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            col = last
        return logits[rows, col.to(logits.device)]
