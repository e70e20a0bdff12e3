"""Keeping freed host memory (glibc mallopt): a repeated step stops paging its buffers in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a training-step-like pattern: 64 one-MiB buffers allocated, freed, allocated again; prints
#: the minor page faults of the second round
CHILD = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from rspo.utils.malloc import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
def step():
    bufs = [torch.ones(1 << 18) for _ in range(64)]  # 64 x 1 MiB, written
    del bufs
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_kept_memory_is_not_paged_in_again():
    from rspo.utils.malloc import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("this C library has no usable mallopt (not glibc)")
    default, kept = _faults("default"), _faults("keep")
    # glibc's default trims the freed 64 MiB and faults all 16384 pages in again
    assert default > 8000
    assert kept < default // 8  # measured 256-1024 (torch's own bookkeeping)
