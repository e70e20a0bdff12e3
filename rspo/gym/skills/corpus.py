"""A seeded SFT corpus for the skills gym: a noisy demonstrator, right most of the time.

The demonstrator answers fresh train-split instances; it is wrong (a plausible slip) in a
fixed share of demos and pads some answers with filler sentences, in three answer styles.
The base policy imitates it, so its *mode* is mostly right while its samples are often
wrong or padded: sharpening has room, and a length-biased judge has something to exploit.
"""

from __future__ import annotations

import random

from rspo.gym.corpus import STYLE_MIX, Demo, fillers, render
from rspo.gym.skills.tasks import SKILLS, draw, wrong_answer
from rspo.gym.tasks import GymPrompt

#: demonstration kinds and their probabilities: (correct, padded) -> weight
QUALITY_MIX: dict[tuple[bool, bool], float] = {
    (True, False): 0.45,
    (True, True): 0.25,
    (False, False): 0.18,
    (False, True): 0.12,
}


def make_demo(prompt: GymPrompt, rng: random.Random) -> Demo:
    """One demonstration for ``prompt``, drawn from the documented mix."""
    correct, padded = rng.choices(list(QUALITY_MIX), weights=list(QUALITY_MIX.values()))[0]
    style = rng.choices(list(STYLE_MIX), weights=list(STYLE_MIX.values()))[0]
    answer = prompt.answer if correct else wrong_answer(prompt, rng)
    prefix, suffix = fillers(rng) if padded else ([], [])
    response = render(answer, style, prefix, suffix)
    return Demo(prompt.text, response, prompt.skill, correct, padded, style)


def make_corpus(n: int, seed: int = 0) -> list[Demo]:
    """``n`` demonstrations on fresh train-split instances, deterministic in ``seed``."""
    rng = random.Random(f"rspo-gym-skills-corpus:{seed}")
    return [make_demo(draw("train", rng, rng.choice(SKILLS)), rng) for _ in range(n)]
