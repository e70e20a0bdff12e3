"""Prefix-shared packing and log π recorded while sampling: same numbers as the plain forward."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig

from rspo.config import TrainingConfig, load_config
from rspo.generation.base import SamplingParams
from rspo.generation.hf import HFBackend
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.modeling import cached_probe, forget_probes, sequence_logprobs, use_packing
from rspo.objectives import RSPOLoss
from rspo.packing import pack, packing_supported
from rspo.training.trainer import RefExample, TrainExample, accumulate_gradients

from fixtures_lm import make_pipeline_env, tiny_run


def _model(attn: str = "sdpa", dtype=torch.float64):
    tok = build_byte_tokenizer()
    m = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3).to(dtype)
    m.config._attn_implementation = attn
    return m, tok


def _pairs(seed: int = 0):
    """Three prompts of different lengths, 1-4 responses each (one empty), shuffled order."""
    g = torch.Generator().manual_seed(seed)
    prompts, resps = [], []
    for i, k in enumerate((3, 1, 4)):
        p = torch.randint(0, 256, (3 + 5 * i,), generator=g).tolist()
        for j in range(k):
            n = 0 if (i, j) == (2, 1) else int(torch.randint(1, 9, (1,), generator=g))
            prompts.append(p)
            resps.append(torch.randint(0, 256, (n,), generator=g).tolist())
    order = torch.randperm(len(prompts), generator=g).tolist()
    return [prompts[o] for o in order], [resps[o] for o in order]


def test_layout_of_a_hand_built_example():
    # prompts A = [1, 2] (two responses) and B = [3] (one): A's group is 2 + 2 + 1 = 5 tokens,
    # B's 1 + 2 = 3; capacity = 5, so they take separate rows (first-fit decreasing)
    b = pack([[1, 2], [3], [1, 2]], [[4, 5], [7, 8], [6]], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 8, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    allowed = b.allowed[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # r1[0] sees the prompt and itself
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # r2[0] sees the prompt, not r1
    ]
    assert b.allowed[1, 0, 3].int().tolist() == [0, 0, 0, 1, 0]  # padding sees only itself
    # token -> (row, position whose logits predict it), owner pair
    assert b.src.tolist() == [[0, 1], [0, 2], [0, 1], [1, 0], [1, 1]]
    assert b.target.tolist() == [4, 5, 6, 7, 8]
    assert b.owner.tolist() == [0, 0, 2, 1, 1]


def _rms_norm_in_the_input_dtype(self, h):
    """LlamaRMSNorm without its float32 round trip, so a float64 model is float64 throughout."""
    var = h.pow(2).mean(-1, keepdim=True)
    return self.weight * (h * torch.rsqrt(var + self.variance_epsilon))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_and_gradients_equal_the_padded_forward(attn, monkeypatch):
    import transformers.models.llama.modeling_llama as llama

    # Llama's RMSNorm computes in float32 even in a float64 model (and eager attention its
    # softmax too): with the norm kept in float64, sdpa's packed and padded gradients must agree
    # to float64 rounding, which a misplaced token or mask entry could not
    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", _rms_norm_in_the_input_dtype)
    prompts, resps = _pairs()
    grads, values = [], []
    for packing in (False, True):
        model, tok = _model(attn)
        lp = sequence_logprobs(model, prompts, resps, tok.pad_token_id, packing)
        (lp * torch.linspace(0.5, 1.5, len(lp), dtype=lp.dtype)).sum().backward()
        values.append(lp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert values[1][resps.index([])] == 0.0
    tol = 1e-12 if attn == "sdpa" else 1e-6  # eager: the float32 softmax rounds
    torch.testing.assert_close(values[1], values[0], rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1], grads[0], rtol=10 * tol, atol=tol)
    assert grads[0].abs().sum() > 0


def test_packing_halves_the_tokens_of_k_samples_per_prompt():
    prompts = [[1] * 30] * 4 + [[2] * 20] * 4
    resps = [[5] * 10] * 8
    b = pack(prompts, resps, 0)
    padded = len(prompts) * 40
    assert b.input_ids.numel() == 70 * 2  # two rows: 30 + 40 and 20 + 40 (+ 10 padding)
    assert b.input_ids.numel() / padded < 0.5


def test_row_width_is_the_least_estimated_cost_among_the_candidates():
    from rspo.packing import attention_key_cost

    # four one-response groups of 10, 6, 6 and 3 tokens. Widths tried: 10, 11, 12, 13, 15,
    # 17, 20. First-fit decreasing gives 3 rows of width 10 at caps 10 and 11 (cost 30 x
    # (1 + 10 c)), 2 rows of width 13 at caps 13 and 15 (10 + 3 | 6 + 6: 26 x (1 + 13 c)),
    # worse layouts at 12 (3 x 12), 17 (2 x 16) and 20 (2 x 19).
    prompts = [[1], [2], [3], [4]]
    resps = [[9] * 9, [9] * 5, [9] * 5, [9] * 2]
    tight = pack(prompts, resps, 0, key_cost=0.0)  # 26 < 30
    assert tuple(tight.input_ids.shape) == (2, 13)
    row = tight.input_ids[0].tolist()
    assert row[:2] == [1, 9] and row[10:13] == [4, 9, 9]  # 10 + 3 share the first row
    short = pack(prompts, resps, 0, key_cost=0.2)  # 30 x 3 = 90 < 26 x 3.6 = 93.6
    assert tuple(short.input_ids.shape) == (3, 10)
    assert tuple(pack(prompts, resps, 0).input_ids.shape) == (3, 10)  # no cost: longest group
    for b in (tight, short):  # every response token is still predicted from its own context
        assert sorted(b.target.tolist()) == sorted(t for r in resps for t in r)
    gym = build_tiny_llama(build_byte_tokenizer(), hidden_size=128, num_layers=1, num_heads=4)
    assert attention_key_cost(gym.config) == pytest.approx(2 / (4 * 128 + 3 * 512))
    # GQA with its own head_dim: 2 x 8 x 64 per key / 96 x (2 x 512 + 2 x 2 x 64 + 3 x 256)
    gqa = LlamaConfig(hidden_size=96, num_attention_heads=8, head_dim=64, num_key_value_heads=2,
                      intermediate_size=256)  # fmt: skip
    assert attention_key_cost(gqa) == pytest.approx(1024 / (96 * (1024 + 256 + 768)))


def test_a_wider_layout_may_not_hold_much_more_attention_than_the_tightest(monkeypatch):
    import rspo.packing as packing

    # groups of 10, 4, 4, 4, 4, 4 tokens. Tightest (cap 10): 10 | 4 4 | 4 4 | 4 = 4 x 10
    # (40 cells, rows x width^2 = 400). Cap 12: 10 | 4 4 4 | 4 4 = 3 x 12 (36 cells, 432).
    # Cap 17: 10 4 | 4 4 4 4 = 2 x 16 (32 cells, but 512 > 1.25 x 400): not allowed.
    prompts = [[i + 1] for i in range(6)]
    resps = [[9] * 9] + [[9] * 3] * 5
    assert tuple(pack(prompts, resps, 0, key_cost=0.0).input_ids.shape) == (3, 12)
    monkeypatch.setattr(packing, "ATTENTION_SLACK", 2.0)
    assert tuple(pack(prompts, resps, 0, key_cost=0.0).input_ids.shape) == (2, 16)


def test_probe_rejects_a_model_that_ignores_position_ids_and_auto_falls_back():
    class NoPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model, tok = _model()
    wrapped = NoPositions(model)
    assert packing_supported(model, tok.pad_token_id)
    assert not packing_supported(wrapped, tok.pad_token_id)
    assert use_packing(wrapped, "auto", tok.pad_token_id) is False
    assert use_packing(model, "off", tok.pad_token_id) is False
    with pytest.raises(ValueError, match="training.packing: on"):
        use_packing(wrapped, "on", tok.pad_token_id)
    other, _ = _model()
    other.config._attn_implementation = "flash_attention_2"
    assert not packing_supported(other, tok.pad_token_id)


def test_a_probe_runs_once_per_model_structure_not_per_reload():
    calls: list[str] = []

    def check(tag: str):
        return lambda: calls.append(tag) or True

    a, _ = _model(dtype=torch.float32)
    forget_probes(a)
    assert cached_probe(a, "t", check("a")) and calls == ["a"]
    b = build_tiny_llama(build_byte_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=9)
    b.config._attn_implementation = "sdpa"  # same structure, other weights (a checkpoint)
    assert cached_probe(b, "t", check("b")) and calls == ["a"]
    assert cached_probe(b, "t", check("b"), extra=(1,)) and calls == ["a", "b"]  # other args
    assert cached_probe(b.double(), "t", check("c")) and calls == ["a", "b", "c"]  # dtype
    forget_probes(a)
    a2, _ = _model(dtype=torch.float32)
    assert cached_probe(a2, "t", check("d")) and calls == ["a", "b", "c", "d"]


@pytest.mark.parametrize("spec", ["reverse_kl", "0.5*forward_kl[nll] + 0.5*reverse_kl[k2]"])
def test_training_gradient_is_the_same_with_packing(spec):
    g = torch.Generator().manual_seed(1)
    ex, by_group = [], {}
    for i in range(3):
        prompt = list(range(65 + i, 70 + 2 * i))
        for _ in range(3):
            r = torch.randint(97, 123, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
            ex.append(TrainExample(prompt, r.tolist(), float(torch.rand(1, generator=g)),
                                   -3.0 * len(r), -3.1 * len(r), i))  # fmt: skip
        by_group[i] = [RefExample(prompt, [97, 98, 99], -9.0, i)]
    loss = RSPOLoss(eta=5.0, regularizer=spec, coef=0.3)
    out = []
    for packing in (False, True):
        model, tok = _model()
        tot = accumulate_gradients(
            model, ex, list(range(len(ex))), loss, 4, tok.pad_token_id, by_group, packing=packing
        )
        out.append((tot, torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert out[1][0]["loss"] == pytest.approx(out[0][0]["loss"], rel=1e-6)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-5, atol=1e-6)
    assert TrainingConfig().packing == "auto"


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 20), (0.0, 0)])
def test_recorded_logprobs_equal_a_forward_and_leave_samples_unchanged(temperature, top_k):
    model, tok = _model(dtype=torch.float32)
    prompts = [[257, *b"Q: 2+2?"], [257, *b"Name a color:"]] * 3
    params = SamplingParams(12, temperature, 1.0, top_k)
    seeds = list(range(len(prompts)))
    plain = HFBackend(model, tok, batch_size=4).generate(prompts, seeds, params)
    rec = HFBackend(model, tok, batch_size=4, logprobs=True).generate(prompts, seeds, params)
    assert [c.ids for c in rec] == [c.ids for c in plain]
    assert all(c.logprob is None for c in plain)
    fwd = sequence_logprobs(model, prompts, [c.ids for c in rec], tok.pad_token_id)
    torch.testing.assert_close(
        torch.tensor([c.logprob for c in rec], dtype=torch.float64),
        fwd.detach().double(),
        rtol=1e-5,
        atol=1e-4,
    )


def test_score_stage_uses_the_recorded_logprobs_and_matches_a_forward(tmp_path, monkeypatch):
    from rspo.selfplay import loop as loop_mod
    from rspo.selfplay import ops as ops_mod

    tmp, model_dir = make_pipeline_env(tmp_path)
    calls = []
    real = ops_mod.batched_sequence_logprobs

    def counting(model, prompts, *a, **k):
        calls.append(len(prompts))
        return real(model, prompts, *a, **k)

    monkeypatch.setattr(ops_mod, "batched_sequence_logprobs", counting)
    data = {}
    for mode in ("on", "off"):
        calls.clear()
        cfg = load_config(None, tiny_run(
            tmp, model_dir, str(tmp / mode), generation={"logprobs": mode},
            evaluation={"enabled": False}, run={"iterations": 1},
        ))  # fmt: skip
        loop_mod.run_selfplay(cfg, log=lambda m: None)
        data[mode] = json.loads((tmp / mode / "iter_001/dataset.json").read_text())
        # iteration 1: π_ref = π_t, so "off" needs one forward over the samples, "on" none
        assert calls == ([] if mode == "on" else [len(data[mode]["examples"])])
    on, off = data["on"]["examples"], data["off"]["examples"]
    assert [e["response_ids"] for e in on] == [e["response_ids"] for e in off]
    for a, b in zip(on, off):
        assert a["logp_t"] == pytest.approx(b["logp_t"], abs=1e-4)
        assert a["logp_ref"] == a["logp_t"]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 20, 0.9), (0.0, 0, 1.0)])
def test_row_dropping_decode_loop_gives_generates_samples(temperature, top_k, top_p):
    from rspo.data import load_prompts
    from rspo.modeling import load_model, load_tokenizer

    tok, model = load_tokenizer("gym"), load_model("gym")  # the shipped model stops at EOS
    prompts = [p for p in load_prompts("gym", tok, n=12).ids for _ in range(2)]
    params = SamplingParams(24, temperature, top_p, top_k)
    seeds = list(range(100, 100 + len(prompts)))
    out = {
        mode: HFBackend(model, tok, batch_size=16, logprobs=True, decode=mode).generate(
            prompts, seeds, params
        )
        for mode in ("auto", "generate")
    }
    assert model._rspo_decode_ok  # the probe accepted the model, so "auto" used the loop
    a, g = out["auto"], out["generate"]
    assert [(c.ids, c.text, c.finished) for c in a] == [(c.ids, c.text, c.finished) for c in g]
    assert 0 < sum(c.finished for c in a) < len(a)  # rows stopped at different steps
    assert [c.logprob for c in a] == pytest.approx([c.logprob for c in g], abs=1e-4)


def test_a_prompt_sampled_k_times_is_prefilled_once_with_the_same_samples():
    from rspo.generation.hf_decode import _shared_rows, decode_supported
    from rspo.modeling import load_model, load_tokenizer

    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [1, 5, 6], [7, 8, 9]])
    attn = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    first, copies = _shared_rows(ids, attn)  # row 3 differs from row 0 only under the mask
    assert first.tolist() == [0, 1, 3] and copies.tolist() == [0, 1, 0, 2, 1]

    tok, model = load_tokenizer("gym"), load_model("gym")
    assert decode_supported(model, tok.eos_token_id, tok.pad_token_id)
    base = [[257, 72, 105], [257, 65], [257, 80, 81, 82]]
    prompts = [base[i % 3] for i in range(9)]  # three prompts, three samples each, interleaved
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    params, seeds = SamplingParams(16, 1.0), list(range(9))
    try:
        got = HFBackend(model, tok, logprobs=True, decode="auto").generate(prompts, seeds, params)
    finally:
        hook.remove()
    assert rows[0] == 3 and max(rows[1:]) <= 9  # prefill: one row per distinct prompt
    want = HFBackend(model, tok, logprobs=True, decode="generate").generate(prompts, seeds, params)
    assert [c.ids for c in got] == [c.ids for c in want]
    assert len({tuple(c.ids) for c in got}) > 3  # copies of a prompt drew different samples
    assert [c.logprob for c in got] == pytest.approx([c.logprob for c in want], abs=1e-4)


def _gqa_llama():
    """A tiny SDPA Llama with grouped-query attention (8 query heads over 2 key/value heads):
    transformers calls SDPA differently with and without a mask for these."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_byte_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(5)
    return tok, LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["gym", "gqa"])
