"""Random draws for the simulator, always from an explicit ``torch.Generator``.

Two families, the same distributions:

- :func:`normal_` / :func:`uniform_` draw what defines a chip's state (programming noise, drift
  exponents, read noise, device-to-device variation) from PyTorch's generator (MT19937), so
  that a seed gives the same chip in every aimc version (a lean chip is regenerated from its
  seeds). PyTorch fills a CPU tensor on one core, so a large CPU tensor is split into fixed-size
  chunks, each filled in a worker thread from its own generator seeded from the caller's.
- :func:`noise_normal_` / :func:`noise_uniform_` draw noise that is fresh at every call: the IO
  noise of every forward, HWA weight noise, stochastic rounding. On CPU, float32 tensors of at
  least :data:`KERNEL_MIN` values take one 63-bit key from the caller's generator and are
  filled with the counter-based stream of that key (SplitMix64 words, Box–Muller on 24-bit
  uniforms: :func:`counter_normal`, :func:`counter_uniform`) by a small kernel that
  ``torch.compile`` builds once per process and thread count (inductor's on-disk cache makes
  later processes quick); on a CPU whose vector ISA is AVX2 a hand-written kernel computes
  the same values instead, about twice as fast there (:mod:`aimc._native`). The kernel runs
  inside the OpenMP team: 3.3–3.9× faster than the
  MT19937 chunks right after a matmul (3.1 M and 786 k values), where the MT19937 pool
  threads also compete with OpenMP's spinning workers (``benchmarks/bench_rng_contention.py``).
  Where the kernel cannot be built (no C++ compiler: warned once) or ``AIMC_RNG_KERNEL=0`` is
  set, the same stream is computed with eager tensor operations: the same numbers to float
  rounding, several times slower. Smaller, non-CPU or other-dtype tensors use :func:`normal_` /
  :func:`uniform_`.

Every path depends only on the caller's generator state and the tensor size, not on the number
of threads, so the same seed gives the same draws.
"""

from __future__ import annotations

import hashlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from . import _workspace
from ._kernels import FusedKernel
from ._native import NativeNoiseKernel

#: Elements per independently seeded chunk (and the size below which no splitting happens).
CHUNK = 1 << 18

#: CPU float32 draws of at least this many values use the counter-based kernel. Below it a draw
#: is one ``Tensor.normal_`` / ``uniform_`` call (cheaper than the kernel's call overhead).
KERNEL_MIN = 1 << 16

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


def _plain(kind: str):
    if kind == "normal":
        return lambda c, g: c.normal_(generator=g)
    return lambda c, g: c.uniform_(generator=g)


def _fill(t: Tensor, generator: torch.Generator, kind: str) -> Tensor:
    """MT19937 draws: one plain draw for small, non-CPU or non-contiguous tensors, else
    independently seeded chunks filled in the pool's threads."""
    draw = _plain(kind)
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


def _noise_fill(
    t: Tensor, generator: torch.Generator, kind: str, var: Tensor | None = None
) -> Tensor:
    """The counter kernel for large contiguous CPU float32 tensors, else :func:`_fill`."""
    if (
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.is_contiguous()
        and t.numel() >= KERNEL_MIN
        and (var is None or (var.dtype == torch.float32 and var.is_contiguous()))
    ):
        key = torch.empty((), dtype=torch.int64).random_(generator=generator)
        _counter_fill_(t.view(-1), key, kind, None if var is None else var.view(-1))
        return t
    _fill(t, generator, kind)
    return t if var is None else t.mul_(var.sqrt())


def normal_(t: Tensor, generator: torch.Generator | TensorStream) -> Tensor:
    """Fill ``t`` in place with standard normal draws from ``generator`` (PyTorch's MT19937:
    the draws that define a chip's state, stable across aimc versions)."""
    if not isinstance(generator, torch.Generator):
        return t.copy_(generator.normal(t.shape))
    return _fill(t, generator, "normal")


def uniform_(t: Tensor, generator: torch.Generator | TensorStream) -> Tensor:
    """Fill ``t`` in place with ``U[0, 1)`` draws from ``generator`` (PyTorch's MT19937)."""
    if not isinstance(generator, torch.Generator):
        return t.copy_(generator.uniform(t.shape))
    return _fill(t, generator, "uniform")


