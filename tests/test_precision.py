"""Mixed precision and memory: float32 log-probs from bf16 logits, gradient checkpointing,
dtype switches, and which models are resident when (π_ref held or loaded per iteration)."""

from __future__ import annotations

import gc
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch

import rspo.modeling
import rspo.selfplay.models as models_mod
import rspo.selfplay.train as train_mod
from rspo.config import ConfigError, load_config
from rspo.forward import _pack
from rspo.modeling import load_model, resolve_dtype, sequence_logprobs
from rspo.selfplay.loop import run_selfplay
from rspo.selfplay.models import PolicyModels

from fixtures_lm import make_pipeline_env, tiny_run

TESTS = Path(__file__).parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    return make_pipeline_env(tmp_path_factory.mktemp("prec"))


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 250, (5 + i % 4,), generator=g).tolist() for i in range(n)]
    resps = [torch.randint(3, 250, (6 + i % 5,), generator=g).tolist() for i in range(n)]
    return prompts, resps


def test_bf16_model_logprobs_match_a_float64_computation_of_the_same_logits(env):
    _, model_dir = env
    model = load_model(str(model_dir), dtype="bfloat16").eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # spread the logits so rounding matters
    prompts, resps = _batch()
    with torch.no_grad():
        ours = sequence_logprobs(model, prompts, resps, pad_id=0)
        ids, attn, tgt = _pack(prompts, resps, 0, "cpu")
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    targets, mask = ids[:, 1:].unsqueeze(-1), tgt[:, 1:]

    def summed(lp: torch.Tensor) -> torch.Tensor:
        return (lp.gather(-1, targets).squeeze(-1).double() * mask).sum(-1)

    exact = summed(torch.log_softmax(logits.double(), -1))
    naive = summed(torch.log_softmax(logits, -1))  # normalising in bf16 itself
    # sums over 6-10 tokens of about -5 each: float32 error ~1e-6 a token (measured 4.8e-6)
    assert (ours.double() - exact).abs().max() < 2e-5
    assert (naive - exact).abs().max() > 1e-2  # bf16 normalisation is off by ~0.05: upcast matters


def test_dtype_switch_and_auto(env):
    _, model_dir = env
    assert resolve_dtype("auto", "cpu") == torch.float32  # bf16 only on a CUDA device
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert load_model(str(model_dir), "float16").lm_head.weight.dtype == torch.float16
    assert load_model(str(model_dir), "auto", "cpu").lm_head.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="model.dtype: unknown dtype 'fp8'"):
        resolve_dtype("fp8")
    with pytest.raises(ConfigError, match="model.dtype: invalid value 'half'"):
        load_config(None, ["--model.dtype", "half"])


def _grads(model, prompts, resps) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    sequence_logprobs(model, prompts, resps, 0).pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8.0}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(env, lora):
    _, model_dir = env
    if lora:
        pytest.importorskip("peft")
    prompts, resps = _batch()
    got, calls = {}, {}
    for flag in (False, True):
        cfg = load_config(
            None,
            {
                "model": {"path": str(model_dir), "lora": lora},
                "training": {"gradient_checkpointing": flag},
            },
        )
        model = PolicyModels(cfg, CPU).trainable(str(model_dir))
        layer = model.get_base_model().model.layers[0] if lora else model.model.layers[0]
        n, mlp = [], layer.mlp
        mlp.forward = lambda *a, n=n, f=mlp.forward, **k: (n.append(1), f(*a, **k))[1]
        got[flag] = _grads(model, prompts, resps)
        calls[flag] = len(n)
    assert calls == {False: 1, True: 2}  # checkpointing re-runs the layer in backward
    assert got[False].keys() == got[True].keys() and len(got[True]) >= 10
    for k in got[False]:
        torch.testing.assert_close(got[True][k], got[False][k], atol=1e-6, rtol=0)


def _cfg(tmp: Path, model: Path, out: str, keep_reference: str = "off") -> dict:
    return tiny_run(
        tmp, model, str(tmp / out),
        model={"keep_reference": keep_reference},
        data={"num_prompts": 6, "num_eval_prompts": 4},
        generation={"num_samples": 2, "max_new_tokens": 6, "batch_size": 12},
        objective={"eta": 10.0},
        training={"lr": 0.01, "batch_size": 4, "micro_batch_size": 4},
        evaluation={"max_new_tokens": 6, "n_boot": 20},
    )  # fmt: skip


