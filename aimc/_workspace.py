"""Reusable CPU float32 buffers, one pool per thread: the MVM's scratch tensors and the noise
kernel's second values. A fresh multi-MB tensor per call is returned to the system when freed,
so every call would fault its pages in again; a buffer kept between calls does not."""

from __future__ import annotations

import threading
from collections.abc import Hashable

import torch
from torch import Tensor

_local = threading.local()


def buffer(slot: Hashable, numel: int) -> Tensor:
    """The calling thread's flat float32 CPU buffer ``slot`` with at least ``numel`` values
    (grown on demand), as its first ``numel`` values."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    buf = pool.get(slot)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # usable both inside and outside inference mode
            buf = pool[slot] = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def clear() -> None:
    """Free every buffer kept by the calling thread."""
    _local.pool = {}
