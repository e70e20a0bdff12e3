"""What a judge was paid for: its ``usage`` counters (the ``openai`` judge's calls and
tokens) read before and after a batch of calls, summed over the data-parallel ranks. Shared
by the evaluation judge (:mod:`.evaluate`) and the spot judge (:mod:`.spot`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rspo.distributed import DistContext


def judge_usage(judge: Any) -> dict[str, int] | None:
    """A copy of the ``usage`` counters of ``judge`` or of a judge it wraps (the ``openai``
    judge's calls and tokens), or None when none reports usage."""
    while judge is not None:
        usage = getattr(judge, "usage", None)
        if isinstance(usage, dict):
            return dict(usage)
        judge = getattr(judge, "judge", None)
    return None


def usage_metrics(dist: DistContext, before: dict | None, after: dict | None) -> dict[str, int]:
    """``judge_calls`` and, when the responses reported them (or no call was made: 0),
    ``judge_prompt_tokens`` and ``judge_completion_tokens``: what the evaluation judge was
    paid for between ``before`` and ``after``, summed over ranks (cached verdicts cost
    nothing and are not counted)."""
    if before is None or after is None:
        return {}
    delta = {k: after[k] - before.get(k, 0) for k in after}
    total = {k: sum(d[k] for d in dist.all_gather(delta)) for k in delta}
    out = {"judge_calls": total.get("calls", 0)}
    if total.get("calls_with_usage") or not out["judge_calls"]:  # no call: 0 tokens paid
        out["judge_prompt_tokens"] = total.get("prompt_tokens", 0)
        out["judge_completion_tokens"] = total.get("completion_tokens", 0)
    return out
