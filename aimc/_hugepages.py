"""Huge pages for PyTorch's large CPU tensors, asked for before the process's first allocation.

An analog forward makes large temporaries (the tile outputs ``(tiles, tokens, columns)``, the
output noise, the variance of ``pcm_read`` noise). Eager aimc reuses scratch buffers for most of
them, but a compiled forward (inductor) and every returned output allocate afresh each call.
glibc serves an allocation above 32 MiB with a fresh ``mmap``, whose every 4 KiB page then
faults on first touch: a compiled ``pcm_inference`` 768 x 3072 layer on
2,048 tokens took 16,000 page faults per call, 1,100 with huge pages
(``benchmarks/bench_eval_forward.py`` records the faults per call of every row).

PyTorch's CPU allocator, when the environment variable ``THP_MEM_ALLOC_ENABLE=1`` is set before
its first allocation, asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``)
for every allocation of at least 2 MiB: a page fault then maps 2 MiB, not 4 KiB. Importing
aimc sets it, on Linux with transparent huge pages available,
unless the variable is already set — so ``THP_MEM_ALLOC_ENABLE=0`` opts out. PyTorch reads it
once, at the first CPU allocation: importing aimc after a tensor was made leaves the allocator
as it was (:func:`huge_pages_active` tells).
"""

from __future__ import annotations

import os
import sys

#: The environment variable PyTorch's CPU allocator (c10 ``alloc_cpu``) reads.
ENV = "THP_MEM_ALLOC_ENABLE"
_SYSFS = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available() -> bool:
    """Transparent huge pages are compiled in and not switched off (``[never]``)."""
    try:
        with open(_SYSFS) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _ask() -> None:
    if sys.platform.startswith("linux") and ENV not in os.environ and _thp_available():
        os.environ[ENV] = "1"


_ask()


def huge_pages_active() -> bool:
    """Whether PyTorch's CPU allocator asks for huge pages for large tensors in this process
    (:mod:`aimc._hugepages`): False where the kernel has none, ``THP_MEM_ALLOC_ENABLE=0`` was
    set, a CPU tensor was allocated before aimc was imported, or not on Linux. Probes one 4 MiB
    allocation: is its mapping marked for huge pages (``hg`` in ``/proc/self/smaps``)?"""
    import torch

    probe = torch.empty(1 << 20)
    ptr = probe.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= ptr < hi
                elif inside and head == "VmFlags:":
                    return "hg" in line.split()[1:]
    except OSError:
        pass
    return False
