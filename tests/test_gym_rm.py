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
    expected, wrong, n = 0.0, 0, 0
    for x in labels:
        c, lc, _ = skill_features(x["prompt"], x["chosen"])
        r, lr, _ = skill_features(x["prompt"], x["rejected"])
        if c == r:
            continue
        n += 1
        wrong += c < r
        good, bad = ((c, lc), (r, lr)) if c > r else ((r, lr), (c, lc))
        expected += 1 - annotator_prob(*good, *bad)  # chance the annotator picked the wrong one
    # the labels are draws from the annotator: wrong picks as often as it says, within 4 s.e.
    se = math.sqrt(expected * (1 - expected / n))
    assert n > 1000 and wrong > 0 and abs(wrong - expected) < 4 * se


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


def test_shipped_reward_model_learned_correctness_and_the_length_bias():
    """On held-out pairs whose answers differ in correctness, the shipped model mostly
    prefers the right one, also when the lengths match; between answers equally right or
    wrong it mostly prefers the longer: the annotator's length bias, learned too
    (docs/gym.md has the measured rates)."""
    judge = build_judge("gym-rm")
    assert str(rm_path()) in judge.judge_id
    labels = make_label_set(1000, seed=99)  # pairs the model was not trained on
    prompts, chosen, rejected = ([x[k] for x in labels] for k in ("prompt", "chosen", "rejected"))
    p = judge.prefer(prompts, chosen, rejected)
    right, same_len, longer = [], [], []
    for x, v in zip(labels, p):
        c, lc, _ = skill_features(x["prompt"], x["chosen"])
        r, lr, _ = skill_features(x["prompt"], x["rejected"])
        if c != r:  # does it prefer the right one?
            right.append((v > 0.5) == (c > r))
            if abs(lc - lr) <= 3:
                same_len.append((v > 0.5) == (c > r))
        elif abs(lc - lr) >= 10:  # equally right: does it prefer the longer?
            longer.append((v > 0.5) == (lc > lr))
    assert len(right) > 300 and sum(right) / len(right) > 0.65
    assert len(same_len) >= 50 and sum(same_len) / len(same_len) > 0.6
    assert len(longer) > 200 and sum(longer) / len(longer) > 0.6
