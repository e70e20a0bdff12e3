"""Bad input: each case fails with an error naming the file, field or value, and leaves
no partial state behind (no stage files or markers in the run directory).

Config errors fail before a run directory exists. Errors found while loading the model,
tokenizer, prompts, objective and judges fail before any stage runs; with the lead's
``setup`` patch (see ``test_setup_errors_create_no_run_dir``) also before the run
directory is created. Judge and disk failures mid-stage keep every finished record and
resume. The HTTP judge's retry/500/429/timeout/malformed-JSON behaviour itself is tested
in tests/test_judges_openai.py; here only its effect on a run is.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_selfplay_run import _cfg

import rspo.utils.io
from rspo.cli import main
from rspo.config import load_config
from rspo.judges import JudgeError
from rspo.selfplay.loop import run_selfplay
from rspo.utils.io import append_jsonl, atomic_write_text, read_jsonl

from fixtures_lm import lowercase_judge, make_tiny_model_dir, write_prompts
from test_judges_openai import FakeServer, completion

LEAD_PATCH = "needs lead patch: SelfPlayRun.setup checks everything before RunDir.init"
CLI_PATCH = "needs lead patch: rspo.cli.main reports JudgeError/OSError as 'error: ...'"


def _quiet(msg: str) -> None:
    pass


@dataclass
class Env:
    tmp: Path
    model: Path

    def args(self, out: str, **overrides) -> list[str]:
        """CLI overrides of a tiny 1-iteration run in ``tmp/out``."""
        return _cfg(self.tmp, self.model, out, **{"run.iterations": 1, **overrides})

    def cfg(self, out: str, **overrides):
        return load_config(None, self.args(out, **overrides))

    def model_variant(self, name: str, drop=(), tokenizer_config: dict | None = None) -> Path:
        """A copy of the tiny model dir without the files in ``drop``."""
        d = self.tmp / "models" / name
        if not d.exists():
            shutil.copytree(self.model, d)
            for f in drop:
                (d / f).unlink()
            if tokenizer_config is not None:
                tc = json.loads((d / "tokenizer_config.json").read_text())
                for k, v in tokenizer_config.items():
                    if v is None:
                        tc.pop(k, None)
                    else:
                        tc[k] = v
                (d / "tokenizer_config.json").write_text(json.dumps(tc))
        return d

    def prompt_file(self, name: str, content: bytes | str) -> Path:
        p = self.tmp / "prompts" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    tmp = tmp_path_factory.mktemp("bad")
    model = make_tiny_model_dir(tmp / "model")
    write_prompts(tmp / "train.jsonl", 12)
    write_prompts(tmp / "eval.jsonl", 12, prefix="Evaluate")
    return Env(tmp, model)


def _train(capsys, args: list[str], config: Path | None = None) -> tuple[int, str]:
    """``rspo train`` in-process: (exit code, stderr)."""
    capsys.readouterr()
    rc = main(["train", *(["--config", str(config)] if config else []), *args])
    return rc, capsys.readouterr().err


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


#: what SelfPlayRun.setup creates today before it has checked everything (see LEAD_PATCH)
SETUP_FILES = {"config.yaml", "run.json", *(f"judge_cache.sqlite{x}" for x in ("", "-wal", "-shm"))}


def assert_no_stage_state(out: Path) -> None:
    """No stage output, marker, metric or judgement: at most the files setup creates."""
    left = _files(out) - SETUP_FILES
    assert not left, f"bad input left partial state in {out}: {sorted(left)}"
    if (out / "judge_cache.sqlite").exists():
        from rspo.judges import JudgementCache

        with JudgementCache(out / "judge_cache.sqlite") as cache:
            assert len(cache) == 0


# ------------------------------------------------------------------ config errors (CLI)
# (id, overrides, stderr pattern); each fails while the config is built: no run dir at all.
CONFIG_CASES = [
    ("k_below_2", {"generation.num_samples": 1}, r"generation\.num_samples: K must be >= 2.*1"),
    ("negative_coef", {"objective.coef": -0.1}, r"objective\.coef: must be >= 0, got -0\.1"),
    ("nan_coef", {"objective.coef": ".nan"}, r"objective\.coef: value is NaN"),
    ("nan_eta", {"objective.eta": ".nan"}, r"objective\.eta: value is NaN"),
    ("negative_eta", {"objective.eta": -1}, r"objective\.eta: must be > 0, got -1"),
    (
        "unknown_key",
        {"objective.coeff": 0.1},
        r"unknown config key objective\.coeff \(section 'objective'\); valid keys: .*\bcoef\b",
    ),
    ("unknown_section", {"optimiser.lr": 0.1}, r"unknown config key optimiser \(top level\)"),
    ("bad_choice", {"training.optimizer": "sgd"}, r"training\.optimizer: .*'sgd'.*adamw, rmsprop"),
    ("unknown_preset", {"objective.preset": "rspo2"}, r"unknown preset 'rspo2'; valid: .*rspo"),
    ("wrong_type", {"generation.max_new_tokens": "many"}, r"max_new_tokens: expected an integer"),
    # each of these used to run on silently, or fail mid-run with a message naming no key
    ("negative_clip", {"training.max_grad_norm": -1}, r"max_grad_norm: must be >= 0 and finite"),
    ("nan_clip", {"training.max_grad_norm": ".nan"}, r"max_grad_norm: .*0 or null: no clipping"),
    ("negative_seed", {"run.seed": -5}, r"run\.seed: must be >= 0, got -5"),
    ("negative_threads", {"run.num_threads": -2}, r"run\.num_threads: must be >= 0"),
    ("infinite_lr", {"training.lr": ".inf"}, r"training\.lr: must be finite, got inf"),
    ("greedy_samples", {"generation.temperature": 0}, r"generation\.temperature: 0 \(greedy\)"),
    (
        "greedy_diversity",
        {"evaluation.diversity_temperature": 0},
        r"diversity_temperature: must be > 0",
    ),
    ("bad_device", {"model.device": "banana"}, r"model\.device: 'banana' is not a device"),
    ("fp16_full", {"model.dtype": "float16"}, r"model\.dtype: float16 cannot train full weights"),
    (
        "odd_pair_batch",
        {
            "objective.loss_type": "sppo_hard",
            "training.micro_batch_size": 3,
            "training.batch_size": 6,
        },
        r"micro_batch_size \(3\) must be even for pair losses",
    ),
    (
        "adaptive_target_zero",
        {"objective.adaptive": "kl", "objective.adaptive_target": 0},
        r"adaptive_target: must be > 0 and finite, got 0",
    ),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(env, capsys, case):
    name, overrides, pattern = case
    rc, err = _train(capsys, env.args(f"cfg_{name}", **overrides))
    assert rc == 2
    assert err.startswith("error: ")
    assert re.search(pattern, err), err
    assert not (env.tmp / f"cfg_{name}").exists()


def test_config_file_errors_name_the_file_and_key(env, capsys):
    bad = env.tmp / "bad.yaml"
    bad.write_text("objective:\n  coeff: 1.0\n")
    rc, err = _train(capsys, env.args("cfg_yaml_key"), config=bad)
    assert rc == 2 and f"{bad}: unknown config key objective.coeff" in err
    bad.write_text("objective: [unclosed\n")
    rc, err = _train(capsys, env.args("cfg_yaml_syntax"), config=bad)
    assert rc == 2 and f"{bad}: malformed YAML" in err
    rc, err = _train(capsys, env.args("cfg_yaml_missing"), config=env.tmp / "nope.yaml")
    assert rc == 2 and "nope.yaml does not exist" in err
    rc, err = _train(capsys, [*env.args("cfg_resume_missing"), "--resume"])
    assert rc == 2 and "--resume given but" in err and "holds no run" in err
    for out in ("cfg_yaml_key", "cfg_yaml_syntax", "cfg_yaml_missing", "cfg_resume_missing"):
        assert not (env.tmp / out).exists()


# ------------------------------------------------------------------ setup errors (CLI)
def _setup_cases(env: Env) -> list[tuple[str, dict, str]]:
    """(id, overrides, stderr pattern) of input that fails while the run is set up."""
    pf = env.prompt_file
    long_prompt = "\n".join(
        [json.dumps({"prompt": f"Say something #{i}:"}) for i in range(4)]
        + [json.dumps({"prompt": "x" * 200})]
    )
    return [
        (
            "missing_prompts",
            {"data.prompts": str(env.tmp / "nope.jsonl")},
            r"nope\.jsonl does not exist",
        ),
        (
            "empty_prompts",
            {"data.prompts": str(pf("empty.jsonl", ""))},
            r"empty\.jsonl contains no prompts",
        ),
        (
            "blank_prompts",
            {"data.prompts": str(pf("blank.jsonl", "\n  \n\n"))},
            r"blank\.jsonl contains no prompts",
        ),
        (
            "malformed_line",
            {
                "data.prompts": str(
                    pf("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": \n')
                )
            },
            r"bad\.jsonl:3: malformed JSON line",
        ),
        (
            "no_prompt_field",
            {"data.prompts": str(pf("nofield.jsonl", '{"prompt": "a"}\n{"text": "b", "id": 2}\n'))},
            r"nofield\.jsonl:2: no 'prompt' or 'messages' field \(keys: text, id\)",
        ),
        (
            "empty_prompt",
            {"data.prompts": str(pf("emptyfield.jsonl", '{"prompt": "a"}\n{"prompt": "  "}\n'))},
            r"emptyfield\.jsonl:2: field 'prompt' must be a non-empty string",
        ),
        (
            "bad_messages",
            {"data.prompts": str(pf("msgs.jsonl", '{"messages": [{"role": "user"}]}\n'))},
            r"msgs\.jsonl:1: field 'messages' must be a non-empty list",
        ),
        (
            "not_an_object",
            {"data.prompts": str(pf("list.jsonl", '{"prompt": "a"}\n["b"]\n'))},
            r"list\.jsonl:2: expected a JSON object .* got list",
        ),
        (
            "not_utf8",
            {"data.prompts": str(pf("latin1.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n'))},
            r"latin1\.jsonl:2: not valid UTF-8",
        ),
        (
            "prompt_too_long",
            {"data.prompts": str(pf("long.jsonl", long_prompt)), "data.max_prompt_length": 64},
            r"long\.jsonl:5: prompt 4 has \d+ tokens > data\.max_prompt_length=64",
        ),
        (
            "bad_eval_prompts",
            {"data.eval_prompts": str(pf("eval_bad.jsonl", '{"question": "a"}\n'))},
            r"eval_bad\.jsonl:1: no 'prompt' or 'messages' field",
        ),
        (
            "chat_template_always",
            {"data.chat_template": "always"},
            r"data\.chat_template=always but the tokenizer has no chat template",
        ),
        (
            "unknown_regularizer",
            {"objective.regularizer": "reverse_kll"},
            r"unknown regularizer 'reverse_kll'.*valid: .*forward_kl.*reverse_kl",
        ),
        (
            "unknown_estimator",
            {"objective.regularizer": "forward_kl[k9]"},
            r"unknown estimator 'k9'.*valid for forward_kl: is, nll, ratio",
        ),
        (
            "negative_mixture_weight",
            {"objective.regularizer": "0.5*forward_kl + -1*reverse_kl"},
            r"weight in term '-1\*reverse_kl'.*must be finite and > 0",
        ),
        (
            "nan_mixture_weight",
            {"objective.regularizer": "nan*reverse_kl"},
            r"term 'nan\*reverse_kl'.*must be finite and > 0",
        ),
        (
            "unknown_judge",
            {"judge.name": "gpt-judge"},
            r"unknown judge 'gpt-judge'; valid judges: .*openai.*python",
        ),
        (
            "unknown_judge_setting",
            {"judge.kwargs": "{fn: 'fixtures_lm:lowercase_judge', temprature: 1}"},
            r"judge 'python': .*temprature.*valid settings: fn, batched",
        ),
        (
            "secret_in_judge_settings",
            {"judge.name": "openai", "judge.kwargs": "{model: x, api_key: sk-live-123}"},
            r"judge 'openai': setting 'api_key' looks like a credential.*api_key_env",
        ),
        (
            "model_without_weights",
            {"model.path": str(env.model_variant("noweights", drop=["model.safetensors"]))},
            r"noweights has no \*\.safetensors weights \(rspo loads safetensors only\)",
        ),
        (
            "model_without_config",
            {"model.path": str(env.model_variant("noconfig", drop=["config.json"]))},
            r"noconfig has no config\.json",
        ),
        (
            "model_without_tokenizer",
            {
                "model.path": str(
                    env.model_variant("notok", drop=["tokenizer.json", "tokenizer_config.json"])
                )
            },
            r"notok has no tokenizer files \(expected one of tokenizer\.json",
        ),
        (
            "tokenizer_without_eos",
            {"model.path": str(env.model_variant("noeos", tokenizer_config={"eos_token": None}))},
            r"tokenizer at .*noeos has no eos_token",
        ),
        (
            "missing_model_dir",
            {"model.path": str(env.tmp / "no_such_model")},
            r"no_such_model does not exist",
        ),
        (
            "missing_ref_model",
            {"model.ref_path": str(env.tmp / "no_ref")},
            r"no_ref does not exist",
        ),
        (
            "ref_with_another_tokenizer",
            {"model.path": str(_other_vocabulary(env)), "model.ref_path": str(env.model)},
            r"model.ref_path=.*: its tokenizer differs from model.path's \(259 vs 260 tokens; "
            r"policy tokens it reads otherwise: \[\('<other>', 259\)\]",
        ),
        (
            "response_beyond_the_context",
            {"generation.max_new_tokens": 100000},
            r"data.prompts: the longest prompt \(\d+ tokens\) \+ generation.max_new_tokens "
            r"\(100000\).*\(\d+ tokens: max_position_embeddings, extended by any rope scaling\)",
        ),
        (
            "gym_judge_on_other_prompts",
            {"judge.name": "gym-proxy"},
            r"judge.name=gym-proxy reads only the gym's prompts, but .*train.jsonl has others",
        ),
        (
            "gym_accuracy_on_other_prompts",
            {"evaluation.accuracy_fn": "rspo.gym.tasks:check_answer"},
            r"evaluation.accuracy_fn=rspo.gym.tasks:check_answer reads only the gym's prompts",
        ),
    ]


def _other_vocabulary(env: Env) -> Path:
    """The tiny model with one token added to its tokenizer (a policy whose ids π_ref, the
    original, cannot read; the other way round is fine)."""
    from transformers import AutoTokenizer

    d = env.model_variant("othervocab")
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_tokens(["<other>"])
    tok.save_pretrained(d)
    return d


SETUP_IDS = [
    "missing_prompts", "empty_prompts", "blank_prompts", "malformed_line", "no_prompt_field",
    "empty_prompt", "bad_messages", "not_an_object", "not_utf8", "prompt_too_long",
    "bad_eval_prompts", "chat_template_always", "unknown_regularizer", "unknown_estimator",
    "negative_mixture_weight", "nan_mixture_weight", "unknown_judge", "unknown_judge_setting",
    "secret_in_judge_settings", "model_without_weights", "model_without_config",
    "model_without_tokenizer", "tokenizer_without_eos", "missing_model_dir", "missing_ref_model",
    "ref_with_another_tokenizer", "response_beyond_the_context", "gym_judge_on_other_prompts",
    "gym_accuracy_on_other_prompts",
]  # fmt: skip


def _setup_case(env: Env, name: str) -> tuple[dict, str]:
    cases = {c[0]: c[1:] for c in _setup_cases(env)}
    assert list(cases) == SETUP_IDS
    return cases[name]


@pytest.mark.parametrize("name", SETUP_IDS)
def test_setup_errors_name_the_culprit_and_run_no_stage(env, capsys, name):
    overrides, pattern = _setup_case(env, name)
    out = env.tmp / f"setup_{name}"
    rc, err = _train(capsys, env.args(out.name, **overrides))
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(pattern, err), err
    assert_no_stage_state(out)


@pytest.mark.parametrize("name", SETUP_IDS)
def test_setup_errors_create_no_run_dir(env, capsys, name):
    # A run dir made for a config that cannot run pins that config: fixing the input by
    # changing the config would then be refused as "a different config".
    overrides, pattern = _setup_case(env, name)
    out = env.tmp / f"strict_{name}"
    rc, err = _train(capsys, env.args(out.name, **overrides))
    assert rc == 2 and re.search(pattern, err), err
    assert not out.exists(), sorted(_files(out))


def test_fixing_the_config_after_a_setup_error_just_runs(env, capsys):
    args = env.args("fix_after_error", **{"judge.name": "gpt-judge"})
    assert _train(capsys, args)[0] == 2
    rc, err = _train(capsys, env.args("fix_after_error"))
    assert rc == 0, err


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"evaluation.judge": "gold"}, r"unknown judge 'gold'"),
        ({"evaluation.judge_kwargs": "{fn: 'fixtures_lm:nope'}"}, r"has no attribute 'nope'"),
        ({"evaluation.accuracy_fn": "fixtures_lm:nope"}, r"accuracy_fn: .* no attribute 'nope'"),
    ],
    ids=["eval_judge", "eval_judge_fn", "accuracy_fn"],
)
def test_evaluation_settings_fail_before_any_generation(env, overrides, pattern):
    # today these fail only after π_ref's and π_0's eval responses were generated
    out = env.tmp / f"eval_{next(iter(overrides)).split('.')[1]}"
    with pytest.raises((ValueError, JudgeError), match=pattern):
        run_selfplay(env.cfg(out.name, **overrides), log=_quiet)
    assert not out.exists(), sorted(_files(out))


def test_pad_token_falls_back_to_eos(env):
    from rspo.modeling import load_tokenizer

    tok = load_tokenizer(str(env.model_variant("nopad", tokenizer_config={"pad_token": None})))
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok.pad_token_id == tok.eos_token_id is not None
    assert tok.padding_side == "left"


# ------------------------------------------------------------------ a run dir from another config
def test_run_dir_of_another_config_is_refused_untouched(env, capsys, reference):
    gc.collect()  # close the finished run's SQLite connections (that folds in their WAL files)
    before = _snapshot(reference)
    changed = {"objective.coef": 0.2, "generation.num_samples": 3, "run.seed": 1}
    rc, err = _train(capsys, env.args(reference.name, **changed))
    assert rc == 2
    assert "was made with a different config; differing keys: " in err
    assert "generation.num_samples, objective.coef, run.seed" in err
    assert _snapshot(reference) == before


# ------------------------------------------------------------------ judges that misbehave
def bad_judge(prompts, responses_a, responses_b, mode="nan", when="#3:"):
    """Batched ``python`` judge: correct, except on the prompt containing ``when``."""
    out = [lowercase_judge(*t) for t in zip(prompts, responses_a, responses_b)]
    if any(when in p for p in prompts):
        if mode == "count":
            return out[:-1]
        out[0] = float(mode)
    return out


@pytest.mark.parametrize(
    "mode, pattern",
    [
        ("nan", r"returned nan for pair 0 \(prompt 'Say something #3:'\).*\[0, 1\]"),
        (1.5, r"returned 1\.5 for pair 0 \(prompt 'Say something #3:'\).*\[0, 1\]"),
        (-0.25, r"returned -0\.25 for pair 0 .*must lie in \[0, 1\]"),
        ("count", r"returned 5 results for 6 pairs"),
    ],
    ids=["nan", "above_1", "below_0", "wrong_count"],
)
def test_judge_bad_output_fails_the_stage_and_keeps_finished_records(env, mode, pattern):
    kw = f"{{fn: 'test_bad_input:bad_judge', batched: true, kwargs: {{mode: {mode}}}}}"
    out = env.tmp / f"judge_{mode}"
    # evaluation off: it would ask the training judge first (proxy_win_rate of iteration 0)
    cfg = env.cfg(out.name, **{"judge.kwargs": kw, "evaluation.enabled": "false"})
    with pytest.raises(JudgeError, match=pattern) as e:
        run_selfplay(cfg, log=_quiet)
    assert "test_bad_input:bad_judge" in str(e.value)  # names the judge
    it = out / "iter_001"
    assert sorted(r["prompt_index"] for r in read_jsonl(it / "generations.jsonl")) == list(
        range(12)
    )
    judged = read_jsonl(it / "judgments.jsonl")  # strict: no torn or invalid line
    assert [r["prompt_index"] for r in judged] == [0, 1, 2]  # the bad chunk wrote nothing
    for r in judged:
        assert all(0.0 <= p <= 1.0 and not math.isnan(p) for row in r["P"] for p in row)
    assert sorted(p.name for p in it.glob("*.done")) == ["generate.done"]
    assert not (it / "dataset.json").exists()


@pytest.fixture
def http_judge(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MY_KEY", "sk-test-bad-input")
    server = FakeServer()
    server.broken = True

    def respond(n, body, headers):
        user = body["messages"][-1]["content"]
        if server.broken and "#3:" in user:
            return 500, {"error": "overloaded"}, 0.0, {}
        pa = 0.2 + 0.6 * (len(user) % 7) / 6
        return 200, completion("A", {"A": pa, "B": 1 - pa}), 0.0, {}

    server.respond = respond
    yield server
    server.close()


def test_http_judge_failure_keeps_generations_and_resumes_when_fixed(env, http_judge):
    kw = (
        f"{{model: x, base_url: '{http_judge.url}', api_key_env: MY_KEY, max_attempts: 2, "
        "backoff_base: 0.001, backoff_max: 0.002, max_concurrency: 4}"
    )
    out = env.tmp / "http_judge"
    # evaluation off: it would ask the training judge first (proxy_win_rate of iteration 0)
    off = {"evaluation.enabled": "false"}
    cfg = env.cfg(out.name, **{"judge.name": "openai", "judge.kwargs": kw, **off})
    with pytest.raises(JudgeError, match=r"failed after 2 attempts; last error: HTTP 500"):
        run_selfplay(cfg, log=_quiet)
    it = out / "iter_001"
    gens = (it / "generations.jsonl").read_bytes()
    assert len(gens.splitlines()) == 12
    assert [r["prompt_index"] for r in read_jsonl(it / "judgments.jsonl")] == [0, 1, 2]
    assert not (it / "judge.done").exists()

    http_judge.broken = False  # the endpoint recovers; the same command resumes
    n_before = len(http_judge.requests)
    assert run_selfplay(cfg, log=_quiet) == []  # not evaluated
    assert (it / "train.done").exists() and (it / "checkpoint").is_dir()
    assert (it / "generations.jsonl").read_bytes() == gens  # not regenerated
    assert [r["prompt_index"] for r in read_jsonl(it / "judgments.jsonl")] == list(range(12))
    # only the 9 unjudged prompts were asked: 6 pairs x 2 orders each (the rest is cached)
    assert len(http_judge.requests) - n_before == 9 * 12


def test_cli_reports_judge_failure_as_error(env, capsys):
    kw = "{fn: 'test_bad_input:bad_judge', batched: true, kwargs: {mode: nan}}"
    rc, err = _train(capsys, env.args("cli_judge_nan", **{"judge.kwargs": kw}))
    assert rc == 2 and re.search(r"(?m)^error: judge 'python' \(.*\) returned nan", err), err


# ------------------------------------------------------------------ a disk that fills up
class DiskFull:
    """Stands in for ``os`` inside rspo.utils.io: the write to a file matching ``target``
    after ``after`` successful ones lands half its bytes, then fails with ENOSPC."""

    def __init__(self, target, after: int = 0) -> None:
        self.target, self.after, self.fired = target, after, False

    def write(self, fd: int, data) -> int:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if not self.fired and self.target(name):
            if self.after == 0:
                self.fired = True
                os.write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.after -= 1
        return os.write(fd, data)

    def __getattr__(self, name: str):
        return getattr(os, name)


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to map fds to files"
)


@pytest.fixture(scope="module")
def reference(env) -> Path:
    """An uninterrupted run of the tiny config (what resumed runs must reproduce)."""
    run_selfplay(env.cfg("reference"), log=_quiet)
    return env.tmp / "reference"


def _assert_all_records_whole(root: Path) -> None:
    for p in root.rglob("*"):
        if p.suffix == ".jsonl":
            assert p.read_bytes().endswith(b"\n") or not p.read_bytes(), p
            read_jsonl(p)
        elif p.suffix in (".json", ".done"):
            json.loads(p.read_text())
        assert not p.name.endswith(".tmp"), p


@needs_proc
def test_disk_full_while_appending_keeps_earlier_records_and_resumes(env, monkeypatch, reference):
    out = env.tmp / "enospc_append"
    cfg = env.cfg(out.name)
    disk = DiskFull(lambda name: name == "generations.jsonl", after=2)
    monkeypatch.setattr(rspo.utils.io, "os", disk)
    with pytest.raises(OSError) as e:
        run_selfplay(cfg, log=_quiet)
    assert disk.fired and e.value.errno == errno.ENOSPC
    assert e.value.filename == str(out / "iter_001" / "generations.jsonl")
    gens = read_jsonl(out / "iter_001" / "generations.jsonl")
    assert [g["prompt_index"] for g in gens] == [0, 1, 2, 3]  # two whole chunks, no torn third
    assert not (out / "iter_001" / "generate.done").exists()
    _assert_all_records_whole(out)

    monkeypatch.setattr(rspo.utils.io, "os", os)  # space freed: the same command resumes
    run_selfplay(cfg, log=_quiet)
    for f in ("metrics.jsonl", "iter_001/generations.jsonl", "iter_001/judgments.jsonl"):
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f


@needs_proc
def test_disk_full_during_an_atomic_write_leaves_no_file_and_resumes(env, monkeypatch, reference):
    out = env.tmp / "enospc_atomic"
    cfg = env.cfg(out.name)
    disk = DiskFull(lambda name: name.startswith(".dataset.json."))
    monkeypatch.setattr(rspo.utils.io, "os", disk)
    with pytest.raises(OSError, match="No space left on device") as e:
        run_selfplay(cfg, log=_quiet)
    assert disk.fired and e.value.filename == str(out / "iter_001" / "dataset.json")
    it = out / "iter_001"
    assert not (it / "dataset.json").exists() and not list(it.glob(".dataset.json*"))
    assert sorted(p.name for p in it.glob("*.done")) == ["generate.done", "judge.done"]
    _assert_all_records_whole(out)

    monkeypatch.setattr(rspo.utils.io, "os", os)
    run_selfplay(cfg, log=_quiet)
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


@needs_proc
def test_disk_full_never_corrupts_an_existing_file(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"a": 1}, {"a": 2}])
    cfg = tmp_path / "config.yaml"
    atomic_write_text(cfg, "old: true\n")
    before = (log.read_bytes(), cfg.read_bytes())
    monkeypatch.setattr(rspo.utils.io, "os", DiskFull(lambda name: name == "log.jsonl"))
    with pytest.raises(OSError, match=r"No space left on device: '.*log\.jsonl'"):
        append_jsonl(log, [{"a": 3, "pad": "x" * 1000}, {"a": 4}])
    monkeypatch.setattr(rspo.utils.io, "os", DiskFull(lambda name: name.startswith(".config")))
    with pytest.raises(OSError, match=r"No space left on device: '.*config\.yaml'"):
        atomic_write_text(cfg, "new: true\n" * 1000)
    assert (log.read_bytes(), cfg.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "log.jsonl"]
    monkeypatch.setattr(rspo.utils.io, "os", os)
    append_jsonl(log, [{"a": 3}])
    assert read_jsonl(log) == [{"a": 1}, {"a": 2}, {"a": 3}]


@needs_proc
def test_cli_reports_disk_full_as_error(env, capsys, monkeypatch):
    monkeypatch.setattr(rspo.utils.io, "os", DiskFull(lambda n: n == "generations.jsonl"))
    rc, err = _train(capsys, env.args("cli_enospc"))
    assert rc == 2 and re.search(r"(?m)^error: .*No space left on device: .*generations", err), err


def test_a_reference_whose_tokenizer_extends_the_policys_is_accepted(env):
    """π_ref reads every policy id when its tokenizer only adds tokens of its own."""
    from rspo.modeling import check_same_tokenizer, load_tokenizer

    check_same_tokenizer(load_tokenizer(str(env.model)), str(_other_vocabulary(env)), "x")
    with pytest.raises(ValueError, match=re.escape(f"x={env.model}: ") + r".*'<other>', 259"):
        check_same_tokenizer(load_tokenizer(str(_other_vocabulary(env))), str(env.model), "x")


def test_disk_full_while_saving_the_training_state_names_it_and_leaves_no_tmp(
    env, monkeypatch, reference
):
    """safetensors reports a full disk as a SafetensorError naming no file: rspo names the
    state directory, removes the half-written temp dir, and the same command resumes."""
    from safetensors import SafetensorError

    import rspo.training.checkpoint as ck

    out = env.tmp / "enospc_state"
    cfg = env.cfg(out.name, **{"training.save_steps": 1})
    real = ck.save_file

    def full(tensors, path, *a, **k):
        if path.endswith("optimizer.safetensors"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OSError, match=r"could not write .*No space left on device") as e:
        run_selfplay(cfg, log=_quiet)
    it = out / "iter_001"
    assert e.value.filename == str(it / "train_state.tmp")
    assert not (it / "train_state.tmp").exists()
    monkeypatch.setattr(ck, "save_file", real)
    run_selfplay(cfg, log=_quiet)
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


def test_a_damaged_judge_cache_is_named(tmp_path):
    from rspo.judges.cache import JudgementCache

    bad = tmp_path / "judge_cache.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match=r"judge_cache\.sqlite: not a readable judge cache"):
        JudgementCache(bad)
