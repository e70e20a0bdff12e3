"""A seeded SFT corpus of mixed quality: concise, padded, wrong, in three answer styles.

The base policy imitates this mix, so its samples differ in exactly the ways the judges
care about (correctness, length, style) and preference learning has something to select.
Only train-split prompts are used.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rspo.gym import facts
from rspo.gym.tasks import GymPrompt, _key, split_pool

#: demonstration kinds and their probabilities: (correct, padded) -> weight
QUALITY_MIX: dict[tuple[bool, bool], float] = {
    (True, False): 0.50,  # correct and concise
    (True, True): 0.30,  # correct, padded with filler sentences
    (False, False): 0.12,  # wrong and concise
    (False, True): 0.08,  # wrong and padded
}
#: answer-style probabilities (the proxy judge's cycle acts on styles)
STYLE_MIX: dict[str, float] = {"bare": 0.4, "colon": 0.3, "sentence": 0.3}
#: a padded demo has 1..MAX_FILLERS filler sentences, before and/or after the answer
MAX_FILLERS = 2


@dataclass(frozen=True)
class Demo:
    """One demonstration: prompt text, response (leading space, no EOS) and its labels."""

    prompt: str
    response: str
    skill: str
    correct: bool
    padded: bool
    style: str


def correct_answer(prompt: GymPrompt, rng: random.Random) -> str:
    """A right answer (lists: a random choice of distinct members)."""
    if prompt.skill == "list":
        cat, n = _key(prompt.text)
        return ", ".join(rng.sample(facts.CATEGORY[cat], n))
    return prompt.answer


def wrong_answer(prompt: GymPrompt, rng: random.Random) -> str:
    """A plausible but wrong answer of the same type."""
    s, ans = prompt.skill, prompt.answer
    if s == "colour":
        return rng.choice([c for c in facts.COLOURS if c != ans])
    if s == "sound":
        return rng.choice([x for x in facts.SOUNDS if x != ans])
    if s == "parity":
        return "odd" if ans == "even" else "even"
    if s == "arithmetic":
        v = int(ans)
        return str(rng.choice([w for w in range(max(0, v - 3), v + 4) if w != v]))
    if s == "reverse":
        word = ans[::-1]
        kind = rng.randrange(3)
        if kind == 0:
            return word  # not reversed at all
        if kind == 1:  # reversed with two neighbouring letters swapped
            i = rng.randrange(len(ans) - 1)
            swapped = ans[:i] + ans[i + 1] + ans[i] + ans[i + 2 :]
            return swapped if swapped != ans else word
        other = [w for w in facts.REVERSE_WORDS if w != word and w not in facts.REVERSE_EVAL_ONLY]
        return rng.choice(other)[::-1]
    if s == "list":
        cat, n = _key(prompt.text)
        if rng.random() < 0.5:  # wrong count
            m = n + rng.choice([-1, 1])
            return ", ".join(rng.sample(facts.CATEGORY[cat], m))
        items = rng.sample(facts.CATEGORY[cat], n - 1)
        other = rng.choice([c for c in facts.CATEGORY if c != cat])
        intruder = rng.choice([x for x in facts.CATEGORY[other] if x not in facts.CATEGORY[cat]])
        items.insert(rng.randrange(n), intruder)
        return ", ".join(items)
    raise ValueError(f"unknown skill {s!r}")


def render(answer: str, style: str, prefix: Sequence[str] = (), suffix: Sequence[str] = ()) -> str:
    """Build a response string (leading space, as it follows ``A:``)."""
    core = facts.STYLE_TEMPLATES[style].format(ans=answer)
    if suffix and not core.endswith("."):
        core += "."  # end the answer sentence before trailing filler
    return " " + " ".join([*prefix, core, *suffix])


def fillers(rng: random.Random) -> tuple[list[str], list[str]]:
    """1..MAX_FILLERS filler sentences, split at random between before and after the answer."""
    k = rng.randint(1, MAX_FILLERS)
    n_pre = rng.randint(0, k)
    return rng.sample(facts.PREFIX_FILLERS, n_pre), rng.sample(facts.SUFFIX_FILLERS, k - n_pre)


def _pick(rng: random.Random, mix: dict) -> object:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def make_demo(prompt: GymPrompt, rng: random.Random) -> Demo:
    """One demonstration for ``prompt`` drawn from the documented mix."""
    correct, padded = _pick(rng, QUALITY_MIX)
    style = str(_pick(rng, STYLE_MIX))
    answer = correct_answer(prompt, rng) if correct else wrong_answer(prompt, rng)
    prefix, suffix = fillers(rng) if padded else ([], [])
    response = render(answer, style, prefix, suffix)
    return Demo(prompt.text, response, prompt.skill, bool(correct), bool(padded), style)


def make_corpus(n: int, seed: int = 0) -> list[Demo]:
    """``n`` demonstrations on train-split prompts, skill-balanced, deterministic in seed."""
    rng = random.Random(f"rspo-gym-corpus:{seed}")
    pool = split_pool("train")
    by_skill = [[p for p in pool if p.skill == s] for s in facts.SKILLS]
    return [make_demo(rng.choice(rng.choice(by_skill)), rng) for _ in range(n)]


def write_corpus_jsonl(path: str | Path, demos: Sequence[Demo]) -> Path:
    """Write demos as JSON lines (prompt, response and labels) for inspection or reuse."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for d in demos:
            f.write(json.dumps(asdict(d), ensure_ascii=False) + "\n")
    return path
