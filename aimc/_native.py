"""The noise kernel written by hand for AVX2 and AVX-512 CPUs: the same counter stream as
:func:`aimc.random._pair_fill`, with SplitMix64's 64-bit multiplies as vector code.

On a CPU whose widest vector ISA is AVX2 (no AVX-512), PyTorch's vector class, and so the kernel
that inductor generates from :func:`aimc.random._pair_fill`, multiplies int64 lanes one at a
time in scalar code (``ATen/cpu/vec/vec256/vec256_int.h``), and shifts and narrows them the same
way. AVX2 has no 64-bit vector multiply, but ``vpmuludq`` multiplies the low 32-bit halves of
four 64-bit lanes into 64-bit products, and a 64-bit product modulo ``2**64`` is three of them:
``lo(a) lo(b) + ((hi(a) lo(b) + lo(a) hi(b)) << 32)``. This kernel (:data:`SOURCE`) computes
the words that way, narrows the two 24-bit fields of eight words into one int32 vector with
one blend and one permute, and runs the Box–Muller part with PyTorch's own vector class
(``Vectorized<float>``: the same logarithm, SLEEF's ``logf`` within 1 ulp, the same square root
and the same polynomials in the same order as :func:`aimc.random._polar` and
:func:`aimc.random._cos_sin_turns`). The quarter-turn signs are applied by flipping the sign
bit, which is what multiplying by ``±1.0`` does. The integer words are those of
:func:`aimc.random.counter_bits` exactly; on the AVX2 host the values were bit for bit those of
the inductor kernel (all three modes, 786,432 values).

On an AVX-512 CPU (:data:`SOURCE_AVX512`) the multiplies are AVX512DQ's ``vpmullq`` (eight
64-bit lanes), sixteen words go through each step (the 16 float lanes of ``Vectorized<float>``
there) and their fields narrow with ``vpmovqd``. Inductor's kernel has those multiplies too,
but it is reached through ``torch.compile``'s dispatch (guards, about 0.1–0.2 ms a call) and
writes the sines into a buffer that is then copied into place; this kernel writes both values
of each word straight into the filled tensor. On the AVX-512 host (AMD EPYC, 2 threads,
2026-12-06, ``benchmarks/bench_rng_contention.py``: medians of 60 interleaved draws right after
a matmul) it drew 786,432 normal values in 0.65 against the inductor kernel's 1.21 ms and 3.1 M
in 1.62 against 2.79 ms, and its values were the inductor kernel's bit for bit in all three
modes (1,024 to 6.3 M values).

Both are compiled, like inductor's kernels, by inductor's C++ code cache (the C++ compiler,
flags, OpenMP runtime and on-disk cache that ``torch.compile`` uses; so they also run in
PyTorch's OpenMP team and follow ``torch.set_num_threads``), each only where inductor's vector
ISA is its own (AVX2 host, right after a matmul, ``benchmarks/bench_rng_contention.py``: 786,432
normal values in 0.91 against the inductor kernel's 1.92 ms, 3.1 M in 3.30 against 6.57 ms).
Elsewhere (ARM, or a failed build or self-check) the inductor kernel runs.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any

import torch
from torch import Tensor

#: C++: ``c`` (at most ``VecD::size()``) float32 values as float64 vector lanes, the rest zero
#: (one conversion instruction for a full vector on AVX-512 and AVX2); needs ``VecD`` and, on
#: those ISAs, ``immintrin.h``.
LOAD_PD_SOURCE = r"""
static inline VecD aimc_load_pd(const float* p, int64_t c) {
#if defined(CPU_CAPABILITY_AVX512)
    if (c == 8) return VecD(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#elif defined(CPU_CAPABILITY_AVX2)
    if (c == 4) return VecD(_mm256_cvtps_pd(_mm_loadu_ps(p)));
#endif
    double t[VecD::size()] = {};
    for (int64_t l = 0; l < c; ++l) t[l] = double(p[l]);
    return VecD::loadu(t);
}
"""

#: What both noise kernels' sources start with: headers, PyTorch's vector class, and the
#: Box–Muller arithmetic in ``Vectorized<float>`` (whatever its width): the float32 constants
#: as :mod:`aimc.random` writes them, the radius of :func:`aimc.random._polar` and the
#: polynomials of :func:`aimc.random._cos_sin_turns`, operation for operation, and the stores.
_NOISE_PRELUDE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <immintrin.h>

using VecF = at::vec::Vectorized<float>;

struct AimcBoxMuller {
    // the constants as aimc.random writes them: float32 of the double values
    const VecF half_f{0.5f}, scale24{static_cast<float>(5.960464477539063e-08)}, m2f{-2.0f},
        zero{0.0f}, one{1.0f},
        xs{static_cast<float>(3.141592653589793 / 2.0 * 2.384185791015625e-07)},
        S0{static_cast<float>(-1.6666654611e-1)}, S1{static_cast<float>(8.3321608736e-3)},
        S2{static_cast<float>(-1.9515295891e-4)}, C0{static_cast<float>(4.166664568298827e-2)},
        C1{static_cast<float>(-1.388731625493765e-3)},
        C2{static_cast<float>(2.443315711809948e-5)};

    // r = sqrt(max(-2 ln u1, 0)), u1 = (k1 + 1/2) 2**-24, from the top 24-bit fields k1
    VecF radius(VecF k1) const {
        const VecF u1 = (k1 + half_f) * scale24;
        return at::vec::maximum(u1.log() * m2f, zero).sqrt();
    }

    // sin and cos of x = m pi/2 2**-22 (|m| <= 2**21), the Cephes polynomials
    void sin_cos(VecF m, VecF& s, VecF& co) const {
        const VecF x = m * xs;
        const VecF z = x * x;
        s = x + (x * z) * ((z * ((z * S2) + S1)) + S0);
        co = (one - z * half_f) + (z * z) * ((z * ((z * C2) + C1)) + C0);
    }

    // both values of the words from i on: the uniforms (mode 2), or the radius times the
    // rotated cosine and sine, times sqrt(var) in mode 1
    static void store(VecF vc, VecF vs, float* first, float* second, const float* var,
                      int64_t half, int64_t i, int64_t mode) {
        if (mode == 1) {
            vc = vc * VecF::loadu(var + i).sqrt();
            vs = vs * VecF::loadu(var + half + i).sqrt();
        }
        vc.store(first + i);
        vs.store(second + i);
    }
};
"""

#: Both kernels' entry: the tensors come as their addresses (int64), no reliance on how a
#: version of inductor's Python bindings converts tensor arguments (torch 2.13 reads them from
#: tensor objects); the body (after this, ISA by ISA) opens the parallel region and closes the
#: function.
_NOISE_ENTRY = r"""
extern "C" void kernel(const int64_t key_addr, const int64_t first_addr,
                       const int64_t second_addr, const int64_t var_addr, const int64_t w,
                       const int64_t half, const int64_t mode) {
    const uint64_t key = static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(key_addr));
    float* const first = reinterpret_cast<float*>(first_addr);
    float* const second = reinterpret_cast<float*>(second_addr);
    const float* const var = reinterpret_cast<const float*>(var_addr);
    const uint64_t gamma = 0x9E3779B97F4A7C15ULL;
    const uint64_t M1 = 0xBF58476D1CE4E5B9ULL, M2 = 0x94D049BB133111EBULL;
"""

#: The C++ source: ``kernel(key, first, second, var, w, half, mode)`` writes both values of
#: words ``0 .. w - 1`` (``w`` a multiple of 64) of the stream at ``*key``: ``first[i]`` and
#: ``second[i]`` the cosine and sine values (``mode`` 0), times ``sqrt(var[i])`` and
#: ``sqrt(var[half + i])`` (mode 1), or the top and the low 24-bit fields as uniforms (mode 2).
SOURCE = (
    _NOISE_PRELUDE
    + r"""
// a * b modulo 2**64 in four 64-bit lanes, b given as its 32-bit halves (b_lo, b_hi)
static inline __m256i aimc_mul64(__m256i a, __m256i b_lo, __m256i b_hi) {
    __m256i p0 = _mm256_mul_epu32(a, b_lo);
    __m256i p1 = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b_lo);
    __m256i p2 = _mm256_mul_epu32(a, b_hi);
    return _mm256_add_epi64(p0, _mm256_slli_epi64(_mm256_add_epi64(p1, p2), 32));
}

// SplitMix64's finaliser (Steele, Lea & Flood, OOPSLA 2014)
static inline __m256i aimc_mix64(__m256i x, __m256i m1l, __m256i m1h, __m256i m2l,
                                 __m256i m2h) {
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 30));
    x = aimc_mul64(x, m1l, m1h);
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 27));
    x = aimc_mul64(x, m2l, m2h);
    return _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
}

// the low 32 bits of the 64-bit lanes of a (words 0-3) and b (words 4-7), in word order
static inline __m256i aimc_pack32(__m256i a, __m256i b) {
    __m256i t = _mm256_blend_epi32(a, _mm256_slli_epi64(b, 32), 0xAA);
    return _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}
"""
    + _NOISE_ENTRY
    + r"""
    #pragma omp parallel
    {
        const __m256i m1l = _mm256_set1_epi64x(static_cast<int64_t>(M1 & 0xFFFFFFFFULL));
        const __m256i m1h = _mm256_set1_epi64x(static_cast<int64_t>(M1 >> 32));
        const __m256i m2l = _mm256_set1_epi64x(static_cast<int64_t>(M2 & 0xFFFFFFFFULL));
        const __m256i m2h = _mm256_set1_epi64x(static_cast<int64_t>(M2 >> 32));
        const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(8 * gamma));
        const __m256i mask24 = _mm256_set1_epi64x(0xFFFFFF);
        const __m256i i1 = _mm256_set1_epi32(1), i21 = _mm256_set1_epi32(1 << 21);
        const AimcBoxMuller bm;
        #pragma omp for schedule(static)
        for (int64_t c = 0; c < w / 64; ++c) {
            const int64_t i0 = c * 64;
            // word i is mix64(key + (i + 1) * gamma): unsigned, so the products wrap
            const uint64_t b0 = key + static_cast<uint64_t>(i0 + 1) * gamma;
            __m256i ca = _mm256_setr_epi64x(
                static_cast<int64_t>(b0), static_cast<int64_t>(b0 + gamma),
                static_cast<int64_t>(b0 + 2 * gamma), static_cast<int64_t>(b0 + 3 * gamma));
            __m256i cb = _mm256_add_epi64(ca, _mm256_set1_epi64x(static_cast<int64_t>(4 * gamma)));
            for (int64_t i = i0; i < i0 + 64; i += 8) {
                const __m256i a = aimc_mix64(ca, m1l, m1h, m2l, m2h);
                const __m256i b = aimc_mix64(cb, m1l, m1h, m2l, m2h);
                ca = _mm256_add_epi64(ca, step);
                cb = _mm256_add_epi64(cb, step);
                const __m256i hi = aimc_pack32(_mm256_srli_epi64(a, 40), _mm256_srli_epi64(b, 40));
                if (mode == 2) {
                    const __m256i lo =
                        aimc_pack32(_mm256_and_si256(_mm256_srli_epi64(a, 8), mask24),
                                    _mm256_and_si256(_mm256_srli_epi64(b, 8), mask24));
                    AimcBoxMuller::store(VecF(_mm256_cvtepi32_ps(hi)) * bm.scale24,
                                         VecF(_mm256_cvtepi32_ps(lo)) * bm.scale24, first,
                                         second, var, half, i, mode);
                    continue;
                }
                // Box-Muller: aimc.random._polar and _cos_sin_turns, operation for operation
                const __m256i k =
                    aimc_pack32(_mm256_and_si256(a, mask24), _mm256_and_si256(b, mask24));
                const VecF r = bm.radius(VecF(_mm256_cvtepi32_ps(hi)));
                const __m256i j = _mm256_srai_epi32(_mm256_add_epi32(k, i21), 22);
                const __m256i m = _mm256_sub_epi32(k, _mm256_slli_epi32(j, 22));
                VecF s, co;
                bm.sin_cos(VecF(_mm256_cvtepi32_ps(m)), s, co);
                const __m256 odd =
                    _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(j, i1), i1));
                // the cosine is negative for j mod 4 in {1, 2}, the sine for {2, 3}: the sign
                // bit set, as a product with -1.0 sets it
                const __m256 cneg = _mm256_castsi256_ps(
                    _mm256_slli_epi32(_mm256_srli_epi32(_mm256_add_epi32(j, i1), 1), 31));
                const __m256 sneg =
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(j, 1), 31));
                const __m256 cs = _mm256_xor_ps(_mm256_blendv_ps(co, s, odd), cneg);
                const __m256 sn = _mm256_xor_ps(_mm256_blendv_ps(s, co, odd), sneg);
                AimcBoxMuller::store(r * VecF(cs), r * VecF(sn), first, second, var, half, i,
                                     mode);
            }
        }
    }
}
"""
)

#: The AVX-512 variant of :data:`SOURCE` (the same function and arguments): sixteen words a
#: step as two vectors of eight 64-bit lanes, multiplied by ``_mm512_mullo_epi64``, their
#: fields narrowed by ``_mm512_cvtepi64_epi32`` into the 16 lanes of ``Vectorized<float>``.
SOURCE_AVX512 = (
    _NOISE_PRELUDE
    + r"""
static_assert(VecF::size() == 16, "the AVX-512 noise kernel needs 16 float lanes");

// SplitMix64's finaliser (Steele, Lea & Flood, OOPSLA 2014): AVX512DQ's 64-bit multiply
static inline __m512i aimc_mix64(__m512i x, __m512i m1, __m512i m2) {
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 30));
    x = _mm512_mullo_epi64(x, m1);
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
    x = _mm512_mullo_epi64(x, m2);
    return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// the low 32 bits of the 64-bit lanes of a (words 0-7) and b (words 8-15), in word order
static inline __m512i aimc_pack32(__m512i a, __m512i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)),
                              _mm512_cvtepi64_epi32(b), 1);
}
"""
    + _NOISE_ENTRY
    + r"""
    #pragma omp parallel
    {
        const __m512i m1 = _mm512_set1_epi64(static_cast<int64_t>(M1));
        const __m512i m2 = _mm512_set1_epi64(static_cast<int64_t>(M2));
        const __m512i step = _mm512_set1_epi64(static_cast<int64_t>(16 * gamma));
        const __m512i lanes = _mm512_set_epi64(
            static_cast<int64_t>(7 * gamma), static_cast<int64_t>(6 * gamma),
            static_cast<int64_t>(5 * gamma), static_cast<int64_t>(4 * gamma),
            static_cast<int64_t>(3 * gamma), static_cast<int64_t>(2 * gamma),
            static_cast<int64_t>(gamma), 0);
        const __m512i eight = _mm512_set1_epi64(static_cast<int64_t>(8 * gamma));
        const __m512i mask24 = _mm512_set1_epi64(0xFFFFFF);
        const __m512i i1 = _mm512_set1_epi32(1), i21 = _mm512_set1_epi32(1 << 21);
        const AimcBoxMuller bm;
        #pragma omp for schedule(static)
        for (int64_t c = 0; c < w / 64; ++c) {
            const int64_t i0 = c * 64;
            // word i is mix64(key + (i + 1) * gamma): unsigned, so the products wrap
            const uint64_t b0 = key + static_cast<uint64_t>(i0 + 1) * gamma;
            __m512i ca = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(b0)), lanes);
            __m512i cb = _mm512_add_epi64(ca, eight);
            for (int64_t i = i0; i < i0 + 64; i += 16) {
                const __m512i a = aimc_mix64(ca, m1, m2);
                const __m512i b = aimc_mix64(cb, m1, m2);
                ca = _mm512_add_epi64(ca, step);
                cb = _mm512_add_epi64(cb, step);
                const __m512i hi = aimc_pack32(_mm512_srli_epi64(a, 40), _mm512_srli_epi64(b, 40));
                if (mode == 2) {
                    const __m512i lo =
                        aimc_pack32(_mm512_and_si512(_mm512_srli_epi64(a, 8), mask24),
                                    _mm512_and_si512(_mm512_srli_epi64(b, 8), mask24));
                    AimcBoxMuller::store(VecF(_mm512_cvtepi32_ps(hi)) * bm.scale24,
                                         VecF(_mm512_cvtepi32_ps(lo)) * bm.scale24, first,
                                         second, var, half, i, mode);
                    continue;
                }
                const __m512i k =
                    aimc_pack32(_mm512_and_si512(a, mask24), _mm512_and_si512(b, mask24));
                const VecF r = bm.radius(VecF(_mm512_cvtepi32_ps(hi)));
                const __m512i j = _mm512_srai_epi32(_mm512_add_epi32(k, i21), 22);
                const __m512i m = _mm512_sub_epi32(k, _mm512_slli_epi32(j, 22));
                VecF s, co;
                bm.sin_cos(VecF(_mm512_cvtepi32_ps(m)), s, co);
                // the quarter turns as in SOURCE, with a mask blend
                const __mmask16 odd = _mm512_cmpeq_epi32_mask(_mm512_and_si512(j, i1), i1);
                const __m512i cneg =
                    _mm512_slli_epi32(_mm512_srli_epi32(_mm512_add_epi32(j, i1), 1), 31);
                const __m512i sneg = _mm512_slli_epi32(_mm512_srli_epi32(j, 1), 31);
                const __m512 cs = _mm512_castsi512_ps(_mm512_xor_si512(
                    _mm512_castps_si512(_mm512_mask_blend_ps(odd, co, s)), cneg));
                const __m512 sn = _mm512_castsi512_ps(_mm512_xor_si512(
                    _mm512_castps_si512(_mm512_mask_blend_ps(odd, s, co)), sneg));
                AimcBoxMuller::store(r * VecF(cs), r * VecF(sn), first, second, var, half, i,
                                     mode);
            }
        }
    }
}
"""
)

_ARGTYPES = ["int64_t"] * 7
#: How the warnings name an ISA family
_ISA_NAMES = {"avx2": "AVX2", "avx512": "AVX-512"}
_MODES = {("normal", False): 0, ("normal", True): 1, ("uniform", False): 2}


def _self_check(fn: Any) -> str | None:
    """What is wrong with the freshly built kernel ``fn``, or None: its three modes on one
    draw of 1,024 values (512 words) against the stream in tensor operations
    (:func:`aimc.random.counter_normal` / :func:`aimc.random.counter_uniform`): uniforms bit
    for bit, normals to float rounding. A compiler or CPU that computes the kernel wrongly
    then costs speed (the inductor kernel takes over), never a wrong draw."""
    from . import random as arandom  # aimc.random imports this module

    key = torch.tensor(-0x2545F4914F6CDD1D, dtype=torch.int64)
    n = 1024
    half = arandom._words(n)  # 512: the kernel's words are all of the draw's
    first = torch.full((half,), math.nan, dtype=torch.float32)
    second = torch.full((half,), math.nan, dtype=torch.float32)
    var = torch.full((n,), 6.25, dtype=torch.float32)
    checks = (
        ("normal", 0, first, arandom.counter_normal(key, (n,)), 1e-5),
        ("normal, var", 1, var, arandom.counter_normal(key, (n,)) * 2.5, 3e-5),
        ("uniform", 2, first, arandom.counter_uniform(key, (n,)), 0.0),
    )
    for name, mode, var_arg, ref, tol in checks:
        addrs = (t.data_ptr() for t in (key, first, second, var_arg))
        fn(*addrs, half, half, mode)
        err = float((torch.cat([first, second]) - ref).abs().max())
        if not err <= tol:  # NaN included
            return f"{name} draws off the stream by {err:.3g} (allowed {tol:g})"
    return None


def _vec_isa() -> str:
    """Inductor's vector ISA on this CPU (``"avx2"``, ``"avx512"``, ``"avx512 avx512_vnni"``,
    ``"asimd"`` ...; ``""`` where none)."""
    from torch._inductor import cpu_vec_isa

    return str(cpu_vec_isa.pick_vec_isa())


def _isa_family(isa: str) -> str:
    """The family of an ISA name of :func:`_vec_isa`: its first word (``"avx512 avx512_vnni"``
    and ``"avx512 amx_tile"`` are ``"avx512"``: the same 512-bit vector class and flags)."""
    words = isa.split()
    return words[0] if words else ""


class _NativeKernel:
    """A hand-written C++ kernel, built on first use by inductor's C++ code cache and checked
    against the tensor operations it replaces before it is used.

    ``failed`` says why it does not run here: a vector ISA it is not written for, or a failed
    build or self-check (then the caller runs the tensor operations; a failure is warned once).
    Subclasses give the source, the argument types, the ISAs (``None``: any), the environment
    variables that switch it off (any of them ``"0"``), the self-check and the warning."""

    source: str = ""
    argtypes: tuple[str, ...] = ()
    isas: tuple[str, ...] | None = None
    envs: tuple[str, ...] = ()
    #: the warning of a failed build, ``{failed}`` replaced by the reason and ``{isa}`` by the
    #: ISA family's name
    warning: str = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fn: Any = None
        self.failed: str | None = None

    def switched_on(self) -> bool:
        """Neither failed nor switched off by the environment; says nothing about this CPU,
        builds nothing."""
        return self.failed is None and all(os.environ.get(env, "1") != "0" for env in self.envs)

    def usable(self) -> bool:
        """Whether a call now would run the kernel (building it first if need be): never
        inside a compiled graph's tracing."""
        return not torch.compiler.is_compiling() and self.ready()

    def ready(self) -> bool:
        """Whether the kernel runs here, building it first if need be (also while tracing, for
        a decision that a compiled graph keeps as a constant)."""
        if not self.switched_on():
            return False
        if self._fn is not None:
            return True
        with self._lock:
            if self._fn is None and self.failed is None:
                self._build()
        return self._fn is not None

    def self_check(self, fn: Any) -> str | None:
        """What is wrong with the freshly built kernel ``fn``, or None."""
        raise NotImplementedError

    def variants(self, isa: str) -> tuple[str, ...]:
        """The sources to try in turn on the ISA family ``isa`` (one of :attr:`isas`, or any
        where that is ``None``): the first that builds and passes the self-check runs."""
        return (self.source,)

    def _first_mismatch(self, fn: Any, cases: list[tuple], mismatch: Any) -> str | None:
        """``mismatch(probe, *case)`` for each case, ``probe`` a fresh kernel of this class
        running ``fn`` (this one gets ``fn`` only once it passed: no other thread can call an
        unchecked build; and the class's own methods are checked, not anything set on this
        instance): the first description of a difference, or None."""
        probe = type(self)()
        probe._fn = fn
        for case in cases:
            found = mismatch(probe, *case)
            if found is not None:
                return found
        return None

    def _build(self) -> None:
        try:
            isa = _vec_isa()
        except Exception as err:  # noqa: BLE001 - no ISA detection: no kernel
            self.failed = f"vector ISA unknown ({type(err).__name__})"
            return
        family = _isa_family(isa)
        if self.isas is not None and family not in self.isas:
            wanted = " or ".join(repr(i) for i in self.isas)
            self.failed = f"inductor's vector ISA here is {isa or 'none'!r}, not {wanted}"
            return
        try:
            from torch._inductor.codecache import CppPythonBindingsCodeCache

            mismatches = []
            for source in self.variants(family):
                fn = CppPythonBindingsCodeCache.load_pybinding(list(self.argtypes), source)
                mismatch = self.self_check(fn)
                if mismatch is None:
                    self._fn = fn
                    return
                mismatches.append(mismatch)
        except Exception as err:  # noqa: BLE001 - a build failure means: no kernel here
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        else:
            self.failed = f"its self-check failed: {'; '.join(mismatches)}"
        message = self.warning.format(failed=self.failed, isa=_ISA_NAMES.get(family, family))
        warnings.warn(message, RuntimeWarning, stacklevel=4)


class NativeNoiseKernel(_NativeKernel):
    """The hand-written noise kernel, built on first use on AVX2 CPUs (:data:`SOURCE`) and on
    AVX-512 CPUs (:data:`SOURCE_AVX512`).

    Elsewhere, or after a failed build (warned once), the caller uses the inductor kernel, the
    same stream. Switched off with ``AIMC_RNG_NATIVE=0`` (or, with every noise kernel,
    ``AIMC_RNG_KERNEL=0``)."""

    #: the source of each ISA family it is built on
    sources = {"avx2": SOURCE, "avx512": SOURCE_AVX512}
    argtypes = tuple(_ARGTYPES)
    isas = tuple(sources)
    envs = ("AIMC_RNG_KERNEL", "AIMC_RNG_NATIVE")
    warning = (
        "aimc.random: the {isa} noise kernel could not be built ({failed}); the inductor kernel "
        "draws the same stream instead (slower on this CPU). Set AIMC_RNG_NATIVE=0 to skip "
        "the attempt."
    )

    def variants(self, isa: str) -> tuple[str, ...]:
        return (self.sources[isa],)

    def self_check(self, fn: Any) -> str | None:
        return _self_check(fn)

    def fill(
        self,
        first: Tensor,
        second: Tensor,
        key: Tensor,
        kind: str,
        var: Tensor | None,
        half: int,
    ) -> None:
        """Words ``0 .. w - 1`` of the stream at ``key`` (``w = first.numel()``, a multiple of
        64) as :func:`aimc.random._pair_fill` writes them: into the contiguous float32 CPU
        tensors ``first`` and ``second`` (views into the filled tensor allowed), with ``var``
        (contiguous float32, ``half + w`` values at least) for ``kind="normal"``."""
        w = first.numel()
        if w % 64 or second.numel() != w:
            raise ValueError(
                f"aimc._native: {w} and {second.numel()} words; allowed: equal, multiples of 64"
            )
        if var is not None and var.numel() < half + w:
            raise ValueError(f"aimc._native: var has {var.numel()} values; needs {half + w}")
        mode = _MODES[(kind, var is not None)]
        if w:
            var_addr = (first if var is None else var).data_ptr()
            self._fn(key.data_ptr(), first.data_ptr(), second.data_ptr(), var_addr, w, half, mode)


#: The C++ source of the DAC kernel: ``kernel(x, xq, x2, amax, g, n, ti, rows, thres, step,
#: bound, flags)`` reads the contiguous float32 inputs ``x`` as ``(g, n, ti, rows)`` (vector
#: ``i`` of group ``g``, input tile ``t``: one row of ``rows`` values) and writes, per row,
#: noise management's ``amax`` (``(g, n, ti)``: ``max(max x, -min x)``, NaN where a value is
#: NaN) and the DAC levels into ``xq`` laid out ``(g, ti, n, rows)`` — ``x * (1 / s)``, ``s``
#: the abs-max capped at ``thres`` (flag 1), or ``thres`` itself (flag 16: constant noise
#: management, a learned input range), and 1 where it is not positive, then divided by
#: ``step`` (flag 2), rounded half to even (flag 4), clipped to ``[-bound, bound]`` (flag 8) —
#: and their squares into ``x2`` (same layout) unless its address is 0. Each value goes
#: through the IEEE operations of the tensor code it replaces (:func:`aimc.mvm.analog_mvm`'s
#: ``_input_scale``, ``_to_levels_`` and ``_dac_``), in the same order, with PyTorch's vector
#: class (the instructions of PyTorch's own ``maximum``, ``round`` and ``clamp``).
#: What the two periphery kernels' sources start with: headers, PyTorch's vector class and
#: NaN-propagating scalar ``max`` and ``min`` (as ``torch.maximum`` / ``amax`` propagate NaN).
_PRELUDE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <algorithm>
#include <cmath>
#include <limits>

using VecF = at::vec::Vectorized<float>;

static inline float aimc_nan_max(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<float>::quiet_NaN();
    return std::max(a, b);
}

static inline float aimc_nan_min(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<float>::quiet_NaN();
    return std::min(a, b);
}
"""

DAC_SOURCE = (
    _PRELUDE
    + r"""
extern "C" void kernel(const int64_t x_addr, const int64_t xq_addr, const int64_t x2_addr,
                       const int64_t amax_addr, const int64_t g, const int64_t n,
                       const int64_t ti, const int64_t rows, const float thres,
                       const float step, const float bound, const int64_t flags) {
    const float* const x = reinterpret_cast<const float*>(x_addr);
    float* const xq = reinterpret_cast<float*>(xq_addr);
    float* const x2 = reinterpret_cast<float*>(x2_addr);
    float* const amax = reinterpret_cast<float*>(amax_addr);
    const bool capped = flags & 1, divide = flags & 2, round = flags & 4, clip = flags & 8;
    const bool fixed = flags & 16;
    constexpr int64_t V = VecF::size();
    const int64_t total = g * n * ti;
    #pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < total; ++row) {
        const int64_t gi = row / (n * ti), ni = (row / ti) % n, t = row % ti;
        const float* const src = x + row * rows;
        const int64_t dst = ((gi * ti + t) * n + ni) * rows;
        // noise management: the row's largest and smallest value (NaN propagates)
        VecF vmax(-std::numeric_limits<float>::infinity());
        VecF vmin(std::numeric_limits<float>::infinity());
        int64_t i = 0;
        for (; i + V <= rows; i += V) {
            const VecF v = VecF::loadu(src + i);
            vmax = at::vec::maximum(vmax, v);
            vmin = at::vec::minimum(vmin, v);
        }
        float lanes_max[V], lanes_min[V];
        vmax.store(lanes_max);
        vmin.store(lanes_min);
        float hi = lanes_max[0], lo = lanes_min[0];
        for (int64_t l = 1; l < V; ++l) {
            hi = aimc_nan_max(hi, lanes_max[l]);
            lo = aimc_nan_min(lo, lanes_min[l]);
        }
        for (; i < rows; ++i) {
            hi = aimc_nan_max(hi, src[i]);
            lo = aimc_nan_min(lo, src[i]);
        }
        const float a = aimc_nan_max(hi, -lo);
        amax[row] = a;
        const float s = fixed ? thres : (capped && !std::isnan(a)) ? std::min(a, thres) : a;
        // (a subnormal scale counts as 0, an all-zero vector: 1 / s would overflow to inf, and
        // each zero of the vector become 0 * inf = NaN)
        const float r = 1.0f / (s >= std::numeric_limits<float>::min() ? s : 1.0f);
        const VecF vr(r), vstep(step), vlo(-bound), vhi(bound);
        for (i = 0; i < rows; i += V) {
            const int64_t c = std::min(V, rows - i);
            VecF v = (c == V ? VecF::loadu(src + i) : VecF::loadu(src + i, c)) * vr;
            if (divide) v = v / vstep;
            if (round) v = v.round();
            if (clip) v = at::vec::clamp(v, vlo, vhi);
            if (c == V) {
                v.store(xq + dst + i);
                if (x2 != nullptr) (v * v).store(x2 + dst + i);
            } else {
                v.store(xq + dst + i, c);
                if (x2 != nullptr) (v * v).store(x2 + dst + i, c);
            }
        }
    }
}
"""
)


class NativeDacKernel(_NativeKernel):
    """Noise management and the DAC of an eager CPU forward in one pass over the inputs
    (:data:`DAC_SOURCE`), where the tensor code makes seven (the rows' maximum and minimum,
    the scaling, the division by the step, rounding, the clip, and the squares of ``pcm_read``
    weight noise). The same values bit for bit (checked at build on rows with zeros, NaN,
    infinities, ties at half a step and a capped scale; where the check fails the tensor code
    runs, warned once). Switched off with ``AIMC_DAC_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``."""

    source = DAC_SOURCE
    argtypes = ("int64_t",) * 8 + ("float",) * 3 + ("int64_t",)
    envs = ("AIMC_FUSED_KERNELS", "AIMC_DAC_NATIVE")
    warning = (
        "aimc: the fused DAC kernel could not be built ({failed}); noise management and the "
        "DAC run as tensor operations instead (the same values, slower). Set "
        "AIMC_DAC_NATIVE=0 to skip the attempt."
    )

    def levels(
        self,
        x: Tensor,
        xq: Tensor,
        x2: Tensor | None,
        amax: Tensor,
        tiles: int,
        thres: float,
        step: float,
        bound: float,
        round_: bool,
        fixed: bool = False,
    ) -> None:
        """Fill ``amax`` ``(G, N, ti)``, ``xq`` ``(G, ti, N, rows)`` and ``x2`` (its layout, or
        None) from ``x`` ``(G, N, ti * rows)``, all contiguous float32 CPU tensors (checked).
        ``thres``: the cap on the abs-max (``<= 0``: none), or with ``fixed`` the scale of
        every vector; ``step <= 0``: no division; ``bound <= 0``: no clip."""
        g, n, k = x.shape
        rows = k // tiles if tiles > 0 else 0
        shapes = [(x, (g, n, k)), (xq, (g, tiles, n, rows)), (amax, (g, n, tiles))]
        if x2 is not None:
            shapes.append((x2, (g, tiles, n, rows)))
        _check_buffers("DAC", shapes)
        if rows * tiles != k:
            raise ValueError(f"aimc._native: {k} inputs do not split into {tiles} tiles")
        flags = (thres > 0) | (step > 0) << 1 | round_ << 2 | (bound > 0) << 3 | fixed << 4
        self._fn(
            x.data_ptr(),
            xq.data_ptr(),
            0 if x2 is None else x2.data_ptr(),
            amax.data_ptr(),
            g,
            n,
            tiles,
            rows,
            thres,
            step,
            bound,
            int(flags),
        )

    def self_check(self, fn: Any) -> str | None:
        """The kernel against the tensor operations on rows chosen to hit every branch."""
        return self._first_mismatch(fn, _dac_cases(), _dac_mismatch)


def dac_reference(
    x: Tensor,
    tiles: int,
    thres: float,
    step: float,
    bound: float,
    round_: bool,
    fixed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(amax, xq, x2)`` as the tensor code of :func:`aimc.mvm.analog_mvm` computes them
    (what :meth:`NativeDacKernel.levels` must equal)."""
    g, n, k = x.shape
    xv = x.view(g, n, tiles, k // tiles)
    amax = torch.maximum(xv.amax(dim=-1), xv.amin(dim=-1).neg_())
    if fixed:
        s = torch.full_like(amax, thres)
    elif thres > 0:
        s = amax.clamp(max=thres)
    else:
        s = amax
    s_div = torch.where(s > 0, s, 1.0).transpose(1, 2).unsqueeze(-1)
    xq = torch.mul(xv.transpose(1, 2), s_div.reciprocal())
    if step > 0:
        xq.div_(step)
    if round_:
        xq.round_()
    if bound > 0:
        xq.clamp_(-bound, bound)
    return amax, xq, xq * xq


def _dac_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3 * 37, generator=gen, dtype=torch.float32) * 3
    x[0, 0, :37] = 0.0  # an all-zero row: divided by 1
    x[0, 1, 5] = math.nan
    x[0, 2, 40] = math.inf
    x[1, 3, 80] = -math.inf
    # abs-max 1: levels at exact half steps
    x[1, 4, 74:111] = torch.linspace(-1.0, 1.0, 37, dtype=torch.float32)
    x[1, 5, :37] = torch.arange(37, dtype=torch.float32) * 0.5 - 9.0
    return [
        (x, 3, 0.0, 2.0 / 254.0, 127.0, True),  # 8-bit DAC, abs-max
        (x, 3, 2.5, 1.0 / 64.0, 64.0, True),  # capped abs-max (nm_thres), 7-bit
        (x, 3, 0.0, 0.0, 0.0, False),  # no quantization, no clip
        (x, 3, 0.0, 2.0 / 254.0, 0.0, False),  # unrounded levels: the division's last bit
        (torch.randn(1, 5, 128, generator=gen, dtype=torch.float32), 2, 0.0, 2.0 / 7.0, 3.5, True),
        (x, 3, 1.7, 2.0 / 254.0, 127.0, True, True),  # a fixed scale (input range)
        (x, 3, -1.0, 2.0 / 254.0, 127.0, True, True),  # not positive: 1
    ]


