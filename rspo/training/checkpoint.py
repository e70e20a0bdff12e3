"""Resumable training state as safetensors + JSON (no pickle anywhere)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from rspo.utils.io import atomic_write_json

#: weights of a training state whose model has frozen parameters (only the trainable ones)
TRAINABLE_FILE = "trainable.safetensors"


def save_train_state(
    state_dir: Path, model, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
) -> None:
    """Write model weights, optimizer tensors and counters, then swap the dir in atomically.

    With frozen parameters (LoRA) only the trainable ones are state (``trainable.safetensors``):
    the frozen base is on disk already, and saving it every ``save_steps`` would cost its size."""
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if len(trainable) < sum(1 for _ in model.parameters()):
        tensors_t = {n: p.detach().contiguous().cpu() for n, p in trainable.items()}
        save_file(tensors_t, str(tmp / TRAINABLE_FILE))
    else:
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


def load_model_state(state_dir: Path, model) -> None:
    """Restore the weights ``save_train_state`` wrote (all of them, or the trainable ones)."""
    state_dir = Path(state_dir)
    part = state_dir / TRAINABLE_FILE
    if not part.exists():
        load_model(model, str(state_dir / "model.safetensors"))
        return
    saved = load_file(str(part))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise ValueError(
            f"{part}: trainable parameters differ from the model's (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); was the run's model.lora changed?"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


def load_train_state(state_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer tensors from ``state_dir``; returns trainer_state.json's contents.

    The caller restores the weights with ``load_model_state``.
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
