"""Issue 18 items 4-6: ``rspo select``, the openai judge's usage on a judged run (against a
fake OpenAI-compatible server on 127.0.0.1), and ``rspo export``'s benchmark formats."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from rspo.cli import main
from rspo.selfplay.select import select_iteration

from fixtures_lm import make_pipeline_env, n_lower, tiny_run
from test_judges_openai import FakeServer, completion

# ---------------------------------------------------------------- rspo select


def _fake_run(root: Path, rows: list[dict], model: Path, checkpoints=(1, 2, 3)) -> Path:
    """A run directory in rspo's layout: config.yaml, metrics.jsonl, iter_NNN/checkpoint."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"model:\n  path: {model}\n")
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for t in checkpoints:
        (root / f"iter_{t:03d}" / "checkpoint").mkdir(parents=True)
    return root


@pytest.fixture
def model_dir(tmp_path):
    m = tmp_path / "base"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"")
    return m


ROWS = [
    {"iteration": 0, "win_rate": 0.5, "kl_ref": 0.0, "len": 30},
    {"iteration": 1, "win_rate": 0.61, "kl_ref": None, "len": 40},
    {"iteration": 2, "win_rate": 0.7, "kl_ref": 2.0, "len": 20},
    {"iteration": 3, "win_rate": 0.7, "kl_ref": 3.0, "len": 50},
]


def test_select_prints_the_best_iteration_and_its_checkpoint(tmp_path, model_dir, capsys):
    run = _fake_run(tmp_path / "run", ROWS, model_dir)
    assert main(["select", str(run), "--by", "win_rate"]) == 0
    got = json.loads(capsys.readouterr().out)
    # 0.7 at iterations 2 and 3: the earlier (less trained) one
    assert got == {"iteration": 2, "checkpoint": str(run / "iter_002" / "checkpoint"), "value": 0.7}
    assert Path(got["checkpoint"]).is_dir()
    # --min; null values are skipped (iteration 1's kl_ref), iteration 0 = model.path
    assert select_iteration(run, "kl_ref", minimize=True) == {
        "iteration": 0,
        "checkpoint": str(model_dir),
        "value": 0.0,
    }
    assert select_iteration(run, "len", minimize=True)["iteration"] == 2
    assert select_iteration(run, "len")["iteration"] == 3


def test_select_errors_name_the_run_the_metric_and_the_missing_checkpoint(
    tmp_path, model_dir, capsys
):
    run = _fake_run(tmp_path / "run", ROWS, model_dir, checkpoints=(3,))
    assert main(["select", str(run), "--by", "win_rat"]) == 2
    err = capsys.readouterr().err
    assert "'win_rat'" in err and "kl_ref, len, win_rate" in err and str(run) in err
    with pytest.raises(FileNotFoundError, match=r"best iteration by win_rate is 2 .*iter_002") as e:
        select_iteration(run, "win_rate")
    assert "keep_checkpoints" in str(e.value) and "remain: [3]" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"holds no metrics.jsonl"):
        select_iteration(tmp_path, "win_rate")
    with pytest.raises(FileNotFoundError, match=r"run directory .*nowhere does not exist"):
        select_iteration(tmp_path / "nowhere", "win_rate")
    hub = _fake_run(tmp_path / "hub", ROWS[:1], Path("org/some-model"), checkpoints=())
    with pytest.raises(FileNotFoundError, match=r"initial model 'org/some-model'.*not a dir"):
        select_iteration(hub, "win_rate")


# ---------------------------------------------------------------- usage on a judged run


def _verdict(body: dict) -> dict:
    """The fake judge: the response with more lowercase letters wins, usage reported."""
    user = body["messages"][-1]["content"]
    a = user.split("[RESPONSE A]\n", 1)[1].split("\n\n[RESPONSE B]\n", 1)
    b = a[1].rsplit("\n\nBetter response:", 1)[0]
    pa = 0.8 if n_lower(a[0]) > n_lower(b) else 0.2 if n_lower(a[0]) < n_lower(b) else 0.5
    out = completion("A", {"A": pa, "B": 1 - pa})
    out["usage"] = {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}
    return out


