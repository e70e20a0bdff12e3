"""The shipped gym base model and the determinism of its SFT."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rspo.gym.base import META_FILE, base_model_path, build_base_model, train_base
from rspo.gym.stats import response_stats, sample_responses
from rspo.gym.tasks import make_prompts


def test_shipped_base_loads_and_answers():
    path = base_model_path()
    assert (path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.padding_side == "left" and tok.eos_token_id == 258
    assert model.generation_config.eos_token_id == tok.eos_token_id
    prompts = [p.text for p in make_prompts("train", 30, seed=0)]
    greedy = response_stats(prompts, sample_responses(model, tok, prompts, temperature=0.0))
    assert greedy["malformed_fraction"] <= 0.2
    assert greedy["accuracy"] >= 0.2
    sampled = sample_responses(model, tok, prompts, temperature=1.0, seed=1)
    stats = response_stats(prompts, sampled)
    assert stats["malformed_fraction"] <= 0.3
    assert 0.05 <= stats["accuracy"] <= 0.95  # some right, some wrong
    assert stats["padded_fraction"] > 0.05  # lengths vary
    meta = json.loads((path / META_FILE).read_text())
    assert meta["params"] == sum(p.numel() for p in model.parameters())


def test_sft_is_deterministic(tmp_path):
    m1, _, _ = train_base(seed=5, steps=3, batch_size=4)
    m2, _, _ = train_base(seed=5, steps=3, batch_size=4)
    m3, _, _ = train_base(seed=6, steps=3, batch_size=4)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_build_base_model_saves_loadable(tmp_path):
    out = build_base_model(tmp_path / "base", seed=0, steps=2, batch_size=4, evaluate=False)
    assert (out / "model.safetensors").is_file() and (out / META_FILE).is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 259 and model.config.vocab_size == 264
