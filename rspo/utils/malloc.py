"""Keep freed host memory for reuse (glibc's malloc), so a step does not page it in again.

glibc returns the free top of its heap to the OS once it exceeds a threshold that follows
the largest block freed so far (twice the dynamic mmap threshold, at most 64 MiB). A CPU
training step frees tens of MiB of activations at its end; the next step faults every page
of them in again (16k-27k minor faults, 40 ms of the gym's 0.29 s training stage). Fixing
the thresholds stops the trimming: the heap stays at its peak, which a self-play run reaches
again every iteration anyway. Allocation addresses do not change results (torch aligns its
CPU buffers to 64 bytes either way).
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: free heap top kept rather than returned to the OS (mallopt takes an int: 2 GiB − 1)
TRIM_THRESHOLD = 2**31 - 1
#: blocks above this are mmapped (freed straight back to the OS): glibc's own ceiling for
#: its dynamic threshold, fixed so that it no longer moves
MMAP_THRESHOLD = 32 << 20

_tuned = False


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds for this process (once); False where the C
    library has no ``mallopt`` (macOS, Windows) or refuses the values (musl)."""
    global _tuned
    if _tuned:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    return _tuned