@pytest.mark.parametrize("lengths", ["padded", "same"])
def test_decode_steps_pass_a_4d_mask_while_rows_are_padded(monkeypatch, arch, lengths):
    """SDPA decode steps hand the attention its (rows, 1, 1, keys) boolean mask while a
    running row has left padding, so transformers does not rebuild it each step; without
    padding the 2-D mask goes in (transformers then drops it for SDPA's unmasked kernels).
    Samples and log-probs are bitwise those of the 2-D mask, rows leaving the batch."""
    from rspo.generation import hf, hf_decode
    from rspo.modeling import load_model, load_tokenizer

    tok, model = (load_tokenizer("gym"), load_model("gym")) if arch == "gym" else _gqa_llama()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert hf_decode.decode_supported(model, eos, pad)  # (probed before the hook)
    assert hf_decode.step_mask_4d_supported(model, eos, pad)
    if lengths == "padded":
        prompts = [[257, 72, 105, 40, 41], [257, 65], [257, 80, 81, 82]] * 3
    else:
        prompts = [[257, 72, 105], [257, 65, 66], [257, 80, 81]] * 3
    params, seeds = SamplingParams(24, 1.0), list(range(9))
    masks: list[tuple[int, torch.dtype]] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: masks.append((kw["attention_mask"].dim(), kw["attention_mask"].dtype)),
        with_kwargs=True,
    )

    def run():
        b = HFBackend(model, tok, logprobs=True, decode="auto")
        return [(c.ids, c.logprob, c.finished) for c in b.generate(prompts, seeds, params)]

    try:
        four_d = run()
        steps = masks[1:]
        monkeypatch.setattr(hf, "step_mask_4d_supported", lambda *a: False)
        masks.clear()
        two_d = run()
    finally:
        hook.remove()
    assert len(steps) >= 5 and masks[0][0] == 2 and set(masks) == {(2, torch.long)}
    if lengths == "padded":  # the longest prompt's rows may finish first: then 2-D
        assert steps[0] == (4, torch.bool)
    else:
        assert set(steps) == {(2, torch.long)}
    assert four_d == two_d  # tokens, log-probs (bitwise) and finished flags
    assert arch == "gqa" or 0 < sum(f for *_, f in four_d) < len(four_d)


