"""How much memory a device has and a model's weights take (for residency decisions)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

#: cgroup v2 / v1 files holding a container's memory limit
_CGROUP_LIMITS = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)


def device_memory(device: str | torch.device) -> int | None:
    """Total bytes of ``device``'s memory: a CUDA device's own, or for the CPU the physical
    RAM capped by the container's cgroup limit; None where unknown (other devices)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf names
        return None
    for f in _CGROUP_LIMITS:
        try:
            limit = Path(f).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():  # "max" = no limit
            total = min(total, int(limit))
    return int(total)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
