"""Templated prompts with checkable answers, split into seeded train/eval sets.

Every prompt is ``"Q: <question>\\nA:"``. The universe of prompts is finite (~1.2k); the
split of it is fixed (hash-based, independent of any seed) so train and eval never share a
prompt text, and the eval split also holds entities never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rspo.gym import facts

SPLITS: tuple[str, ...] = ("train", "eval")


@dataclass(frozen=True)
class GymPrompt:
    """One gym prompt: ``text`` is exactly what the policy sees; ``answer`` a reference."""

    text: str
    skill: str
    answer: str
    unseen: bool = False  # entity never appears in the train split (eval only)


@dataclass(frozen=True)
class _Item:
    """Internal: a prompt plus what is needed to check answers to it."""

    prompt: GymPrompt
    key: tuple  # skill-specific entity
    split: str


def format_prompt(question: str) -> str:
    """Wrap a question in the gym's Q/A frame."""
    return f"Q: {question}\nA:"


def _digest(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")


def _entities() -> Iterable[tuple[str, tuple, dict, str, bool]]:
    """Yield (skill, key, template fields, reference answer, eval_only) for every entity."""
    for thing, colour in facts.COLOUR_OF.items():
        yield "colour", (thing,), {"x": thing}, colour, thing in facts.COLOUR_EVAL_ONLY
    for animal, sound in facts.SOUND_OF.items():
        yield "sound", (animal,), {"x": animal}, sound, animal in facts.SOUND_EVAL_ONLY
    for a in range(facts.ARITH_MAX + 1):
        for b in range(facts.ARITH_MAX + 1):
            for op in ("+", "-"):
                if op == "-" and a < b:
                    continue
                ans = a + b if op == "+" else a - b
                key = (a, op, b)
                yield (
                    "arithmetic",
                    key,
                    {"a": a, "op": op, "b": b},
                    str(ans),
                    key in (facts.ARITH_EVAL_ONLY),
                )
    for word in facts.REVERSE_WORDS:
        yield "reverse", (word,), {"x": word}, word[::-1], word in facts.REVERSE_EVAL_ONLY
    for cat, members in facts.CATEGORY.items():
        for n in facts.LIST_COUNTS:
            ref = ", ".join(members[:n])
            yield "list", (cat, n), {"x": cat, "n": n}, ref, (cat, n) in facts.LIST_EVAL_ONLY
    for x in range(facts.PARITY_MAX + 1):
        ans = "even" if x % 2 == 0 else "odd"
        yield "parity", (x,), {"x": x}, ans, x in facts.PARITY_EVAL_ONLY


@lru_cache(maxsize=1)
def _universe() -> dict[str, _Item]:
    """All gym prompts keyed by text, each assigned to exactly one split.

    Eval-only entities go to eval in every template; every other entity has one template
    (chosen by hash) held out for eval, the rest are train.
    """
    out: dict[str, _Item] = {}
    for skill, key, fields, answer, eval_only in _entities():
        templates = facts.TEMPLATES[skill]
        h = _digest(f"{skill}|{key}")
        held = h % len(templates)
        for i, tmpl in enumerate(templates):
            text = format_prompt(tmpl.format(**fields))
            split = "eval" if eval_only or i == held else "train"
            prompt = GymPrompt(text=text, skill=skill, answer=answer, unseen=eval_only)
            if text in out:
                raise AssertionError(f"duplicate gym prompt {text!r}")
            out[text] = _Item(prompt=prompt, key=key, split=split)
    return out


def split_pool(split: str) -> list[GymPrompt]:
    """Every prompt of ``split`` in a fixed order (the population make_prompts samples)."""
    if split not in SPLITS:
        raise ValueError(f"unknown gym split {split!r}; valid: {', '.join(SPLITS)}")
    return [it.prompt for it in _universe().values() if it.split == split]


def make_prompts(split: str, n: int, seed: int = 0) -> list[GymPrompt]:
    """``n`` prompts of ``split``, skill-balanced, deterministic in ``seed``.

    Within each skill prompts are drawn without replacement until the pool is used up
    (then it is reshuffled), so ``n`` up to the pool size gives distinct prompts.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = split_pool(split)
    rng = random.Random(f"rspo-gym:{split}:{seed}")
    by_skill = {s: [p for p in pool if p.skill == s] for s in facts.SKILLS}
    queues: dict[str, list[GymPrompt]] = {s: [] for s in facts.SKILLS}
    out: list[GymPrompt] = []
    while len(out) < n:
        for s in facts.SKILLS:
            if len(out) >= n:
                break
            if not queues[s]:
                queues[s] = rng.sample(by_skill[s], len(by_skill[s]))
            out.append(queues[s].pop())
    rng.shuffle(out)
    return out


def write_prompts_jsonl(path: str | Path, prompts: Sequence[GymPrompt]) -> Path:
    """Write ``{"prompt", "skill", "answer"}`` lines (the format rspo's prompt loader reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            row = {"prompt": p.text, "skill": p.skill, "answer": p.answer}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------- parsing

_FILLER_RE = re.compile(
    r"(?:(?<=\s)|^)(?:"
    + "|".join(re.escape(f) for f in sorted(facts.FILLERS, key=len, reverse=True))
    + r")(?=\s|$)"
)
_STYLE_RES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sentence", re.compile(r"^the answer is (.+?)\.?$", re.IGNORECASE)),
    ("colon", re.compile(r"^answer: (.+?)\.?$", re.IGNORECASE)),
    ("bare", re.compile(r"^([a-z0-9][a-z0-9 ,'-]*?)\.?$", re.IGNORECASE)),
)


@dataclass(frozen=True)
class ParsedResponse:
    """A response split into its answer style, the answer text and the filler count."""

    style: str | None  # None: malformed (no recognised answer form)
    answer: str | None
    n_fillers: int


def parse_response(response: str) -> ParsedResponse:
    """Strip known filler sentences, then match the remainder against the answer styles."""
    text = " ".join(str(response).split())
    core, n_fill = _FILLER_RE.subn("", text)
    core = " ".join(core.split())
    for style, pat in _STYLE_RES:
        m = pat.match(core)
        if m:
            return ParsedResponse(style, " ".join(m.group(1).split()).lower(), n_fill)
    return ParsedResponse(None, None, n_fill)


def lookup(prompt_text: str) -> GymPrompt:
    """The gym prompt with this text (surrounding whitespace ignored); ValueError if none."""
    item = _universe().get(prompt_text.strip())
    if item is None:
        item = _universe().get(format_prompt(prompt_text.strip()))
    if item is None:
        raise ValueError(f"not a gym prompt: {prompt_text[:80]!r}")
    return item.prompt


def _key(prompt_text: str) -> tuple:
    return _universe()[lookup(prompt_text).text].key


def answer_is_correct(prompt: GymPrompt, answer: str | None) -> bool:
    """Whether an extracted (lower-cased) answer is right for ``prompt``."""
    if not answer:
        return False
    if prompt.skill == "list":
        cat, n = _key(prompt.text)
        items = [s.strip() for s in answer.split(",")]
        members = set(facts.CATEGORY[cat])
        return len(items) == n and len(set(items)) == n and all(i in members for i in items)
    if prompt.skill == "arithmetic":
        return answer.isdigit() and int(answer) == int(prompt.answer)
    return answer == prompt.answer


def check_answer(prompt_text: str, response: str) -> bool:
    """True iff ``response`` answers the gym prompt correctly (fillers allowed, any style).

    Correctness is recomputed from the prompt text; malformed or empty responses are
    wrong. Raises ValueError if ``prompt_text`` is not a gym prompt.
    """
    prompt = lookup(prompt_text)
    parsed = parse_response(response)
    return parsed.style is not None and answer_is_correct(prompt, parsed.answer)


def eval_subset(prompt_text: str) -> str:
    """``"unseen"`` for prompts about eval-only entities, else ``"seen"`` (a held-out phrasing
    of a trained fact): the gym's ``evaluation.subset_fn``."""
    return "unseen" if lookup(prompt_text).unseen else "seen"