def test_decode_probe_falls_back_to_generate_when_the_loop_disagrees(monkeypatch):
    from rspo.generation import hf, hf_decode

    model, tok = _model(dtype=torch.float32)
    real = hf_decode.decode

    def off_by_one(model, ids, attn, sampler, n, eos):  # e.g. a model it drives wrongly
        toks, fin, lps = real(model, ids, attn, sampler, n, eos)
        return [[t + 1 for t in row] for row in toks], fin, lps

    monkeypatch.setattr(hf_decode, "decode", off_by_one)
    monkeypatch.setattr(hf, "decode", off_by_one)
    forget_probes(model)  # an earlier test may have probed this structure with the real loop
    assert not hf_decode.decode_supported(model, tok.eos_token_id, tok.pad_token_id)
    prompts, seeds, params = [[257, 65, 66], [257, 67]], [1, 2], SamplingParams(6, 1.0)
    got = HFBackend(model, tok, decode="auto").generate(prompts, seeds, params)
    want = HFBackend(model, tok, decode="generate").generate(prompts, seeds, params)
    assert [c.ids for c in got] == [c.ids for c in want]
    forget_probes(model)  # the patched loop's answer must not outlive this test


def test_long_responses_to_one_prompt_are_split_so_rows_stay_within_twice_a_pair():
    # prompt of 2, four responses of 6: one group would be 26 tokens; the cap is 2 x 8 = 16,
    # so the prompt is repeated in two groups of two responses (2 + 12 = 14 tokens each)
    prompts, resps = [[1, 2]] * 4, [[10 + i] * 6 for i in range(4)]
    b = pack(prompts, resps, pad_id=0)
    assert b.input_ids.shape == (2, 14)
    assert [row[:2] for row in b.input_ids.tolist()] == [[1, 2], [1, 2]]
    model, tok = _model()
    with torch.no_grad():
        got = sequence_logprobs(model, prompts, resps, tok.pad_token_id, packing=True)
        want = sequence_logprobs(model, prompts, resps, tok.pad_token_id)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_sliding_window_models_are_not_packed():
    # a custom 4-D mask would replace the model's window; short probes cannot see that
    from transformers import MistralConfig, MistralForCausalLM

    from rspo.packing import has_local_layers

    def mistral(window):
        cfg = MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            sliding_window=window)  # fmt: skip
        return MistralForCausalLM(cfg)

    windowed, full = mistral(16), mistral(None)
    assert has_local_layers(windowed) and not has_local_layers(full)
    assert not packing_supported(windowed, 0) and packing_supported(full, 0)
    with pytest.raises(ValueError, match="training.packing: on"):
        use_packing(windowed, "on", 0)


