"""Data parallelism: 2 real processes (torchrun, gloo, CPU) against a 1-process run.

Work is dealt out in the units a single process uses (generate calls, judge calls, scoring
micro-batches), so records must match exactly; training sums the ranks' gradients of one
global batch, so losses and the trained weights match to float tolerance. The shapes are
chosen uneven: 5 prompts in generate calls of 2 prompts (one rank idle in the last round),
7 eval prompts, and 25 training samples in global batches of 8 (the last step has one
sample, so one rank contributes no gradient).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rspo.config import ConfigError, load_config
from rspo.distributed import DistContext, _buckets, env_world
from rspo.selfplay.loop import run_selfplay
from rspo.training.trainer import shard_positions

from fixtures_lm import gym_training, make_tiny_model_dir, write_prompts

TESTS = Path(__file__).parent

#: files whose bytes must not depend on the number of processes
EXACT = (
    "iter_001/generations.jsonl",
    "iter_001/judgments.jsonl",
    "ref_samples.jsonl",
    "eval_baseline.jsonl",
    "iter_000/eval_outputs.jsonl",
    "iter_000/eval_samples.jsonl",
    "iter_000/metrics.json",
)


def _overrides(tmp: Path, out: str) -> dict[str, object]:
    return {
        "preset": "gym",  # the gym's small-model values under the settings below
        "model.path": str(tmp / "model"),
        "data.prompts": str(tmp / "train.jsonl"),
        "data.eval_prompts": str(tmp / "eval.jsonl"),
        "data.num_prompts": 5,
        "data.num_eval_prompts": 7,
        "generation.num_samples": 5,
        "generation.max_new_tokens": 10,
        "generation.batch_size": 10,  # 2 prompts x K=5 per generate call -> 3 calls
        "judge.name": "python",
        "judge.kwargs": {"fn": "fixtures_lm:lowercase_judge"},
        "judge.batch_size": 20,  # 2 prompts' 10 pairs per judge call
        "objective.eta": 30.0,
        "objective.regularizer": "0.5*reverse_kl + 0.5*forward_kl[nll]",
        "objective.coef": 0.1,
        "training.lr": 0.01,
        "training.epochs": 1,
        "training.batch_size": 8,
        "training.micro_batch_size": 2,
        "training.save_steps": 2,
        "evaluation.judge": "python",
        "evaluation.judge_kwargs": {"fn": "fixtures_lm:lowercase_judge"},
        "evaluation.accuracy_fn": "fixtures_lm:lowercase_correct",
        "evaluation.temperature": 1.0,
        "evaluation.max_new_tokens": 10,
        "evaluation.diversity_samples": 3,
        "evaluation.n_boot": 100,
        "run.iterations": 2,
        "run.num_threads": 1,
        "run.output": str(tmp / out),
    }


def _args(ov: dict[str, object]) -> list[str]:
    out = []
    for k, v in ov.items():
        out += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return out


def _torchrun(
    tmp: Path, out: str, env_extra: dict[str, str] | None = None, extra: list[str] | None = None
):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(env_extra or {}),
    }
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "rspo.cli", "train", *_args(_overrides(tmp, out)), *(extra or [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config run in this process (1 rank) and under torchrun (2 ranks)."""
    sys.path.insert(0, str(TESTS))
    tmp = tmp_path_factory.mktemp("dist")
    make_tiny_model_dir(tmp / "model", hidden=32, layers=2)
    write_prompts(tmp / "train.jsonl", 5)
    write_prompts(tmp / "eval.jsonl", 7, prefix="Evaluate")
    run_selfplay(load_config(None, _args(_overrides(tmp, "one"))), log=lambda m: None)
    two = _torchrun(tmp, "two")
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, tmp / "one", tmp / "two", two


def test_two_ranks_write_the_same_records_as_one(runs):
    _, one, two, proc = runs
    for rel in EXACT:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert "data parallel: 2 ranks (gloo), cpu on rank 0, replicated training" in proc.stdout
    assert proc.stdout.count("done:") == 1  # only rank 0 reports


