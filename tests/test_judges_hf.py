"""Local Hugging Face judges on tiny models built and saved inside the tests (offline)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.judges import build_judge, symmetric_prefer

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = ["2+2?", "2+2?", "Name a colour.", "Say hi", "Say hi", "x", "long " * 8, "q", "q"]
A = ["4", "five", "blue", "hi", "hello there!", "", "short", "same", "a{response_b}"]
B = ["five", "4", "the sky is blue", "hello there!", "hi", "y", "tiny", "same", "b"]


def _config(tok: PreTrainedTokenizerFast, **kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=264,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        initializer_range=0.3,  # spread the scores so comparisons are informative
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **kw,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls run faster on one thread than with cross-core synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny reward models and causal LMs, with and without a chat template."""
    root = tmp_path_factory.mktemp("judge_models")
    dirs = {}
    torch.manual_seed(0)
    for name, cls, kw in [
        ("rm", LlamaForSequenceClassification, {"num_labels": 1}),
        ("rm2", LlamaForSequenceClassification, {"num_labels": 2}),
        ("lm", LlamaForCausalLM, {}),
    ]:
        model = cls(_config(build_byte_tokenizer(), **kw))
        for chat in (False, True):
            tok = build_byte_tokenizer(model_max_length=1024)
            if chat:
                tok.chat_template = CHAT
            d = root / f"{name}{'_chat' if chat else ''}"
            model.save_pretrained(d)
            tok.save_pretrained(d)
            dirs[d.name] = d
    return dirs


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@torch.no_grad()
def _reward(model, tok, text: str) -> float:
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    return model(input_ids=ids).logits[0, 0].item()


@pytest.mark.parametrize("chat", [False, True])
def test_reward_model_matches_own_forward_pass(model_dirs, chat):
    d = model_dirs["rm_chat" if chat else "rm"]
    judge = build_judge("reward_model", model=str(d), temperature=0.5, batch_size=4, device="cpu")
    assert judge.use_chat_template is chat and not judge.order_sensitive
    ps = judge.prefer(PROMPTS, A, B)
    ref = LlamaForSequenceClassification.from_pretrained(d).eval()  # independent load
    tok = PreTrainedTokenizerFast.from_pretrained(d)

    def text(p: str, r: str) -> str:
        return f"<|user|>{p}\n<|assistant|>{r}\n" if chat else p + r

    expected = [
        _sigmoid((_reward(ref, tok, text(p, a)) - _reward(ref, tok, text(p, b))) / 0.5)
        for p, a, b in zip(PROMPTS, A, B)
    ]
    assert ps == pytest.approx(expected, abs=1e-5)
    assert ps[7] == 0.5 and max(abs(p - 0.5) for p in ps) > 0.01  # scores really differ


def test_reward_model_symmetry_batching_and_unique_scoring(model_dirs):
    judge = build_judge("reward_model", model=str(model_dirs["rm"]), batch_size=1)
    one = judge.prefer(PROMPTS, A, B)
    judge.batch_size = 7
    seven = judge.prefer(PROMPTS, A, B)
    assert seven == pytest.approx(one, abs=1e-6)  # padding does not change scores
    rev = judge.prefer(PROMPTS, B, A)
    assert [x + y for x, y in zip(seven, rev)] == pytest.approx([1.0] * len(A), abs=1e-12)

    rows = []
    handle = judge.model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        judge.prefer(["p", "p", "p"], ["a", "b", "a"], ["b", "a", "c"])
    finally:
        handle.remove()
    assert sum(rows) == 3  # (p,a), (p,b), (p,c): each scored once


def test_reward_model_settings_errors(model_dirs):
    with pytest.raises(ValueError, match="2 output labels; set label_index"):
        build_judge("reward_model", model=str(model_dirs["rm2"]))
    j = build_judge("reward_model", model=str(model_dirs["rm2"]), label_index=1)
    assert len(j.prefer(["q"], ["a"], ["b"])) == 1
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_judge("reward_model", model=str(model_dirs["rm"]), temperature=0)
    with pytest.raises(ValueError, match="no chat template"):
        build_judge("reward_model", model=str(model_dirs["rm"]), use_chat_template=True)


def test_reward_model_truncation_keeps_the_end(model_dirs, caplog):
    judge = build_judge("reward_model", model=str(model_dirs["rm"]), max_length=6)
    ref = build_judge("reward_model", model=str(model_dirs["rm"]))
    with caplog.at_level("WARNING"):
        r = judge.score(["a long prompt "], ["tail!!"])
    assert "truncated" in caplog.text
    assert r == pytest.approx(ref.score([""], ["tail!!"]), abs=1e-6)


def test_reward_model_id_tracks_weights(model_dirs, tmp_path):
    j1 = build_judge("reward_model", model=str(model_dirs["rm"]))
    assert j1.judge_id == build_judge("reward_model", model=str(model_dirs["rm"])).judge_id
    other = tmp_path / "retrained"
    torch.manual_seed(1)
    LlamaForSequenceClassification(_config(build_byte_tokenizer(), num_labels=1)).save_pretrained(
        other
    )
    build_byte_tokenizer(model_max_length=1024).save_pretrained(other)
    j2 = build_judge("reward_model", model=str(other))
    assert j1.judge_id.split("fp=")[1][:12] != j2.judge_id.split("fp=")[1][:12]
    # another tokenizer computes other scores: another cache key (for both HF judges)
    tok_dir = tmp_path / "tok"
    build_byte_tokenizer(model_max_length=512).save_pretrained(tok_dir)
    for kind, name in (("reward_model", "rm"), ("pairwise_lm", "lm")):
        plain = build_judge(kind, model=str(model_dirs[name]))
        with_tok = build_judge(kind, model=str(model_dirs[name]), tokenizer=str(tok_dir))
        assert plain.judge_id != with_tok.judge_id, kind


