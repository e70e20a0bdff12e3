"""Safety: no remote code unless asked, no pickle, no API key on disk or in logs."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from test_selfplay_run import _cfg

import rspo
import rspo.selfplay.loop
from rspo.cli import main
from rspo.config import Config, load_config
from rspo.judges import build_judge
from rspo.modeling import load_model, load_tokenizer
from rspo.selfplay.loop import run_selfplay

from fixtures_lm import make_pipeline_env
from test_judges_openai import FakeServer, completion

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
SECRET = "sk-secret-123"


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_pipeline_env(tmp_path_factory.mktemp("safe"))


def _args(env, out: str, **overrides) -> list[str]:
    tmp, model = env
    return _cfg(tmp, model, out, **{"run.iterations": 1, **overrides})


# ------------------------------------------------------------------ trust_remote_code
def test_trust_remote_code_defaults_to_false_everywhere():
    assert Config().model.trust_remote_code is False
    assert load_config(None).model.trust_remote_code is False
    assert "trust_remote_code: false" in Config().to_yaml()
    for fn in (load_model, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    from rspo.judges import available_judges
    from rspo.judges.base import _REGISTRY

    names = available_judges()  # also registers the built-in judges
    hf_judges = [
        n for n in names if "trust_remote_code" in inspect.signature(_REGISTRY[n]).parameters
    ]
    assert {"reward_model", "pairwise_lm"} <= set(hf_judges)
    for n in hf_judges:
        assert inspect.signature(_REGISTRY[n]).parameters["trust_remote_code"].default is False, n
    # and no code sets it: no `trust_remote_code=True` argument, default or field
    root = Path(rspo.__file__).parent
    offenders = [
        f"{p.relative_to(root)}:{line}" for p in root.rglob("*.py") for line in _turns_on(p)
    ]
    assert offenders == []


def _turns_on(path: Path) -> list[int]:
    """Lines of ``path`` that pass or default ``trust_remote_code`` to True."""

    def true(node) -> bool:
        return isinstance(node, ast.Constant) and node.value is True

    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and true(node.value):
            out.append(node.value.lineno)
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            pairs = list(zip(args[len(args) - len(node.defaults) :], node.defaults))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            out += [d.lineno for a, d in pairs if a.arg == "trust_remote_code" and true(d)]
        elif (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and "trust_remote_code" in ast.unparse(node).split("=")[0]
            and node.value is not None
            and true(node.value)
        ):
            out.append(node.lineno)
    return out


def _model_with_custom_code(env, name: str) -> tuple[Path, Path]:
    """A model dir whose config and tokenizer point at bundled code (``auto_map``); the code
    creates a sentinel file when imported."""
    tmp, model = env
    d = tmp / name
    sentinel = tmp / f"{name}_code_ran"
    if not d.exists():
        shutil.copytree(model, d)
        (d / "evil_code.py").write_text(
            f"open({str(sentinel)!r}, 'w').close()\n"
            "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
            "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
            "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
            "class EvilTok(PreTrainedTokenizerFast):\n    pass\n"
        )
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(
            model_type="evil",
            architectures=["EvilModel"],
            auto_map={
                "AutoConfig": "evil_code.EvilConfig",
                "AutoModelForCausalLM": "evil_code.EvilModel",
                "AutoModelForSequenceClassification": "evil_code.EvilModel",
            },
        )
        (d / "config.json").write_text(json.dumps(cfg))
        tc = json.loads((d / "tokenizer_config.json").read_text())
        tc.update(
            tokenizer_class="EvilTok", auto_map={"AutoTokenizer": [None, "evil_code.EvilTok"]}
        )
        (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return d, sentinel


def test_custom_model_code_is_refused_not_run(env, capsys):
    d, sentinel = _model_with_custom_code(env, "custom_code_model")
    for load in (load_tokenizer, load_model):
        with pytest.raises(ValueError, match=r"custom_code_model needs custom .*trust_remote_code"):
            load(str(d))
    for judge in ("reward_model", "pairwise_lm"):
        with pytest.raises(ValueError, match="trust_remote_code"):
            build_judge(judge, model=str(d), device="cpu")
    out = env[0] / "custom_code_run"
    rc = main(["train", *_args(env, out.name, **{"model.path": str(d)})])
    err = capsys.readouterr().err
    assert rc == 2 and "set model.trust_remote_code: true" in err, err
    assert not sentinel.exists()
    assert not list(out.glob("iter_*"))


# ------------------------------------------------------------------ safetensors only
@pytest.fixture
def no_pickle(monkeypatch):
    """Any torch.save/torch.load/pickle (un)dump during the test fails it."""
    calls: list[str] = []

    def trap(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called: weights must go through safetensors")

        return f

    for mod, name in ((torch, "save"), (torch, "load"), (pickle, "dump"), (pickle, "load")):
        monkeypatch.setattr(mod, name, trap(f"{mod.__name__}.{name}"))
    monkeypatch.setattr(pickle, "Unpickler", trap("pickle.Unpickler"))
    yield calls
    assert calls == []


def test_a_run_writes_and_reads_weights_as_safetensors_only(env, monkeypatch, no_pickle):
    cfg = load_config(None, _args(env, "safetensors_run"))
    out = Path(cfg.run.output)
    seen: dict[str, list[str]] = {}

    def interrupt(stage: str, count: int) -> None:  # Ctrl-C after the state of step 2 is saved
        if stage == "train" and count >= 3:
            state = out / "iter_001" / "train_state"
            seen["train_state"] = sorted(p.name for p in state.iterdir())
            raise KeyboardInterrupt

    monkeypatch.setattr(rspo.selfplay.loop, "fault_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_selfplay(cfg, log=_quiet)
    assert seen["train_state"] == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    monkeypatch.setattr(rspo.selfplay.loop, "fault_point", lambda *a: None)
    rows = run_selfplay(cfg, log=_quiet)  # resumes training from the saved safetensors state
    assert [r["iteration"] for r in rows] == [0, 1]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert [p for p in files if p.suffix in PICKLE_SUFFIXES] == []
    ck = out / "iter_001" / "checkpoint"
    assert sorted(p.name for p in ck.glob("*.safetensors")) == ["model.safetensors"]
    load_model(str(ck))  # the checkpoint loads back without pickle


def test_pickled_weights_are_refused_and_never_unpickled(env, capsys, no_pickle):
    tmp, model = env
    sentinel = tmp / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    bin_only = tmp / "bin_only"
    shutil.copytree(model, bin_only)
    (bin_only / "model.safetensors").unlink()
    with open(bin_only / "pytorch_model.bin", "wb") as f:
        pickle.Pickler(f).dump(Payload())  # Pickler itself is not trapped
    with pytest.raises(
        FileNotFoundError,
        match=r"bin_only has no \*\.safetensors weights, only "
        r"pytorch_model\.bin: rspo loads safetensors only",
    ):
        load_model(str(bin_only))
    rc = main(["train", *_args(env, "bin_only_run", **{"model.path": str(bin_only)})])
    err = capsys.readouterr().err
    assert rc == 2 and "only pytorch_model.bin" in err and "never unpickles" in err, err
    # next to safetensors weights, a pickle file is ignored, not read
    both = tmp / "both"
    shutil.copytree(model, both)
    shutil.copy(bin_only / "pytorch_model.bin", both / "pytorch_model.bin")
    m = load_model(str(both))
    ref = load_model(str(model))
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values())
    )
    assert not sentinel.exists()


# ------------------------------------------------------------------ API keys
@pytest.fixture
def judge_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MY_KEY", SECRET)
    server = FakeServer()

    def respond(n, body, headers):
        if n == 1:  # a careless server echoing the credentials in an error body
            return 503, {"error": f"busy; you sent {headers.get('Authorization')}"}, 0.0, {}
        user = body["messages"][-1]["content"]
        pa = 0.2 + 0.6 * (len(user) % 7) / 6
        return 200, completion("A", {"A": pa, "B": 1 - pa}), 0.0, {}

    server.respond = respond
    yield server
    server.close()


def test_api_key_from_env_never_reaches_the_run_dir_or_logs(env, judge_server, capsys, caplog):
    from rspo.evaluation.report import write_csv, write_html_report

    caplog.set_level(logging.DEBUG)
    kw = (
        f"{{base_url: '{judge_server.url}', model: x, api_key_env: MY_KEY, "
        "backoff_base: 0.001, backoff_max: 0.002}"
    )
    out = env[0] / "api_key_run"
    args = _args(env, out.name, **{"judge.name": "openai", "judge.kwargs": kw})
    args += ["--evaluation.judge", "openai", "--evaluation.judge_kwargs", kw]
    assert main(["train", *args]) == 0
    captured = capsys.readouterr()
    # the key was really used, and the echoing error was really logged (so both were exposed)
    auth = {h.get("Authorization") for h, _ in judge_server.requests}
    assert auth == {f"Bearer {SECRET}"} and len(judge_server.requests) > 12 * 6
    assert "retrying" in caplog.text and "Bearer ***" in caplog.text
    cfg_text = (out / "config.yaml").read_text()
    assert "api_key_env: MY_KEY" in cfg_text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    write_csv(rows, out / "report" / "metrics.csv")
    write_html_report(out / "report" / "report.html", "run", rows, [], notes=cfg_text)

    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"config.yaml", "metrics.jsonl", "judge_cache.sqlite", "report.html"} <= {
        p.name for p in files
    }
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    for text in (captured.out, captured.err, caplog.text):
        assert SECRET not in text


@pytest.mark.parametrize(
    "overrides",
    [
        {"judge.name": "openai", "judge.kwargs": f"{{model: x, api_key: {SECRET}}}"},
        {
            "evaluation.judge": "openai",
            "evaluation.judge_kwargs": f"{{model: x, extra_headers: {{Authorization: {SECRET}}}}}",
        },
    ],
    ids=["judge_api_key", "eval_judge_header"],
)
def test_a_key_put_in_the_config_is_refused_before_anything_is_saved(env, capsys, overrides):
    # today config.yaml, key included, is written before the judge refuses the setting
    out = env[0] / f"key_in_config_{next(iter(overrides)).split('.')[0]}"
    rc = main(["train", *_args(env, out.name, **overrides)])
    err = capsys.readouterr().err
    assert rc == 2 and "looks like a credential" in err and SECRET not in err, err
    assert not out.exists()