def test_reference_is_not_resident_while_training_or_generating(env, monkeypatch):
    """keep_reference off: every model the run loads is tracked by weakref; at each train and
    generate call the only live model must be the one in use (π_ref is dropped once its
    log-probs are stored)."""
    tmp, model_dir = env
    loaded: list[tuple[str, weakref.ref]] = []
    events: list[tuple[str, str, list[str]]] = []
    real_load = rspo.modeling.load_model

    def tracking_load(path, *a, **k):
        m = real_load(path, *a, **k)
        loaded.append((str(path), weakref.ref(m)))
        return m

    def live() -> list[str]:
        gc.collect()
        return [p for p, w in loaded if w() is not None]

    real_train, real_gen = train_mod.train_policy, models_mod.PolicyModels.generator

    def spy_train(model, *a, **k):
        events.append(("train", "", live()))
        return real_train(model, *a, **k)

    def spy_gen(self, path, tok, **kw):
        backend = real_gen(self, path, tok, **kw)
        gc.collect()
        held = [m for _, w in loaded if (m := w()) is not None]
        events.append(("generate", str(path), [m is backend.model for m in held]))
        return backend

    # every load of the run (load_configured's and load_trainable's) goes through it
    monkeypatch.setattr(rspo.modeling, "load_model", tracking_load)
    monkeypatch.setattr(train_mod, "train_policy", spy_train)
    monkeypatch.setattr(models_mod.PolicyModels, "generator", spy_gen)
    cfg = load_config(None, _cfg(tmp, model_dir, "resident"))
    run_selfplay(cfg, log=lambda m: None)
    ck1 = str(Path(cfg.run.output) / "iter_001" / "checkpoint")
    base = str(model_dir)
    trains = [e for e in events if e[0] == "train"]
    assert [len(e[2]) for e in trains] == [1, 1]  # the trained copy only
    # iteration 2 trains the policy trained in iteration 1 (kept, not reloaded from
    # checkpoint 1), after π_ref's log-probs: π_ref is not held
    assert trains[1][2] == [base] and not any(p == ck1 for p, _ in loaded)
    assert any(p == base for p, _ in loaded[1:])  # π_ref was loaded again for iteration 2...
    gens = [e for e in events if e[0] == "generate"]
    assert gens and all(e[2] == [True] for e in gens)  # ...but only the sampled policy lives
    assert any(e[1] == ck1 for e in gens)  # (the policy trained in iteration 1, kept)


def _run_files(out: Path) -> dict[str, bytes]:
    """Every record, metric and weight file of a run (not stage markers: they hold times)."""
    return {
        str(f.relative_to(out)): f.read_bytes()
        for f in sorted(out.rglob("*"))
        if f.suffix in (".jsonl", ".json", ".safetensors") and f.name != "run.json"
    }


def test_held_reference_loads_once_and_changes_no_number(env, monkeypatch):
    """keep_reference on: π_ref is loaded once for the whole run (off: once per iteration
    after the first) and every record, metric and checkpoint is bitwise the same."""
    tmp, model_dir = env
    loads: dict[str, list[str]] = {"on": [], "off": []}
    real_load = models_mod.load_configured
    files = {}
    for mode in ("off", "on"):

        def counting(p, *a, m=mode, **k):
            loads[m].append(str(p))
            return real_load(p, *a, **k)

        monkeypatch.setattr(models_mod, "load_configured", counting)
        cfg = load_config(None, _cfg(tmp, model_dir, f"held_{mode}", mode))
        cfg.run.iterations = 3
        run_selfplay(cfg, log=lambda m: None)
        files[mode] = _run_files(Path(cfg.run.output))
    base = str(model_dir)
    # iteration 1 scores with log π_t (π_1 = π_ref); iterations 2 and 3 need π_ref
    assert loads["off"].count(base) == loads["on"].count(base) + 1
    assert loads["on"].count(base) == 2  # π_0 for iteration 1's sampling, then π_ref once
    assert files["on"].keys() == files["off"].keys()
    assert any("checkpoint" in k for k in files["on"]) and any("dataset" in k for k in files["on"])
    assert [k for k in files["on"] if files["on"][k] != files["off"][k]] == []