def test_two_ranks_train_to_the_same_losses_weights_and_metrics(runs):
    tmp, one, two, _ = runs
    _assert_same_training(tmp, one, two)


def test_fsdp2_sharded_training_matches_one_process(runs):
    """The accelerate fsdp2.yaml path: the policy is fully_shard-ed over 2 ranks to train."""
    tmp, one, _, _ = runs
    fsdp = _torchrun(tmp, "fsdp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "data parallel: 2 ranks (gloo), cpu on rank 0, fsdp2-sharded training" in fsdp.stdout
    for rel in EXACT:
        assert (one / rel).read_bytes() == (tmp / "fsdp" / rel).read_bytes(), rel
    _assert_same_training(tmp, one, tmp / "fsdp")
    ck = load_file(str(tmp / "fsdp/iter_002/checkpoint/model.safetensors"))
    assert set(ck) == set(load_file(str(tmp / "model/model.safetensors")))  # tied head dropped


ENGINES = {
    "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
    "deepspeed-zero2": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_dry_run_under_a_sharded_engine_reports_every_ranks_peak(runs, engine):
    if engine.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="the [deepspeed] extra is not installed")
    tmp, _, _, _ = runs
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        **ENGINES[engine],
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "rspo.cli", "train", "--dry-run", *_args(_overrides(tmp, "dry"))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)  # printed once, by rank 0
    label = {"fsdp2": "fsdp2-sharded"}.get(engine, engine)  # as the run log names it
    assert rep["engine"] == label and rep["world_size"] == 2
    assert (
        len(rep["peak_memory_bytes_per_rank"]) == 2 and min(rep["peak_memory_bytes_per_rank"]) > 0
    )
    assert rep["peak_memory_bytes"] == max(rep["peak_memory_bytes_per_rank"])
    assert not (tmp / "dry").exists()


def test_dry_run_refuses_what_the_run_refuses(runs):
    """LoRA under FSDP2: the real run refuses it at start-up, so the dry run must too (it
    reported a sharded full fine-tune before)."""
    tmp, _, _, _ = runs
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        **ENGINES["fsdp2"],
    }
    ov = {**_overrides(tmp, "dry_lora"), "model.lora": {"r": 4, "alpha": 8.0}}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "rspo.cli", "train", "--dry-run", *_args(ov)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "model.lora with FSDP2" in proc.stderr


@pytest.mark.parametrize("stage", ["3", "2", "3-offload"])
def test_deepspeed_zero_training_matches_one_process(runs, stage):
    """The accelerate zero3.yaml path (and ZeRO-2, and ZeRO-3 with the optimizer state
    offloaded to the CPU): DeepSpeed partitions the policy's training state over 2 ranks;
    2 micro-batches per rank and step accumulate."""
    pytest.importorskip("deepspeed", reason="the [deepspeed] extra is not installed")
    tmp, one, _, _ = runs
    stage, _, offload = stage.partition("-")
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage}
    if offload:
        env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] = "cpu"
    out = f"ds{stage}{offload}"
    ds = _torchrun(tmp, out, {**env, "DS_ACCELERATOR": "cpu"})
    assert ds.returncode == 0, ds.stderr[-3000:]
    line = f"data parallel: 2 ranks (gloo), cpu on rank 0, deepspeed-zero{stage} training"
    assert line in ds.stdout
    for rel in EXACT:
        assert (one / rel).read_bytes() == (tmp / out / rel).read_bytes(), rel
    _assert_same_training(tmp, one, tmp / out)
    ck = load_file(str(tmp / out / "iter_002/checkpoint/model.safetensors"))
    assert set(ck) == set(load_file(str(tmp / "model/model.safetensors")))  # tied head dropped


