"""The gym's proxy (training) and gold (evaluation) judges."""

import itertools
import math

import pytest

from rspo.gym.judges import GymGoldJudge, GymProxyJudge, sigmoid_pair, style_cycle
from rspo.judges import JudgeError, build_judge

COW = "Q: What sound does a cow make?\nA:"
CONCISE = " moo"
SENTENCE = " The answer is moo."
COLON = " Answer: moo"
PADDED = " Sure! Great question! The answer is moo. I hope this helps!"
WRONG = " The answer is baa."
RESPONSES = [CONCISE, SENTENCE, COLON, PADDED, WRONG, "", " ???", " Sure!", "\n\n"]


def test_registered():
    assert isinstance(build_judge("gym-proxy"), GymProxyJudge)
    assert isinstance(build_judge("gym-gold", gamma=0.5), GymGoldJudge)


def test_proxy_formula_hand_computed():
    # correct bare (3 chars) vs wrong sentence (18 chars); bare beats sentence in the cycle
    p = GymProxyJudge().prefer([COW], [CONCISE], [WRONG])[0]
    assert p == pytest.approx(1 / (1 + math.exp(-(2 + math.tanh(-15 / 40) + 0.75))))
    assert p == pytest.approx(0.9161878, abs=1e-6)
    j = GymProxyJudge(beta=1.0, gamma=0.5, cycle=0.0, scale=10.0)
    p = j.prefer([COW], [PADDED], [CONCISE])[0]  # 59 vs 3 characters, both correct
    assert p == pytest.approx(1 / (1 + math.exp(-0.5 * math.tanh(56 / 10))))


def test_gold_formula_hand_computed():
    p = GymGoldJudge().prefer([COW], [CONCISE], [WRONG])[0]
    qa, qb = 3 - math.tanh(3 / 40), -math.tanh(18 / 40)
    assert p == pytest.approx(1 / (1 + math.exp(-(qa - qb))))
    assert p == pytest.approx(0.9660078, abs=1e-6)


@pytest.mark.parametrize("judge", [GymProxyJudge(), GymGoldJudge()], ids=["proxy", "gold"])
def test_exact_skew_symmetry_and_determinism(judge):
    pairs = list(itertools.product(RESPONSES, repeat=2))
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    prompts = [COW] * len(pairs)
    p_ab = judge.prefer(prompts, a, b)
    p_ba = judge.prefer(prompts, b, a)
    assert all(x + y == 1.0 for x, y in zip(p_ab, p_ba))
    assert p_ab == judge.prefer(prompts, a, b)
    for (x, y), p in zip(pairs, p_ab):
        if x == y:
            assert p == 0.5


def test_sigmoid_pair_exact():
    for x in [0.0, 1e-12, 0.3, 2.0, 17.5, 40.0, 800.0]:
        assert sigmoid_pair(x) + sigmoid_pair(-x) == 1.0


def test_malformed_counts_as_wrong():
    for judge in (GymProxyJudge(), GymGoldJudge()):
        for bad in ["", " ???", " Sure!", "\n"]:
            assert judge.prefer([COW], [CONCISE], [bad])[0] > 0.8


def test_proxy_cycle_is_non_transitive():
    assert style_cycle("bare", "sentence") == 1 and style_cycle("sentence", "bare") == -1
    j = GymProxyJudge()
    triple = [(CONCISE, SENTENCE), (SENTENCE, COLON), (COLON, CONCISE)]
    probs = j.prefer([COW] * 3, [a for a, _ in triple], [b for _, b in triple])
    assert all(p > 0.5 for p in probs)  # bare ≻ sentence ≻ colon ≻ bare, length included
    gold = GymGoldJudge()
    g = gold.prefer([COW] * 3, [a for a, _ in triple], [b for _, b in triple])
    assert not all(p > 0.5 for p in g)


def test_length_bias_proxy_not_gold():
    proxy = GymProxyJudge().prefer([COW], [PADDED], [SENTENCE])[0]
    gold = GymGoldJudge().prefer([COW], [PADDED], [SENTENCE])[0]
    assert proxy > 0.6 and gold < 0.5
    # correctness still dominates both: padded wrong loses to concise correct
    padded_wrong = " Sure! Great question! The answer is baa. I hope this helps!"
    assert GymProxyJudge().prefer([COW], [padded_wrong], [SENTENCE])[0] < 0.5
    assert GymGoldJudge().prefer([COW], [padded_wrong], [SENTENCE])[0] < 0.1


def test_foreign_prompt_is_a_judge_error():
    with pytest.raises(JudgeError):
        GymGoldJudge().prefer(["Q: Tell me a joke.\nA:"], [" no"], [" yes"])
