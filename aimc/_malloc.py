"""Make glibc return large freed blocks to the system at once (LLM-scale, lean chips).

glibc's allocator raises its mmap threshold up to 32 MiB after large blocks are freed, so the
multi-megabyte temporaries of programming, drift and chip regeneration are then carved from the
heap, and small long-lived tensors allocated between them (per-tile scales) pin that memory:
the resident set grows by gigabytes over a billion-parameter model although little is live.
Fixing the threshold at 1 MiB (``mallopt(M_MMAP_THRESHOLD)``, the same as the environment
variable ``MALLOC_MMAP_THRESHOLD_=1048576``) serves every large block from its own mapping,
returned when freed. Measured: eight 2048 x 5632 bf16 layers programmed lean grew the resident
set by up to 390 MiB without it, by 65 MiB with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
THRESHOLD = 1 << 20
_done = False


def return_large_blocks() -> bool:
    """Set glibc's mmap threshold to 1 MiB once per process; False where it does not apply
    (not Linux/glibc, or the call failed)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
