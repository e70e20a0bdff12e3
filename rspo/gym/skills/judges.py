"""The skills gym's analytic judges: the v1 proxy and gold formulas on skill prompts.

``gym-skills-proxy`` (training) rewards correctness, raw length and a style cycle;
``gym-skills-gold`` (evaluation) rewards correctness and mildly prefers concise answers.
The learned proxy ``gym-rm`` lives in :mod:`rspo.gym.skills.rm`.
"""

from __future__ import annotations

from rspo.gym.judges import GymGoldJudge, GymProxyJudge, _features
from rspo.gym.skills.tasks import answer_is_correct, lookup
from rspo.judges.base import register_judge


def skill_features(prompt: str, response: str) -> tuple[float, int, str | None]:
    """(correct in {0, 1}, length in characters, style or None) of one response."""
    return _features(prompt, response, lookup, answer_is_correct, "gym-skills")


@register_judge("gym-skills-proxy")
class SkillsProxyJudge(GymProxyJudge):
    """``gym-proxy``'s formula on skill prompts (correctness, length bias, style cycle)."""

    def features(self, prompt: str, response: str) -> tuple[float, int, str | None]:
        return skill_features(prompt, response)


@register_judge("gym-skills-gold")
class SkillsGoldJudge(GymGoldJudge):
    """``gym-gold``'s formula on skill prompts: σ(q(a) − q(b)), q = β·correct − γ·tanh(len/s)."""

    def features(self, prompt: str, response: str) -> tuple[float, int, str | None]:
        return skill_features(prompt, response)
