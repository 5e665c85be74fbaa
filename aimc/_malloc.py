"""Give freed heap memory back to the system when the resident set has grown (LLM scale).

Programming, drifting and regenerating a chip make multi-megabyte temporaries. glibc's allocator
serves them from its heap once its dynamic mmap threshold has risen (up to 32 MiB), and keeps
the freed memory: small long-lived tensors allocated between them (per-tile scales, activations)
pin it, and the resident set grows by gigabytes over a billion-parameter model although little
is live. aimc 0.2 fixed the mmap threshold at 1 MiB, which returns every block at once but makes
every temporary a fresh mapping: the page faults then cost ~45 % of programming and drift
(measured: 32 M minor faults against 4.3 M for sixteen 2048 x 5632 layers programmed, drifted
and read once, lean). Instead, :func:`trim_if_grown` is called after each layer: when the
resident set has grown by more than :data:`SLACK` bytes since the last trim, ``malloc_trim(0)``
returns every whole free page of the heap (glibc >= 2.8 releases free pages inside the heap,
not only at its top). The heap's memory is reused without faults in between.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: Growth of the resident set (bytes) that triggers a trim.
SLACK = 256 << 20

_libc = None
_last_rss: int | None = None
_page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _trim_fn():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _libc = lib.malloc_trim
            except (OSError, AttributeError):
                _libc = False
    return _libc


def resident_bytes() -> int | None:
    """The resident set of this process in bytes (Linux), else ``None``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _page
    except (OSError, ValueError, IndexError):
        return None


def trim_if_grown() -> bool:
    """``malloc_trim(0)`` if the resident set grew by more than :data:`SLACK` since the last
    trim (glibc only); True if it trimmed."""
    global _last_rss
    trim = _trim_fn()
    if not trim:
        return False
    rss = resident_bytes()
    if rss is None:
        return False
    if _last_rss is not None and rss - _last_rss <= SLACK:
        return False
    trim(0)
    _last_rss = resident_bytes()
    return True
