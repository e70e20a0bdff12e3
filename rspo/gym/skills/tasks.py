"""Skill prompts drawn from large combinatorial spaces, with answers recomputed from the text.

Every prompt is ``"Q: <question>\\nA:"`` about a fresh random instance of one skill: sorting
4–5 digits, the largest or smallest of 4–5 digits, the last letter of a 4–6 letter string
(:data:`SKILLS`; ``count`` and ``first`` are also defined and were measured as candidates,
docs/gym.md). The space of instances is large (10^5–10^8 per skill), so the eval split is a
set of fresh draws from the training distribution: what self-play sharpens must transfer to
instances it never saw. The split is a fixed hash of the prompt text (20 % eval), so train
and eval never share a prompt whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from rspo.gym.tasks import GymPrompt, format_prompt, parse_response

#: the gym's skills (prompts are drawn round robin over them)
SKILLS: tuple[str, ...] = ("sort", "max", "min", "last")
SPLITS: tuple[str, ...] = ("train", "eval")
#: share of the prompt space held out for eval (by a hash of the prompt text)
EVAL_SHARE_PERCENT = 20

_TEMPLATES: dict[str, str] = {
    "sort": "Sort the digits {d}.",
    "max": "Which digit is largest: {d}?",
    "min": "Which digit is smallest: {d}?",
    "first": "Which letter comes first in the alphabet: {w}?",
    "count": "How many {x}s are in {d}?",
    "last": "What is the last letter of '{w}'?",
}
_PATTERNS: dict[str, re.Pattern[str]] = {
    "sort": re.compile(r"^Sort the digits ((?:\d ){3,4}\d)\.$"),
    "max": re.compile(r"^Which digit is largest: ((?:\d ){3,4}\d)\?$"),
    "min": re.compile(r"^Which digit is smallest: ((?:\d ){3,4}\d)\?$"),
    "first": re.compile(r"^Which letter comes first in the alphabet: ((?:[a-z] ){3,4}[a-z])\?$"),
    "count": re.compile(r"^How many (\d)s are in ((?:\d ){4,5}\d)\?$"),
    "last": re.compile(r"^What is the last letter of '([a-z]{4,6})'\?$"),
}


@dataclass(frozen=True)
class Instance:
    """One skill instance: the question's fields and the reference answer."""

    skill: str
    question: str
    answer: str


def _digits(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(lo, hi))]


def _instance(skill: str, rng: random.Random) -> Instance:
    """A random instance of ``skill``."""
    if skill == "sort":
        d = _digits(rng, 4, 5)
        q = _TEMPLATES[skill].format(d=" ".join(map(str, d)))
        return Instance(skill, q, " ".join(map(str, sorted(d))))
    if skill in ("max", "min"):
        d = _digits(rng, 4, 5)
        pick = max if skill == "max" else min
        return Instance(skill, _TEMPLATES[skill].format(d=" ".join(map(str, d))), str(pick(d)))
    if skill == "first":
        w = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 5))]
        return Instance(skill, _TEMPLATES[skill].format(w=" ".join(w)), min(w))
    if skill == "count":
        d, x = _digits(rng, 5, 6), rng.randint(0, 9)
        for i in rng.sample(range(len(d)), rng.randint(0, 3)):  # the digit asked about occurs
            d[i] = x  # 0-3 times beyond chance, so small counts are not all zeros
        q = _TEMPLATES[skill].format(x=x, d=" ".join(map(str, d)))
        return Instance(skill, q, str(d.count(x)))
    if skill == "last":
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 6)))
        return Instance(skill, _TEMPLATES[skill].format(w=w), w[-1])
    raise ValueError(f"unknown skill {skill!r}; valid: {', '.join(SKILLS)}")


def solve(question: str) -> Instance:
    """Parse a skill question and recompute its answer; ValueError if it is not one."""
    for skill, pat in _PATTERNS.items():
        m = pat.match(question)
        if not m:
            continue
        if skill == "sort":
            ans = " ".join(sorted(m.group(1).split()))
        elif skill == "max":
            ans = max(m.group(1).split())
        elif skill in ("min", "first"):
            ans = min(m.group(1).split())
        elif skill == "count":
            ans = str(m.group(2).split().count(m.group(1)))
        else:
            ans = m.group(1)[-1]
        return Instance(skill, question, ans)
    raise ValueError(f"not a gym-skills question: {question[:80]!r}")


def split_of(prompt_text: str) -> str:
    """``eval`` for the hashed 20 % of prompt texts, else ``train`` (seed-independent)."""
    h = int.from_bytes(hashlib.sha256(prompt_text.encode()).digest()[:8], "big")
    return "eval" if h % 100 < EVAL_SHARE_PERCENT else "train"


def lookup(prompt_text: str) -> GymPrompt:
    """The skill prompt with this text (a bare question is framed first); ValueError if none."""
    text = prompt_text.strip()
    if not text.startswith("Q: "):
        text = format_prompt(text)
    m = re.match(r"^Q: (.*)\nA:$", text, re.DOTALL)
    if not m:
        raise ValueError(f"not a gym-skills prompt: {prompt_text[:80]!r}")
    inst = solve(m.group(1))
    return GymPrompt(text=text, skill=inst.skill, answer=inst.answer)