def test_judge_inputs_never_exceed_the_models_positions(model_dirs, tmp_path):
    """A tokenizer without a real model_max_length (1e30): the judge's limit is the model's
    max_position_embeddings, not unlimited (a learned-position model crashed on long input)."""
    d = tmp_path / "rm_nolimit"
    shutil.copytree(model_dirs["rm"], d)
    build_byte_tokenizer(model_max_length=int(1e30)).save_pretrained(d)
    j = build_judge("reward_model", model=str(d))
    ctx = json.loads((d / "config.json").read_text())["max_position_embeddings"]
    assert j.max_length == ctx
    p = j.prefer(["hi"], ["a" * (3 * ctx)], ["b"])
    assert 0.0 <= p[0] <= 1.0


@torch.no_grad()
def _ab_prob(model, tok, text: str, add_special_tokens: bool) -> float:
    ids = torch.tensor([tok(text, add_special_tokens=add_special_tokens)["input_ids"]])
    last = model(input_ids=ids).logits[0, -1]
    return torch.softmax(last[[ord("A"), ord("B")]], -1)[0].item()


@pytest.mark.parametrize("chat", [False, True])
def test_pairwise_lm_matches_answer_token_softmax(model_dirs, chat):
    d = model_dirs["lm_chat" if chat else "lm"]
    judge = build_judge("pairwise_lm", model=str(d), batch_size=4, system_prompt="Judge.")
    assert judge.order_sensitive and judge.choice_ids == (ord("A"), ord("B"))
    ps = judge.prefer(PROMPTS, A, B)
    ref = LlamaForCausalLM.from_pretrained(d).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(d)
    texts = [judge.render(*t) for t in zip(PROMPTS, A, B)]
    if chat:
        assert texts[0].startswith("<|system|>Judge.\n<|user|>") and texts[0].endswith(
            "Better response:\n<|assistant|>"
        )
    assert "[RESPONSE A]\na{response_b}\n" in texts[-1]  # braces in responses stay literal
    expected = [_ab_prob(ref, tok, t, add_special_tokens=not chat) for t in texts]
    assert ps == pytest.approx(expected, abs=1e-5)


def test_pairwise_lm_order_swap_and_batching(model_dirs):
    judge = build_judge("pairwise_lm", model=str(model_dirs["lm"]), batch_size=1)
    one = judge.prefer(PROMPTS, A, B)
    judge.batch_size = 7
    assert judge.prefer(PROMPTS, A, B) == pytest.approx(one, abs=1e-6)
    sym = symmetric_prefer(judge, PROMPTS, A, B)
    rev = symmetric_prefer(judge, PROMPTS, B, A)
    assert [x + y for x, y in zip(sym, rev)] == pytest.approx([1.0] * len(A), abs=1e-6)
    raw_rev = judge.prefer(PROMPTS, B, A)
    assert sym == pytest.approx([0.5 * (p + 1 - q) for p, q in zip(one, raw_rev)], abs=1e-6)


def test_pairwise_lm_rejects_bad_settings(model_dirs):
    with pytest.raises(ValueError, match="not a single token"):
        build_judge("pairwise_lm", model=str(model_dirs["lm"]), choices=("AB", "B"))
    with pytest.raises(ValueError, match=r"missing: \{response_b\}"):
        build_judge("pairwise_lm", model=str(model_dirs["lm"]), template="{prompt} {response_a}")


def test_a_reward_model_without_its_head_is_an_error_not_a_random_head(model_dirs, tmp_path):
    """A checkpoint whose head is saved under another name (``value_head`` instead of
    ``score``): transformers would give the judge a random head; rspo refuses, naming it."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "rm_renamed"
    shutil.copytree(model_dirs["rm"], d)
    w = load_file(str(d / "model.safetensors"))
    assert "score.weight" in w
    w["value_head.weight"] = w.pop("score.weight")
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"rm_renamed: the checkpoint has no weights for \['score"):
        build_judge("reward_model", model=str(d))


def test_a_missing_or_pickled_judge_model_is_named_before_transformers_sees_it(
    model_dirs, tmp_path
):
    """A local judge model that does not exist, has no config.json or holds pickled weights
    only: a FileNotFoundError naming the judge and the path (not a hub-id error)."""
    missing = tmp_path / "no" / "such-rm"
    with pytest.raises(FileNotFoundError) as e:
        build_judge("reward_model", model=str(missing))
    assert str(e.value) == f"reward_model judge: model path {missing} does not exist"
    with pytest.raises(FileNotFoundError) as e:
        build_judge("pairwise_lm", model=str(tmp_path))
    assert str(e.value) == f"pairwise_lm judge: model directory {tmp_path} has no config.json"
    pickled = tmp_path / "rm_bin"
    shutil.copytree(model_dirs["rm"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"rm_bin has no \*\.safetensors weights, only"):
        build_judge("reward_model", model=str(pickled))


def test_judge_length_limit_follows_rope_scaling_and_offset_positions():
    from transformers import RobertaConfig

    from rspo.judges._hf import effective_max_length

    tok = build_byte_tokenizer(model_max_length=int(1e30))
    yarn = LlamaConfig(
        max_position_embeddings=32,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    )
    assert effective_max_length(tok, 1000, yarn) == 128  # the extended context, not 32
    rob = RobertaConfig(max_position_embeddings=34, pad_token_id=1)
    assert effective_max_length(tok, None, rob) == 32  # positions start at pad + 1