def test_held_reference_is_never_trained_and_release_drops_it(env):
    """A held π_ref survives training and generation requests, is not the model handed out
    for training (even at its own path), and is dropped by release()."""
    _, model_dir = env
    cfg = load_config(None, {"model": {"path": str(model_dir), "keep_reference": "on"}})
    models = PolicyModels(cfg, CPU)
    ref = str(model_dir)
    models.reference = ref
    held = models.get(ref)
    before = {n: p.detach().clone() for n, p in held.named_parameters()}
    trained = models.trainable(ref)  # π_t = π_ref (iteration 1): a fresh copy
    assert trained is not held and models.get(ref) is held
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    models.keep("ckpt", trained)
    assert models.get("ckpt") is trained and models.get(ref) is held
    assert all(torch.equal(p, before[n]) for n, p in held.named_parameters())
    w = weakref.ref(held)
    del held
    models.release()
    gc.collect()
    assert w() is None and models.resident() == []


@pytest.mark.parametrize(
    ("mode", "backend", "fraction", "rope", "want"),
    [
        ("auto", "hf", rspo.modeling.KEEP_REFERENCE_FRACTION, "default", True),  # tiny, host
        ("auto", "hf", 1e-12, "default", False),  # weights above the share of memory
        ("auto", "vllm", 1.0, "default", False),  # the engine sizes itself on free GPU memory
        ("off", "hf", 1.0, "default", False),
        ("on", "hf", 1e-12, "default", True),
        ("on", "hf", 1.0, "dynamic", False),  # inv_freq changes with the inputs seen
        ("auto", "hf", 1.0, "dynamic", False),
    ],
)
def test_keep_reference_decision(env, monkeypatch, mode, backend, fraction, rope, want):
    _, model_dir = env
    monkeypatch.setattr(rspo.modeling, "KEEP_REFERENCE_FRACTION", fraction)
    cfg = load_config(None, {"model": {"path": str(model_dir), "keep_reference": mode}})
    models = PolicyModels(cfg, CPU)
    cfg.generation.backend = backend  # (after construction: no vLLM engine is needed here)
    model = load_model(str(model_dir))
    if rope == "dynamic":
        model.config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    assert models._hold_reference(model) is want
    models.keep("ckpt", model)  # the trained policy is not kept either when its RoPE is stateful
    assert (models.resident() == [model]) is (rope == "default" and backend == "hf")


def test_stateful_rope_is_read_from_any_config_form():
    from transformers import LlamaConfig

    from rspo.utils.hf_config import has_stateful_rope

    assert not has_stateful_rope(LlamaConfig())
    dyn = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    assert has_stateful_rope(LlamaConfig(rope_parameters=dyn))
    yarn = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}
    assert not has_stateful_rope(LlamaConfig(rope_parameters=yarn))
    per_layer = types.SimpleNamespace(
        rope_parameters={"full_attention": {"rope_type": "default"}, "sliding_attention": dyn}
    )
    assert has_stateful_rope(per_layer)
    assert has_stateful_rope(types.SimpleNamespace(rope_scaling={"type": "dynamic"}))


def test_keep_reference_on_is_refused_with_vllm():
    with pytest.raises(ConfigError, match=r"model.keep_reference: on needs generation.backend hf"):
        load_config(None, ["--generation.backend", "vllm", "--model.keep_reference", "on"])


def test_device_memory_respects_the_cgroup_limit(tmp_path, monkeypatch):
    from rspo.utils import memory

    phys = memory.device_memory("cpu")
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(memory, "_CGROUP_LIMITS", (str(limit),))
    limit.write_text("max\n")
    assert memory.device_memory("cpu") == phys > 2**26
    limit.write_text(f"{2**26}\n")
    assert memory.device_memory("cpu") == 2**26
    assert memory.device_memory("meta") is None
    lin = torch.nn.Linear(4, 3)  # 12 weights + 3 biases, float32
    lin.register_buffer("b", torch.zeros(5, dtype=torch.float16))
    assert memory.weight_bytes(lin) == 15 * 4 + 5 * 2