#: most prompts ``make_prompts`` returns (a bound well inside every skill's eval split)
MAX_DISTINCT = 4096


def draw(split: str, rng: random.Random, skill: str) -> GymPrompt:
    """One random prompt of ``skill`` in ``split`` (rejection on the split's hash)."""
    while True:
        inst = _instance(skill, rng)
        text = format_prompt(inst.question)
        if split_of(text) == split:
            return GymPrompt(text=text, skill=skill, answer=inst.answer)


def make_prompts(split: str, n: int, seed: int = 0) -> list[GymPrompt]:
    """``n`` distinct prompts of ``split``, skill-balanced (round robin), deterministic in seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown gym-skills split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0 <= n <= MAX_DISTINCT:
        raise ValueError(f"n must be in [0, {MAX_DISTINCT}], got {n}")
    rng = random.Random(f"rspo-gym-skills:{split}:{seed}")
    out: list[GymPrompt] = []
    seen: set[str] = set()
    while len(out) < n:
        p = draw(split, rng, SKILLS[len(out) % len(SKILLS)])
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    rng.shuffle(out)
    return out


def answer_is_correct(prompt: GymPrompt, answer: str | None) -> bool:
    """Whether an extracted (lower-cased, whitespace-normalised) answer is right."""
    return bool(answer) and " ".join(answer.split()) == prompt.answer


def check_answer(prompt_text: str, response: str) -> bool:
    """True iff ``response`` answers the skill prompt correctly (fillers allowed, any style)."""
    prompt = lookup(prompt_text)
    parsed = parse_response(response)
    return parsed.style is not None and answer_is_correct(prompt, parsed.answer)


def skill_of(prompt_text: str) -> str:
    """The prompt's skill: ``evaluation.subset_fn`` for per-skill win rates."""
    return lookup(prompt_text).skill


#: how a wrong answer is made: ``slip`` reads the instance (two sorted digits swapped,
#: another digit or letter of the list, a count off by one or two); ``random`` does not (a
#: random answer of the right form), so it never competes with the skill itself
NOISE_KINDS: tuple[str, ...] = ("slip", "random")


def wrong_answer(prompt: GymPrompt, rng: random.Random, noise: str = "slip") -> str:
    """A wrong answer of the same form as the right one: a slip of the skill, or a random
    answer of that form (``noise``, one of :data:`NOISE_KINDS`)."""
    s, ans = prompt.skill, prompt.answer
    if noise not in NOISE_KINDS:
        raise ValueError(f"unknown noise {noise!r}; valid: {', '.join(NOISE_KINDS)}")
    if noise == "random":
        makers = _random_makers(prompt, rng)
    else:
        makers = {
            "sort": lambda: _perturb_digits(ans, rng),
            "max": lambda: rng.choice(_question_digits(prompt)),  # another digit of the list
            "min": lambda: rng.choice(_question_digits(prompt)),
            "first": lambda: rng.choice(_question_letters(prompt)),  # another letter of it
            "count": lambda: str(max(0, int(ans) + rng.choice([-1, 1, 1, 2]))),
            "last": lambda: rng.choice(_question_word(prompt)[:-1] or string.ascii_lowercase),
        }
    for _ in range(20):
        w = makers[s]()
        if w != ans:
            return w
    return "x" if s == "last" and ans != "x" else ans + ans[-1]  # a last resort, always wrong


def _random_makers(prompt: GymPrompt, rng: random.Random) -> dict[str, Callable[[], str]]:
    """Per skill, a random answer of the right form that does not read the instance's content
    (only its size: as many digits as the list for sort, a count up to the list's length)."""
    n = len(prompt.answer.split())
    letters = string.ascii_lowercase
    return {
        "sort": lambda: " ".join(sorted(str(rng.randint(0, 9)) for _ in range(n))),
        "max": lambda: str(rng.randint(0, 9)),
        "min": lambda: str(rng.randint(0, 9)),
        "first": lambda: rng.choice(letters),
        "count": lambda: str(rng.randint(0, len(_question_digits(prompt)))),
        "last": lambda: rng.choice(letters),
    }


def _question_digits(prompt: GymPrompt) -> list[str]:
    """The digit list of a max, min or count question."""
    listed = re.findall(r"(?:largest:|smallest:|are in) ([\d ]+)\?", prompt.text)[0]
    return re.findall(r"\d", listed)


def _question_letters(prompt: GymPrompt) -> list[str]:
    """The letter list of a ``first`` question."""
    return re.findall(r"alphabet: ([a-z ]+)\?", prompt.text)[0].split()


def _question_word(prompt: GymPrompt) -> str:
    """The word of a ``last`` question."""
    return re.findall(r"'([a-z]+)'", prompt.text)[0]


def _perturb_digits(ans: str, rng: random.Random) -> str:
    """Two neighbouring digits swapped, one digit changed, or one dropped."""
    d = ans.split()
    i = rng.randrange(len(d) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        d[i], d[i + 1] = d[i + 1], d[i]
    elif kind == 1:
        d[i] = str(rng.randint(0, 9))
    else:
        del d[i]
    return " ".join(d)
