"""Random draws for the simulator, always from an explicit ``torch.Generator``.

On CPU, PyTorch's generator (MT19937) fills a tensor on a single core, which makes Gaussian output
noise the largest cost of an analog forward pass. :func:`normal_` therefore splits a large CPU
tensor into fixed-size chunks, draws one 62-bit seed per chunk from the caller's generator, and
fills the chunks in parallel, each from its own generator seeded that way. The chunking depends
only on the tensor size, so the numbers depend only on the caller's generator state — not on the
number of threads — and the same seed gives bit-identical draws. Each chunk is an ordinary
``Tensor.normal_`` / ``uniform_`` draw, so the distribution is exactly PyTorch's.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

#: Elements per independently seeded chunk (and the size below which no splitting happens).
CHUNK = 1 << 18

_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor | None:
    global _pool, _pool_workers
    workers = torch.get_num_threads()
    if workers <= 1:
        return None
    with _pool_lock:
        if _pool is None or _pool_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aimc-rng")
            _pool_workers = workers
    return _pool


def _fill(t: Tensor, generator: torch.Generator, kind: str) -> Tensor:
    draw = (
        (lambda c, g: c.normal_(generator=g))
        if kind == "normal"
        else (lambda c, g: c.uniform_(generator=g))
    )
    if t.device.type != "cpu" or t.numel() < 2 * CHUNK or not t.is_contiguous():
        draw(t, generator)
        return t
    flat = t.view(-1)
    n_chunks = -(-flat.numel() // CHUNK)
    seeds = torch.randint(0, 1 << 62, (n_chunks,), generator=generator).tolist()

    inference = t.is_inference()  # inference mode is thread-local: mirror the caller's

    def work(i: int) -> None:
        g = torch.Generator().manual_seed(seeds[i])
        with torch.inference_mode(inference):
            draw(flat[i * CHUNK : (i + 1) * CHUNK], g)

    pool = _executor()
    if pool is None:
        for i in range(n_chunks):
            work(i)
    else:
        list(pool.map(work, range(n_chunks)))
    return t


def normal_(t: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``t`` in place with standard normal draws from ``generator``."""
    return _fill(t, generator, "normal")


def uniform_(t: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``t`` in place with ``U[0, 1)`` draws from ``generator``."""
    return _fill(t, generator, "uniform")


def derive_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for the component ``name`` of a model seeded with ``seed``."""
    digest = hashlib.blake2b(f"{int(seed)}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


MAX_SEED = (1 << 63) - 1


def check_seed(seed: object, field: str = "seed") -> int:
    """Validate a user seed: an integer in ``[0, 2**63 - 1]`` (what a generator and an int64
    buffer hold)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{field}: got {seed!r}; allowed: an integer in [0, 2**63 - 1]")
    return seed
