"""The heavy calls of the stages, each split over the data-parallel ranks.

Sampling from a policy, log-probs under a policy and judging pairs are dealt to the ranks
in slices of a fixed size (:meth:`rspo.distributed.DistContext.shard_map`) and gathered
in order on every rank; a single process makes one call. The slices are what an
uninterrupted single-process run would batch, so results do not depend on the rank count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rspo.modeling import batched_sequence_logprobs, use_packing

if TYPE_CHECKING:
    from rspo.distributed import DistContext
    from rspo.generation import SamplingParams
    from rspo.selfplay.models import PolicyModels


@dataclass
class ModelOps:
    """Sampling, scoring and judging for the stages of one run."""

    models: PolicyModels
    tok: Any
    dist: DistContext
    batch_size: int  # generation.batch_size: sequences per generate call
    micro_batch_size: int  # training.micro_batch_size: sequences per log-prob forward
    packing: str  # training.packing

    def sample(
        self,
        path: str,
        prompt_ids: list[list[int]],
        seeds: list[int],
        params: SamplingParams,
        unit: int | None = None,
        logprobs: bool = False,
    ) -> list[Any]:
        """Completions; with W ranks each generates every W-th slice of ``unit`` sequences."""
        backend = self.models.generator(path, self.tok, logprobs=logprobs)
        return self.dist.shard_map(
            lambda sl: backend.generate(prompt_ids[sl], seeds[sl], params),
            len(prompt_ids),
            unit or self.batch_size,
        )

    def logprobs(self, path: str, prompts: list[list[int]], resps: list[list[int]]) -> list[float]:
        """Sequence log-probs under the model at ``path``, micro-batches sharded over ranks."""
        bs = self.micro_batch_size
        model, pad = self.models.get(path), self.tok.pad_token_id
        packing = use_packing(model, self.packing, pad)
        return self.dist.shard_map(
            lambda sl: batched_sequence_logprobs(model, prompts[sl], resps[sl], pad, bs, packing),
            len(prompts),
            bs,
        )

    def prefer(
        self,
        judge: Any,
        prompts: list[str],
        a: list[str],
        b: list[str],
        unit: int,
        both_orders: bool | None = None,
    ) -> list[Any]:
        """P(a ≻ b) per pair (:func:`rspo.judges.symmetric.symmetric_prefer`: both orders for
        an order-sensitive judge), ``unit`` pairs per judge call and rank."""
        from rspo.judges.symmetric import symmetric_prefer

        return self.dist.shard_map(
            lambda sl: symmetric_prefer(judge, prompts[sl], a[sl], b[sl], both_orders=both_orders),
            len(prompts),
            unit,
        )
