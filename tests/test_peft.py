"""LoRA: π_ref is the adapter-disabled base, one model instance, adapters saved as safetensors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import PreTrainedModel

import rspo.selfplay.loop as loop_mod
import rspo.selfplay.train as train_mod
from rspo.config import ConfigError, LoraConfig, ModelConfig, load_config
from rspo.modeling import batched_sequence_logprobs, load_model, sequence_logprobs
from rspo.selfplay.loop import SelfPlayRun, run_selfplay
from rspo.selfplay.standalone import evaluate_model
from rspo.training.peft import LoraPolicy

from fixtures_lm import make_pipeline_env, tiny_run

pytest.importorskip("peft")
TESTS = Path(__file__).parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    return make_pipeline_env(tmp_path_factory.mktemp("peft"))


def _overrides(tmp: Path, model: Path, out: str, **extra) -> dict:
    ov = tiny_run(
        tmp, model, str(tmp / out),
        model={"lora": {"r": 4, "alpha": 8.0}},
        data={"num_prompts": 8, "num_eval_prompts": 6},
        generation={"num_samples": 3, "max_new_tokens": 8, "batch_size": 12},
        objective={"eta": 30.0},
        training={"lr": 0.02, "batch_size": 8, "micro_batch_size": 4},
        evaluation={"temperature": 1.0, "max_new_tokens": 8, "n_boot": 50},
        run={"seed": 3},
    )  # fmt: skip
    for k, v in extra.items():
        sec, key = k.split(".")
        ov[sec][key] = v
    return ov


def _pairs(n: int = 6) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (int(4 + i % 3),), generator=g).tolist() for i in range(n)]
    resps = [torch.randint(3, 200, (int(3 + i % 4),), generator=g).tolist() for i in range(n)]
    return prompts, resps


def _lp(model, prompts, resps) -> torch.Tensor:
    return torch.tensor(batched_sequence_logprobs(model, prompts, resps, pad_id=0))


def test_fresh_adapter_equals_base_and_training_leaves_the_reference_untouched(env, tmp_path):
    _, model_dir = env
    base = load_model(str(model_dir)).eval()
    m = ModelConfig(path=str(model_dir), lora=LoraConfig(r=4, alpha=8.0))
    pol = LoraPolicy(m, seed=0, device=CPU)
    prompts, resps = _pairs()
    lp_base = _lp(base, prompts, resps)
    # B = 0: adapter on (π_1 = trainable view) and off (π_ref) both give the base exactly
    enabled = _lp(pol.trainable(str(model_dir)), prompts, resps)
    disabled = _lp(pol.get(str(model_dir)), prompts, resps)
    assert torch.equal(enabled, lp_base) and torch.equal(disabled, lp_base)

    model = pol.trainable(str(model_dir))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    (-sequence_logprobs(model, prompts, resps, 0).sum()).backward()
    opt.step()
    after_on = _lp(model, prompts, resps)
    after_off = _lp(pol.get(str(model_dir)), prompts, resps)
    assert (after_on - lp_base).abs().max() > 1e-2  # the policy moved
    assert torch.equal(after_off, lp_base)  # the reference did not

    # an adapter saved as safetensors reloads to the same policy in a fresh LoraPolicy
    model.save_pretrained(tmp_path / "ck", safe_serialization=True)
    again = LoraPolicy(m, seed=99, device=CPU)
    assert torch.allclose(_lp(again.get(str(tmp_path / "ck")), prompts, resps), after_on)
    # and loads standalone (base from adapter_config.json), as `rspo eval` does
    alone = load_model(str(tmp_path / "ck"))
    assert torch.allclose(_lp(alone, prompts, resps), after_on)


@pytest.fixture(scope="module")
def lora_run(env, tmp_path_factory):
    """A 2-iteration LoRA run that records model loads and what training saw."""
    tmp, model_dir = env
    loads: list[str] = []
    seen: dict[str, list] = {"trainable": [], "frozen": []}
    orig_from = PreTrainedModel.from_pretrained.__func__
    orig_train = train_mod.train_policy

    def counting(cls, *a, **k):
        loads.append(str(a[0]))
        return orig_from(cls, *a, **k)

    def spy_train(model, *a, **k):
        seen["trainable"].append([n for n, p in model.named_parameters() if p.requires_grad])
        seen["frozen"].append([n for n, p in model.named_parameters() if not p.requires_grad])
        return orig_train(model, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    mp.setattr(train_mod, "train_policy", spy_train)
    try:
        cfg = load_config(None, _overrides(tmp, model_dir, "lora"))
        rows = run_selfplay(cfg, log=lambda m: None)
    finally:
        mp.undo()
    return cfg, rows, loads, seen


def test_lora_run_loads_one_model_and_trains_only_adapters(lora_run):
    cfg, rows, loads, seen = lora_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert len(loads) == 1  # π_t, π_ref, training and evaluation share one model instance
    assert len(seen["trainable"]) == 2
    for names, frozen in zip(seen["trainable"], seen["frozen"]):
        assert names and all("lora_" in n for n in names)
        assert frozen and not any("lora_" in n for n in frozen)


def test_lora_checkpoints_are_adapter_safetensors_only(lora_run):
    cfg, _, _, seen = lora_run
    for t in (1, 2):
        ck = Path(cfg.run.output) / f"iter_{t:03d}" / "checkpoint"
        weights = sorted(
            p.name for p in ck.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")
        )
        assert weights == ["adapter_model.safetensors"]
        tensors = load_file(str(ck / "adapter_model.safetensors"))
        assert len(tensors) == len(seen["trainable"][0])  # every trained tensor, nothing else
        assert all("lora_A" in k or "lora_B" in k for k in tensors)
        conf = json.loads((ck / "adapter_config.json").read_text())
        assert conf["r"] == 4 and conf["lora_alpha"] == 8.0
    c1 = load_file(str(Path(cfg.run.output) / "iter_001/checkpoint/adapter_model.safetensors"))
    c2 = load_file(str(Path(cfg.run.output) / "iter_002/checkpoint/adapter_model.safetensors"))
    assert any(not torch.equal(c1[k], c2[k]) for k in c1)  # iteration 2 trained further


def test_lora_run_killed_in_training_resumes_to_the_same_numbers(env, lora_run, monkeypatch):
    """With LoRA dropout on (0.3): dropout masks come from a generator seeded per step, so
    the steps after the saved one draw what the uninterrupted run drew."""
    tmp, model_dir = env
    cfg, rows, _, _ = lora_run
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.3}
    ov = _overrides(tmp, model_dir, "lora_resume", **{"model.lora": lora})
    ov["training"]["save_steps"] = 1
    ref = load_config(
        None,
        _overrides(
            tmp, model_dir, "lora_resume_ref", **{"training.save_steps": 1, "model.lora": lora}
        ),
    )
    ref_rows = run_selfplay(ref, log=lambda m: None)
    out = Path(ov["run"]["output"])

    def crash(stage: str, count: int) -> None:
        if stage == "train" and (out / "iter_001" / "train.done").exists() and count >= 1:
            raise KeyboardInterrupt("simulated kill in iteration 2's training")

    monkeypatch.setattr(loop_mod, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        run_selfplay(load_config(None, ov), log=lambda m: None)
    state = out / "iter_002" / "train_state"
    saved = load_file(str(state / "trainable.safetensors"))  # adapters only, no frozen base
    assert saved and all("lora_" in k for k in saved)
    assert not (state / "model.safetensors").exists()
    monkeypatch.undo()
    resumed = run_selfplay(load_config(None, ov), log=lambda m: None)
    assert resumed == ref_rows
    a = load_file(str(out / "iter_002/checkpoint/adapter_model.safetensors"))
    b = load_file(str(Path(ref.run.output) / "iter_002/checkpoint/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rspo_eval_loads_a_lora_checkpoint_with_or_without_model_lora(env, lora_run):
    tmp, model_dir = env
    cfg, _, _, _ = lora_run
    ck = str(Path(cfg.run.output) / "iter_002" / "checkpoint")
    want = (Path(cfg.run.output) / "iter_002" / "eval_outputs.jsonl").read_text()
    for name, lora in (("with_lora", {"r": 4, "alpha": 8.0}), ("no_lora", None)):
        ov = _overrides(tmp, model_dir, "unused")
        ov["model"]["lora"] = lora
        out = tmp / f"eval_{name}"
        evaluate_model(load_config(None, ov), ck, str(out))
        assert (out / "eval_outputs.jsonl").read_text() == want, name


def test_bad_lora_settings_fail_before_the_run_directory(env, tmp_path):
    tmp, model_dir = env
    ov = _overrides(tmp, model_dir, "bad")
    ov["run"]["output"] = str(tmp_path / "bad")
    bad_tm = json.loads(json.dumps(ov))
    bad_tm["model"]["lora"]["target_modules"] = ["q_proj", "qq_proj"]
    with pytest.raises(ValueError, match=r"model.lora.target_modules: \['qq_proj'\].*q_proj"):
        SelfPlayRun(load_config(None, bad_tm))
    four_bit = json.loads(json.dumps(ov))
    four_bit["model"]["load_in_4bit"] = True
    four_bit["model"]["device"] = "cpu"
    with pytest.raises(ValueError, match="model.load_in_4bit: .*CUDA device.*cpu"):
        SelfPlayRun(load_config(None, four_bit))
    no_lora = json.loads(json.dumps(four_bit))
    no_lora["model"]["lora"] = None
    with pytest.raises(ConfigError, match="model.load_in_4bit: .*set model.lora"):
        load_config(None, no_lora)
    assert not (tmp_path / "bad").exists()


def test_missing_peft_names_the_extra(env, monkeypatch):
    tmp, model_dir = env
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"pip install 'rspo\[peft\]'"):
        SelfPlayRun(load_config(None, _overrides(tmp, model_dir, "nopeft")))


def test_adapter_with_another_rank_is_refused(env, lora_run):
    tmp, model_dir = env
    cfg, _, _, _ = lora_run
    ck = str(Path(cfg.run.output) / "iter_001" / "checkpoint")
    pol = LoraPolicy(ModelConfig(path=str(model_dir), lora=LoraConfig(r=8, alpha=8.0)), 0, CPU)
    with pytest.raises(ValueError, match=r"r=4 but model.lora.r=8"):
        pol.get(ck)


def test_lora_config_from_cli_overrides_and_yaml_round_trip():
    cfg = load_config(None, ["--model.lora.r", "8", "--model.lora.target_modules", "[q_proj]"])
    assert cfg.model.lora == LoraConfig(r=8, alpha=32.0, dropout=0.0, target_modules=["q_proj"])
    assert load_config(None, ["--model.lora", "null"]).model.lora is None
    again = load_config(None, yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_an_adapter_of_a_base_given_by_a_relative_path_loads_from_anywhere(
    env, tmp_path, monkeypatch
):
    """model.path relative to the working directory: the saved adapter names its base by
    absolute path, so the checkpoint loads after a change of directory (as `rspo eval` from
    elsewhere would)."""
    _, model_dir = env
    monkeypatch.chdir(model_dir.parent)
    m = ModelConfig(path=model_dir.name, lora=LoraConfig(r=4, alpha=8.0))
    pol = LoraPolicy(m, seed=0, device=CPU)
    pol.trainable(model_dir.name).save_pretrained(tmp_path / "ck", safe_serialization=True)
    saved = json.loads((tmp_path / "ck" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    prompts, resps = _pairs()
    base = load_model(str(model_dir)).eval()
    assert torch.equal(
        _lp(load_model(str(tmp_path / "ck")), prompts, resps), _lp(base, prompts, resps)
    )


def test_the_lora_base_view_stops_at_the_generation_configs_turn_end(env):
    """π_ref / π_1 in a LoRA run is the adapter-disabled view of the peft model: it must stop
    where the peft model does (generation_config's eos ids), or the policy and its baseline
    would be sampled under different stop rules."""
    from rspo.generation import SamplingParams, build_backend
    from rspo.modeling import load_tokenizer

    _, model_dir = env
    tok = load_tokenizer(str(model_dir))
    pol = LoraPolicy(ModelConfig(path=str(model_dir), lora=LoraConfig(r=4)), seed=0, device=CPU)
    base = pol.get(str(model_dir))
    prompts = [tok("Q: a\nA:")["input_ids"], tok("Q: bb\nA:")["input_ids"]]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    free = build_backend("hf", base, tok).generate(prompts, [0, 1], params)
    turn_end = free[0].ids[1]
    pol.model.generation_config.eos_token_id = [tok.eos_token_id, turn_end]
    for view in (pol.get(str(model_dir)), pol.trainable(str(model_dir)).eval()):
        got = build_backend("hf", view, tok).generate(prompts, [0, 1], params)
        assert got[0].finished and got[0].ids == free[0].ids[: free[0].ids.index(turn_end) + 1]
