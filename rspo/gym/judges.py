"""The gym's two judges: a flawed training proxy and a gold evaluator.

``gym-proxy`` plays PairRM: it rewards correctness, but also raw length (filler pays) and
has a non-transitive preference cycle over answer styles. ``gym-gold`` plays the
AlpacaEval/GPT-4 judge: a Bradley-Terry model on correctness with a mild preference for
concise answers, and no cycle. Both are deterministic and exactly skew-symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rspo.gym.tasks import GymPrompt, answer_is_correct, lookup, parse_response
from rspo.judges.base import Judge, JudgeError, register_judge

#: the proxy's style cycle: each style beats the next one (wrapping around)
STYLE_CYCLE: tuple[str, ...] = ("bare", "sentence", "colon")


def sigmoid_pair(x: float) -> float:
    """σ(x) computed so that ``sigmoid_pair(x) + sigmoid_pair(-x) == 1`` exactly in floats."""
    s = 1.0 / (1.0 + math.exp(-abs(x)))  # in [0.5, 1]: 1 - s is exact (Sterbenz)
    return s if x >= 0 else 1.0 - s


def _odd_tanh(z: float) -> float:
    """tanh written as an exactly odd function."""
    return math.copysign(math.tanh(abs(z)), z) if z != 0 else 0.0


def style_cycle(style_a: str | None, style_b: str | None) -> int:
    """+1 if a's style beats b's in the cycle, -1 if it loses, 0 if equal or malformed."""
    if style_a not in STYLE_CYCLE or style_b not in STYLE_CYCLE or style_a == style_b:
        return 0
    i, j = STYLE_CYCLE.index(style_a), STYLE_CYCLE.index(style_b)
    return 1 if (i + 1) % len(STYLE_CYCLE) == j else -1


def _features(
    prompt: str,
    response: str,
    find: Callable[[str], GymPrompt] = lookup,
    is_correct: Callable[[GymPrompt, str | None], bool] = answer_is_correct,
    gym: str = "gym",
) -> tuple[float, int, str | None]:
    """(correct in {0, 1}, length in characters, style or None) of one response to a prompt
    of the gym whose ``find`` and ``is_correct`` are given."""
    try:
        gym_prompt = find(prompt)
    except ValueError as e:
        raise JudgeError(f"{gym} judges only score {gym} prompts: {e}") from e
    parsed = parse_response(response)
    correct = parsed.style is not None and is_correct(gym_prompt, parsed.answer)
    return float(correct), len(str(response).strip()), parsed.style


@register_judge("gym-proxy")
class GymProxyJudge(Judge):
    """Training judge: P(a≻b) = σ(β·Δcorrect + γ·tanh(Δlen/scale) + c·cycle(style_a, style_b)).

    Defaults β=2, γ=1, scale=40 characters, c=0.75: correctness dominates, a padded
    correct answer beats a concise one (length bias), and the styles form a cycle
    bare ≻ sentence ≻ colon ≻ bare that survives the length term.
    """

    def __init__(
        self, beta: float = 2.0, gamma: float = 1.0, cycle: float = 0.75, scale: float = 40.0
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.beta, self.gamma, self.cycle, self.scale = beta, gamma, cycle, scale

    @property
    def judge_id(self) -> str:
        """Name plus settings (cache key)."""
        b, g, c, s = self.beta, self.gamma, self.cycle, self.scale
        return f"{self.name}(beta={b},gamma={g},cycle={c},scale={s})"

    def features(self, prompt: str, response: str) -> tuple[float, int, str | None]:
        """(correct in {0, 1}, length in characters, style or None) of one response."""
        return _features(prompt, response)

    def logit(self, prompt: str, a: str, b: str) -> float:
        """The preference logit of a over b (exactly antisymmetric in a, b)."""
        ca, la, sa = self.features(prompt, a)
        cb, lb, sb = self.features(prompt, b)
        return (
            self.beta * (ca - cb)
            + self.gamma * _odd_tanh((la - lb) / self.scale)
            + self.cycle * style_cycle(sa, sb)
        )

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        return [
            sigmoid_pair(self.logit(p, a, b)) for p, a, b in zip(prompts, responses_a, responses_b)
        ]


@register_judge("gym-gold")
class GymGoldJudge(Judge):
    """Evaluation judge: P(a≻b) = σ(q(a) − q(b)), q(y) = β·correct(y) − γ·tanh(len(y)/scale).

    Defaults β=3, γ=1, scale=40: correct beats wrong (σ(3) ≈ 0.95 at equal length); among
    equally correct answers the shorter one is mildly preferred; no style term, so it is
    transitive (a reward exists).
    """

    def __init__(self, beta: float = 3.0, gamma: float = 1.0, scale: float = 40.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.beta, self.gamma, self.scale = beta, gamma, scale

    @property
    def judge_id(self) -> str:
        """Name plus settings (cache key)."""
        return f"{self.name}(beta={self.beta},gamma={self.gamma},scale={self.scale})"

    def features(self, prompt: str, response: str) -> tuple[float, int, str | None]:
        """(correct in {0, 1}, length in characters, style or None) of one response."""
        return _features(prompt, response)

    def quality(self, prompt: str, response: str) -> float:
        """The gold reward q(y) of one response."""
        correct, length, _ = self.features(prompt, response)
        return self.beta * correct - self.gamma * math.tanh(length / self.scale)

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        return [
            sigmoid_pair(self.quality(p, a) - self.quality(p, b))
            for p, a, b in zip(prompts, responses_a, responses_b)
        ]
