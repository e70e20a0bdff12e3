"""gym-rm: the simulated annotator, its label set, the reward-model training and the judge."""

from __future__ import annotations

import math

import pytest

from rspo.gym.skills.judges import skill_features
from rspo.gym.skills.rm import ANNOTATOR, annotator_prob, make_label_set, rm_path, train_rm
from rspo.gym.skills.tasks import split_of
from rspo.judges import build_judge


def test_annotator_is_length_biased_and_symmetric():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    b, g, s = ANNOTATOR["beta"], ANNOTATOR["gamma"], ANNOTATOR["scale"]
    assert annotator_prob(1, 5, 0, 5) == pytest.approx(sig(b))
    assert annotator_prob(1, 5, 1, 45) == pytest.approx(sig(-g * math.tanh(40 / s)))
    assert annotator_prob(0, 45, 1, 5) == pytest.approx(sig(-b + g * math.tanh(40 / s)))
    assert annotator_prob(1, 5, 0, 30) + annotator_prob(0, 30, 1, 5) == pytest.approx(1.0)


def test_label_set_is_seeded_noisy_and_on_train_prompts():
    labels = make_label_set(3000, seed=0)
    assert labels == make_label_set(3000, seed=0)
    assert labels != make_label_set(3000, seed=1)
    assert all(split_of(x["prompt"]) == "train" for x in labels)
    assert all(x["chosen"] != x["rejected"] for x in labels)
    right = wrong = 0
    for x in labels:
        c = skill_features(x["prompt"], x["chosen"])[0]
        r = skill_features(x["prompt"], x["rejected"])[0]
        right += c > r
        wrong += c < r
    # σ(2) ≈ 0.88 before length: the annotator picks the wrong answer in roughly 1 of 8
    # decided pairs, not never and not half the time
    assert 0.06 < wrong / (right + wrong) < 0.2


def test_reward_model_training_follows_the_labels(tmp_path):
    from rspo.gym.skills.base import skills_base_path

    prompt = "Q: Which digit is largest: 1 2 5 3?\nA:"
    pairs = [{"prompt": prompt, "chosen": " 5", "rejected": " 3"}] * 8
    model, tok, info = train_rm(skills_base_path(), pairs, steps=20, batch_size=4, lr=1e-3)
    assert tok(prompt + " 5")["input_ids"][-1] == tok.eos_token_id  # read at a closing EOS
    assert info["final_loss"] < 0.3  # ln 2 = 0.69 at the start
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = build_judge("gym-rm", model=str(tmp_path))
    assert judge.prefer([prompt], [" 5"], [" 3"])[0] > 0.75


def test_shipped_reward_model_prefers_correct_answers():
    judge = build_judge("gym-rm")
    assert str(rm_path()) in judge.judge_id
    held_out = make_label_set(200, seed=99)  # pairs the model was not trained on
    gold = build_judge("gym-skills-gold")
    pa = judge.prefer(
        [x["prompt"] for x in held_out],
        [x["chosen"] for x in held_out],
        [x["rejected"] for x in held_out],
    )
    pg = gold.prefer(
        [x["prompt"] for x in held_out],
        [x["chosen"] for x in held_out],
        [x["rejected"] for x in held_out],
    )
    decided = [(a > 0.5) == (g > 0.5) for a, g in zip(pa, pg) if abs(g - 0.5) > 0.2]
    assert sum(decided) / len(decided) > 0.7  # agrees with gold where gold is clear
