"""vLLM backend against a fake ``vllm`` module (real vLLM needs CUDA; untested on a GPU).

The fake engine follows vLLM's documented offline API and sleep-mode rules (level 2 discards
the weights, so generating without ``reload_weights`` fails) and samples with rspo's seeded
HF sampler from the weights it has loaded. A run through it must therefore reproduce the HF
backend's run exactly: that checks the seed and sampling-parameter mapping, the output
conversion, and that each iteration's new weights (or adapter) reach the engine.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import rspo.selfplay.train as train_mod
from rspo.config import load_config
from rspo.generation import SamplingParams, build_backend
from rspo.generation.vllm import to_completion, vllm_sampling_params
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.selfplay.loop import SelfPlayRun, run_selfplay

from fixtures_lm import make_pipeline_env, tiny_run
from vllm_fake import (
    FakeCompletionOutput,
    FakeLLM,
    FakeLoRARequest,
    FakeRequestOutput,
    FakeSamplingParams,
)

TESTS = Path(__file__).parent


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = FakeLoRARequest
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", req)
    monkeypatch.setattr(FakeLLM, "instances", [])
    return mod


# ----------------------------------------------------------------------------- unit tests
def test_sampling_params_mapping(fake_vllm):
    seed = (1 << 63) - 5  # rspo's derived seeds are 63-bit: passed through unchanged
    sp = vllm_sampling_params(fake_vllm, SamplingParams(12, 0.7, 0.9, 0), seed, eos_token_id=2)
    assert sp.kw == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,  # rspo's 0 = off; vLLM's off is -1 (0 is accepted only by newer versions)
        "max_tokens": 12,
        "seed": seed,
        "ignore_eos": True,  # stop at the tokenizer's EOS only, like the HF backend
        "stop_token_ids": [2],
        "skip_special_tokens": True,
    }
    assert vllm_sampling_params(fake_vllm, SamplingParams(5, 0.0, 1.0, 7), 3, 2).top_k == 7


@pytest.mark.parametrize(
    ("token_ids", "reason", "ids", "finished"),
    [
        ([104, 105, "E"], "stop", [104, 105, "E"], True),  # stop token kept
        ([104, 105], "stop", [104, 105, "E"], True),  # stop token dropped by the engine
        ([104, 105, 106], "length", [104, 105, 106], False),  # truncated
        ([104, 105, "E"], "length", [104, 105, "E"], True),  # EOS as the last allowed token
        ([104, "E", 105], "stop", [104, "E"], True),  # anything after EOS is cut
    ],
)
def test_output_conversion_follows_the_hf_convention(token_ids, reason, ids, finished):
    tok = build_byte_tokenizer()
    eos = tok.eos_token_id
    fix = [eos if x == "E" else x for x in token_ids]
    c = to_completion(FakeRequestOutput([FakeCompletionOutput(fix, reason)]), tok)
    assert c.ids == [eos if x == "E" else x for x in ids] and c.finished is finished
    body = [i for i in c.ids if i != eos]
    assert c.text == tok.decode(body, skip_special_tokens=True)


def test_output_conversion_with_a_turn_end_stop_token(fake_vllm):
    """Stop ids [EOS, T] (T from generation_config.json): cut after the first of them; a
    dropped stop token is restored from vLLM's ``stop_reason``."""
    tok = build_byte_tokenizer()
    eos, t = tok.eos_token_id, 120
    out = FakeRequestOutput([FakeCompletionOutput([104, t, 105, eos], "stop")])
    c = to_completion(out, tok, [eos, t])
    assert (c.ids, c.finished, c.text) == ([104, t], True, tok.decode([104]))
    out = FakeRequestOutput([FakeCompletionOutput([104, 105], "stop", stop_reason=t)])
    assert to_completion(out, tok, [eos, t]).ids == [104, 105, t]
    sp = vllm_sampling_params(fake_vllm, SamplingParams(5, 0.0), 3, [eos, t])
    assert sp.stop_token_ids == [eos, t] and sp.ignore_eos


def test_missing_vllm_is_a_clear_error_before_the_run_directory(env, monkeypatch, tmp_path):
    tmp, model = env
    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = load_config(None, _cfg(tmp, model, str(tmp_path / "novllm"), "vllm"))
    with pytest.raises(ImportError, match=r"pip install 'rspo\[vllm\]'.*generation.backend: hf"):
        SelfPlayRun(cfg)
    with pytest.raises(ImportError, match=r"pip install 'rspo\[vllm\]'"):
        build_backend("vllm", str(model), None)
    assert not (tmp_path / "novllm").exists()


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    return make_pipeline_env(tmp_path_factory.mktemp("vllm"))


