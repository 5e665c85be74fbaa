"""Huge pages for PyTorch's large CPU tensors: an opt-in, measured both ways.

PyTorch's CPU allocator, when the environment variable ``THP_MEM_ALLOC_ENABLE=1`` is set before
its first allocation, asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``)
for every allocation of at least 2 MiB. Importing aimc 0.3.0 set it; aimc now leaves the
allocator as PyTorch has it, because the effect depends on the allocation's size
(``benchmarks/bench_huge_pages.py``, docs/benchmarks.md#huge-pages):

* above 32 MiB, glibc maps every allocation afresh, and each 4 KiB page faults on first touch:
  huge pages make such a fresh tensor about 3x cheaper;
* from 2 to 32 MiB, glibc reuses its heap without a single fault (one fresh tensor per call;
  several freed together can make it give the heap's top back and fault it in again), but a
  huge-page block was mapped afresh on most allocations: a fresh 4 or 12 MiB result cost up
  to 10x more with them.

An eager analog forward reuses scratch buffers and makes mostly mid-sized tensors, so it is
faster without them; a compiled layer whose tile outputs reach 16 MiB runs that eager forward
inside its graph (:data:`aimc.mvm.EAGER_MIN_BYTES`). For other code that makes fresh tensors
above 32 MiB on every call, set ``THP_MEM_ALLOC_ENABLE=1`` in the environment before Python
starts (PyTorch reads it at its first CPU allocation).
:func:`huge_pages_active` tells which setting a process runs with.
"""

from __future__ import annotations

#: The environment variable PyTorch's CPU allocator (c10 ``alloc_cpu``) reads.
ENV = "THP_MEM_ALLOC_ENABLE"


def huge_pages_active() -> bool:
    """Whether PyTorch's CPU allocator asks for huge pages for large tensors in this process
    (:mod:`aimc._hugepages`): True only where ``THP_MEM_ALLOC_ENABLE=1`` was set before
    PyTorch's first CPU allocation, on Linux with transparent huge pages available. Probes one
    4 MiB allocation: is its mapping marked for huge pages (``hg`` in ``/proc/self/smaps``)?"""
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
