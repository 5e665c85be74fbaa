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


def normal_(t: Tensor, generator: torch.Generator | TensorStream) -> Tensor:
    """Fill ``t`` in place with standard normal draws from ``generator``."""
    if not isinstance(generator, torch.Generator):
        return t.copy_(generator.normal(t.shape))
    return _fill(t, generator, "normal")


def uniform_(t: Tensor, generator: torch.Generator | TensorStream) -> Tensor:
    """Fill ``t`` in place with ``U[0, 1)`` draws from ``generator``."""
    if not isinstance(generator, torch.Generator):
        return t.copy_(generator.uniform(t.shape))
    return _fill(t, generator, "uniform")


# --------------------------------------------------------------------------------------------
# A counter-based stream written in tensor operations (the compiled forward's noise)

#: SplitMix64's increment (the golden ratio) and finaliser constants (Steele, Lea & Flood,
#: "Fast splittable pseudorandom number generators", OOPSLA 2014), as signed int64.
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_TWO_PI = 6.283185307179586


def _int64(v: int) -> int:
    """A Python integer modulo 2**64, as a signed int64 value."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _srl(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser (a bijection of 64-bit integers), on int64 tensors.

    Multiplication wraps modulo 2**64, as torch's int64 arithmetic does on every backend."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _words(numel: int) -> int:
    """64-bit words for ``numel`` values (two per word), rounded up to a multiple of 64.

    The rounding keeps every int64 loop of the compiled kernels free of a vector tail: the CPU
    inductor of torch 2.13 (AVX-512) miscompiles int64 tails (wrong words or heap corruption;
    measured for lengths that are not multiples of 16). The extra words are drawn and dropped,
    so the values depend only on the key and ``numel``."""
    return -(-((numel + 1) // 2) // 64) * 64


def counter_bits(key: Tensor, n: int) -> Tensor:
    """``n`` 64-bit random words of the SplitMix64 sequence that starts at ``key``: word ``i`` is
    ``mix64(key + (i + 1) * gamma)`` (a 0-dim int64 ``key``; pure function, no state)."""
    i = torch.arange(1, n + 1, dtype=torch.int64, device=key.device)
    return mix64(key + i * _GAMMA)


def counter_normal(key: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Standard normal draws of the stream at ``key`` (float32), by Box-Muller on 24-bit
    uniforms: each 64-bit word gives one pair. ``u1 = (k + 1/2) 2**-24`` with ``k`` the top 24
    bits, so ``|z| <= 5.9`` — the same tail as PyTorch's CPU ``normal_``, whose ``u1`` also
    has 24 bits."""
    numel = 1
    for d in shape:
        numel *= d
    bits = counter_bits(key, _words(numel))
    u1 = (_srl(bits, 40).float() + 0.5) * 2.0**-24
    theta = (bits & 0xFFFFFF).float() * (_TWO_PI * 2.0**-24)
    r = torch.sqrt(-2.0 * torch.log(u1))
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)])
    return z[:numel].view(shape)


def counter_uniform(key: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """``U[0, 1)`` draws with 24 bits (float32's mantissa) of the stream at ``key``: each
    64-bit word gives two."""
    numel = 1
    for d in shape:
        numel *= d
    bits = counter_bits(key, _words(numel))
    u = torch.cat([_srl(bits, 40), (bits >> 8) & 0xFFFFFF]).float() * 2.0**-24
    return u[:numel].view(shape)


class KeyedStream:
    """Draws that are a pure function of one key tensor and the draw's index: draw ``j`` uses
    the key ``mix64(key + j * gamma)``. Nothing but a Python counter changes, so it may be used
    inside ``torch.cond`` branches of a compiled graph."""

    def __init__(self, key: Tensor) -> None:
        self.key = key
        self.draws = 0

    def next_key(self) -> Tensor:
        """The key of the next draw."""
        self.draws += 1
        return mix64(self.key + _int64(self.draws * _GAMMA))

    def normal(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Standard normal draws of the given shape (float32)."""
        return counter_normal(self.next_key(), shape)

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``U[0, 1)`` draws of the given shape (float32)."""
        return counter_uniform(self.next_key(), shape)


class CounterStream:
    """A random stream for the compiled (``torch.compile``) forward: counter-based, in tensor
    operations, so that inductor fuses the draws into the kernels that use them.

    Dynamo cannot trace ``torch.Generator`` arguments, and inductor's own ``randn`` takes its
    seed from the global generator (and is slow on CPU), so a compiled analog forward draws from
    this stream instead. Its state is a 0-dim int64 tensor (the layer's buffer ``io_rng_state``).
    Every :meth:`fork` (one per forward) takes the key ``mix64(state)`` and advances the state
    by one, in place (the compiled graph replays the update); the draws of that forward are a
    :class:`KeyedStream` of the key. The words of one draw are SplitMix64's sequence from its key
    (Steele, Lea & Flood, OOPSLA 2014; passes BigCrush). Two draws overlap only if their keys
    are within ``n`` steps of ``gamma`` of each other: probability about ``n / 2**64`` per pair.

    Seeded from the layer's seed, so a compiled model is reproducible from its seeds. Its
    numbers differ from the eager forward's (``torch.Generator``), its distribution does not.
    """

    def __init__(self, state: Tensor) -> None:
        self.state = state

    @staticmethod
    def initial_state(seed: int, device: torch.device | str | None = None) -> Tensor:
        """The state tensor of a stream seeded with the 63-bit ``seed``."""
        return torch.tensor(int(seed), dtype=torch.int64, device=device)

    def fork(self) -> KeyedStream:
        """The draws of one forward; advances the state."""
        key = mix64(self.state.clone())
        self.state.add_(1)
        return KeyedStream(key)

    def normal(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Standard normal draws of the given shape (float32)."""
        return self.fork().normal(shape)

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``U[0, 1)`` draws of the given shape (float32)."""
        return self.fork().uniform(shape)


#: What :func:`normal_` and :func:`uniform_` accept besides a ``torch.Generator``.
TensorStream = CounterStream | KeyedStream


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
