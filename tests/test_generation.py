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


@pytest.mark.parametrize("decode", ["auto", "generate"])
def test_noise_drawn_on_the_device_gives_the_cpu_samples(tiny, monkeypatch, decode):
    """On an accelerator each row's Gumbel noise comes from its own generator on the device,
    one rand(vocab) per step (the host path draws rows x vocab float64 values per step). On
    the CPU the same per-step draws must reproduce the host path's samples exactly: same
    streams, rows dropping out of the decode loop keep their own."""
    from rspo.generation.hf import SeededGumbelSampler

    tok, model = tiny
    prompts = [tok(s)["input_ids"] for s in ["Q: a\nA:", "Q: longer prompt\nA:"]] * 4
    seeds = list(range(7, 15))
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95)

    def run():
        b = build_backend("hf", model, tok, batch_size=8, logprobs=True, decode=decode)
        return [(c.ids, c.logprob) for c in b.generate(prompts, seeds, params)]

    host = run()
    drawn = []
    real = SeededGumbelSampler._device_gumbel

    def spy(self, vocab, device, rows):
        drawn.append(len(self._device_gens) if rows is None else len(rows))
        return real(self, vocab, device, rows)

    monkeypatch.setattr(SeededGumbelSampler, "HOST_NOISE", ())  # "cpu" acts as the device
    monkeypatch.setattr(SeededGumbelSampler, "_device_gumbel", spy)
    assert run() == host
    assert len(drawn) >= 2 and max(drawn) == 8  # the device path ran, every step
    assert decode == "generate" or min(drawn) < 8  # finished rows stop drawing


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


def test_stop_ids_are_the_tokenizers_eos_then_the_generation_configs():
    from types import SimpleNamespace

    from rspo.generation.base import stop_ids

    tok = SimpleNamespace(eos_token_id=2)
    assert stop_ids(tok) == stop_ids(tok, SimpleNamespace(eos_token_id=None)) == [2]
    assert stop_ids(tok, SimpleNamespace(eos_token_id=7)) == [2, 7]
    assert stop_ids(tok, SimpleNamespace(eos_token_id=[7, 2, 9])) == [2, 7, 9]


@pytest.mark.parametrize("decode", ["auto", "generate"])
def test_a_turn_end_in_the_generation_config_stops_responses(decode):
    """Llama 3 / Phi-3 / Gemma chat models end a turn with a token that is only in
    generation_config.eos_token_id: responses must stop there (finished, text without it),
    as ``model.generate`` with the model's own generation config does."""
    tok = build_byte_tokenizer()
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3).eval()
    prompts = [tok(s)["input_ids"] for s in ["Q: a\nA:", "Q: longer prompt\nA:", "Q: x\nA:"]]
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    free = build_backend("hf", model, tok, batch_size=3).generate(prompts, [0, 1, 2], params)
    assert not any(c.finished for c in free)
    turn_end = free[0].ids[2]  # the model's 3rd greedy token for prompt 0: a turn end now
    model.generation_config.eos_token_id = [tok.eos_token_id, turn_end]
    got = build_backend("hf", model, tok, batch_size=3, decode=decode).generate(
        prompts, [0, 1, 2], params
    )
    for c, f, p in zip(got, free, prompts):
        want = model.generate(input_ids=torch.tensor([p]), do_sample=False, max_new_tokens=16)[
            0, len(p) :
        ].tolist()
        cut = next((i + 1 for i, t in enumerate(f.ids) if t == turn_end), len(f.ids))
        assert c.ids == f.ids[:cut] == want[:cut]
        assert c.finished == (turn_end in f.ids)
        assert c.text == tok.decode(c.ids[:-1] if c.finished else c.ids, skip_special_tokens=True)
    assert got[0].finished and got[0].ids[-1] == turn_end and len(got[0].ids) < len(free[0].ids)