def noise_normal_(
    t: Tensor, generator: torch.Generator | TensorStream, var: Tensor | None = None
) -> Tensor:
    """Fill ``t`` in place with normal draws for noise that is fresh at every call (IO noise,
    HWA weight noise): the counter kernel for CPU float32 tensors of at least
    :data:`KERNEL_MIN` values (one int64 key from ``generator``), else :func:`normal_`.

    ``var`` (a tensor of ``t``'s shape): the draws have variance ``var`` instead of 1 (the
    kernel multiplies by ``sqrt(var)`` as it writes, saving two passes over ``t``)."""
    if var is not None and var.shape != t.shape:
        raise ValueError(
            f"aimc.random.noise_normal_: var has shape {tuple(var.shape)}; allowed: the shape "
            f"of the filled tensor, {tuple(t.shape)}"
        )
    if not isinstance(generator, torch.Generator):
        z = generator.normal(t.shape)
        return t.copy_(z if var is None else z * var.sqrt())
    return _noise_fill(t, generator, "normal", var)


def noise_uniform_(t: Tensor, generator: torch.Generator | TensorStream) -> Tensor:
    """``U[0, 1)`` draws with 24 bits for fresh noise (stochastic rounding): as
    :func:`noise_normal_`."""
    if not isinstance(generator, torch.Generator):
        return t.copy_(generator.uniform(t.shape))
    return _noise_fill(t, generator, "uniform")


# --------------------------------------------------------------------------------------------
# A counter-based stream written in tensor operations (the compiled forward's noise)

#: SplitMix64's increment (the golden ratio) and finaliser constants (Steele, Lea & Flood,
#: "Fast splittable pseudorandom number generators", OOPSLA 2014), as signed int64.
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
#: :data:`_GAMMA` as a tensor (see :func:`counter_bits`)
_GAMMA_T = torch.tensor(_GAMMA, dtype=torch.int64)


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


def counter_bits(key: Tensor, n: int, gamma: Tensor | None = None) -> Tensor:
    """``n`` 64-bit random words of the SplitMix64 sequence that starts at ``key``: word ``i`` is
    ``mix64(key + (i + 1) * gamma)`` (a 0-dim int64 ``key``; pure function, no state).

    ``gamma``: the increment as a 0-dim int64 tensor (:data:`_GAMMA_T`), for compiled kernels.
    As a Python constant inductor folds ``(i + 1) * gamma`` into the loop's C++ index arithmetic,
    where it overflows (undefined behaviour for signed integers): g++ then assumed that the loop
    of a single-threaded kernel ran once (measured: only the first 16 values written). Read from
    a tensor, the product is vector arithmetic, which wraps."""
    i = torch.arange(1, n + 1, dtype=torch.int64, device=key.device)
    return mix64(key + i * (_GAMMA if gamma is None else gamma))


