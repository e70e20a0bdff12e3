"""The skills gym: prompts, answer checking, corpus mix and the analytic judges."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from rspo.gym.skills.corpus import QUALITY_MIX, make_corpus
from rspo.gym.skills.tasks import (
    SKILLS,
    check_answer,
    draw,
    lookup,
    make_prompts,
    skill_of,
    split_of,
    wrong_answer,
)
from rspo.judges import JudgeError, build_judge


def test_prompts_are_distinct_balanced_deterministic_and_in_their_split():
    ps = make_prompts("eval", 200, seed=3)
    assert [p.text for p in ps] == [p.text for p in make_prompts("eval", 200, seed=3)]
    assert [p.text for p in ps] != [p.text for p in make_prompts("eval", 200, seed=4)]
    assert len({p.text for p in ps}) == 200
    assert Counter(p.skill for p in ps) == {s: 50 for s in SKILLS}
    assert all(split_of(p.text) == "eval" for p in ps)
    train = make_prompts("train", 400, seed=3)
    assert not {p.text for p in train} & {p.text for p in ps}
    share = sum(split_of(p.text) == "eval" for p in make_prompts("train", 10, seed=0))
    assert share == 0


def test_split_is_a_fifth_of_the_space():
    rng = random.Random(0)
    drawn = [split_of(draw("train", rng, s).text) for s in SKILLS for _ in range(5)]
    assert set(drawn) == {"train"}
    texts = [
        f"Q: Which digit is largest: {a} {b} {c} {d}?\nA:"
        for a in range(10)
        for b in range(10)
        for c in range(10)
        for d in range(10)
    ]
    frac = sum(split_of(t) == "eval" for t in texts) / len(texts)
    assert 0.18 < frac < 0.22


@pytest.mark.parametrize(
    ("question", "answer", "skill"),
    [
        ("Sort the digits 7 3 9 1 3.", "1 3 3 7 9", "sort"),
        ("Which digit is largest: 5 2 6 5?", "6", "max"),
        ("How many 7s are in 7 3 7 1 7?", "3", "count"),
        ("How many 4s are in 7 3 7 1 7 0?", "0", "count"),
        ("What is the last letter of 'kqzmt'?", "t", "last"),
    ],
)
def test_answers_are_recomputed_from_the_text(question, answer, skill):
    p = lookup(f"Q: {question}\nA:")
    assert (p.answer, p.skill) == (answer, skill)
    assert lookup(question).answer == answer  # a bare question is framed first
    assert skill_of(p.text) == skill
    for good in (
        f" {answer}",
        f" Answer: {answer}",
        f" The answer is {answer}.",
        f" Sure! {answer}. Happy to help.",
    ):
        assert check_answer(p.text, good)
    for bad in (" ", " Sure!", f" {answer}0", f" Answer {answer}", " I hope this helps!"):
        assert not check_answer(p.text, bad)


def test_non_skill_prompts_are_refused():
    with pytest.raises(ValueError, match="not a gym-skills"):
        lookup("Q: What colour is a banana?\nA:")
    with pytest.raises(ValueError, match="n must be"):
        make_prompts("eval", 10**6)
    with pytest.raises(ValueError, match="unknown gym-skills split"):
        make_prompts("test", 3)


def test_wrong_answers_are_wrong_and_well_formed():
    rng = random.Random(1)
    for p in make_prompts("train", 400, seed=1):
        w = wrong_answer(p, rng)
        assert w != p.answer
        assert not check_answer(p.text, f" {w}")


def test_corpus_follows_its_mix_and_labels():
    demos = make_corpus(4000, seed=0)
    assert demos == make_corpus(4000, seed=0)
    assert all(check_answer(d.prompt, d.response) == d.correct for d in demos)
    counts = Counter((d.correct, d.padded) for d in demos)
    for kind, w in QUALITY_MIX.items():
        assert abs(counts[kind] / len(demos) - w) < 0.03, kind
    assert all(split_of(d.prompt) == "train" for d in demos)


def test_analytic_judges_follow_their_formulas():
    gold, proxy = build_judge("gym-skills-gold"), build_judge("gym-skills-proxy")
    p = "Q: Which digit is largest: 1 2 5 3?\nA:"
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert gold.prefer([p], [" 5"], [" 3"])[0] == pytest.approx(sig(3.0), abs=1e-12)
    padded = " Sure! 5"  # 7 characters against 1: gold charges tanh(len / 40)
    want = sig(-math.tanh(7 / 40) + math.tanh(1 / 40))
    assert gold.prefer([p], [padded], [" 5"])[0] == pytest.approx(want, abs=1e-12)
    # the proxy pays for length: the padded correct answer beats the concise one
    assert proxy.prefer([p], [padded], [" 5"])[0] == pytest.approx(sig(math.tanh(6 / 40)))
    ab = proxy.prefer([p, p], [" 5", " Answer: 3"], [" Answer: 3", " 5"])
    assert ab[0] + ab[1] == 1.0
    assert gold.judge_id != build_judge("gym-skills-gold", beta=4.0).judge_id
    assert gold.judge_id.startswith("gym-skills-gold(")
    with pytest.raises(JudgeError, match="gym-skills"):
        gold.prefer(["Q: What colour is a banana?\nA:"], [" yellow"], [" red"])


def test_the_skills_preset_sits_on_the_gym_preset():
    from rspo.config import load_config

    for cfg in (
        load_config(None, {"model": {"path": "gym-skills"}}),
        load_config(None, [], preset="gym-skills"),
    ):
        assert (cfg.model.path, cfg.data.prompts, cfg.data.eval_prompts) == ("gym-skills",) * 3
        assert (cfg.judge.name, cfg.evaluation.judge) == ("gym-skills-proxy", "gym-skills-gold")
        assert cfg.evaluation.accuracy_fn == "rspo.gym.skills.tasks:check_answer"
        assert cfg.evaluation.subset_fn == "rspo.gym.skills.tasks:skill_of"
        gym = load_config(None, [], preset="gym")
        assert (cfg.objective.eta, cfg.training.lr) == (gym.objective.eta, gym.training.lr)
    assert load_config(None, {"model": {"path": "gym-skills"}}, preset="none").training.lr != (
        load_config(None, [], preset="gym").training.lr
    )