def _cfg(tmp: Path, model: Path, out: str, backend: str, lora: dict | None = None) -> dict:
    return tiny_run(
        tmp, model, out,
        model={"lora": lora},
        data={"num_prompts": 6, "num_eval_prompts": 4},
        # logprobs off: both backends score log π_t with the same forward, so the runs match
        generation={"backend": backend, "num_samples": 3, "max_new_tokens": 8, "batch_size": 9,
                    "logprobs": "off"},  # fmt: skip
        objective={"eta": 30.0},
        training={"lr": 0.02, "batch_size": 6, "micro_batch_size": 6},
        evaluation={"temperature": 1.0, "max_new_tokens": 8, "n_boot": 20},
        run={"seed": 1},
    )  # fmt: skip


def _records(root: Path) -> dict[str, str]:
    names = ["iter_001/generations.jsonl", "iter_002/generations.jsonl", "eval_baseline.jsonl"]
    names += [f"iter_{t:03d}/eval_outputs.jsonl" for t in (0, 1, 2)]
    return {n: (root / n).read_text() for n in names if (root / n).exists()}


def _run_pair(env, lora, tag, monkeypatch):
    """The same run with the HF backend and with the (fake) vLLM backend."""
    tmp, model = env
    asleep_in_training = []
    real_train = train_mod.train_policy

    def spy(*a, **k):
        asleep_in_training.append([e.weights is None and not e.kv for e in FakeLLM.instances])
        return real_train(*a, **k)

    monkeypatch.setattr(train_mod, "train_policy", spy)
    monkeypatch.setattr(FakeLLM, "batch_size", 9)  # = generation.batch_size: same batches
    rows = {}
    for backend in ("hf", "vllm"):
        out = str(tmp / f"{tag}_{backend}")
        cfg = load_config(None, _cfg(tmp, model, out, backend, lora))
        rows[backend] = run_selfplay(cfg, log=lambda m: None)
    hf, vl = Path(tmp / f"{tag}_hf"), Path(tmp / f"{tag}_vllm")
    return rows, hf, vl, asleep_in_training


def test_full_finetune_run_through_vllm_reproduces_the_hf_run(env, fake_vllm, monkeypatch):
    import rspo.modeling

    monkeypatch.setattr(FakeLLM, "keep_stop_token", False)
    real_free = rspo.modeling.free_memory

    def free_spy(*a, **k):  # torch's cached blocks must go back before the engine wakes
        if FakeLLM.instances:
            FakeLLM.instances[-1].log.append(("free_memory",))
        return real_free(*a, **k)

    monkeypatch.setattr(rspo.modeling, "free_memory", free_spy)
    rows, hf, vl, asleep = _run_pair(env, None, "full", monkeypatch)
    assert rows["vllm"] == rows["hf"] and len(rows["hf"]) == 3
    want = _records(hf)
    assert len(want) == 6 and _records(vl) == want
    assert '"finished": true' in "".join(want.values())  # the EOS path is exercised too
    (engine,) = FakeLLM.instances  # one engine for the whole run
    live = vl / "vllm_live"
    assert engine.model == str(live) and engine.kw["tokenizer"] == str(env[1])
    assert engine.kw["enable_sleep_mode"] and engine.kw["load_format"] == "safetensors"
    assert engine.kw["seed"] == 1 and not engine.kw.get("enable_lora")
    assert asleep[-2:] == [[True], [True]]  # asleep (weights discarded) while training
    ops = [e[0] for e in engine.log]
    assert ops.count("reload_weights") >= 2  # checkpoints 1 and 2 reached the engine
    i = ops.index("reload_weights")
    assert engine.log[i - 3 : i + 3] == [
        ("sleep", 2),
        ("free_memory",),
        ("wake_up", ("weights",)),
        engine.log[i],
        ("wake_up", ("kv_cache",)),
        ("reset_prefix_cache",),
    ]
    ck2 = vl / "iter_002" / "checkpoint" / "model.safetensors"
    assert (live / "model.safetensors").read_bytes() == ck2.read_bytes()


