"""Run under torchrun (2 processes) by tests/test_distributed.py: DeepSpeed's training state
saved by rspo (safetensors, the one-process format) and loaded into a fresh engine gives the
uninterrupted run's next step exactly, at ZeRO stages 1-3, in float32 and bfloat16 (stage 1 +
bf16 is DeepSpeed's BF16_Optimizer), with AdamW and RMSprop, for parameters whose sizes do
not divide by the number of processes (stage 3 pads its partitions); and a state written by a
plain torch optimizer, where one parameter never had a gradient, loads with zero moments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from rspo.distributed import init_distributed, shutdown
from rspo.training.checkpoint import load_model_state, save_train_state
from rspo.training.deepspeed import DeepSpeedPolicy
from rspo.training.trainer import build_optimizer

from fixtures_lm import gym_training

CASES = [
    ("1", "bf16", "adamw"),
    ("2", "fp32", "rmsprop"),
    ("3", "fp32", "adamw"),
    ("3", "bf16", "adamw"),
]


def make(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 7), torch.nn.Linear(7, 1))
    return m.to(dtype)  # 18, 28 and 8 elements: padded partitions over 2 (or 3) ranks


def full(ds: DeepSpeedPolicy, keys: list[str]) -> list[torch.Tensor]:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out = []
    for _, p in ds._named():
        out.append(safe_get_full_fp32_param(p).flatten().clone())
        out += [safe_get_full_optimizer_state(p, k).flatten().clone() for k in keys]
    return out


def main(root: Path) -> None:
    dist = init_distributed("cpu")
    for stage, prec, opt in CASES:
        os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = stage
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        keys = ["exp_avg", "exp_avg_sq"] if opt == "adamw" else ["square_avg"]
        cfg = gym_training(micro_batch_size=2, optimizer=opt, lr=0.05)
        x = torch.randn(2, 5, generator=torch.Generator().manual_seed(dist.rank)).to(dtype)

        def steps(ds: DeepSpeedPolicy, n: int, x: torch.Tensor = x) -> None:
            for _ in range(n):
                ds.backward(ds.forward_model(x).float().pow(2).sum())
                ds.step()

        out = root / f"zero{stage}-{prec}-{opt}"
        model = make(dtype)
        ds = DeepSpeedPolicy(model, build_optimizer(model, cfg), cfg, dist)
        steps(ds, 2)
        ds.save_state(out, 2)
        steps(ds, 1)
        want = full(ds, keys)
        ds.release()
        model = make(dtype)
        load_model_state(out, model)  # as train_policy does, before initialize
        ds = DeepSpeedPolicy(model, build_optimizer(model, cfg), cfg, dist)
        assert ds.load_state(out) == 2
        steps(ds, 1)
        got = full(ds, keys)
        err = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
        assert err == 0.0, (stage, prec, opt, err)
        if dist.is_main:
            print(f"zero{stage} {prec} {opt}: resumed step 3 = uninterrupted step 3")
        ds.release()
    # a one-process state (torch AdamW) whose last layer never had a gradient
    os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = "3"
    cfg = gym_training(micro_batch_size=2, lr=0.05)
    out = root / "torch-state"
    if dist.is_main:
        model = make(torch.float32)
        optim = build_optimizer(model, cfg)
        model[0](torch.randn(2, 5)).pow(2).sum().backward()  # layers 1, 2 unused
        optim.step()
        save_train_state(out, model, optim, 1, {})
    dist.barrier()
    model = make(torch.float32)
    load_model_state(out, model)
    ds = DeepSpeedPolicy(model, build_optimizer(model, cfg), cfg, dist)
    assert ds.load_state(out) == 1
    got = full(ds, ["exp_avg"])  # per parameter: weight, exp_avg
    assert float(got[1].abs().sum()) > 0 and float(got[3].abs().sum()) > 0  # layer 0
    assert all(float(t.abs().sum()) == 0 for t in got[5::2])  # no gradient: zero moments
    if dist.is_main:
        print("torch state with a gradient-less layer: loaded, zero moments")
    ds.release()
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