def test_openai_judge_counts_usage_and_not_retries(server_env):
    from rspo.judges import build_judge

    server = server_env
    server.respond = lambda n, body, h: (
        (500, {"error": "boom"}, 0.0, {}) if n == 2 else (200, _verdict(body), 0.0, {})
    )
    j = build_judge("openai", model="m", base_url=server.url, api_key_env=None, backoff_base=0.001)
    j.prefer(["q", "q"], ["abc", "X"], ["X", "abc"])
    assert j.usage == {"calls": 2, "prompt_tokens": 22, "completion_tokens": 2,
                       "calls_with_usage": 2}  # fmt: skip
    assert j.stats["retries"] == 1 and len(server.requests) == 3
    server.respond = lambda n, body, h: (200, completion("A", {"A": 0.9, "B": 0.1}), 0.0, {})
    j.prefer(["q"], ["a"], ["b"])  # a server that reports no usage: a call, no tokens
    assert j.usage["calls"] == 3 and j.usage["calls_with_usage"] == 2
    assert j.usage["prompt_tokens"] == 22


@pytest.fixture
def server_env(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = FakeServer()
    yield s
    s.close()


def test_judged_run_logs_usage_survives_faults_and_select_names_its_best(tmp_path, server_env):
    """A run evaluated by the openai judge on a local fake server: a 500 and a timeout are
    retried; a malformed body stops the run with an error naming it; the resumed run asks
    the server only for verdicts the judge cache lacks; metrics.jsonl carries judge_calls
    and tokens; rspo select names the best iteration's checkpoint."""
    from rspo.config import load_config
    from rspo.judges import JudgeError
    from rspo.selfplay.loop import run_selfplay

    server = server_env
    tmp, model = make_pipeline_env(tmp_path)
    answered: list[list[str]] = [[]]  # per pass: the user messages answered with a verdict

    def respond(n, body, h):
        if n == 2:
            return 500, {"error": "overloaded"}, 0.0, {}
        if n == 4:
            return 200, _verdict(body), 1.0, {}  # past the judge's 0.5 s timeout
        if n == 9 and len(answered) == 1:
            return 200, b'{"choices": [', 0.0, {}
        answered[-1].append(body["messages"][-1]["content"])
        return 200, _verdict(body), 0.0, {}

    server.respond = respond
    kw = {"model": "judge", "base_url": server.url, "api_key_env": None, "timeout": 0.5,
          "backoff_base": 0.01, "max_concurrency": 1}  # fmt: skip
    cfg = load_config(None, tiny_run(
        tmp, model, str(tmp / "run"),
        evaluation={"judge": "openai", "judge_kwargs": kw, "num_samples": 1, "n_boot": 50},
        judge={"batch_size": 2}, run={"iterations": 1},
    ))  # fmt: skip
    with pytest.raises(JudgeError, match=r"malformed JSON") as e:
        run_selfplay(cfg, log=lambda m: None)
    assert f"{server.url}/chat/completions" in str(e.value)
    cache = tmp / "run" / "eval_judge_cache.sqlite"
    with sqlite3.connect(cache) as db:
        kept = db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    assert 0 < kept <= len(answered[0])  # the chunks judged before the fault are cached

    answered.append([])
    rows = run_selfplay(cfg, log=lambda m: None)
    pass1, pass2 = answered
    # nothing already cached is asked again: what pass 2 asked that pass 1 had answered is
    # only the failed chunk's verdicts (answered, never committed)
    assert len(set(pass1) & set(pass2)) == len(set(pass1)) - kept
    assert [r["iteration"] for r in rows] == [0, 1]
    assert sum(r["judge_calls"] for r in rows) == len(pass2)
    for r in rows:
        assert r["judge_prompt_tokens"] == 11 * r["judge_calls"]
        assert r["judge_completion_tokens"] == r["judge_calls"]
    written = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["judge_calls"] for r in written] == [r["judge_calls"] for r in rows]

    best = select_iteration(tmp / "run", "win_rate")
    top = max(rows, key=lambda r: (r["win_rate"], -r["iteration"]))
    assert best["iteration"] == top["iteration"] and best["value"] == top["win_rate"]
    assert Path(best["checkpoint"]).is_dir()
    want = str(model) if top["iteration"] == 0 else str(tmp / "run/iter_001/checkpoint")
    assert best["checkpoint"] == want


