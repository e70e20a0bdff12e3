"""HF backend: seeded per-sequence sampling, exact sampling distribution, EOS/truncation."""

import collections

import pytest
import torch

from rspo.generation import SamplingParams, build_backend
from rspo.generation.hf import filter_logits
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = build_byte_tokenizer()
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    with torch.no_grad():  # make next-token distributions peaked enough to test frequencies
        model.lm_head.weight.mul_(8.0)
    return tok, model.eval()


def test_filter_logits_top_k_top_p_by_hand():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = filter_logits(scores, 1.0, 0, 1.0).exp()
    assert torch.allclose(p, torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(scores, 1.0, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p08 = filter_logits(scores, 1.0, 0, 0.8)  # 0.5 + 0.3 reaches 0.8: keep two
    assert torch.isfinite(p08[0, :2]).all() and torch.isinf(p08[0, 2:]).all()
    p081 = filter_logits(scores, 1.0, 0, 0.81)  # needs the third token too
    assert torch.isfinite(p081[0, :3]).all() and torch.isinf(p081[0, 3])
    t2 = filter_logits(scores, 2.0, 0, 1.0).exp()
    ref = torch.tensor([[0.5, 0.3, 0.15, 0.05]]) ** 0.5
    assert torch.allclose(t2, ref / ref.sum(), atol=1e-6)


def test_samples_do_not_depend_on_batching_or_order(tiny):
    tok, model = tiny
    prompts = [tok(s)["input_ids"] for s in ["Q: a\nA:", "Q: longer prompt\nA:", "Q: x\nA:"]] * 3
    seeds = list(range(100, 109))
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    a = build_backend("hf", model, tok, batch_size=9).generate(prompts, seeds, params)
    b = build_backend("hf", model, tok, batch_size=2).generate(prompts[::-1], seeds[::-1], params)[
        ::-1
    ]
    assert [c.ids for c in a] == [c.ids for c in b]
    c = build_backend("hf", model, tok, batch_size=4).generate(
        prompts, [s + 1 for s in seeds], params
    )
    assert [x.ids for x in a] != [x.ids for x in c]


def test_first_token_frequencies_match_the_model_distribution(tiny):
    tok, model = tiny
    prompt = tok("Q:")["input_ids"]
    n = 4000
    params = SamplingParams(max_new_tokens=1, temperature=1.0)
    comps = build_backend("hf", model, tok, batch_size=1000).generate(
        [prompt] * n, list(range(n)), params
    )
    counts = collections.Counter(c.ids[0] for c in comps)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    top = torch.topk(probs, 3)
    assert top.values.sum() > 0.3  # the check below is informative
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        se = (p * (1 - p) / n) ** 0.5
        assert abs(counts[i] / n - p) < 4 * se + 1e-3


def test_greedy_equals_argmax_and_truncation_flag(tiny):
    tok, model = tiny
    prompt = tok("Q: hi\nA:")["input_ids"]
    (c,) = build_backend("hf", model, tok).generate(
        [prompt], [0], SamplingParams(max_new_tokens=5, temperature=0)
    )
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(c.ids)):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
    assert c.ids == ids[len(prompt) :]
    assert c.finished == (tok.eos_token_id in c.ids)
    assert c.truncated == (len(c.ids) == 5 and tok.eos_token_id not in c.ids)


def test_unknown_backend_is_named(tiny):
    tok, model = tiny
    with pytest.raises(ValueError, match="allowed: hf, vllm"):
        build_backend("nope", model, tok)
