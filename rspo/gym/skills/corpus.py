"""Seeded SFT corpora for the skills gym: a careful demonstrator, then a sloppy one.

Each demonstrator answers fresh train-split instances in three answer styles and pads some
answers with filler sentences. The careful one is always right; the sloppy one is right half
the time. The base policy is trained on the careful corpus first (it learns the skills: its
greedy answers are right) and then briefly on the sloppy one (its samples become wrong or
padded often), so sharpening has room and a length-biased judge has something to exploit.
See docs/gym.md for how each number was chosen.
"""

from __future__ import annotations

import random

from rspo.gym.corpus import STYLE_MIX, Demo, fillers, render
from rspo.gym.skills.tasks import SKILLS, draw, wrong_answer
from rspo.gym.tasks import GymPrompt

Mix = dict[tuple[bool, bool], float]
#: share of answers padded with filler sentences, right or wrong
PADDED_SHARE = 0.37


def quality_mix(correct: float, padded: float = PADDED_SHARE) -> Mix:
    """Demonstration kinds ``(correct, padded) -> probability``: right with probability
    ``correct``, padded with probability ``padded``, independently."""
    return {
        (True, False): correct * (1 - padded),
        (True, True): correct * padded,
        (False, False): (1 - correct) * (1 - padded),
        (False, True): (1 - correct) * padded,
    }


#: the careful demonstrator (the base's first SFT stage): always right
CAREFUL_MIX: Mix = quality_mix(1.0)
#: the sloppy demonstrator (the second stage, and the pairs gym-rm is trained on)
QUALITY_MIX: Mix = quality_mix(0.5)
#: how the sloppy demonstrator's wrong answers are made, per skill
#: (``rspo.gym.skills.tasks.NOISE_KINDS``): a random answer of the right form where that
#: leaves the skill itself intact (max, min, last), a slip of the skill for sort (a random
#: sorted list would compete with sorting; docs/gym.md)
NOISE: str | dict[str, str] = {"sort": "slip", "max": "random", "min": "random", "last": "random"}


def make_demo(prompt: GymPrompt, rng: random.Random, mix: Mix | None = None,
              noise: str | dict[str, str] | None = None) -> Demo:
    """One demonstration for ``prompt``, drawn from ``mix`` (default :data:`QUALITY_MIX`)
    with wrong answers made by ``noise`` (default :data:`NOISE`)."""
    mix = QUALITY_MIX if mix is None else mix
    correct, padded = rng.choices(list(mix), weights=list(mix.values()))[0]
    style = rng.choices(list(STYLE_MIX), weights=list(STYLE_MIX.values()))[0]
    kind = noise or NOISE
    kind = kind[prompt.skill] if isinstance(kind, dict) else kind
    answer = prompt.answer if correct else wrong_answer(prompt, rng, kind)
    prefix, suffix = fillers(rng) if padded else ([], [])
    response = render(answer, style, prefix, suffix)
    return Demo(prompt.text, response, prompt.skill, correct, padded, style)


def make_corpus(n: int, seed: int = 0, mix: Mix | None = None,
                noise: str | dict[str, str] | None = None) -> list[Demo]:
    """``n`` demonstrations on fresh train-split instances, deterministic in ``seed``."""
    rng = random.Random(f"rspo-gym-skills-corpus:{seed}")
    return [make_demo(draw("train", rng, rng.choice(SKILLS)), rng, mix, noise) for _ in range(n)]
