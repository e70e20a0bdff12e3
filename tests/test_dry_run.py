"""``rspo train --dry-run``: one step at maximum lengths, memory reported, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rspo.config import ConfigError, load_config
from rspo.training.dry_run import dry_run

from fixtures_lm import make_tiny_model_dir

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dry")
    return tmp, make_tiny_model_dir(tmp / "policy"), make_tiny_model_dir(tmp / "ref", seed=3)


def _ov(tmp: Path, policy: Path, **extra) -> list[str]:
    ov = {
        "preset": "gym",  # the gym's small-model values under the settings below
        "model.path": str(policy),
        "data.max_prompt_length": 40,
        "generation.max_new_tokens": 24,
        "generation.num_samples": 3,
        "generation.batch_size": 6,
        "evaluation.max_new_tokens": 16,
        "objective.eta": 10.0,
        "training.batch_size": 8,
        "training.micro_batch_size": 4,
        "run.output": str(tmp / "never_created"),
        **extra,
    }
    return [a for k, v in ov.items() for a in (f"--{k}", str(v))]


def test_cli_dry_run_reports_memory_and_time_and_writes_nothing(models):
    tmp, policy, ref = models
    args = _ov(
        tmp,
        policy,
        **{
            "model.ref_path": ref,
            "objective.regularizer": "forward_kl[nll] + reverse_kl",
            "objective.coef": 0.1,
        },
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "rspo.cli", "train", "--dry-run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["peak_memory_bytes"] > 0 and rep["memory_kind"] == "process peak RSS"
    assert rep["engine"] == "single-process" and rep["world_size"] == 1
    assert (
        set(rep["phases"]) == {"load", "generate", "score", "train_step"}
        and rep["judges_loaded"] == 2
    )
    assert all(p["seconds"] > 0 and p["peak_memory_bytes"] > 0 for p in rep["phases"].values())
    assert (rep["prompt_tokens"], rep["response_tokens"], rep["micro_batch_size"]) == (40, 24, 4)
    assert rep["ref_sequences_in_micro_batch"] == 4 * 3  # worst case: K π_ref samples each
    assert rep["est_optimizer_step_s"] == pytest.approx(2 * rep["step_time_s"])  # 8 / 4
    assert not (tmp / "never_created").exists() and list(tmp.iterdir()) == [
        tmp / "policy",
        tmp / "ref",
    ]


def test_dry_run_loss_at_theta_t_is_the_square_of_the_target(models):
    """At θ = θ_t the log-ratio is 0, so each sample's loss is (η(p̂ − ½))² = (η/4)² here."""
    tmp, policy, _ = models
    cfg = load_config(None, _ov(tmp, policy))
    rep = dry_run(cfg)
    assert rep["loss"] == pytest.approx((10.0 / 4) ** 2, rel=1e-5)
    assert rep["peak_memory_bytes"] >= rep["phases"]["generate"]["peak_memory_bytes"] > 0
    assert not (tmp / "never_created").exists()


def test_length_beyond_the_model_context_is_a_clear_error(models):
    tmp, policy, _ = models
    cfg = load_config(None, _ov(tmp, policy, **{"data.max_prompt_length": 100000}))
    with pytest.raises(ConfigError, match=r"max_prompt_length \(100000\).*\(512 tokens: max_pos"):
        dry_run(cfg)


def test_rope_scaling_extends_the_dry_runs_context_as_the_runs(models, tmp_path):
    """A 512-position model with linear rope scaling x2 takes 700 tokens in the run's check
    (rspo.utils.hf_config.context_length): the dry run accepts them too, and refuses 1100."""
    import json

    tmp, policy, _ = models
    scaled = make_tiny_model_dir(tmp_path / "scaled")
    conf = json.loads((scaled / "config.json").read_text())
    assert conf["max_position_embeddings"] == 512
    conf["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (scaled / "config.json").write_text(json.dumps(conf))
    ok = {"data.max_prompt_length": 676, "evaluation.enabled": "false"}  # 676 + 24 = 700
    assert dry_run(load_config(None, _ov(tmp, scaled, **ok)))["prompt_tokens"] == 676
    with pytest.raises(ConfigError, match=r"= 1100 tokens exceeds .*\(1024 tokens"):
        dry_run(load_config(None, _ov(tmp, scaled, **{**ok, "data.max_prompt_length": 1076})))


def test_dry_run_trains_what_the_run_trains_lora_and_checkpointing(models, monkeypatch):
    """The dry run's step is the run's: LoRA adapters only on a frozen base, gradient
    checkpointing recomputing the layers (it measured a full fine-tune before)."""
    pytest.importorskip("peft")
    from transformers.models.llama import modeling_llama

    tmp, policy, _ = models
    calls = {"n": 0}
    real = modeling_llama.LlamaDecoderLayer.forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", counting)

    def run(*extra: str) -> tuple[dict, int]:
        calls["n"] = 0
        rep = dry_run(load_config(None, [*_ov(tmp, policy), *extra]))
        return rep, calls["n"]

    full, n_full = run()
    lora, _ = run("--model.lora", "{r: 4, alpha: 8}")
    assert full["trainable_parameters"] > 0 and not full["lora"]
    # r = 4 adapters on the tiny Llama's linear layers: far fewer than the whole model
    assert lora["lora"] and 0 < lora["trainable_parameters"] < full["trainable_parameters"] / 5
    ck, n_ck = run("--training.gradient_checkpointing", "true")
    assert ck["gradient_checkpointing"] and ck["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert n_ck > n_full  # the training step ran each layer again in the backward pass


@pytest.mark.parametrize("ref", ["same", "other"])
def test_dry_run_holds_the_reference_the_run_would_hold(models, monkeypatch, ref):
    """model.keep_reference: the dry run holds π_ref through every phase when the run would
    (auto: a tiny model on the host), so the peaks include it; off loads it for scoring only."""
    import rspo.training.dry_run as dr

    tmp, policy, other = models
    loads: list[str] = []
    real = dr.load_configured

    def counting(path, *a, **k):
        loads.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(dr, "load_configured", counting)
    extra = {} if ref == "same" else {"model.ref_path": str(other)}
    got = {}
    for mode in ("auto", "off"):
        loads.clear()
        rep = dry_run(
            load_config(None, _ov(tmp, policy, **extra, **{"model.keep_reference": mode}))
        )
        got[mode] = (rep["reference_held"], list(loads), rep["loss"])
    assert got["auto"][0] and not got["off"][0]
    want_held = ["policy"] if ref == "same" else ["ref"]
    assert got["auto"][1] == want_held  # one load, held from before generation to the end
    assert got["off"][1] == ([] if ref == "same" else ["ref"])  # scoring's own load
    assert got["auto"][2] == pytest.approx(got["off"][2], rel=1e-6)