def test_lora_run_through_vllm_reproduces_the_hf_run(env, fake_vllm, monkeypatch):
    pytest.importorskip("peft")
    rows, hf, vl, asleep = _run_pair(env, {"r": 4, "alpha": 8.0}, "lora", monkeypatch)
    assert rows["vllm"] == rows["hf"]
    want = _records(hf)
    assert len(want) == 6 and _records(vl) == want
    (engine,) = FakeLLM.instances
    assert engine.model == str(env[1]) and engine.kw["enable_lora"]
    assert engine.kw["max_lora_rank"] == 8  # r = 4 rounded up to a rank vLLM supports
    ops = [e[0] for e in engine.log]
    assert "reload_weights" not in ops and ("sleep", 2) not in engine.log
    served = [e[1] for e in engine.log if e[0] == "generate"]
    ck = [str(vl / f"iter_{t:03d}" / "checkpoint") for t in (1, 2)]
    assert served[0] is None and ck[0] in served and served[-1] == ck[1]
    assert asleep[-2:] == [[True], [True]]
    assert not (vl / "vllm_live").exists()
    conf = json.loads((Path(ck[1]) / "adapter_config.json").read_text())
    assert conf["r"] == 4


def test_the_base_spelled_another_way_is_not_sent_as_an_adapter(env, fake_vllm, tmp_path):
    """model.path through a symlink or relative: the run hands the engine the resolved base
    path; it must still be the base (no LoRARequest on a directory without adapter_config)."""
    tmp, model = env
    link = tmp_path / "link"
    link.symlink_to(model, target_is_directory=True)
    tok = build_byte_tokenizer()
    engine = build_backend("vllm", str(link), tok, lora_rank=4)
    for spelling in (str(model), str(link), str(model.resolve())):
        engine.set_policy(spelling)
        assert engine._lora_request() is None, spelling
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    engine.set_policy(str(adapter))
    assert engine._lora_request().lora_path == str(adapter.resolve())
    with pytest.raises(ValueError, match="LoRA ranks up to 512"):
        build_backend("vllm", str(model), tok, lora_rank=600)


def test_a_hub_id_not_in_the_local_cache_is_a_clear_error(fake_vllm, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="'org/missing-model' is not a local directory"):
        build_backend("vllm", "org/missing-model", build_byte_tokenizer(), live_dir=tmp_path)


def test_a_lora_base_given_as_an_uncached_hub_id_is_left_to_vllm(fake_vllm, monkeypatch, tmp_path):
    """LoRA serves the base by name (vLLM fetches it); only full fine-tuning needs local files."""
    from rspo.generation.vllm import local_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_model_dir("org/not-cached") == "org/not-cached"
    with pytest.raises(ValueError, match="full fine-tuning serves the policy from local files"):
        local_model_dir("org/not-cached", need_weights=True)
    assert local_model_dir(str(tmp_path)) == str(tmp_path.resolve())


def test_the_lora_base_by_hub_id_stays_the_base_after_vllm_fetched_it(
    fake_vllm, monkeypatch, tmp_path
):
    """An uncached hub id is handed to vLLM, which downloads it; afterwards the same id
    resolves to a cache snapshot, and must still be the base (no LoRARequest for it)."""
    import huggingface_hub

    from rspo.generation.vllm import VLLMBackend

    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model.safetensors").write_bytes(b"")
    cached = {"now": False}

    def snapshot_download(repo_id, local_files_only=True, **_):
        if not cached["now"]:
            raise FileNotFoundError(repo_id)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    engine = VLLMBackend.__new__(VLLMBackend)  # the engine itself is vLLM's (not built here)
    engine.lora, engine._given, engine._lora_ids = True, "org/m", {}
    engine.base_path = engine.policy = "org/m"
    cached["now"] = True  # vLLM fetched it while building the engine
    for spelling in ("org/m", str(snap)):
        engine.set_policy(spelling)
        assert engine.policy == "org/m" and engine._lora_request() is None, spelling
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    engine.set_policy(str(adapter))
    assert engine._lora_request().lora_path == str(adapter.resolve())


def test_the_engine_length_is_capped_at_the_models_context(env):
    """Eval prompts (sampled by rspo eval even when training evaluates nothing) count, but
    max_model_len never exceeds the model's context, which vLLM would refuse."""
    from types import SimpleNamespace

    from rspo.selfplay.preflight import check_context

    tmp, model = env
    cfg = load_config(None, _cfg(tmp, model, str(tmp / "ctx"), "vllm"))
    cfg.evaluation.enabled = False
    ctx = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    train = SimpleNamespace(ids=[[1] * 10])
    assert check_context(cfg, train, SimpleNamespace(ids=[[1] * 20])) == 20 + 8
    assert check_context(cfg, train, SimpleNamespace(ids=[[1] * ctx])) == ctx