def test_the_models_generation_config_does_not_change_samples_or_recorded_logprobs():
    # checkpoints often ship generation_config.json with e.g. repetition_penalty; generate
    # merges it in, which would sample from something other than π and record its log-probs
    from rspo.data import load_prompts
    from rspo.modeling import load_model, load_tokenizer

    tok, model = load_tokenizer("gym"), load_model("gym")
    prompts = [p for p in load_prompts("gym", tok, n=6).ids for _ in range(2)]
    params, seeds = SamplingParams(20, 1.0), list(range(12))

    def run():
        forget_probes(model)  # probe again under the changed generation_config
        return {
            mode: HFBackend(model, tok, 12, logprobs=True, decode=mode).generate(
                prompts, seeds, params
            )
            for mode in ("auto", "generate")
        }

    plain = run()
    model.generation_config.repetition_penalty = 1.3
    model.generation_config.no_repeat_ngram_size = 2
    penalised = run()
    assert model.generation_config.repetition_penalty == 1.3  # restored after each call
    for mode in ("auto", "generate"):
        assert [c.ids for c in penalised[mode]] == [c.ids for c in plain[mode]]
    fwd = sequence_logprobs(
        model, prompts, [c.ids for c in penalised["generate"]], tok.pad_token_id
    )
    rec = torch.tensor([c.logprob for c in penalised["generate"]], dtype=torch.float64)
    torch.testing.assert_close(rec, fwd.detach().double(), rtol=1e-5, atol=1e-4)