def _dac_mismatch(kernel: NativeDacKernel, x: Tensor, tiles: int, *args: Any) -> str | None:
    g, n, k = x.shape
    amax = torch.full((g, n, tiles), 7.0, dtype=torch.float32)
    xq = torch.full((g, tiles, n, k // tiles), 7.0, dtype=torch.float32)
    x2 = torch.full_like(xq, 7.0)
    kernel.levels(x, xq, x2, amax, tiles, *args)
    ref = dac_reference(x, tiles, *args)
    for name, got, want in zip(("amax", "levels", "squares"), (amax, xq, x2), ref, strict=True):
        if not torch.equal(got.nan_to_num(1e30), want.nan_to_num(1e30)):
            return f"{name} differ (scale, step, bound, round, fixed: {args})"
    return None


#: The C++ source of the ADC-and-digital kernel: ``kernel(z, y, f, cs, bias, ext, lv, g, ti,
#: n, to, cols, flags, bound)`` reads the tile outputs ``z`` ``(g * ti, n, to * cols)`` (before
#: the ADC's rounding), rounds them (flag 1; ``z`` itself is left as it is), clips them to
#: ``[-bound, bound]`` (flag 2), keeps them as the ADC's levels in ``lv`` (``z``'s layout;
#: address 0: not kept) as int8, int16 or float32 (flags 4, 8, 12) and writes the layer's
#: output ``y`` ``(g, n, to * cols)``: ``sum_t z_t * cs_t * f_t + bias`` in the order of
#: :func:`aimc.mvm._digital` — the column scale ``cs`` ``(g * ti, to * cols)`` (address 0:
#: none) as a product, then ``bias + z * f`` (``bias`` ``(g, to * cols)``, address 0: ``z *
#: f``) and ``y + z_t * f_t`` for the next input tiles, rounded as PyTorch's ``addcmul`` rounds
#: them here (once: a fused multiply-add; or twice: the second variant; checked at build);
#: ``f`` ``(g * ti, n, to)``. ``ext`` gets the smallest and largest rounded value before the
#: clip (NaN if any is NaN). With flag 16 (``kernel(..., flags, bound, limit)``) it is the
#: ADC alone, in place on ``z`` ``(g, n, to * cols)`` (``ti`` 1): rounded and clipped where
#: it is, and ``lv`` (bool ``(g, n, to)``) gets whether each output tile's rounded values
#: reach beyond ``+-limit`` with none NaN (the saturation test of bound management).
ADC_SOURCE = (
    _PRELUDE
    + r"""
// 1: a * b + c rounded once, as PyTorch's addcmul computes it where its build contracts the
// two operations; 0: rounded twice (the second variant, tried if the first fails its check)
#define AIMC_FMA 1

static inline VecF aimc_muladd(const VecF& a, const VecF& b, const VecF& c) {
#if AIMC_FMA
    return at::vec::fmadd(a, b, c);
#else
    return a * b + c;
#endif
}

// v (cnt lanes) into the ADC levels at p: int8 (kind 1), int16 (2) or float32 (3); v holds
// whole numbers within the type's range (the clip's bound), so each conversion is exact
static inline void aimc_store_levels(const VecF& v, void* p, int64_t kind, int64_t cnt) {
    if (kind == 1) {
        at::vec::convert<int8_t>(v).store(static_cast<int8_t*>(p), cnt);
    } else if (kind == 2) {
        at::vec::convert<int16_t>(v).store(static_cast<int16_t*>(p), cnt);
    } else {
        v.store(static_cast<float*>(p), cnt);
    }
}

// one thread's running extremes of rounded values (NaN propagates, as in torch.aminmax),
// merged into the shared pair at the end of the parallel region
struct AimcExtremes {
    VecF vmin{std::numeric_limits<float>::infinity()};
    VecF vmax{-std::numeric_limits<float>::infinity()};
    float smin = std::numeric_limits<float>::infinity();
    float smax = -std::numeric_limits<float>::infinity();

    // the first cnt lanes of v
    void add(const VecF& v, int64_t cnt) {
        if (cnt == VecF::size()) {
            vmin = at::vec::minimum(vmin, v);
            vmax = at::vec::maximum(vmax, v);
            return;
        }
        float lanes[VecF::size()];
        v.store(lanes);
        for (int64_t l = 0; l < cnt; ++l) {
            smin = aimc_nan_min(smin, lanes[l]);
            smax = aimc_nan_max(smax, lanes[l]);
        }
    }

    // into (lo, hi), shared by the threads (called once by each, inside the region)
    void merge(float& lo, float& hi) {
        float lanes_min[VecF::size()], lanes_max[VecF::size()];
        vmin.store(lanes_min);
        vmax.store(lanes_max);
        for (int64_t l = 0; l < VecF::size(); ++l) {
            smin = aimc_nan_min(smin, lanes_min[l]);
            smax = aimc_nan_max(smax, lanes_max[l]);
        }
        #pragma omp critical
        {
            lo = aimc_nan_min(lo, smin);
            hi = aimc_nan_max(hi, smax);
        }
    }
};

// the ADC alone, in place (flag 16): each of the rows x to blocks of cols values of z rounded
// (flag 1) and clipped (flag 2) where it is, sat[row * to + o] = whether a rounded value of
// the block lies beyond +-limit and none is NaN (as the block's amax > limit or amin < -limit
// tests it: a NaN makes both NaN), ext = the extremes before the clip
static void aimc_adc_in_place(float* z, bool* sat, float* ext, int64_t rows, int64_t to,
                              int64_t cols, bool round, bool clip, float bound, float limit) {
    constexpr int64_t V = VecF::size();
    constexpr int full = (1 << V) - 1;
    float lo_all = std::numeric_limits<float>::infinity();
    float hi_all = -std::numeric_limits<float>::infinity();
    #pragma omp parallel
    {
        const VecF vlo(-bound), vhi(bound), vlim(limit), vnlim(-limit);
        AimcExtremes ext_t;
        #pragma omp for schedule(static)
        for (int64_t block = 0; block < rows * to; ++block) {
            float* const zp = z + block * cols;
            bool beyond = false, nan = false;
            for (int64_t c = 0; c < cols; c += V) {
                const int64_t cnt = std::min(V, cols - c);
                VecF v = cnt == V ? VecF::loadu(zp + c) : VecF::loadu(zp + c, cnt);
                if (round) v = v.round();
                ext_t.add(v, cnt);
                // (the lanes past cnt load as zeros, never beyond the limit)
                beyond |= ((v > vlim) | (v < vnlim)).zero_mask() != full;
                nan |= (v != v).zero_mask() != full;
                if (clip) v = at::vec::clamp(v, vlo, vhi);
                if (cnt == V) {
                    v.store(zp + c);
                } else {
                    v.store(zp + c, cnt);
                }
            }
            sat[block] = beyond && !nan;
        }
        ext_t.merge(lo_all, hi_all);
    }
    ext[0] = lo_all;
    ext[1] = hi_all;
}

extern "C" void kernel(const int64_t z_addr, const int64_t y_addr, const int64_t f_addr,
                       const int64_t cs_addr, const int64_t b_addr, const int64_t ext_addr,
                       const int64_t lv_addr, const int64_t g, const int64_t ti,
                       const int64_t n, const int64_t to, const int64_t cols,
                       const int64_t flags, const float bound, const float limit) {
    if (flags & 16) {
        aimc_adc_in_place(reinterpret_cast<float*>(z_addr), reinterpret_cast<bool*>(lv_addr),
                          reinterpret_cast<float*>(ext_addr), g * n, to, cols, flags & 1,
                          flags & 2, bound, limit);
        return;
    }
    const float* const z = reinterpret_cast<const float*>(z_addr);
    float* const y = reinterpret_cast<float*>(y_addr);
    const float* const f = reinterpret_cast<const float*>(f_addr);
    const float* const cs = reinterpret_cast<const float*>(cs_addr);
    const float* const bias = reinterpret_cast<const float*>(b_addr);
    float* const ext = reinterpret_cast<float*>(ext_addr);
    char* const lv = reinterpret_cast<char*>(lv_addr);
    const bool round = flags & 1, clip = flags & 2;
    const int64_t kind = (flags >> 2) & 3;  // the levels' type (lv_addr 0: none kept)
    const int64_t lv_size = kind == 1 ? 1 : kind == 2 ? 2 : 4;
    const VecF vlo(-bound), vhi(bound);
    constexpr int64_t V = VecF::size();
    const int64_t width = to * cols;
    float lo_all = std::numeric_limits<float>::infinity();
    float hi_all = -std::numeric_limits<float>::infinity();
    #pragma omp parallel
    {
        AimcExtremes ext_t;
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < g * n; ++row) {
            const int64_t gi = row / n, ni = row % n;
            float* const yr = y + row * width;
            const float* const br = bias != nullptr ? bias + gi * width : nullptr;
            for (int64_t o = 0; o < to; ++o) {
                for (int64_t c = 0; c < cols; c += V) {
                    const int64_t cnt = std::min(V, cols - c);
                    const int64_t col = o * cols + c;
                    VecF acc;
                    for (int64_t t = 0; t < ti; ++t) {
                        const int64_t bt = gi * ti + t;
                        const float* const zp = z + (bt * n + ni) * width + col;
                        VecF v = cnt == V ? VecF::loadu(zp) : VecF::loadu(zp, cnt);
                        if (round) v = v.round();
                        ext_t.add(v, cnt);
                        if (clip) v = at::vec::clamp(v, vlo, vhi);
                        if (lv != nullptr) {
                            aimc_store_levels(v, lv + ((bt * n + ni) * width + col) * lv_size,
                                              kind, cnt);
                        }
                        if (cs != nullptr) {
                            const float* const cp = cs + bt * width + col;
                            v = v * (cnt == V ? VecF::loadu(cp) : VecF::loadu(cp, cnt));
                        }
                        const VecF fv(f[(bt * n + ni) * to + o]);
                        if (t > 0) {
                            acc = aimc_muladd(v, fv, acc);
                        } else if (br != nullptr) {
                            const float* const bp = br + col;
                            const VecF b = cnt == V ? VecF::loadu(bp) : VecF::loadu(bp, cnt);
                            acc = aimc_muladd(v, fv, b);
                        } else {
                            acc = v * fv;
                        }
                    }
                    if (cnt == V) {
                        acc.store(yr + col);
                    } else {
                        acc.store(yr + col, cnt);
                    }
                }
            }
        }
        ext_t.merge(lo_all, hi_all);
    }
    ext[0] = lo_all;
    ext[1] = hi_all;
}
"""
)


class NativeAdcKernel(_NativeKernel):
    """The ADC's rounding, its saturation test's extremes, its clip and the digital periphery
    (column scales, rescale, sum over input tiles, bias) of an eager CPU forward in one pass
    over the tile outputs (:data:`ADC_SOURCE`), where the tensor code makes five or more; in
    a training forward of learned output scales it also keeps the ADC's levels. The same
    values bit for bit as :func:`aimc.mvm._digital` after the ADC (checked at build; where the
    check fails the tensor code runs, warned once). Switched off with ``AIMC_ADC_NATIVE=0`` or
    ``AIMC_FUSED_KERNELS=0``."""

    source = ADC_SOURCE
    argtypes = ("int64_t",) * 13 + ("float", "float")
    envs = ("AIMC_FUSED_KERNELS", "AIMC_ADC_NATIVE")
    warning = (
        "aimc: the fused ADC kernel could not be built ({failed}); the ADC and the digital "
        "periphery run as tensor operations instead (the same values, slower). Set "
        "AIMC_ADC_NATIVE=0 to skip the attempt."
    )

    def finish(
        self,
        z: Tensor,
        y: Tensor,
        factor: Tensor,
        col_scale: Tensor | None,
        bias: Tensor | None,
        tiles: int,
        round_: bool,
        bound: float = math.inf,
        levels: Tensor | None = None,
    ) -> tuple[float, float]:
        """Write ``y`` ``(G, N, O)`` from the tile outputs ``z`` ``(G * ti, N, O)`` and return
        the smallest and largest rounded tile output before the clip. ``factor``
        ``(G * ti, N, to)``, ``col_scale`` ``(G * ti, O)``, ``bias`` ``(G, O)``: contiguous
        float32 CPU tensors (checked), like ``z`` and ``y``; ``O`` a multiple of ``to``. A
        finite ``bound``: the rounded outputs are clipped to ``[-bound, bound]`` first.
        ``levels`` (``z``'s shape; int8 or int16 where a finite bound makes every clipped
        level fit, else float32): gets the rounded, clipped tile outputs (NaN levels, and so
        their integer conversion, are left to the caller: the extremes say when)."""
        b, n, width = z.shape
        g = b // tiles if tiles > 0 else 0
        to = factor.shape[-1] if factor.dim() == 3 else 0
        shapes = [(z, (g * tiles, n, width)), (y, (g, n, width)), (factor, (b, n, to))]
        if col_scale is not None:
            shapes.append((col_scale, (b, width)))
        if bias is not None:
            shapes.append((bias, (g, width)))
        _check_buffers("ADC", shapes)
        if to == 0 or width % to:
            raise ValueError(f"aimc._native: {width} outputs do not split into {to} tiles")
        kind = 0
        if levels is not None:
            kind = _LEVEL_KINDS.get(levels.dtype, 0)
            if kind == 0 or (kind < 3 and not torch.iinfo(levels.dtype).max >= bound):
                raise ValueError(
                    f"aimc._native: ADC levels as {levels.dtype} with bound {bound}; allowed: "
                    "float32, or int8 / int16 with a bound within the type's range"
                )
            _check_buffers("ADC", [(levels, (b, n, width))], levels.dtype)
        flags = int(round_) | int(bound < math.inf) << 1 | kind << 2
        tensors = (z, y, factor, col_scale, bias, levels)
        return self._run(tensors, (g, tiles, n, to, width // to), flags, bound, 0.0)

    def _run(
        self,
        tensors: tuple[Tensor | None, ...],
        sizes: tuple[int, ...],
        flags: int,
        bound: float,
        limit: float,
    ) -> tuple[float, float]:
        """The kernel on ``(z, y, f, cs, bias, lv)`` (None: address 0) and ``(g, ti, n, to,
        cols)``; returns the extremes it wrote."""
        ext = torch.empty(2, dtype=torch.float32)
        z, y, f, cs, bias, lv = (0 if t is None else t.data_ptr() for t in tensors)
        bound = bound if flags & 2 else 0.0  # (flag 2: the clip)
        self._fn(z, y, f, cs, bias, ext.data_ptr(), lv, *sizes, flags, bound, limit)
        lo, hi = ext.tolist()
        return lo, hi

    def adc_(
        self, z: Tensor, sat: Tensor, round_: bool, bound: float, limit: float
    ) -> tuple[float, float]:
        """The ADC in place on the tile outputs ``z`` ``(B, N, to * cols)`` in one pass:
        rounded (``round_``), clipped to ``[-bound, bound]`` (a finite ``bound``), and ``sat``
        (bool ``(B, N, to)``) set where an output tile's rounded values reach beyond
        ``+-limit`` and none is NaN (as its ``amax``/``amin`` test it); returns the smallest
        and largest rounded value before the clip (NaN if any is NaN): :func:`aimc.mvm._adc_`'s
        values. Contiguous CPU tensors (checked)."""
        b, n, width = z.shape
        to = sat.shape[-1] if sat.dim() == 3 else 0
        _check_buffers("ADC", [(z, (b, n, width))])
        _check_buffers("ADC", [(sat, (b, n, to))], torch.bool)
        if to == 0 or width % to:
            raise ValueError(f"aimc._native: {width} outputs do not split into {to} tiles")
        flags = int(round_) | int(bound < math.inf) << 1 | 16
        tensors = (z, None, None, None, None, sat)
        return self._run(tensors, (b, 1, n, to, width // to), flags, bound, limit)

    def variants(self, isa: str) -> tuple[str, ...]:
        return (self.source, self.source.replace("#define AIMC_FMA 1", "#define AIMC_FMA 0"))

    def self_check(self, fn: Any) -> str | None:
        """The kernel against the tensor operations, with and without each optional part, and
        its in-place ADC."""
        return self._first_mismatch(fn, _adc_cases(), _adc_mismatch) or self._first_mismatch(
            fn, _adc_in_place_cases(), _adc_in_place_mismatch
        )


#: The ADC kernel's codes for the levels' types
_LEVEL_KINDS = {torch.int8: 1, torch.int16: 2, torch.float32: 3}


def nan_equal(a: Tensor, b: Tensor) -> bool:
    """Equal values, NaN where the other is NaN (``-0.0 == 0.0``, as ``torch.equal`` has it):
    the kernels' self-checks against the tensor code they replace."""
    return bool(torch.equal(a.isnan(), b.isnan())) and torch.equal(a.nan_to_num(0), b.nan_to_num(0))


def _check_buffers(
    kernel: str, shapes: list[tuple[Tensor, tuple[int, ...]]], dtype: torch.dtype = torch.float32
) -> None:
    """Raise unless every tensor is a contiguous CPU tensor of ``dtype`` and its shape."""
    for t, shape in shapes:
        if (
            tuple(t.shape) != shape
            or t.dtype != dtype
            or t.device.type != "cpu"
            or not t.is_contiguous()
        ):
            name = str(dtype).removeprefix("torch.")
            raise ValueError(
                f"aimc._native: {kernel} kernel got {tuple(t.shape)} {t.dtype} on {t.device} "
                f"(contiguous: {t.is_contiguous()}); expected contiguous {name} CPU {shape}"
            )


def adc_reference(
    z: Tensor,
    factor: Tensor,
    col_scale: Tensor | None,
    bias: Tensor | None,
    tiles: int,
    round_: bool,
    bound: float = math.inf,
    level_dtype: torch.dtype | None = None,
) -> tuple[Tensor, float, float, Tensor | None]:
    """``(y, min, max, levels)`` as the tensor code computes them (``_adc_``'s rounding,
    extremes and clip, :func:`aimc.mvm._compact`'s levels, :func:`aimc.mvm._digital`'s
    rescale and sum): what :meth:`NativeAdcKernel.finish` must equal."""
    z, _, lo, hi = adc_in_place_reference(z, 1, round_, bound, math.inf)  # (no saturation test)
    levels = None if level_dtype is None else z.to(level_dtype, copy=True)
    b, n, width = z.shape
    g, to = b // tiles, factor.shape[-1]
    if col_scale is not None:
        z.mul_(col_scale.unsqueeze(1))
    zv = z.view(g, tiles, n, to, width // to)
    fv = factor.reshape(g, tiles, n, to, 1)
    y = torch.empty(g, n, to, width // to, dtype=z.dtype)
    if bias is None:
        torch.mul(zv[:, 0], fv[:, 0], out=y)
    else:
        torch.addcmul(bias.reshape(g, 1, to, width // to), zv[:, 0], fv[:, 0], out=y)
    for t in range(1, tiles):
        y.addcmul_(zv[:, t], fv[:, t])
    return y.view(g, n, width), lo, hi, levels


def _adc_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for g, ti, n, to, cols, cs, bias, r, bound, dtype in [
        (1, 1, 9, 1, 37, True, True, True, math.inf, None),
        (2, 3, 5, 2, 16, False, True, True, math.inf, None),
        (1, 2, 7, 3, 24, True, False, False, math.inf, None),
        (2, 1, 3, 1, 8, False, False, True, math.inf, None),
        # the clip, and the levels a training forward keeps, in each type
        (1, 2, 9, 1, 37, True, True, True, 40.0, torch.int8),
        (2, 3, 5, 2, 16, True, False, True, 60.0, torch.int16),
        (1, 2, 7, 3, 24, False, True, False, 30.5, torch.float32),
        (1, 1, 6, 1, 21, True, False, True, 127.0, torch.int8),
    ]:
        z = torch.randn(g * ti, n, to * cols, generator=gen, dtype=torch.float32) * 40
        ties = [0.5, 1.5, -2.5, 2.4999998, -0.5]  # and one just below a tie
        z[0, 0, :5] = torch.tensor(ties, dtype=torch.float32)
        f = torch.rand(g * ti, n, to, generator=gen, dtype=torch.float32) * 0.1
        c = torch.rand(g * ti, to * cols, generator=gen, dtype=torch.float32) + 0.5 if cs else None
        b = torch.randn(g, to * cols, generator=gen, dtype=torch.float32) if bias else None
        cases.append((z, f, c, b, ti, r, bound, dtype))
    z = cases[0][0].clone()
    z[0, 3, 4] = math.nan
    cases.append((z, *cases[0][1:]))
    z = cases[4][0].clone()
    z[0, 1, :3] = torch.tensor(
        [1e30, -1e30, 127.5], dtype=torch.float32
    )  # far beyond the bound; a tie at it
    cases.append((z, *cases[4][1:]))
    return cases


def adc_in_place_reference(
    z: Tensor, to: int, round_: bool, bound: float, limit: float
) -> tuple[Tensor, Tensor, float, float]:
    """``(z after the ADC, saturated tiles, min, max)`` as the tensor code computes them
    (:func:`aimc.mvm._adc_`, :func:`aimc.mvm._saturated`): what
    :meth:`NativeAdcKernel.adc_` must equal."""
    z = z.clone()
    if round_:
        z.round_()
    lo, hi = torch.stack(torch.aminmax(z)).tolist()
    zv = z.view(z.shape[0], z.shape[1], to, -1)
    sat = (zv.amax(dim=-1) > limit) | (zv.amin(dim=-1) < -limit)
    if bound < math.inf:
        z.clamp_(-bound, bound)
    return z, sat, lo, hi


def _adc_in_place_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for b, n, to, cols, r, bound, limit in [
        (2, 9, 1, 37, True, 127.0, 127.5),
        (3, 5, 2, 16, True, 10.0, 10.5),
        (1, 7, 3, 24, False, 30.5, 30.0),
        (2, 3, 1, 8, True, math.inf, math.inf),
        (1, 4, 2, 21, True, 40.0, 39.5),
    ]:
        z = torch.randn(b, n, to * cols, generator=gen, dtype=torch.float32) * bound / 3
        z[0, 0, :5] = torch.tensor(
            [0.5, 1.5, -2.5, 2.4999998, -0.5], dtype=torch.float32
        )  # ties, one just below
        z[0, 1, :2] = (
            torch.tensor([limit, -limit - 1.0], dtype=torch.float32) if limit < math.inf else 1e30
        )
        cases.append((z, to, r, bound, limit))
    z = cases[1][0].clone()
    z[1, 2, 3] = math.nan  # a NaN in a tile that also saturates: not saturated, as amax says
    z[1, 2, 4] = 1e6
    z[2, 0, 20] = 1e6  # a tile that saturates only in its last columns
    cases.append((z, *cases[1][1:]))
    return cases


def _adc_in_place_mismatch(
    kernel: NativeAdcKernel, z: Tensor, to: int, round_: bool, bound: float, limit: float
) -> str | None:
    got = z.clone()
    sat = torch.ones(z.shape[0], z.shape[1], to, dtype=torch.bool)
    lo, hi = kernel.adc_(got, sat, round_, bound, limit)
    ref, ref_sat, ref_lo, ref_hi = adc_in_place_reference(z, to, round_, bound, limit)
    if not torch.equal(got.nan_to_num(1e30), ref.nan_to_num(1e30)):
        return f"in-place ADC levels differ (rounding {round_}, bound {bound})"
    if not torch.equal(sat, ref_sat):
        return f"saturated tiles differ (limit {limit})"
    same = [a == b or (math.isnan(a) and math.isnan(b)) for a, b in ((lo, ref_lo), (hi, ref_hi))]
    if not all(same):
        return f"in-place extremes ({lo}, {hi}) differ from ({ref_lo}, {ref_hi})"
    return None


def _adc_mismatch(
    kernel: NativeAdcKernel,
    z: Tensor,
    factor: Tensor,
    col_scale: Tensor | None,
    bias: Tensor | None,
    tiles: int,
    round_: bool,
    bound: float,
    level_dtype: torch.dtype | None,
) -> str | None:
    g = z.shape[0] // tiles
    y = torch.full((g, z.shape[1], z.shape[2]), 7.0, dtype=torch.float32)
    levels = None if level_dtype is None else torch.full(z.shape, 7, dtype=level_dtype)
    z_before = z.clone()
    lo, hi = kernel.finish(z, y, factor, col_scale, bias, tiles, round_, bound, levels)
    ref, ref_lo, ref_hi, ref_levels = adc_reference(
        z, factor, col_scale, bias, tiles, round_, bound, level_dtype
    )
    if not torch.equal(z.nan_to_num(1e30), z_before.nan_to_num(1e30)):
        return "the tile outputs were changed"
    if not torch.equal(y.nan_to_num(1e30), ref.nan_to_num(1e30)):
        return (
            f"outputs differ (tiles {tiles}, column scales {col_scale is not None}, bias "
            f"{bias is not None}, rounding {round_}, bound {bound})"
        )
    if levels is not None and not torch.equal(levels.nan_to_num(1e30), ref_levels.nan_to_num(1e30)):
        return f"levels as {level_dtype} differ (bound {bound})"
    same = [a == b or (math.isnan(a) and math.isnan(b)) for a, b in ((lo, ref_lo), (hi, ref_hi))]
    if not all(same):
        return f"extremes ({lo}, {hi}) differ from ({ref_lo}, {ref_hi})"
    return None
