"""Prompt formatting: the chat template, plain text and chat messages give the token ids a
hand-rendered template tokenized as plain text would, and a policy whose tokenizer has a
chat template runs through self-play on those ids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rspo.config import config_from_dict
from rspo.data import load_prompts
from rspo.data.prompts import format_prompt
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.selfplay.loop import run_selfplay

from fixtures_lm import make_tiny_model_dir, tiny_run, write_prompts

TESTS = Path(__file__).parent
#: a minimal template: <role>content for each message, then <assistant> when generating
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def tok():
    t = build_byte_tokenizer()
    t.chat_template = TEMPLATE
    return t


def plain(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_text_prompt_is_wrapped_in_the_chat_template_as_one_user_turn(tok):
    text, ids = format_prompt(tok, "Say hi", "auto")
    assert text == "Say hi"  # the judge sees the bare prompt
    assert ids == plain(tok, "<user>Say hi<assistant>")
    assert all(isinstance(t, int) for t in ids)


def test_chat_messages_keep_every_turn_for_the_policy_and_the_judge(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye?"},
    ]
    text, ids = format_prompt(tok, msgs, "auto")
    assert text == "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Bye?"
    assert ids == plain(tok, "<system>Be brief.<user>Hi<assistant>Hello<user>Bye?<assistant>")
    assert format_prompt(tok, msgs[1:2], "auto") == ("Hi", plain(tok, "<user>Hi<assistant>"))
    # never: no template, the turns as lines, for the policy too
    never = format_prompt(tok, msgs, "never")
    assert never == (text, tok(text, add_special_tokens=True)["input_ids"])


def test_never_tokenizes_the_plain_text_with_the_tokenizers_special_tokens(tok):
    text, ids = format_prompt(tok, "Say hi", "never")
    assert (text, ids) == ("Say hi", tok("Say hi", add_special_tokens=True)["input_ids"])
    bare = build_byte_tokenizer()  # no template: auto = never
    assert format_prompt(bare, "Say hi", "auto") == (text, ids)


def test_jsonl_prompts_load_through_the_template(tok, tmp_path):
    write_prompts(tmp_path / "p.jsonl", 3)
    ps = load_prompts(str(tmp_path / "p.jsonl"), tok)
    assert ps.ids == [plain(tok, f"<user>Say something #{i}:<assistant>") for i in range(3)]


def test_a_policy_with_a_chat_template_runs_self_play_on_templated_prompts(tmp_path):
    sys.path.insert(0, str(TESTS))
    model = make_tiny_model_dir(tmp_path / "model")
    cfg_path = model / "tokenizer_config.json"
    conf = json.loads(cfg_path.read_text())
    conf["chat_template"] = TEMPLATE
    cfg_path.write_text(json.dumps(conf))
    write_prompts(tmp_path / "train.jsonl", 4)
    write_prompts(tmp_path / "eval.jsonl", 4, prefix="Evaluate")
    out = tmp_path / "run"
    cfg = config_from_dict(
        tiny_run(
            tmp_path,
            model,
            str(out),
            run={"iterations": 1},
            generation={"num_samples": 2, "max_new_tokens": 6},
            training={"batch_size": 8, "micro_batch_size": 4},
        )
    )
    rows = run_selfplay(cfg, log=lambda m: None)
    assert [r["iteration"] for r in rows] == [0, 1]
    data = json.loads((out / "iter_001/dataset.json").read_text())
    tok = build_byte_tokenizer()
    starts = plain(tok, "<user>")
    assert data["examples"] and all(isinstance(r["response_ids"], list) for r in data["examples"])
    from rspo.modeling import load_tokenizer

    loaded = load_tokenizer(str(model))
    assert loaded.chat_template == TEMPLATE
    ids = load_prompts(str(tmp_path / "train.jsonl"), loaded).ids
    assert all(p[: len(starts)] == starts for p in ids)


def test_more_gym_eval_prompts_than_the_split_holds_is_an_error():
    from rspo.data.prompts import _read_raw
    from rspo.gym.tasks import split_pool

    size = len(split_pool("eval"))
    assert len(_read_raw("gym", "eval", size, 0)) == size
    with pytest.raises(ValueError, match=rf"data\.num_eval_prompts: {size + 1} is more than"):
        _read_raw("gym", "eval", size + 1, 0)


def test_a_trailing_assistant_turn_is_the_datasets_answer_not_the_prompt(tok, tmp_path):
    """UltraFeedback-style rows carry the answer as the last message: the policy must answer
    the conversation up to its last user turn, and the judge must not see the answer."""
    f = tmp_path / "uf.jsonl"
    rows = [
        {"prompt": "What is 2+2?", "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "assistant", "content": "only an answer"}]},
    ]  # fmt: skip
    f.write_text(json.dumps(rows[0]) + "\n")
    ps = load_prompts(str(f), tok)
    assert ps.texts == ["What is 2+2?"]  # one user turn: the judge sees its text
    assert ps.ids == [plain(tok, "<user>What is 2+2?<assistant>")]
    f.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=r"uf\.jsonl:1: field 'messages' holds only assistant"):
        load_prompts(str(f), tok)


def test_a_chat_template_error_names_the_prompt(tmp_path):
    t = build_byte_tokenizer()
    t.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}"
        "{% endfor %}"
    )
    f = tmp_path / "sys.jsonl"
    f.write_text(
        json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "hi"}]}) + "\n"
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"sys\.jsonl:1: .*System role not supported"):
        load_prompts(str(f), t)


def test_dataset_splits_are_chosen_by_name_never_train_for_eval(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "ds"
    datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_dict({"prompt": ["T0", "T1"]}),
            "test_prefs": datasets.Dataset.from_dict({"prompt": ["E0"]}),
        }
    ).save_to_disk(str(d))
    tok = build_byte_tokenizer()
    with pytest.raises(ValueError, match=r"which split holds the eval prompts.*ds:SPLIT"):
        load_prompts(str(d), tok, "eval")
    assert load_prompts(f"{d}:test_prefs", tok, "eval").texts == ["E0"]
    assert load_prompts(f"{d}:train_prefs", tok).texts == ["T0", "T1"]
    with pytest.raises(ValueError, match=r"no split 'dev'"):
        load_prompts(f"{d}:dev", tok)
    e = tmp_path / "ds2"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["T"]}),
            "test": datasets.Dataset.from_dict({"prompt": ["E"]}),
        }
    ).save_to_disk(str(e))
    assert load_prompts(str(e), tok, "eval").texts == ["E"]  # test, not train
    assert load_prompts(str(e), tok).texts == ["T"]