def _deepspeed_script(script: str, *args: str, **env_extra: str) -> str:
    """stdout of ``tests/<script>`` under torchrun with 2 processes and DeepSpeed on CPU."""
    pytest.importorskip("deepspeed", reason="the [deepspeed] extra is not installed")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "ACCELERATE_USE_DEEPSPEED": "true",
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        **env_extra,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(TESTS / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_deepspeed_release_frees_the_engine_and_leaves_no_hooks():
    out = _deepspeed_script("deepspeed_release.py", ACCELERATE_DEEPSPEED_ZERO_STAGE="3")
    assert "released:" in out


def test_deepspeed_training_state_round_trips_at_every_stage(tmp_path):
    """tests/deepspeed_state.py: save after step 2, load into a fresh engine, step 3 equals the
    uninterrupted step 3 bitwise (ZeRO-1 bf16 = BF16_Optimizer, ZeRO-2 RMSprop, ZeRO-3 fp32
    and bf16, parameter sizes that do not divide by 2); a torch state with a gradient-less
    layer loads with zero moments."""
    out = _deepspeed_script("deepspeed_state.py", str(tmp_path))
    for case in ("zero1 bf16 adamw", "zero2 fp32 rmsprop", "zero3 fp32 adamw", "zero3 bf16 adamw"):
        assert f"{case}: resumed step 3 = uninterrupted step 3" in out
    assert "torch state with a gradient-less layer: loaded, zero moments" in out


def test_deepspeed_config_takes_zero_from_the_launcher_and_the_rest_from_rspo(
    tmp_path, monkeypatch
):
    from rspo.training.deepspeed import deepspeed_config, zero_stage
    from rspo.training.fsdp import training_engine

    tr = gym_training(micro_batch_size=4, max_grad_norm=0.5)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")
    c = deepspeed_config(tr, 8, torch.bfloat16)
    assert c["zero_optimization"] == {
        "stage": 2,
        "offload_optimizer": {"device": "cpu"},
        "memory_efficient_linear": False,  # or stage 3 patches F.linear process-wide
    }
    assert c["train_batch_size"] == 32 and c["train_micro_batch_size_per_gpu"] == 4
    assert c["gradient_clipping"] == 0.5 and c["bf16"] == {"enabled": True}
    assert c["data_types"] == {"grad_accum_dtype": "fp32"}  # bf16 weights, fp32 gradient sums
    assert c["gradient_accumulation_steps"] == 1 and c["managed_gradient_accumulation"] is False
    if importlib.util.find_spec("deepspeed") is not None:  # offload needs several processes
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        with pytest.raises(ConfigError, match="offload in a single process"):
            training_engine(DistContext())
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    # a DeepSpeed JSON (deepspeed_config_file) keeps its ZeRO tuning and stage; rspo's keys win
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"stage": 2, "stage3_prefetch_bucket_size": 7},
                             "train_batch_size": "auto", "bf16": {"enabled": "auto"}}))  # fmt: skip
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(f))
    c = deepspeed_config(tr, 2, torch.float32)
    assert c["zero_optimization"]["stage"] == zero_stage() == 2  # the run log names stage 2
    assert c["zero_optimization"]["stage3_prefetch_bucket_size"] == 7
    assert c["train_batch_size"] == 8 and c["bf16"] == {"enabled": False} and "data_types" not in c
    for bad, match in [
        ({"optimizer": {"type": "Adam"}}, r"ds.json: optimizer are set by rspo"),
        ({"zero_optimization": {"stage": 1, "overlap_comm": True}}, "stage 1 with overlap_comm"),
        ({"zero_optimization": {"stage": 0}}, "zero_stage '0'"),
    ]:
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            deepspeed_config(tr, 2, torch.float32)
    f.write_text("{not json")
    with pytest.raises(ConfigError, match=r"ds.json: cannot read it as JSON"):
        deepspeed_config(tr, 2, torch.float32)


