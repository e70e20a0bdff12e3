"""Hugging Face ``generate`` backend with per-sequence seeded sampling.

Sampling is done as Gumbel-max inside a logits processor: each row draws its noise from
its own ``torch.Generator``, and ``generate`` runs greedily on the perturbed scores. The
result is an exact sample from the temperature/top-k/top-p distribution whose randomness
depends only on the row's seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rspo.generation.base import Completion, GenerationBackend, SamplingParams


def filter_logits(
    scores: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """Log-probabilities after temperature, top-k and top-p (nucleus) filtering (-inf outside)."""
    logp = torch.log_softmax(scores.float() / temperature, dim=-1)
    if top_k and top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, idx = torch.sort(logp, dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        drop = cum - sorted_lp.exp() >= top_p  # keep the smallest prefix with mass >= top_p
        sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, idx, sorted_lp)
    return logp


class SeededGumbelSampler(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators so argmax == a seeded sample."""

    def __init__(self, seeds: Sequence[int], params: SamplingParams) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.params = params

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params
        logp = filter_logits(scores, p.temperature, p.top_k, p.top_p)
        u = torch.stack(
            [torch.rand(logp.shape[-1], generator=g, dtype=torch.float64) for g in self.gens]
        )
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300))).to(logp.device, torch.float32)
        return logp + gumbel


class HFBackend(GenerationBackend):
    """Batched ``model.generate`` with left padding; stops at EOS and records truncation."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 64) -> None:
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size

    def update_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], params: SamplingParams
    ) -> list[Completion]:
        if len(prompt_ids) != len(seeds):
            raise ValueError("generate: need one seed per prompt")
        out: list[Completion] = []
        for s in range(0, len(prompt_ids), self.batch_size):
            out += self._generate_batch(
                prompt_ids[s : s + self.batch_size], seeds[s : s + self.batch_size], params
            )
        return out

    def _generate_batch(self, prompt_ids, seeds, params: SamplingParams) -> list[Completion]:
        model, tok = self.model, self.tok
        model.eval()
        device = next(model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attn[i, width - len(p) :] = 1
        eos = tok.eos_token_id
        gen_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
        )
        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors.append(SeededGumbelSampler(seeds, params))
        seqs = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            generation_config=gen_cfg,
            logits_processor=processors,
        )[:, width:].tolist()
        out = []
        for row in seqs:
            finished = eos in row
            resp = row[: row.index(eos) + 1] if finished else row  # unfinished rows ran every step
            text_ids = resp[:-1] if finished else resp
            out.append(
                Completion(
                    ids=resp, text=tok.decode(text_ids, skip_special_tokens=True), finished=finished
                )
            )
        return out
