"""Per-sequence seeded sampling for Hugging Face models, shared by ``generate`` and rspo's loop.

Sampling is done as Gumbel-max: each row draws its noise from its own ``torch.Generator``
and the perturbed scores are maximised. The result is an exact sample from the
temperature/top-k/top-p distribution whose randomness depends only on the row's seed.
:mod:`rspo.generation.hf` (the backend) and :mod:`rspo.generation.hf_decode` (the KV-cache
loop and its probe) both draw from :class:`SeededGumbelSampler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig, LogitsProcessor

from rspo.generation.base import SamplingParams


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


@contextmanager
def plain_generation_config(model):
    """Hide the model's ``generation_config`` (repetition penalty, bad words, min length...)
    from ``generate``, which would otherwise merge it into ours: self-play must sample from
    π itself, with only rspo's temperature/top-k/top-p, and record π's own log-probs."""
    saved = getattr(model, "generation_config", None)
    if saved is None:
        yield
        return
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def left_pad(prompt_ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest, and their attention mask (for generation)."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        attn[i, width - len(p) :] = 1
    return ids, attn


class SeededGumbelSampler(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators so argmax == a seeded sample.

    With ``record`` it also keeps, per step and row, the untempered log-probability of the
    token it picks (the argmax), so the caller gets log π(response) without a second forward.
    Temperature 0 adds no noise (greedy) but still records.
    """

    #: float64 noise values drawn ahead per call (rows x steps x vocab), bounding host memory
    NOISE_BUDGET = 1 << 22
    #: device types whose noise is drawn by the CPU generators (others: on the device)
    HOST_NOISE: tuple[str, ...] = ("cpu",)

    def __init__(self, seeds: Sequence[int], params: SamplingParams, record: bool = False) -> None:
        self.seeds = [int(s) for s in seeds]
        self.gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.params = params
        self.record = record
        self.steps: list[torch.Tensor] = []
        self._noise: torch.Tensor | None = None  # (rows, steps ahead, vocab) Gumbel noise
        self._used = 0
        self._device_gens: list[torch.Generator] | None = None

    def _gumbel(
        self, vocab: int, device: torch.device, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """This step's noise for ``rows`` (default: all). On an accelerator each row's own
        generator lives on the device (:meth:`_device_gumbel`). On the CPU each row's
        generator fills several steps in one call: the stream is the same as one
        ``rand(vocab)`` per step, so samples do not change. Every row asked for has taken the
        same number of steps."""
        if device.type not in self.HOST_NOISE and self._device_generators(device):
            return self._device_gumbel(vocab, device, rows)
        n = len(self.gens)
        if self._noise is None or self._used == self._noise.shape[1]:
            ahead = max(1, min(16, self.NOISE_BUDGET // (n * vocab)))
            live = list(range(n)) if rows is None else rows.tolist()
            u = torch.stack(
                [
                    torch.rand(ahead * vocab, generator=self.gens[i], dtype=torch.float64)
                    for i in live
                ]
            )
            noise = torch.zeros((n, ahead, vocab), dtype=torch.float32)  # finished rows: none
            noise[live] = (
                (-torch.log(-torch.log(u.clamp_min(1e-300)))).view(-1, ahead, vocab).float()
            )
            self._noise = noise.to(device)
            self._used = 0
        self._used += 1
        noise = self._noise[:, self._used - 1]
        return noise if rows is None else noise[rows.to(noise.device)]

    def _device_generators(self, device: torch.device) -> bool:
        """Per-row generators on ``device`` (seeded like the CPU ones); False where the device
        has none, and the noise is then drawn on the CPU."""
        if self._device_gens is None:
            try:
                self._device_gens = [
                    torch.Generator(device=device).manual_seed(s) for s in self.seeds
                ]
            except RuntimeError:
                self._device_gens = []
        return bool(self._device_gens)

    def _device_gumbel(
        self, vocab: int, device: torch.device, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """This step's noise drawn where the logits are: one ``rand(vocab)`` per running row
        from that row's device generator, so a row's samples depend on its seed alone, not on
        the batch. The CPU path would cost rows x vocab float64 draws on the host per step
        (about a second at a 128k vocabulary, far more than the forward on a GPU). Samples on
        a device differ from CPU samples (another generator) and reproduce on that device."""
        gens = self._device_gens or []
        live = range(len(gens)) if rows is None else rows.tolist()
        u = torch.stack(
            [torch.rand(vocab, generator=gens[i], device=device, dtype=torch.float64) for i in live]
        )
        return (-torch.log(-torch.log(u.clamp_min(1e-300)))).float()

    def _perturb(self, scores: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        p = self.params
        if p.temperature <= 0:
            return scores
        logp = filter_logits(scores, p.temperature, p.top_k, p.top_p)
        return logp + self._gumbel(logp.shape[-1], logp.device, rows)

    @staticmethod
    def _raw_logprob(scores: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """Untempered log-probability of the picked tokens, float64."""
        raw = torch.log_softmax(scores.float(), dim=-1)
        return raw.gather(-1, pick[:, None]).squeeze(-1).double()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = self._perturb(scores, None)
        if self.record:  # the argmax is what greedy generate takes next
            self.steps.append(self._raw_logprob(scores, out.argmax(-1)).cpu())
        return out

    def choose(self, scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens of the still-running ``rows`` (original indices) and their untempered
        log-probabilities, for a decode loop that drops finished rows."""
        pick = self._perturb(scores, rows).argmax(-1)
        return pick, self._raw_logprob(scores, pick)

    def sequence_logprobs(self, lengths: Sequence[int]) -> list[float]:
        """Sum of the recorded log-probs over each row's first ``lengths[i]`` steps."""
        if not self.steps:
            return [0.0] * len(lengths)
        per_step = torch.stack(self.steps, dim=1)  # (rows, steps)
        return [float(per_step[i, :n].sum()) for i, n in enumerate(lengths)]
