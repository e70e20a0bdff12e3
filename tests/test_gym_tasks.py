"""Gym prompts, splits, answer checking and the SFT corpus."""

import json
from collections import Counter

import pytest

from rspo.gym import facts
from rspo.gym.corpus import QUALITY_MIX, make_corpus
from rspo.gym.tasks import (
    GymPrompt,
    check_answer,
    make_prompts,
    parse_response,
    split_pool,
    write_prompts_jsonl,
)


def test_splits_disjoint_and_fixed():
    train = {p.text for p in split_pool("train")}
    ev = {p.text for p in split_pool("eval")}
    assert train and ev and not train & ev
    assert all(t.startswith("Q: ") and t.endswith("\nA:") for t in train | ev)
    # every skill appears in both splits
    assert {p.skill for p in split_pool("train")} == set(facts.SKILLS)
    assert {p.skill for p in split_pool("eval")} == set(facts.SKILLS)


def test_make_prompts_deterministic_balanced():
    a = make_prompts("train", 60, seed=3)
    assert a == make_prompts("train", 60, seed=3)
    assert a != make_prompts("train", 60, seed=4)
    assert len({p.text for p in a}) == 60
    assert set(Counter(p.skill for p in a).values()) == {10}
    assert len(make_prompts("eval", 2000, seed=0)) == 2000  # cycles past the pool size
    with pytest.raises(ValueError):
        make_prompts("test", 5)


def test_eval_has_unseen_entities():
    ev = split_pool("eval")
    unseen = [p for p in ev if p.unseen]
    assert 0.1 < len(unseen) / len(ev) < 0.5
    assert {p.skill for p in unseen} == set(facts.SKILLS)
    train_text = " ".join(p.text for p in split_pool("train"))
    for thing in facts.COLOUR_EVAL_ONLY | facts.SOUND_EVAL_ONLY:
        assert f" {thing}?" not in train_text and f" {thing} " not in train_text
    for word in facts.REVERSE_EVAL_ONLY:
        assert f"'{word}'" not in train_text
    assert not any(p.unseen for p in split_pool("train"))
    corpus_prompts = {d.prompt for d in make_corpus(3000, seed=0)}
    assert corpus_prompts <= {p.text for p in split_pool("train")}


@pytest.mark.parametrize(
    ("question", "response", "ok"),
    [
        ("What colour is a banana?", " yellow", True),
        ("What colour is a banana?", " The answer is Yellow.", True),
        ("What colour is a banana?", " red", False),
        ("What colour is a banana?", " yellow, red", False),
        ("What sound does a cow make?", " Sure! Answer: moo. I hope this helps!", True),
        ("What sound does a cow make?", " Answer: moo Thanks", False),  # not a known filler
        ("What is 3 + 4?", " 7", True),
        ("What is 3 + 4?", " The answer is 8.", False),
        ("Compute 6 - 2.", " Answer: 4", True),
        ("Spell 'cat' backwards.", " tac", True),
        ("Spell 'cat' backwards.", " cat", False),
        ("Name 3 fruits.", " plum, apple, kiwi", True),
        ("Name 3 fruits.", " plum, apple", False),
        ("Name 3 fruits.", " plum, plum, kiwi", False),
        ("Name 3 fruits.", " plum, apple, carrot", False),
        ("Is 7 even or odd?", " odd", True),
        ("Is 7 even or odd?", " Good question. The answer is even.", False),
        ("Is 7 even or odd?", "", False),
        ("Is 7 even or odd?", " Sure!", False),
        ("Is 7 even or odd?", " ??odd", False),
    ],
)
def test_check_answer_hand_cases(question, response, ok):
    assert check_answer(f"Q: {question}\nA:", response) is ok


def test_check_answer_rejects_foreign_prompt():
    with pytest.raises(ValueError):
        check_answer("Q: What is the meaning of life?\nA:", " 42")


def test_parse_response_styles():
    assert parse_response(" moo").style == "bare"
    assert parse_response(" Answer: moo").style == "colon"
    p = parse_response(" Sure! Great question! The answer is moo. Happy to help.")
    assert (p.style, p.answer, p.n_fillers) == ("sentence", "moo", 3)
    assert parse_response(" !!").style is None


def test_corpus_mix_and_labels():
    demos = make_corpus(4000, seed=1)
    assert demos == make_corpus(4000, seed=1)
    assert all(check_answer(d.prompt, d.response) == d.correct for d in demos)
    assert all(parse_response(d.response).style == d.style for d in demos)
    frac_correct = sum(d.correct for d in demos) / len(demos)
    want = sum(w for (c, _), w in QUALITY_MIX.items() if c)
    assert abs(frac_correct - want) < 0.03
    padded = [d for d in demos if d.padded]
    assert all(parse_response(d.response).n_fillers > 0 for d in padded)
    mean_len = lambda ds: sum(len(d.response) for d in ds) / len(ds)  # noqa: E731
    assert mean_len(padded) > mean_len([d for d in demos if not d.padded]) + 20


def test_write_prompts_jsonl(tmp_path):
    prompts = make_prompts("eval", 5, seed=0)
    path = write_prompts_jsonl(tmp_path / "p.jsonl", prompts)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p.text for p in prompts]
    assert set(rows[0]) == {"prompt", "skill", "answer"}
    assert isinstance(prompts[0], GymPrompt)
