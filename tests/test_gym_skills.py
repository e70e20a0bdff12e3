"""The skills gym: prompts, answer checking, corpus mix and the analytic judges."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from rspo.gym.skills.corpus import QUALITY_MIX, make_corpus
from rspo.gym.skills.tasks import (
    NOISE_KINDS,
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
        ("Which digit is smallest: 5 2 6 2 8?", "2", "min"),
        ("Which letter comes first in the alphabet: q d z d?", "d", "first"),
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


ALL_SKILLS = ("sort", "max", "min", "first", "count", "last")


@pytest.mark.parametrize("noise", NOISE_KINDS)
def test_wrong_answers_are_wrong_and_well_formed(noise):
    rng = random.Random(1)
    for skill in ALL_SKILLS:
        for _ in range(100):
            p = draw("train", rng, skill)
            w = wrong_answer(p, rng, noise)
            assert w != p.answer
            assert not check_answer(p.text, f" {w}")
            assert lookup(p.text).answer == p.answer
            if skill in ("max", "min", "first", "count", "last"):
                assert len(w) == 1
            if skill == "sort":
                assert w.split() == sorted(w.split()) or noise == "slip"
    with pytest.raises(ValueError, match="unknown noise 'typo'"):
        wrong_answer(p, rng, "typo")


def test_a_slip_reads_the_instance_and_random_noise_does_not():
    """max: a slip is another digit of the list; a random wrong answer is any other digit, so
    over many draws it falls outside the list about as often as chance says."""
    rng = random.Random(2)
    outside = {"slip": 0, "random": 0}
    n = 400
    for _ in range(n):
        p = draw("train", rng, "max")
        digits = set(p.text.split("largest: ")[1].split("?")[0].split())
        for noise in outside:
            outside[noise] += wrong_answer(p, rng, noise) not in digits
    assert outside["slip"] == 0
    assert outside["random"] > n / 4  # 4-5 digits of 10 listed: most random answers miss


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


def test_demonstrators_mixes_and_noise():
    from rspo.gym.skills.corpus import CAREFUL_MIX, NOISE, PADDED_SHARE, quality_mix

    mix = quality_mix(0.4, padded=0.25)
    assert mix == pytest.approx(
        {(True, False): 0.3, (True, True): 0.1, (False, False): 0.45, (False, True): 0.15}
    )
    assert sum(QUALITY_MIX.values()) == pytest.approx(1.0)
    assert QUALITY_MIX == quality_mix(0.5, PADDED_SHARE)
    careful = make_corpus(400, seed=0, mix=CAREFUL_MIX)
    assert all(d.correct for d in careful) and any(d.padded for d in careful)
    assert set(NOISE) == set(SKILLS)  # every skill's wrong answers have a declared kind
    sloppy = [d for d in make_corpus(2000, seed=0) if not d.correct and d.skill == "max"]
    listed = [set(d.prompt.split("largest: ")[1].split("?")[0].split()) for d in sloppy]
    answers = [lookup(d.prompt) for d in sloppy]
    assert all(not check_answer(a.text, d.response) for a, d in zip(answers, sloppy))
    off_list = sum(
        not any(f" {x}" in d.response or d.response.endswith(x) for x in ls)
        for d, ls in zip(sloppy, listed)
    )
    assert off_list > len(sloppy) / 4  # max's wrong answers are random digits, not slips


def test_two_stage_build_continues_from_the_first_stage():
    """Stage 2 starts from stage 1's weights: with lr 0 it leaves them as they were."""
    import torch

    from rspo.gym.skills.base import train_skills_base

    tiny = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "batch_size": 4}
    one = [{"demonstrator": "careful", "seed": 0, "steps": 3, "lr": 1e-2}]
    first, _, _ = train_skills_base(**tiny, stages=one)
    still = one + [{"demonstrator": "sloppy", "seed": 1, "steps": 2, "lr": 0.0}]
    second, _, record = train_skills_base(**tiny, stages=still)
    moved = one + [{"demonstrator": "sloppy", "seed": 1, "steps": 2, "lr": 1e-2}]
    third, _, _ = train_skills_base(**tiny, stages=moved)
    a, b, c = (torch.cat([p.flatten() for p in m.parameters()]) for m in (first, second, third))
    assert torch.equal(a, b)  # same seeded stage 1, and stage 2 at lr 0 changes nothing
    assert not torch.equal(a, c)
    assert [s["demonstrator"] for s in record["stages"]] == ["careful", "sloppy"]
    assert record["train_seconds"] == pytest.approx(
        sum(s["train_seconds"] for s in record["stages"]), abs=0.11
    )