def test_deepspeed_without_the_package_and_fsdp1_are_refused_before_any_work(runs, monkeypatch):
    tmp, _, _, _ = runs
    cfg = load_config(None, _args(_overrides(tmp, "refused")))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=r"rspo\[deepspeed\].*fsdp2.yaml"):
        run_selfplay(cfg, log=lambda m: None)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "4")
    with pytest.raises(ConfigError, match="zero_stage '4'"):
        run_selfplay(cfg, log=lambda m: None)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version 1"):
        run_selfplay(cfg, log=lambda m: None)
    assert not (tmp / "refused").exists()


def _assert_same_training(tmp: Path, one: Path, two: Path) -> None:
    """Same scored data, per-step losses, weight updates and metrics (to float tolerance)."""
    start = tmp / "model"
    for t in (1, 2):
        d1 = json.loads((one / f"iter_{t:03d}/dataset.json").read_text())
        d2 = json.loads((two / f"iter_{t:03d}/dataset.json").read_text())
        assert len(d1["examples"]) == 25 and len(d1["ref_examples"]) == 25
        for key in ("examples", "ref_examples"):
            for a, b in zip(d1[key], d2[key], strict=True):
                assert a["response_ids"] == b["response_ids"]
                for f in ("logp_t", "logp_ref", "win_rate"):
                    if f in a:
                        assert b[f] == pytest.approx(a[f], rel=1e-5, abs=1e-4)
        log1 = _jsonl(one / f"iter_{t:03d}/train_log.jsonl")
        log2 = _jsonl(two / f"iter_{t:03d}/train_log.jsonl")
        assert [r["step"] for r in log1] == [r["step"] for r in log2] == [1, 2, 3, 4]
        for a, b in zip(log1, log2):
            assert set(a) == set(b)
            for k in a:
                # float32 sums of ~20 token log-probs (|log π| ~ 30) carry ~1e-5 of rounding,
                # and each rank packs its own slice into rows (measured: up to 1.4e-5)
                assert b[k] == pytest.approx(a[k], rel=5e-5, abs=1e-4), (t, a["step"], k)
        # the iteration's weight update agrees to 1e-3 (measured: ~1e-6, ~5e-5): Adam
        # amplifies rounding on near-zero gradients element-wise, so compare whole updates
        w0 = load_file(str(start / "model.safetensors"))
        w1 = load_file(str(one / f"iter_{t:03d}/checkpoint/model.safetensors"))
        w2 = load_file(str(two / f"iter_{t:03d}/checkpoint/model.safetensors"))
        diff = sum(float(((w2[k] - w1[k]) ** 2).sum()) for k in w1) ** 0.5
        update = sum(float(((w1[k] - w0[k]) ** 2).sum()) for k in w1) ** 0.5
        assert update > 1.0 and diff < 1e-3 * update
        start = one / f"iter_{t:03d}/checkpoint"
    m1, m2 = _jsonl(one / "metrics.jsonl"), _jsonl(two / "metrics.jsonl")
    assert [r["iteration"] for r in m2] == [0, 1, 2]
    for a, b in zip(m1, m2):
        assert set(a) == set(b)
        for k, v in a.items():
            if k.startswith("kl_ref") and v is not None:  # from the log-probs: their tolerance
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-4), k
            elif isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
            else:
                assert b[k] == v, k


def test_two_rank_run_killed_in_training_resumes_in_one_process(runs):
    """SIGKILL inside iteration 1's training under torchrun; one process finishes the run."""
    tmp, one, _, _ = runs
    killed = _torchrun(tmp, "killed", {"RSPO_FAULT": "train:3"})
    assert killed.returncode != 0
    root = tmp / "killed"
    assert (root / "iter_001" / "score.done").exists()
    assert not (root / "iter_001" / "train.done").exists()
    assert (root / "iter_001" / "train_state" / "trainer_state.json").exists()  # step 2 saved
    run_selfplay(load_config(None, _args(_overrides(tmp, "killed"))), log=lambda m: None)
    for rel in EXACT:
        assert (root / rel).read_bytes() == (one / rel).read_bytes(), rel
    m1, mk = _jsonl(one / "metrics.jsonl"), _jsonl(root / "metrics.jsonl")
    for a, b in zip(m1, mk, strict=True):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


