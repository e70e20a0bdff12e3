"""Fault injection for resume tests: ``RSPO_FAULT=stage:N`` SIGKILLs the process."""

from __future__ import annotations

import os
import signal


def fault_point(stage: str, count: int) -> None:
    """Kill this process (SIGKILL, no cleanup) once ``stage`` has written ``count`` records."""
    spec = os.environ.get("RSPO_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == stage and count >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