def _polar(bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(r, k)`` of the Box-Muller pair of each 64-bit word: ``u1 = (k1 + 1/2) 2**-24`` with
    ``k1`` the top 24 bits, ``r = sqrt(-2 ln u1)``, and the angle ``theta = 2 pi k 2**-24`` as
    its low 24 bits ``k`` (int32, in turns: :func:`_cos_sin_turns`); the pair is
    ``r cos(theta)``, ``r sin(theta)``.

    ``u1`` is float32, whose grid above 1/2 is ``2**-24``: for ``k1 >= 2**23`` the half rounds
    to the even neighbour (``u1`` moves by half a step, up or down alike), and the top field
    gives ``u1 = 1``, ``r = 0`` (probability ``2**-24``, where ``r`` would be 2.4e-4). ``r``
    is within 1.3e-7 (relative) of float64 at the float32 ``u1`` for every ``k1`` (eager and
    compiled, CPU)."""
    # the 24-bit fields go through int32 on their way to float (the same values): AVX2 has no
    # int64-to-float vector conversion, and the detour made the kernel 7 % faster there
    u1 = (_srl(bits, 40).to(torch.int32).float() + 0.5) * 2.0**-24
    # clamped at 0: a logarithm whose error near 1 is absolute, not relative (a GPU's fast
    # one, ~2**-22) could give ln u1 > 0 there, and the square root NaN. On the CPU nothing
    # changes: the same bits for all 2**24 fields, eager and compiled, and no measurable cost
    # (the noise kernel: 1.749 against 1.745 ms for 786,432 words, AVX2 host)
    r = torch.sqrt((-2.0 * torch.log(u1)).clamp_min(0.0))
    return r, (bits & 0xFFFFFF).to(torch.int32)


#: Minimax coefficients of sin and cos on [-pi/4, pi/4] for float32 (Cephes ``sinf`` /
#: ``cosf``, S. L. Moshier, 1989): ``sin x = x + x^3 (s0 + s1 x^2 + s2 x^4)``,
#: ``cos x = 1 - x^2 / 2 + x^4 (c0 + c1 x^2 + c2 x^4)``.
_SIN = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)
_COS = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)


def _cos_sin_turns(k: Tensor) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of ``2 pi k 2**-24`` for int32 ``k`` in ``[-2**22, 2**24)`` (the
    24-bit angle fields, and those a quarter turn back: :func:`_values_at`).

    The angle is reduced in integers: ``k = j 2**22 + m`` with ``j`` the nearest quarter turn and
    ``|m| <= 2**21``, so ``x = m pi/2 2**-22`` lies in ``[-pi/4, pi/4]`` with one rounding, and
    one pair of polynomials (:data:`_SIN`, :data:`_COS`) serves both values, rotated by ``j``
    quarter turns. Within 1.1e-7 of the float64 values for every ``k`` (``torch.cos`` of the
    float32 angle ``k * 2 pi 2**-24`` is up to 3.8e-7 off, mostly the angle's own rounding near
    ``2 pi``); ``sin`` at ``k`` equals ``cos`` at ``k - 2**22`` bit for bit. In the noise kernel
    it takes 11 % less time than ``torch.cos`` and ``torch.sin`` of the float angle (AVX2 host,
    786,432 words: 2.85 against 3.23 ms)."""
    j = (k + (1 << 21)) >> 22  # arithmetic shift: -1 for k - 2**22 < -2**21 (see _values_at)
    x = (k - (j << 22)).float() * (math.pi / 2 * 2.0**-22)
    z = x * x
    s = x + x * z * (_SIN[0] + z * (_SIN[1] + z * _SIN[2]))
    c = 1.0 - 0.5 * z + z * z * (_COS[0] + z * (_COS[1] + z * _COS[2]))
    # quarter turns: (cos, sin) of x + j pi/2 is (c, s), (-s, c), (-c, -s), (s, -c) for j mod 4
    odd = (j & 1) == 1
    cos_sign = (1 - 2 * (((j + 1) >> 1) & 1)).float()
    sin_sign = (1 - 2 * ((j >> 1) & 1)).float()
    return torch.where(odd, s, c) * cos_sign, torch.where(odd, c, s) * sin_sign


def _halves(bits: Tensor) -> tuple[Tensor, Tensor]:
    """The two 24-bit uniform fields of each 64-bit word (top bits first), as int32."""
    # narrowed to int32 before any concatenation (the same values): 2.2x faster on an AVX2
    # host, which converts int64 to float element by element
    return _srl(bits, 40).to(torch.int32), ((bits >> 8) & 0xFFFFFF).to(torch.int32)


def counter_normal(
    key: Tensor, shape: tuple[int, ...] | torch.Size, gamma: Tensor | None = None
) -> Tensor:
    """Standard normal draws of the stream at ``key`` (float32), by Box-Muller on 24-bit
    uniforms: each 64-bit word gives one pair (:func:`_polar`), the cosines first. ``u1`` has
    24 bits, so ``|z| <= 5.9`` — the same tail as PyTorch's CPU ``normal_``, whose ``u1`` also
    has 24 bits. ``gamma``: as in :func:`counter_bits`."""
    numel = math.prod(shape)
    r, k = _polar(counter_bits(key, _words(numel), gamma))
    cos, sin = _cos_sin_turns(k)
    z = torch.cat([r * cos, r * sin])
    return z[:numel].view(shape)


def counter_uniform(
    key: Tensor, shape: tuple[int, ...] | torch.Size, gamma: Tensor | None = None
) -> Tensor:
    """``U[0, 1)`` draws with 24 bits (float32's mantissa) of the stream at ``key``: each
    64-bit word gives two (:func:`_halves`), the top fields first. ``gamma``: as in
    :func:`counter_bits`."""
    numel = math.prod(shape)
    hi, lo = _halves(counter_bits(key, _words(numel), gamma))
    u = torch.cat([hi, lo]).float() * 2.0**-24
    return u[:numel].view(shape)


def _values_at(key: Tensor, flat: Tensor, half: int, kind: str) -> Tensor:
    """Values ``flat`` (int64 indices) of the ``kind`` draw at ``key`` whose first half (the
    cosines, or the top 24-bit fields) has ``half`` values (:func:`_words` of the draw's size):
    each value computed from its own word, so that no buffer of the whole draw is needed."""
    first = flat < half  # word ``flat`` (cos, or the top 24 bits); else word ``flat - half``
    bits = mix64(key + (torch.where(first, flat, flat - half) + 1) * _GAMMA)
    if kind == "normal":
        r, k = _polar(bits)
        # the sine at k as the cosine at k - 2**22 (a quarter turn less): the same bits
        return r * _cos_sin_turns(torch.where(first, k, k - (1 << 22)))[0]
    hi, lo = _halves(bits)
    return torch.where(first, hi, lo).float() * 2.0**-24


def _pair_fill(
    cos: Tensor,
    sin: Tensor,
    key: Tensor,
    gamma: Tensor,
    kind: str,
    var: Tensor | None = None,
    half: int = 0,
) -> None:
    """Words ``0 .. w - 1`` of the stream at ``key`` (``w`` = the length of the flat ``cos`` and
    ``sin``) written as their two values: the cosines into ``cos`` and the sines into ``sin``
    (``kind="normal"``), or the top and the low 24-bit fields as uniforms (``"uniform"``);
    ``gamma`` is :data:`_GAMMA_T`. Where ``var`` is given, the cosines are multiplied by
    ``sqrt(var[:w])`` and the sines by ``sqrt(var[half:half + w])``.

    The noise kernel (:data:`_FILL`) is this function, ``cos`` the first part of the filled
    tensor and ``sin`` a reused buffer: one loop computes each word's hash, logarithm and square
    root once and writes both values (the kernel that concatenated the halves into a fresh
    buffer of the whole draw first, page faults and all, took about twice as long)."""
    w = cos.shape[0]
    bits = counter_bits(key, w, gamma)
    if kind == "normal":
        r, k = _polar(bits)
        cos_k, sin_k = _cos_sin_turns(k)
        c, s = r * cos_k, r * sin_k
        if var is not None:
            c, s = c * var[:w].sqrt(), s * var[half : half + w].sqrt()
    else:
        hi, lo = _halves(bits)
        c, s = hi.float() * 2.0**-24, lo.float() * 2.0**-24
    cos.copy_(c)
    sin.copy_(s)


def _counter_rows_eager(key: Tensor, numel: int, rows: Tensor, width: int, kind: str) -> Tensor:
    """Values ``rows[j] * width + c`` (``c < width``) of the ``kind`` stream at ``key`` drawn for
    ``numel`` values (:func:`counter_normal` / :func:`counter_uniform` of shape ``(numel,)``), as
    a ``(rows.numel(), padded)`` tensor: the width padded to a multiple of 64 (the caller
    slices), so that no int64 loop of the compiled variant has a vector tail (see
    :func:`_words`) and each row is one vectorised inner loop."""
    padded = -(-width // 64) * 64
    cols = torch.arange(padded, device=rows.device)
    return _values_at(key, rows.view(-1, 1) * width + cols.view(1, -1), _words(numel), kind)


#: The compiled :func:`_counter_rows_eager` (bound management's gathered rounds)
_ROWS = FusedKernel(_counter_rows_eager, env="AIMC_RNG_KERNEL")


def counter_rows(key: Tensor, numel: int, rows: Tensor, width: int, kind: str = "normal") -> Tensor:
    """Selected rows of a draw: ``counter_normal(key, (numel,))`` (``kind="normal"``) or
    ``counter_uniform`` viewed as ``(numel // width, width)``, at the row indices ``rows``
    (int64, 1-d): a ``(rows.numel(), width)`` float32 tensor, computed for those rows only.

    Bound management's gathered rounds use it to draw, for the (tile, vector) pairs they redo,
    exactly the values a round over every pair would draw there. On CPU it is a kernel that
    ``torch.compile`` builds once per process (where the noise kernel builds); elsewhere, or
    without it, the same values in eager tensor operations."""
    m = rows.shape[0] * width
    if m == 0:
        return torch.empty(rows.shape[0], width, dtype=torch.float32, device=rows.device)
    # not where the noise kernel could not be built (the same compiler); always in inference
    # mode, so that the variants are only the kind and the thread count
    kernel = _FILL.failed is None
    with torch.inference_mode():
        if kernel:
            out = _ROWS(
                key,
                numel,
                rows,
                width,
                kind,
                variant=(kind, torch.get_num_threads()),
                device=key.device,
            )
        else:
            out = _counter_rows_eager(key, numel, rows, width, kind)
    return out[:, :width]


#: The compiled :func:`_pair_fill`: the noise kernel
_FILL = FusedKernel(
    _pair_fill,
    env="AIMC_RNG_KERNEL",
    warn=(
        "aimc.random: the compiled random-number kernel could not be built ({error}); large "
        "draws use the same stream in eager tensor operations: the same numbers, several times "
        "slower. torch.compile's CPU backend needs a C++ compiler; set AIMC_RNG_KERNEL=0 to "
        "skip the attempt."
    ),
)


#: The noise kernel written for AVX2 and AVX-512 CPUs (:mod:`aimc._native`): the same stream
#: as :data:`_FILL`, which it replaces in eager draws where inductor's vector ISA is one of
#: those (a compiled graph draws with it only on AVX2: :func:`_native_in_graph`)
_NATIVE = NativeNoiseKernel()


#: The noise kernel's reused buffer holds at most this many values (32 MiB); a larger draw
#: (HWA weight noise of a large layer) takes a buffer of its own for that call.
SINES_MAX = 1 << 23


def _sines(numel: int) -> Tensor:
    """The calling thread's reused float32 buffer for the kernel's second values (a fresh one
    above :data:`SINES_MAX`)."""
    if numel > SINES_MAX:
        return torch.empty(numel, dtype=torch.float32)
    return _workspace.buffer("sines", numel)


def _counter_fill_(flat: Tensor, key: Tensor, kind: str, var: Tensor | None = None) -> None:
    """Fill the contiguous 1-d float32 CPU tensor ``flat`` with :func:`counter_normal` (times
    ``sqrt(var)``) or :func:`counter_uniform` of its size at ``key``, to float rounding: with the
    hand-written kernel where it runs (:data:`_NATIVE`, AVX2 and AVX-512: both values of each
    word straight into place),
    else the compiled kernel (:data:`_FILL`, :func:`_pair_fill`), or with tensor operations where
    that cannot be built (warned once) or ``AIMC_RNG_KERNEL=0``.

    The draw's first ``half`` values (:func:`_words`) come from words ``0 .. half - 1``, its
    other ``n - half`` from words ``0 .. n - half - 1``. The kernel computes both values of the
    first ``w`` words, ``w`` the largest multiple of 64 that both parts hold (so that the int64
    loops of torch 2.13's CPU inductor never run a vector tail, see :func:`_words`): the first
    straight into ``flat``, the second into a reused buffer copied into place after (two views
    of one tensor as the kernel's outputs made dynamo reuse a kernel for views at other
    offsets: wrong values). The rest (fewer than 192 values, none where ``n`` is a multiple of
    128) are tensor operations. The kernel always runs in inference mode (allowed on ordinary
    tensors too), so that its only variants are the draw's kind (with or without ``var``) and
    the thread count (dynamo guards on both)."""
    n = flat.shape[0]
    half = _words(n)
    w = (n - half) // 64 * 64
    with torch.inference_mode():
        if _NATIVE.usable():  # AVX2 / AVX-512: the hand-written kernel, straight into place
            _NATIVE.fill(flat[:w], flat[half : half + w], key, kind, var, half)
        else:
            sines = _sines(w)
            _FILL(
                flat[:w],
                sines,
                key,
                _GAMMA_T,
                kind,
                var,
                half,
                variant=(kind, var is None, torch.get_num_threads()),
            )
            flat[half : half + w].copy_(sines)
        if w < half:  # the words after the kernel's: values w .. half - 1, half + w .. n - 1
            idx = torch.cat(
                [
                    torch.arange(w, half, dtype=torch.int64, device=flat.device),
                    torch.arange(half + w, n, dtype=torch.int64, device=flat.device),
                ]
            )
            z = _values_at(key, idx, half, kind)
            if var is not None:
                z = z * var[idx].sqrt()
            flat[w:half].copy_(z[: half - w])
            flat[half + w :].copy_(z[half - w :])


class KeyedStream:
    """Draws that are a pure function of one key tensor and the draw's index: draw ``j`` uses
    the key ``mix64(key + j * gamma)``. Nothing but a Python counter changes, so it may be used
    inside ``torch.cond`` branches of a compiled graph."""

    def __init__(self, key: Tensor) -> None:
        self.key = key
        self.draws = 0
        # the increment as a tensor computed from the key (``key ^ key`` is 0): a run-time value
        # of a compiled graph, so that ``(i + 1) * gamma`` is int64 arithmetic on values. With a
        # constant, inductor folds the product into the kernel's index arithmetic (see
        # :func:`counter_bits`), which triton types as int32: "Scalar -7046029254386353131 is out
        # of range for type int32" (torch 2.11, CUDA)
        self.gamma = (key ^ key) + _GAMMA

    def next_key(self) -> Tensor:
        """The key of the next draw."""
        self.draws += 1
        return mix64(self.key + _int64(self.draws * _GAMMA))

    def normal(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Standard normal draws of the given shape (float32)."""
        key = self.next_key()
        if _native_in_graph(key):
            return _native_draw(key, math.prod(shape), "normal").view(shape)
        return counter_normal(key, shape, self.gamma)

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``U[0, 1)`` draws of the given shape (float32)."""
        key = self.next_key()
        if _native_in_graph(key):
            return _native_draw(key, math.prod(shape), "uniform").view(shape)
        return counter_uniform(key, shape, self.gamma)


def _native_in_graph(key: Tensor) -> bool:
    """Whether a draw of a graph being compiled is :func:`_native_draw` (an opaque op) rather
    than tensor operations that inductor fuses: on an AVX2 CPU, where the hand-written kernel
    is meant to run and not switched off (decided when the graph is traced). On AVX-512 CPUs
    inductor's own code draws a graph's noise inside the kernel that uses it (no draw written
    and read back); the hand-written kernel serves their eager draws."""
    return (
        torch.compiler.is_compiling()
        and key.device.type == "cpu"
        and _AVX2_CPU
        and _NATIVE.switched_on()
    )


#: Whether ATen dispatches to AVX2 code on this CPU (read once: a constant for traced graphs):
#: where the AVX2 kernel is meant to run (:meth:`NativeNoiseKernel.usable` checks inductor's
#: vector ISA when it builds the kernel, at the first eager draw)
_AVX2_CPU = torch.backends.cpu.get_cpu_capability() == "AVX2"


# the namespace follows the package name (see aimc.mvm's ops)
@torch.library.custom_op(f"{__package__.replace('.', '_')}::counter_draw", mutates_args=())
def _native_draw(key: Tensor, numel: int, kind: str) -> Tensor:
    """``numel`` values of the ``kind`` stream at ``key`` (:func:`counter_normal` or
    :func:`counter_uniform` of shape ``(numel,)``, to float rounding), drawn by the noise
    kernel: a compiled graph on an AVX2 CPU draws its noise with the hand-written kernel
    (about twice as fast there as the noise inductor fuses into its kernels), at the cost of
    writing the draws once and reading them back."""
    if numel < 128:  # fewer values than the kernel's smallest draw: tensor operations
        return (counter_normal if kind == "normal" else counter_uniform)(key, (numel,))
    out = torch.empty(numel, dtype=torch.float32, device=key.device)
    _counter_fill_(out, key, kind)
    return out


@_native_draw.register_fake
def _(key, numel, kind):
    return key.new_empty(numel, dtype=torch.float32)


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


class RowStream:
    """The draws of a :class:`KeyedStream` for tensors of ``total_rows`` rows, evaluated only at
    the rows ``rows`` (:func:`counter_rows`): draw ``j`` of shape ``(..., width)`` (whose leading
    dimensions hold ``rows.numel()`` rows) equals rows ``rows`` of the stream's draw ``j`` of
    shape ``(total_rows, width)``."""

    def __init__(self, key: Tensor, rows: Tensor, total_rows: int) -> None:
        self.stream = KeyedStream(key)
        self.rows = rows
        self.total_rows = total_rows

    def _draw(self, shape: tuple[int, ...] | torch.Size, kind: str) -> Tensor:
        width = shape[-1]
        if math.prod(shape) != self.rows.numel() * width:
            raise ValueError(
                f"aimc.random.RowStream: a draw of shape {tuple(shape)}; allowed: "
                f"{self.rows.numel()} rows (the selected rows) of any width"
            )
        key = self.stream.next_key()
        return counter_rows(key, self.total_rows * width, self.rows, width, kind).reshape(shape)

    def normal(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Standard normal draws of the given shape (float32)."""
        return self._draw(shape, "normal")

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``U[0, 1)`` draws of the given shape (float32)."""
        return self._draw(shape, "uniform")


#: What :func:`normal_` and :func:`uniform_` accept besides a ``torch.Generator``.
TensorStream = CounterStream | KeyedStream | RowStream


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
