"""Hugging Face backend with per-sequence seeded sampling.

Sampling is done as Gumbel-max (:mod:`rspo.generation.sampler`): each row draws its noise
from its own ``torch.Generator`` and the perturbed scores are maximised. The result is an
exact sample from the temperature/top-k/top-p distribution whose randomness depends only on
the row's seed.
Decoding runs in rspo's loop over the model's KV cache that drops finished rows
(:mod:`rspo.generation.hf_decode`) when a probe shows it reproduces ``generate``, and in
``generate`` with the sampler as a logits processor otherwise (``decode="generate"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList

from rspo.generation.base import (
    Completion,
    GenerationBackend,
    SamplingParams,
    stop_ids,
    until_eos,
)
from rspo.generation.hf_decode import decode, decode_supported, step_mask_4d_supported
from rspo.generation.sampler import (  # noqa: F401  (filter_logits: also reached from here)
    SeededGumbelSampler,
    filter_logits,
    left_pad,
    plain_generation_config,
)


class HFBackend(GenerationBackend):
    """Batched sampling with left padding; stops at EOS, records truncation and (with
    ``logprobs``) each response's log-probability under the sampling model."""

    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        logprobs: bool = False,
        decode: str = "auto",
    ) -> None:
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.logprobs = logprobs  # record log π(response) while sampling
        self.decode = decode  # auto: rspo's row-dropping loop when it matches generate

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
        eos, pad = tok.eos_token_id, tok.pad_token_id
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is None:  # the LoRA base view (adapter disabled) reads its peft model's
            gen_cfg = getattr(getattr(model, "peft_model", None), "generation_config", None)
        stops = stop_ids(tok, gen_cfg)
        ids, attn = (x.to(device) for x in left_pad(prompt_ids, pad))
        sampler = SeededGumbelSampler(seeds, params, record=self.logprobs)
        if self.decode == "auto" and decode_supported(model, eos, pad):
            four_d = step_mask_4d_supported(model, eos, pad)
            toks, fin, lps = decode(model, ids, attn, sampler, params.max_new_tokens, stops, four_d)
        else:
            toks, fin, lps = self._generate_hf(ids, attn, sampler, params, stops)
        return [
            Completion(
                ids=t,
                text=tok.decode(t[:-1] if f else t, skip_special_tokens=True),
                finished=f,
                logprob=lp if self.logprobs else None,
            )
            for t, f, lp in zip(toks, fin, lps)
        ]

    def _generate_hf(self, ids, attn, sampler, params: SamplingParams, stops: list[int]):
        """``model.generate`` with the sampler as logits processor; same outputs as ``decode``."""
        gen_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=stops,
        )
        processors = LogitsProcessorList()
        if params.temperature > 0 or self.logprobs:
            processors.append(sampler)
        with plain_generation_config(self.model):
            seqs = self.model.generate(
                input_ids=ids,
                attention_mask=attn,
                generation_config=gen_cfg,
                logits_processor=processors,
            )[:, ids.shape[1] :].tolist()
        toks = [until_eos(row, stops) for row in seqs]  # unfinished rows ran every step
        fin = [bool(t) and t[-1] in stops for t in toks]
        return toks, fin, sampler.sequence_logprobs([len(t) for t in toks])
