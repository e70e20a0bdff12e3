"""Stage 2, judge: a K×K preference matrix per prompt from its K samples.

``P[a][b]`` = P(y_a ≻ y_b) for every pair a < b (asked once, both presentation orders for an
order-sensitive judge), ``P[b][a] = 1 − P[a][b]`` and ½ on the diagonal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rspo.selfplay.ops import ModelOps


def pairs_of(k: int) -> list[tuple[int, int]]:
    """The K(K−1)/2 pairs (a, b), a < b, in the order they are judged."""
    return [(a, b) for a in range(k) for b in range(a + 1, k)]


def judge_records(
    ops: ModelOps,
    judge: Any,
    texts: list[str],
    gens: dict[int, dict[str, Any]],
    idx: list[int],
    k: int,
    both_orders: bool | None,
    unit: int,
) -> list[dict[str, Any]]:
    """``{"prompt_index", "P"}`` for each prompt index of ``idx``: its generation record's
    ``k`` responses judged pairwise on the prompt's text; ``unit`` pairs per judge call."""
    pairs = pairs_of(k)
    prompts, ra, rb = [], [], []
    for i in idx:
        responses = gens[i]["responses"]
        for a, b in pairs:
            prompts.append(texts[i])
            ra.append(responses[a]["text"])
            rb.append(responses[b]["text"])
    probs = ops.prefer(judge, prompts, ra, rb, unit, both_orders)
    recs = []
    for j, i in enumerate(idx):
        P = [[0.5] * k for _ in range(k)]
        for q, (a, b) in enumerate(pairs):
            p = float(probs[j * len(pairs) + q])
            P[a][b], P[b][a] = p, 1.0 - p
        recs.append({"prompt_index": i, "P": P})
    return recs
