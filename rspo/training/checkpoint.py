"""Resumable training state as safetensors + JSON (no pickle anywhere)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from rspo.utils.io import atomic_write_json, writing

#: weights of a training state whose model has frozen parameters (only the trainable ones)
TRAINABLE_FILE = "trainable.safetensors"


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, by name, in optimizer order: a saved training state keys
    their optimizer state by this index (every engine; sharding keeps the names)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def tied_duplicates(model: torch.nn.Module) -> list[str]:
    """Names of parameters that share storage with an earlier one (e.g. a tied lm_head)."""
    seen: set[int] = set()
    dup = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dup.append(name)
        seen.add(id(p))
    return dup


def save_train_state(
    state_dir: Path, model, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
) -> None:
    """Write model weights, optimizer tensors and counters, then swap the dir in atomically.

    With frozen parameters (LoRA) only the trainable ones are state (``trainable.safetensors``):
    the frozen base is on disk already, and saving it every ``save_steps`` would cost its size."""
    trainable = trainable_parameters(model)
    partial = len(trainable) < sum(1 for _ in model.parameters())
    sd = optimizer.state_dict()
    write_train_state(
        state_dir,
        {n: p.detach() for n, p in trainable.items()} if partial else model,
        sd["state"],
        sd["param_groups"],
        step,
        extra,
        trainable_only=partial,
    )


def write_train_state(
    state_dir: Path,
    weights: dict[str, torch.Tensor] | torch.nn.Module,
    opt_state: dict[int, dict[str, Any]],
    param_groups: list[dict[str, Any]],
    step: int,
    extra: dict[str, Any],
    trainable_only: bool = False,
) -> None:
    """The on-disk training state, whatever engine trained: ``weights`` (a module or a
    name -> tensor dict; with ``trainable_only`` just the trainable ones), the optimizer's
    per-parameter state keyed by the parameter's index among the trainable ones, its groups
    and the step. Written to a sibling dir, then swapped in: a kill mid-save leaves the
    previous state."""
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with writing(tmp, cleanup=tmp):  # a full disk names the state dir and leaves no .tmp
        if isinstance(weights, torch.nn.Module):
            save_model(weights, str(tmp / "model.safetensors"))
        else:
            cpu = {n: t.detach().contiguous().cpu() for n, t in weights.items()}
            save_file(cpu, str(tmp / (TRAINABLE_FILE if trainable_only else "model.safetensors")))
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        for pid, st in opt_state.items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars[f"{pid}.{k}"] = v
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        groups = [dict(g) for g in param_groups]
        atomic_write_json(
            tmp / "trainer_state.json",
            {"step": step, "optimizer_scalars": scalars, "param_groups": groups, **extra},
        )
        for f in tmp.iterdir():  # on disk before the swap makes them the state
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    old = state_dir.with_name(state_dir.name + ".old")
    if state_dir.exists():  # else (a kill between the renames) .old is the only state: keep it
        shutil.rmtree(old, ignore_errors=True)
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
    params = trainable_parameters(model)
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise ValueError(
            f"{part}: trainable parameters differ from the model's (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); was the run's model.lora changed?"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


def read_train_state(state_dir: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """trainer_state.json's contents and the optimizer's per-parameter state (tensors and
    scalars) keyed by parameter index, as :func:`write_train_state` wrote them."""
    state_dir = Path(state_dir)
    meta = json.loads((state_dir / "trainer_state.json").read_text())
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *meta["optimizer_scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return meta, state


def load_train_state(state_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer tensors from ``state_dir``; returns trainer_state.json's contents.

    The caller restores the weights with ``load_model_state``.
    """
    meta, state = read_train_state(state_dir)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def recover_state_dir(state_dir: Path) -> Path | None:
    """The newest complete, readable state dir (a crash between renames leaves ``.old``), or
    None. An unreadable one (a disk error, a truncated file) is skipped with a warning: the
    iteration then trains from its start, which gives the same result."""
    state_dir = Path(state_dir)
    for cand in (state_dir, state_dir.with_name(state_dir.name + ".old")):
        if (cand / "trainer_state.json").exists() and (cand / "optimizer.safetensors").exists():
            try:  # headers only (the optimizer state of a 7B model is tens of GB)
                json.loads((cand / "trainer_state.json").read_text())["step"]
                part = cand / TRAINABLE_FILE
                weights = part if part.exists() else cand / "model.safetensors"
                for f in (cand / "optimizer.safetensors", weights):
                    with safe_open(str(f), "pt"):
                        pass  # the header, and its offsets against the file size
            except Exception as e:  # noqa: BLE001 - any unreadable state is only skipped
                warnings.warn(
                    f"{cand}: unreadable training state ({type(e).__name__}: {e}); training "
                    "this iteration from its start",
                    stacklevel=2,
                )
                continue
            return cand
    return None