SHARDED = {
    "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
    **{
        f"zero{stage}": {  # stage 2 links per-parameter fragments, stage 3 gathers partitions
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
            "DS_ACCELERATOR": "cpu",
        }
        for stage in (2, 3)
    },
}


def _killed_after_step_2_save(tmp: Path, out: str, engine: str) -> Path:
    """Run under ``engine`` (2 ranks) and SIGKILL it after step 3 of iteration 1's training;
    the state saved after step 2 (full weights and optimizer state, written by rank 0)."""
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed", reason="the [deepspeed] extra is not installed")
    killed = _torchrun(tmp, out, {**SHARDED[engine], "RSPO_FAULT": "train:3"})
    assert killed.returncode != 0
    state = tmp / out / "iter_001" / "train_state"
    assert sorted(p.name for p in state.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    assert json.loads((state / "trainer_state.json").read_text())["step"] == 2
    opt = load_file(str(state / "optimizer.safetensors"))
    n = len(load_file(str(tmp / "model/model.safetensors")))  # one per parameter (tied: once)
    assert sorted(opt) == sorted(f"{i}.{k}" for i in range(n) for k in _ADAM)
    assert opt["0.step"].item() == 2.0
    assert not [p for p in (tmp / out).rglob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl"}]
    return state


_ADAM = ("exp_avg", "exp_avg_sq", "step")


@pytest.mark.parametrize("engine", list(SHARDED))
def test_sharded_run_killed_in_training_resumes_from_its_saved_state(runs, engine):
    """SIGKILL after step 3 of iteration 1's sharded training: the state saved after step 2 is
    the full weights and Adam state in safetensors (no pickle); the relaunch loads it into the
    shards and continues at step 3 with the one-process numbers."""
    tmp, one, _, _ = runs
    state = _killed_after_step_2_save(tmp, f"{engine}_killed", engine)
    again = _torchrun(tmp, f"{engine}_killed", SHARDED[engine])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "iteration 1: training resumes after step 2 (saved state)" in again.stdout
    assert not state.exists()  # dropped with the iteration's checkpoint
    _assert_same_training(tmp, one, tmp / f"{engine}_killed")


def test_a_zero3_training_state_resumes_in_one_process(runs):
    """The saved state does not depend on the engine or the number of processes: a ZeRO-3
    run killed mid-training finishes in one plain process with the one-process numbers."""
    tmp, one, _, _ = runs
    _killed_after_step_2_save(tmp, "zero3_then_one", "zero3")
    logs: list[str] = []
    run_selfplay(load_config(None, _args(_overrides(tmp, "zero3_then_one"))), log=logs.append)
    assert "iteration 1: training resumes after step 2 (saved state)" in logs
    _assert_same_training(tmp, one, tmp / "zero3_then_one")


# ---------------------------------------------------------------- single-process pieces


def test_shard_positions_split_units_evenly_first_ranks_take_the_rest():
    assert [shard_positions(5, 1, r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [shard_positions(1, 1, r, 2) for r in range(2)] == [[0], []]
    assert [shard_positions(3, 2, r, 2) for r in range(2)] == [[0, 1, 2, 3], [4, 5]]  # pairs
    assert shard_positions(4, 1, 0, 1) == [0, 1, 2, 3]


def test_single_process_context_calls_through_without_torch_distributed():
    d = DistContext()
    calls = []
    assert d.shard_map(lambda sl: calls.append(sl) or list(range(sl.start, sl.stop)), 7, 3) == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert calls == [slice(0, 7)]  # one call, exactly as before data parallelism existed
    assert d.from_main(lambda x: x + 1, 1) == 2 and d.broadcast("a") == "a"
    assert d.sum_floats({"loss": 1.5}) == {"loss": 1.5}
    assert not torch.distributed.is_initialized()


def test_gradient_buckets_respect_dtype_and_size(monkeypatch):
    import rspo.distributed as rd

    monkeypatch.setattr(rd, "BUCKET_ELEMENTS", 10)
    ps = [
        torch.nn.Parameter(torch.zeros(n, dtype=dt))
        for n, dt in [
            (4, torch.float32),
            (6, torch.float32),
            (1, torch.float32),
            (3, torch.float64),
            (20, torch.float64),
            (2, torch.float64),
        ]
    ]
    for p in ps:
        p.grad = torch.zeros_like(p)
    assert [[p.numel() for p in b] for b in _buckets(ps)] == [[4, 6], [1], [3], [20], [2]]


def test_launcher_environment_is_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="integers"):
        env_world()


def test_pinned_cuda_device_is_refused_under_a_launcher():
    from rspo.config import ConfigError

    with pytest.raises(ConfigError, match="model.device"):
        DistContext(2, 1, 1).device("cuda:0")
    assert DistContext(2, 1, 1).device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- shipped launch configs


def _shipped(sub: str) -> list[Path]:
    from importlib.resources import files

    return sorted(Path(str(files("rspo") / "configs" / sub)).glob("*.yaml"))


def test_shipped_accelerate_configs_load_with_accelerates_own_loader():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    got = {p.stem: load_config_from_file(str(p)) for p in _shipped("accelerate")}
    assert set(got) == {"ddp", "fsdp2", "zero3"}
    assert all(isinstance(c, ClusterConfig) for c in got.values())
    assert got["ddp"].distributed_type == DistributedType.MULTI_GPU
    assert got["fsdp2"].distributed_type == DistributedType.FSDP
    assert got["fsdp2"].fsdp_config["fsdp_version"] == 2  # what training_engine requires
    assert got["fsdp2"].fsdp_config["fsdp_reshard_after_forward"] is True
    assert got["zero3"].distributed_type == DistributedType.DEEPSPEED
    assert got["zero3"].deepspeed_config["zero_stage"] == 3
    for c in got.values():
        assert c.num_machines == 1 and c.num_processes >= 1 and c.use_cpu is False


def test_packaging_ships_the_launch_and_example_configs():
    import fnmatch
    import re

    root = TESTS.parent
    text = (root / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    globs = json.loads(re.search(r"^rspo = (\[.*\])$", section, re.M).group(1))
    files = _shipped("accelerate") + _shipped("examples")
    assert len(files) == 4
    for f in files:
        rel = f.relative_to(root / "rspo").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


def test_worked_7b_config_resolves_without_weights(capsys):
    from rspo.cli import main

    (path,) = _shipped("examples")
    cfg = load_config(path)
    assert cfg.model.path == "/models/Mistral-7B-Instruct-v0.2" and cfg.model.dtype == "float32"
    assert cfg.judge.name == cfg.evaluation.judge == "reward_model"
    assert cfg.judge.kwargs["model"] == cfg.evaluation.judge_kwargs["model"]
    assert (cfg.generation.num_samples, cfg.generation.temperature, cfg.generation.top_p) == (
        5,
        0.7,
        0.9,
    )
    o = cfg.objective  # the paper's headline setting through the preset
    assert (o.regularizer, o.coef, o.samples, o.eta) == (
        "forward_kl[ratio] + 10*reverse_kl[k2]",
        0.2,
        "best_worst",
        1000.0,
    )
    assert (cfg.training.optimizer, cfg.training.lr, cfg.training.batch_size) == (
        "rmsprop",
        5e-7,
        64,
    )
    assert main(["config", "--config", str(path)]) == 0
    assert "Skywork-Reward-Llama-3.1-8B-v0.2" in capsys.readouterr().out


def test_gpu_smoke_script_parses_and_rejects_unknown_options():
    script = TESTS.parent / "scripts" / "gpu_smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_gpu_smoke_script_names_real_rspo_modules_and_config_keys():
    """The script only runs on a GPU machine: check here that what it imports and the
    ``--section.key`` overrides it passes exist (a wrong module name would skip vLLM there)."""
    import importlib.util
    import re

    from rspo.config import Config

    text = (TESTS.parent / "scripts" / "gpu_smoke.sh").read_text()
    modules = set(re.findall(r"\b(rspo(?:\.\w+)+)", text)) - {"rspo.cli"}
    assert "rspo.generation.vllm" in modules and "rspo.training.deepspeed" in modules
    for mod in modules | {"rspo.cli"}:
        assert importlib.util.find_spec(mod) is not None, mod
    keys = set(re.findall(r"--(\w+)\.(\w+)", text))
    assert ("training", "packing") in keys and len(keys) > 10
    cfg = Config()
    for section, key in keys:
        assert hasattr(getattr(cfg, section), key), f"{section}.{key}"


def test_lora_sharded_and_tensor_parallel_vllm_in_several_processes_are_refused(runs):
    from rspo.training.fsdp import check_launch

    tmp, _, _, _ = runs
    lora = {**_overrides(tmp, "refused_lora"), "model.lora": {"r": 4, "alpha": 8.0}}
    cfg = load_config(None, _args(lora))
    with pytest.raises(ConfigError, match="model.lora with FSDP2.*ddp.yaml"):
        check_launch(cfg, "fsdp", 2)
    with pytest.raises(ConfigError, match="model.lora with DeepSpeed.*ddp.yaml"):
        check_launch(cfg, "deepspeed", 2)
    check_launch(cfg, "ddp", 2)  # LoRA replicated over ranks is allowed
    vllm_ov = {
        **_overrides(tmp, "refused_vllm"),
        "generation.backend": "vllm",
        "generation.vllm_kwargs": {"tensor_parallel_size": 2},
    }
    vllm = load_config(None, _args(vllm_ov))
    with pytest.raises(ConfigError, match="tensor_parallel_size 2 in 2 processes.*one process"):
        check_launch(vllm, "ddp", 2)
    check_launch(vllm, "ddp", 1)  # one process, one engine over 2 GPUs
    vllm.generation.vllm_kwargs = {}
    check_launch(vllm, "ddp", 2)  # an engine per rank
    assert not (tmp / "refused_lora").exists() and not (tmp / "refused_vllm").exists()


def test_vllm_in_two_processes_runs_an_engine_per_rank_on_its_share(runs, tmp_path):
    """generation.backend vllm under torchrun (the fake vLLM of tests/vllm_fake.py): each rank
    builds its own in-process engine (external_launcher) on its own live directory, samples
    only its share of the sequences, and the records equal the 1-process HF run's."""
    tmp, one, _, _ = runs
    log = tmp_path / "engines"
    log.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS / "fake_vllm"), str(TESTS), str(TESTS.parent)]),
        "RSPO_FAKE_VLLM_LOG": str(log),
        "RSPO_FAKE_VLLM_BATCH": "10",  # = generation.batch_size: the HF run's batches
    }
    extra = ["--generation.backend", "vllm", "--run.iterations", "1"]
    proc = _torchrun(tmp, "two_vllm", env, extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp / "two_vllm"

    def records(root: Path, rel: str) -> list[dict]:  # the HF run also records log π_t
        rows = _jsonl(root / rel)
        for r in rows:
            for resp in r.get("responses", []):
                resp.pop("logp", None)
        return rows

    for rel in ("iter_001/generations.jsonl", "ref_samples.jsonl", "eval_baseline.jsonl"):
        assert records(two, rel) == records(one, rel), rel
    rel = "iter_001/judgments.jsonl"
    assert (two / rel).read_bytes() == (one / rel).read_bytes()
    seeds: dict[int, list[int]] = {}
    for rank in (0, 1):
        events = _jsonl(log / f"rank{rank}.jsonl")
        (init,) = [e for e in events if "init" in e]  # one engine per rank for the run
        assert init["kw"]["distributed_executor_backend"] == "external_launcher"
        assert init["init"] == str((two / "vllm_live" / f"rank{rank}").resolve())
        assert int(init["kw"]["max_model_len"]) > 10  # longest prompt + max_new_tokens
        seeds[rank] = [s for e in events if "generate" in e for s in e["generate"]]
    assert seeds[0] and seeds[1] and not set(seeds[0]) & set(seeds[1])  # each its own share


def test_a_rank_started_with_other_settings_is_refused_before_any_work(runs, tmp_path):
    """Rank 1 launched with another override (per-node config files, a hand-made launch):
    every rank stops at start-up naming the key, instead of writing rank 1's samples into
    rank 0's run or hanging in mismatched collectives."""
    tmp, _, _, _ = runs
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\n"
        "from rspo.cli import main\n"
        "extra = ['--generation.temperature', '0.3'] if os.environ['RANK'] == '1' else []\n"
        "sys.exit(main(sys.argv[1:] + extra))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "mismatch"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(script), "train", *_args({**_overrides(tmp, "x"), "run.output": str(out)})]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("rank 1 was started with another config than rank 0") == 2
    assert "(differing: generation.temperature)" in proc.stderr
    assert not out.exists()


def test_lora_over_two_ranks_trains_like_one_process(runs):
    """LoRA is replicated over ranks (its sharded form is refused): same adapter updates and
    metrics as one process, one adapter-only checkpoint written by rank 0."""
    tmp = runs[0]
    lora = ["--model.lora", '{"r": 4, "alpha": 8.0}']
    run_selfplay(load_config(None, _args(_overrides(tmp, "lora_one")) + lora), log=lambda m: None)
    two = _torchrun(tmp, "lora_two", extra=lora)
    assert two.returncode == 0, two.stderr[-3000:]
    for t in (1, 2):
        ck = [tmp / run / f"iter_{t:03d}/checkpoint" for run in ("lora_one", "lora_two")]
        assert sorted(p.name for p in ck[1].glob("*.safetensors")) == ["adapter_model.safetensors"]
        w1, w2 = (load_file(str(c / "adapter_model.safetensors")) for c in ck)
        assert set(w1) == set(w2) and w1
        assert any("lora_B" in k and float(w1[k].abs().sum()) > 0 for k in w1)  # B starts at 0
        diff = sum(float(((w2[k] - w1[k]) ** 2).sum()) for k in w1) ** 0.5
        norm = sum(float((w1[k] ** 2).sum()) for k in w1) ** 0.5
        assert diff < 1e-4 * norm
    m1, m2 = _jsonl(tmp / "lora_one/metrics.jsonl"), _jsonl(tmp / "lora_two/metrics.jsonl")
    assert [r["iteration"] for r in m2] == [0, 1, 2]
    for a, b in zip(m1, m2):
        assert b["win_rate"] == pytest.approx(a["win_rate"], abs=1e-6)


def test_cpu_runs_keep_deepspeeds_accelerator_warning_out_of_stdout(monkeypatch):
    """transformers' save_pretrained imports deepspeed whenever it is installed; on CPU its
    accelerator detection would print into rspo's stdout (tables, JSON reports)."""
    from rspo.distributed import quiet_deepspeed_on_cpu

    monkeypatch.setenv("DS_ACCELERATOR", "")  # restored after the test
    monkeypatch.delenv("DS_ACCELERATOR")
    quiet_deepspeed_on_cpu(torch.device("meta"))
    assert "DS_ACCELERATOR" not in os.environ
    quiet_deepspeed_on_cpu(torch.device("cpu"))
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    if importlib.util.find_spec("deepspeed") is None:
        return
    code = (
        "import torch, deepspeed; from deepspeed.accelerator import get_accelerator; "
        "print(get_accelerator().device_name())"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "cpu" and "Setting accelerator" not in out.stdout
