"""Position-bias correction (query both orders) and request batching for any judge."""

from __future__ import annotations

from collections.abc import Sequence

from rspo.judges.base import Judge, chunk_slices


def symmetric_prefer(
    judge: Judge,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    both_orders: bool | None = None,
) -> list[float]:
    """P(a ≻ b), averaged over both presentation orders when the judge is order-sensitive.

    Returns ½·(P(a ≻ b) + 1 − P(b ≻ a)), with both orders sent in ONE ``prefer`` call;
    the result then satisfies P(a ≻ b) + P(b ≻ a) = 1. ``both_orders=None`` follows
    ``judge.order_sensitive``; True/False forces it.
    """
    if both_orders is None:
        both_orders = judge.order_sensitive
    if not both_orders:
        return judge.prefer(prompts, responses_a, responses_b)
    n = len(prompts)
    if len(responses_a) != n or len(responses_b) != n:
        raise ValueError(
            f"prompts, responses_a, responses_b must have equal lengths, got "
            f"{n}, {len(responses_a)}, {len(responses_b)}"
        )
    ps = judge.prefer(
        list(prompts) * 2,
        list(responses_a) + list(responses_b),
        list(responses_b) + list(responses_a),
    )
    return [0.5 * (ps[i] + 1.0 - ps[n + i]) for i in range(n)]


def batched_prefer(
    judge: Judge,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    batch_size: int | None,
) -> list[float]:
    """``judge.prefer`` over consecutive chunks of at most ``batch_size`` pairs (None: one call)."""
    n = len(prompts)
    if len(responses_a) != n or len(responses_b) != n:
        raise ValueError(
            f"prompts, responses_a, responses_b must have equal lengths, got "
            f"{n}, {len(responses_a)}, {len(responses_b)}"
        )
    out: list[float] = []
    for sl in chunk_slices(n, batch_size):
        out.extend(judge.prefer(prompts[sl], responses_a[sl], responses_b[sl]))
    return out


class SymmetricJudge(Judge):
    """Wrap a judge so :func:`symmetric_prefer` answers: order-swap averaged when it is needed.

    With ``both_orders=None`` an order-sensitive judge is averaged over both orders (so
    P(a ≻ b) + P(b ≻ a) = 1) and a symmetric one is passed through at no extra cost.
    """

    def __init__(self, judge: Judge, both_orders: bool | None = None) -> None:
        self.judge = judge
        self.both_orders = both_orders
        self.name = judge.name

    @property
    def averages(self) -> bool:
        """Whether each pair is judged in both presentation orders."""
        return self.judge.order_sensitive if self.both_orders is None else self.both_orders

    @property
    def order_sensitive(self) -> bool:  # type: ignore[override]
        return self.judge.order_sensitive and not self.averages

    @property
    def judge_id(self) -> str:
        return f"symmetric({self.judge.judge_id})" if self.averages else self.judge.judge_id

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        return symmetric_prefer(self.judge, prompts, responses_a, responses_b, self.both_orders)
