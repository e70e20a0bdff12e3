"""Resumable training state as safetensors + JSON (no pickle anywhere)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model

from rspo.utils.io import atomic_write_json


def save_train_state(
    state_dir: Path, model, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
) -> None:
    """Write model weights, optimizer tensors and counters, then swap the dir in atomically."""
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items()} for g in optimizer.state_dict()["param_groups"]]
    atomic_write_json(
        tmp / "trainer_state.json",
        {"step": step, "optimizer_scalars": scalars, "param_groups": groups, **extra},
    )
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        state_dir.rename(old)
    tmp.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_train_state(state_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer tensors from ``state_dir``; returns trainer_state.json's contents.

    The caller loads ``model.safetensors`` with ``safetensors.torch.load_model``.
    """
    state_dir = Path(state_dir)
    meta = json.loads((state_dir / "trainer_state.json").read_text())
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def recover_state_dir(state_dir: Path) -> Path | None:
    """The newest complete state dir (a crash between renames leaves ``.old``), or None."""
    state_dir = Path(state_dir)
    for cand in (state_dir, state_dir.with_name(state_dir.name + ".old")):
        if (cand / "trainer_state.json").exists() and (cand / "optimizer.safetensors").exists():
            return cand
    return None
