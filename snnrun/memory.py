"""Keep freed CPU memory for the next batch instead of handing it back to the system.

A training step allocates a few tensors of (time, batch, neurons) floats (12.8 MB each for snnTorch's
tutorial-5 network) and frees them at the end of the step. glibc's malloc serves blocks that large with a
fresh `mmap` (or trims them off the heap when freed), so every step the kernel hands out, zeroes and
page-faults the same memory again: on the 2-core benchmark machine that was a third of the step (tutorial 5,
batch 128: 49 ms a step by default, 31 ms with freed memory kept; snnTorch's network, whose per-step tensors
are small, is unchanged). `keep_freed_memory` raises glibc's mmap and trim thresholds so that such blocks stay
in the heap and are reused; the process then holds on to its peak working set, which is what a training
process is about to use again anyway.

The snnrun command applies it at start. It does nothing off glibc, and nothing when the user has chosen an
allocator or malloc settings of their own (LD_PRELOAD, MALLOC_* variables, GLIBC_TUNABLES).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
KEEP = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of freed heap is kept


def user_chose_allocator(environ=os.environ) -> bool:
    """Whether the environment already sets the allocator or its malloc settings."""
    return bool(environ.get("LD_PRELOAD") or environ.get("GLIBC_TUNABLES")
                or any(name.startswith("MALLOC_") for name in environ))


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return False


def keep_freed_memory(limit: int = KEEP) -> bool:
    """Ask glibc's malloc to reuse freed blocks up to `limit` bytes; True when it took the setting."""
    if not _glibc() or user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))


def peak_memory_mb(device=None) -> float | None:
    """The most memory this process has held, in MiB: on a GPU what torch allocated there, else the resident
    set's peak (None where the system does not say: Windows)."""
    import sys

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