# ---------------------------------------------------------------- rspo export

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_export_writes_the_three_benchmark_formats(tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from rspo.generation.hf import HFBackend

    from fixtures_lm import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "ck")
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model)
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([
        {"instruction": "Name a colour.", "output": "ref", "generator": "gpt4", "dataset": "x"},
        {"instruction": "Count to three.", "output": "ref", "generator": "gpt4", "dataset": "y"},
    ]))  # fmt: skip
    arena = _jsonl(tmp_path / "arena.jsonl", [
        {"question_id": "aa1", "category": "arena-hard-v0.1", "cluster": "c",
         "turns": [{"content": "Write a haiku."}]},
        {"question_id": "aa2", "category": "arena-hard-v0.1", "cluster": "c",
         "turns": [{"content": "Explain sorting."}]},
    ])  # fmt: skip
    arena2 = _jsonl(tmp_path / "arena2.jsonl", [
        {"uid": "u1", "category": "hard_prompt", "subcategory": "s", "prompt": "Why?"},
    ])  # fmt: skip
    mt = _jsonl(tmp_path / "mt.jsonl", [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorten it."]},
        {"question_id": 82, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
    ])  # fmt: skip
    prompts: list[str] = []
    real = HFBackend.generate

    def spy(self, ids, seeds, params):
        prompts.extend(self.tok.decode(i) for i in ids)
        assert params.temperature == 0.0  # greedy by default
        return real(self, ids, seeds, params)

    monkeypatch.setattr(HFBackend, "generate", spy)
    out = tmp_path / "out"
    common = ["--model", str(model), "--out", str(out), "--max-new-tokens", "6",
              "--model.device", "cpu", "--model.dtype", "float32"]  # fmt: skip
    args = ["export", *common, "--alpaca-eval", str(alpaca), "--arena-hard", str(arena),
            "--mt-bench", str(mt), "--model-id", "tiny"]  # fmt: skip
    assert main(args) == 0

    outputs = json.loads((out / "alpaca_eval" / "model_outputs.json").read_text())
    assert [r["instruction"] for r in outputs] == ["Name a colour.", "Count to three."]
    assert [r["dataset"] for r in outputs] == ["x", "y"]
    assert {r["generator"] for r in outputs} == {"tiny"}
    assert all(isinstance(r["output"], str) for r in outputs)
    assert not (out / "alpaca_eval" / "model_outputs.partial.jsonl").exists()

    rows = [json.loads(x) for x in (out / "arena_hard/model_answer/tiny.jsonl").open()]
    assert [r["question_id"] for r in rows] == ["aa1", "aa2"]
    for r in rows:
        assert set(r) == {"question_id", "answer_id", "model_id", "choices", "tstamp",
                          "conv_metadata"}  # fmt: skip
        assert r["model_id"] == "tiny" and len(r["choices"]) == 1
        (turn,) = r["choices"][0]["turns"]
        assert r["choices"][0]["index"] == 0 and isinstance(turn["content"], str)
        assert turn["token_len"] == len(tok(turn["content"], add_special_tokens=False).input_ids)
        assert r["conv_metadata"]["token_len"] == turn["token_len"]
    assert len({r["answer_id"] for r in rows}) == 2

    rows = [json.loads(x) for x in (out / "mt_bench/model_answer/tiny.jsonl").open()]
    assert [r["question_id"] for r in rows] == [81, 82]
    for r, q in zip(rows, ["Write a poem.", "What is 2+2?"]):
        assert {"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(r)
        assert r["model_id"] == "tiny" and isinstance(r["tstamp"], float)
        (choice,) = r["choices"]
        assert choice["index"] == 0 and len(choice["turns"]) == 2
        first = choice["turns"][0]
        # turn 2's prompt, as the model saw it: the chat template over the first question,
        # the model's own first answer and the second question
        want = f"<|user|>{q}<|end|><|assistant|>{first}<|end|><|user|>"
        assert any(want in p and p.endswith("<|assistant|>") for p in prompts)
        assert want in r["generate_params"]["prompt"]
    assert sum("<|user|>" in p for p in prompts) == len(prompts)  # the template, every turn
    assert any(json.loads(x)["choices"][0]["turns"][0] for x in
               (out / "mt_bench/model_answer/tiny.jsonl").open())  # fmt: skip

    # an Arena-Hard v2.0 question file gives v2.0 rows; a second export into the same
    # directory with other settings is refused
    assert main(["export", *common, "--arena-hard", str(arena2), "--model-id", "v2",
                 "--out", str(tmp_path / "o2")]) == 0  # fmt: skip
    (r,) = [json.loads(x) for x in (tmp_path / "o2/arena_hard/model_answer/v2.jsonl").open()]
    assert set(r) == {"uid", "ans_id", "model", "messages", "tstamp", "metadata"}
    assert r["uid"] == "u1" and r["model"] == "v2"
    assert r["messages"][0] == {"role": "user", "content": "Why?"}
    assert r["messages"][1]["role"] == "assistant" and "answer" in r["messages"][1]["content"]
    capsys.readouterr()
    assert main(["export", *common, "--mt-bench", str(mt), "--model-id", "other"]) == 2
    assert "differing: model_id" in capsys.readouterr().err


def test_export_resumes_and_names_bad_question_files(tmp_path, capsys):
    from rspo.evaluation.export import export_answers, read_questions

    calls: list[list[list[dict]]] = []

    def fake(convs):
        calls.append(convs)
        return [f"answer {len(c)}" for c in convs], ["p"] * len(convs)

    mt = _jsonl(tmp_path / "mt.jsonl", [
        {"question_id": i, "category": "x", "turns": [f"q{i}", f"f{i}"]} for i in range(5)
    ])  # fmt: skip
    out = tmp_path / "o"
    file = out / "mt_bench/model_answer/m.jsonl"
    file.parent.mkdir(parents=True)
    _jsonl(file, [{"question_id": 0, "choices": [{"index": 0, "turns": ["a", "b"]}]}])
    (out / "export.json").write_text(json.dumps({"model_id": "m", "temperature": 0}))
    export_answers(out, {"mt_bench": mt}, fake, "m", {"temperature": 0}, batch_size=2,
                   log=lambda m: None)  # fmt: skip
    rows = [json.loads(x) for x in file.open()]
    assert [r["question_id"] for r in rows] == [0, 1, 2, 3, 4]  # question 0 kept, not redone
    assert sum(len(c) for c in calls) == 8  # 4 questions x 2 turns
    assert rows[1]["choices"][0]["turns"] == ["answer 1", "answer 3"]
    assert calls[1][0][1] == {"role": "assistant", "content": "answer 1"}

    bad = _jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "turns": ["ok"]}, {"turns": ["x"]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no 'question_id' field"):
        read_questions(bad, "mt_bench")
    bad = _jsonl(tmp_path / "bad2.jsonl", [{"question_id": 1, "turns": [{"text": "x"}]}])
    with pytest.raises(ValueError, match=r"bad2.jsonl:1: no 'content' field"):
        read_questions(bad, "arena_hard")
    dup = _jsonl(tmp_path / "dup.jsonl", [{"question_id": 1, "turns": ["a"]}] * 2)
    with pytest.raises(ValueError, match=r"question id 1 appears more than once"):
        read_questions(dup, "mt_bench")
    with pytest.raises(FileNotFoundError, match=r"question file .*nope.json does not exist"):
        read_questions(tmp_path / "nope.json", "alpaca_eval")
