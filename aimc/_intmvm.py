"""The MVM in 8-bit integers: the DAC's levels times the tile matrix as three int8 GEMMs.

Wherever a forward's DAC levels are whole numbers in ``[-128, 128]`` (a DAC of up to 8 bits
plus sign, rounding, no input noise: :func:`aimc.mvm._dac_levels_int8`), the MVM ``W x'`` needs no
floating-point input at all. The tile matrix is split, once per matrix and cached with it, into
three int8 *limbs* per output row (``w = s (l1 + l2 / 254 + l3 / 254^2)``, ``s = max |w| / 127``
of the row, each limb rounded to nearest from the rest of the one before), the levels are packed
into int8 (a vector part with a level of +128 and none of -128 negated, its product negated
back: exact; with both, +128 as 127 plus a correction), and ``W x'`` is three integer GEMMs
(``torch._int_mm``: oneDNN's VNNI kernels, int32 sums, exact) combined in float32 by one C++
pass. On the AVX-512 host (AMD EPYC with AVX512-VNNI, 2 threads) one int8 GEMM took 0.22-0.24
of a float32 GEMM of the same shape, and the three with their combination 0.71-0.84 of it on
the benchmark layers (``benchmarks/bench_int_mvm.py``).

**Accuracy.** Each weight is represented to within ``max|w| / (127 * 2 * 254^2)``, about
``2^-24`` of its row's largest weight, the integer sums are exact, and the combination rounds a
few times in float32: the product is within float32 rounding of the exact one, like the float32
GEMM it replaces, which is itself one of many equally valid float32 summation orders (MKL's
blocking, the number of threads, ``bmm`` against one ``addmm`` per tile). Against float64 on
the benchmark layers its error was 0.4-1.05 of the float32 GEMM's in the root mean square (the
1.05: a layer with outlier weights, where float32's per-weight resolution is finer). The noise,
the DAC, the ADC and bound management are untouched; no statistic changes (docs/concepts/tiles.md).

Only on CPUs with VNNI (AVX512-VNNI or AMX), where the int8 GEMM is fast, on enough vectors
(:data:`aimc.mvm.INT_MIN_VECTORS`; bound management's rounds too, on the first pass's limbs);
elsewhere, on CUDA and with ``AIMC_INT_MVM=0`` the float32 GEMM runs.
"""

from __future__ import annotations

import functools
import math
import platform
from typing import Any

import torch
from torch import Tensor

from ._native import LOAD_PD_SOURCE, _check_buffers, _NativeKernel

#: The limbs' base: the second and third limb each resolve the rest of the one before into 254
#: steps (``[-127, 127]``, the range of a rounded value of ``[-0.5, 0.5] * 254``).
BASE = 254

#: C++ shared by this kernel and the tile kernel (:mod:`aimc._tiles`): headers, vector
#: types, and the limbs of one row (:data:`SOURCE`'s mode 0).
LIMB_SOURCE = (
    r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

using VecF = at::vec::Vectorized<float>;
using VecI = at::vec::Vectorized<int32_t>;
using VecD = at::vec::Vectorized<double>;

"""
    + LOAD_PD_SOURCE
    + r"""

// c (at most VecD::size()) whole numbers in [-127, 127] as int8 at p
static inline void aimc_store_i8(const VecD& v, int8_t* p, int64_t c) {
#if defined(CPU_CAPABILITY_AVX512)
    if (c == 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                         _mm256_cvtepi32_epi8(_mm512_cvtpd_epi32(__m512d(v))));
        return;
    }
#endif
    double t[VecD::size()];
    v.store(t);
    for (int64_t l = 0; l < c; ++l) p[l] = int8_t(t[l]);
}

// max |src[0..n)|, NaN if any is NaN
static inline float aimc_abs_max(const float* src, int64_t n) {
    VecF vm(0.0f);  // at::vec::maximum propagates NaN
    int64_t j = 0;
    for (; j + VecF::size() <= n; j += VecF::size()) {
        vm = at::vec::maximum(vm, VecF::loadu(src + j).abs());
    }
    float lanes[VecF::size()];
    vm.store(lanes);
    float m = 0.0f;
    bool nan = false;
    for (int64_t l = 0; l < VecF::size(); ++l) {
        nan |= std::isnan(lanes[l]);
        m = std::max(m, lanes[l]);
    }
    for (; j < n; ++j) {
        const float a = std::fabs(src[j]);
        nan |= std::isnan(a);
        m = std::max(m, a);
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

// the three limbs of one row of ci weights (d1, d2, d3); returns its scale
static inline float aimc_limb_row(const float* src, int64_t ci, int8_t* d1, int8_t* d2,
                                  int8_t* d3) {
    constexpr int64_t V = VecD::size();
    const VecD lo(-127.0), hi(127.0), base(254.0);
    // the scale as the combination multiplies by it (float32); the limbs resolve the weights
    // in its units
    const float m = aimc_abs_max(src, ci);
    const float s = std::isnan(m) ? m : float(double(m) / 127.0);
    // (a zero or non-finite row: all limbs zero)
    const double inv = (s > 0.0f && std::isfinite(s)) ? 1.0 / double(s) : 0.0;
    // eight weights at a time in float64 lanes, each limb stored where the row's is
    for (int64_t j = 0; j < ci; j += V) {
        const int64_t c = std::min(V, ci - j);
        const VecD v = inv == 0.0 ? VecD(0.0) : aimc_load_pd(src + j, c) * VecD(inv);
        const VecD a1 = at::vec::clamp(v, lo, hi).round();
        const VecD rest = (v - a1) * base;
        const VecD a2 = at::vec::clamp(rest, lo, hi).round();
        const VecD a3 = at::vec::clamp((rest - a2) * base, lo, hi).round();
        aimc_store_i8(a1, d1 + j, c);
        aimc_store_i8(a2, d2 + j, c);
        aimc_store_i8(a3, d3 + j, c);
    }
    return s;
}
"""
)

#: The C++ source: ``kernel(mode, a0, ..., a5, d0, ..., d4, beta)``.
#:
#: * mode 0, limbs: ``w`` (a0, float32 ``(B, O, ci)``) into the limbs (a1, int8
#:   ``(3, B, O, ci)``: each output's row as the weights' is, written in vectors; the GEMMs
#:   take a tile's transpose, column-major, as their second operand) and the row
#:   scales (a2, float32 ``(B, O)``, ``max |w| / 127`` rounded to float32, the limbs resolving
#:   the weights in units of that float32 value; NaN where a row holds NaN, inf where it holds
#:   an infinity: the caller then keeps the float32 GEMM); d0..d2 = B, O, ci.
#: * mode 1, pack: float32 levels (a0, ``(R, ci)``, d0 = R, d1 = ci) into int8 (a1), NaN as 0
#:   (its vector's outputs are NaN by the forward's finite mask). A row with a level of +128
#:   and none of -128 is packed negated (its levels in ``[-128, 127]``: exact; the combination
#:   negates its product back, exactly); in a row with both, +128 becomes 127 and the
#:   combination adds the missing step back. a2 (int32 ``(R,)``) gets per row -1 (nothing to
#:   mend), -3 (negated), or for a row with both the input of its one level of +128, or -2
#:   (several).
#: * mode 2, combine one tile: ``z = s * (y1 + (y2 + y3 / 254) / 254) + beta * z`` in float32
#:   from the three int32 GEMM results (a0, ``(3, M, O)``; a row marked -3 negated), after
#:   adding to the integer sums, for every level of 128 packed as 127 (a1: the rows' marks of
#:   mode 1; a2: the float32 levels ``(M, ci)``,
#:   read for rows marked -2), that input's limbs (a3, int8 ``(3, O, ci)`` with plane stride
#:   d3 and row stride d4: a tile's rows, or a block of them, of the cached limbs); a4 = the
#:   row scales (float32 ``(O,)``), a5 = ``z`` (float32 ``(M, O)``, not read where
#:   ``beta == 0``); d0..d2 = M, O, ci.
SOURCE = (
    LIMB_SOURCE
    + r"""
static void aimc_limbs(const float* w, int8_t* limbs, float* scale, int64_t B, int64_t O,
                       int64_t ci) {
    const int64_t plane = B * O * ci;
    #pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < B * O; ++row) {
        int8_t* d = limbs + row * ci;
        scale[row] = aimc_limb_row(w + row * ci, ci, d, d + plane, d + 2 * plane);
    }
}

static void aimc_pack(const float* xq, int8_t* k8, int32_t* hit, int64_t R, int64_t ci) {
    constexpr int64_t V = VecF::size();
    constexpr int full = (1 << V) - 1;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
        const float* src = xq + r * ci;
        int8_t* dst = k8 + r * ci;
        const VecF hi(127.0f), lo(-128.0f), tie(127.5f), ntie(-127.5f), zero(0.0f);
        // c lanes of v into int8 at dst + i: clipped to [-128, 127], NaN as 0
        auto put = [&](VecF v, int64_t i, int64_t c) {
            v = VecF::blendv(zero, at::vec::clamp(v, lo, hi), v == v);
            at::vec::convert<int8_t>(v).store(dst + i, c);
        };
        int32_t h = -1;
        bool low = false;  // a level of -128
        for (int64_t i = 0; i < ci; i += V) {
            const int64_t c = std::min(V, ci - i);
            const VecF v = c == V ? VecF::loadu(src + i) : VecF::loadu(src + i, c);
            if ((v > tie).zero_mask() != full) {  // a level of 128 (at most a few per row)
                for (int64_t l = 0; l < c; ++l) {
                    if (src[i + l] > 127.5f) h = h == -1 ? int32_t(i + l) : -2;
                }
            }
            low |= (v < ntie).zero_mask() != full;
            put(v, i, c);
        }
        if (h != -1 && !low) {  // +128 and no -128: the row negated, every level exact
            for (int64_t i = 0; i < ci; i += V) {
                const int64_t c = std::min(V, ci - i);
                put(zero - (c == V ? VecF::loadu(src + i) : VecF::loadu(src + i, c)), i, c);
            }
            h = -3;
        }
        hit[r] = h;
    }
}

static inline VecF aimc_int_to_float(const int32_t* p, int64_t c) {
    return at::vec::convert<float>(c == VecF::size() ? VecI::loadu(p) : VecI::loadu(p, c));
}

static void aimc_combine(int32_t* y, const int32_t* hit, const float* xq, const int8_t* limbs,
                         const float* scale, float* z, int64_t M, int64_t O, int64_t ci,
                         int64_t plane, int64_t ld, float beta) {
    constexpr int64_t V = VecF::size();
    const int64_t yplane = M * O;
    #pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        int32_t* y1 = y + m * O;
        int32_t* y2 = y1 + yplane;
        int32_t* y3 = y2 + yplane;
        // the levels of 128, packed as 127: one step of their inputs' weights added back
        const int32_t h = hit[m];
        for (int64_t j = (h >= 0 ? h : 0); h != -1 && h != -3 && j < (h >= 0 ? h + 1 : ci); ++j) {
            if (h == -2 && !(xq[m * ci + j] > 127.5f)) continue;
            // (input j's limbs lie one row apart: a gather, for the few rows mended)
            const int8_t* l1 = limbs + j;
            const int8_t* l2 = l1 + plane;
            const int8_t* l3 = l2 + plane;
            for (int64_t o = 0; o < O; ++o) {
                y1[o] += l1[o * ld];
                y2[o] += l2[o * ld];
                y3[o] += l3[o * ld];
            }
        }
        float* zr = z + m * O;
        // a negated row's product negated back: exact, the same value as unnegated
        const VecF k(1.0f / 254.0f), vb(beta), sign(h == -3 ? -1.0f : 1.0f);
        for (int64_t o = 0; o < O; o += V) {
            const int64_t c = std::min(V, O - o);
            const VecF a = aimc_int_to_float(y1 + o, c);
            const VecF b = aimc_int_to_float(y2 + o, c);
            const VecF d = aimc_int_to_float(y3 + o, c);
            const VecF s = c == V ? VecF::loadu(scale + o) : VecF::loadu(scale + o, c);
            VecF v = (a + (b + d * k) * k) * s * sign;
            if (beta != 0.0f) v = v + (c == V ? VecF::loadu(zr + o) : VecF::loadu(zr + o, c)) * vb;
            if (c == V) v.store(zr + o); else v.store(zr + o, c);
        }
    }
}

extern "C" void kernel(const int64_t mode, const int64_t a0, const int64_t a1, const int64_t a2,
                       const int64_t a3, const int64_t a4, const int64_t a5, const int64_t d0,
                       const int64_t d1, const int64_t d2, const int64_t d3, const int64_t d4,
                       const float beta) {
    if (mode == 0) {
        aimc_limbs(reinterpret_cast<const float*>(a0), reinterpret_cast<int8_t*>(a1),
                   reinterpret_cast<float*>(a2), d0, d1, d2);
    } else if (mode == 1) {
        aimc_pack(reinterpret_cast<const float*>(a0), reinterpret_cast<int8_t*>(a1),
                  reinterpret_cast<int32_t*>(a2), d0, d1);
    } else {
        aimc_combine(reinterpret_cast<int32_t*>(a0), reinterpret_cast<const int32_t*>(a1),
                     reinterpret_cast<const float*>(a2), reinterpret_cast<const int8_t*>(a3),
                     reinterpret_cast<const float*>(a4), reinterpret_cast<float*>(a5), d0, d1,
                     d2, d3, d4, beta);
    }
}
"""
)


@functools.cache
def _vnni_cpu() -> bool:
    """Whether this is an x86 CPU with VNNI (AVX512-VNNI) or AMX, where oneDNN's int8 GEMM is
    several times faster than the float32 one."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    probes = [getattr(torch.cpu, n, None) for n in ("_is_vnni_supported", "_is_amx_tile_supported")]
    return any(p is not None and p() for p in probes)


class NativeIntMvmKernel(_NativeKernel):
    """The integer MVM's three helper passes (:data:`SOURCE`): the limbs of a tile matrix, the
    levels packed into int8, and the combination of the three int32 GEMM results. Built on
    first use on x86 CPUs with VNNI and checked against float64 arithmetic (where the check
    fails the float32 GEMM runs, warned once). Switched off with ``AIMC_INT_MVM=0``."""

    source = SOURCE
    argtypes = ("int64_t",) * 12 + ("float",)
    envs = ("AIMC_INT_MVM",)
    warning = (
        "aimc: the int8 MVM's kernel could not be built ({failed}); the MVM runs as a float32 "
        "GEMM instead (slower). Set AIMC_INT_MVM=0 to skip the attempt."
    )

    def ready(self) -> bool:
        return _vnni_cpu() and super().ready()

    def limbs(self, w: Tensor, limbs: Tensor, scale: Tensor) -> None:
        """Fill ``limbs`` (int8 ``(3, B, O, ci)``) and ``scale`` (float32 ``(B, O)``) from the
        tile matrices ``w`` (float32 ``(B, O, ci)``); all contiguous CPU tensors (checked)."""
        b, o, ci = w.shape
        _check_buffers("int MVM", [(w, (b, o, ci)), (scale, (b, o))])
        _check_buffers("int MVM", [(limbs, (3, b, o, ci))], torch.int8)
        self._fn(0, w.data_ptr(), limbs.data_ptr(), scale.data_ptr(), 0, 0, 0, b, o, ci, 0, 0, 0.0)

    def pack(self, xq: Tensor, k8: Tensor, hit: Tensor) -> None:
        """``k8`` (int8) from the whole-number levels ``xq`` (float32 ``(..., ci)``, in
        ``[-128, 128]`` or NaN; NaN as 0; a row with +128 and no -128 negated, else 128 as 127)
        and ``hit`` (int32, one per row: -1, -3 for a negated row, or for a row with both +128
        and -128 the input of its one level of +128, or -2 for several); contiguous CPU tensors
        (checked)."""
        ci = xq.shape[-1]
        rows = xq.numel() // ci if ci else 0
        _check_buffers("int MVM", [(xq, tuple(xq.shape))])
        _check_buffers("int MVM", [(k8, tuple(xq.shape))], torch.int8)
        _check_buffers("int MVM", [(hit, (rows,))], torch.int32)
        self._fn(1, xq.data_ptr(), k8.data_ptr(), hit.data_ptr(), 0, 0, 0, rows, ci, 0, 0, 0, 0.0)

    def combine(
        self,
        y: Tensor,
        hit: Tensor,
        xq: Tensor,
        limbs: Tensor,
        scale: Tensor,
        z: Tensor,
        beta: float,
    ) -> None:
        """``z <- scale * (y1 + y2 / 254 + y3 / 254^2) + beta * z`` for one tile, the sums
        ``y`` (int32 ``(3, M, O)``; changed: the levels of 128 are added in, as ``hit`` and
        ``xq`` (float32 ``(M, ci)``) mark them) with ``limbs`` (int8 ``(3, O, ci)``, each
        output's row contiguous: a tile's limbs, or a block of their rows); ``scale`` float32
        ``(O,)``, ``z`` float32 ``(M, O)`` (checked)."""
        m, ci = xq.shape
        o = z.shape[1]
        _check_buffers("int MVM", [(y, (3, m, o)), (hit, (m,))], torch.int32)
        _check_buffers("int MVM", [(xq, (m, ci)), (z, (m, o)), (scale, (o,))])
        if (
            tuple(limbs.shape) != (3, o, ci)
            or limbs.dtype != torch.int8
            or limbs.stride(2) != 1
            or limbs.stride(1) < ci
            or limbs.stride(0) < o * limbs.stride(1)
        ):
            raise ValueError(
                f"aimc._intmvm: limbs {tuple(limbs.shape)} {limbs.dtype} with strides "
                f"{limbs.stride()}; expected int8 (3, {o}, {ci}), each row contiguous, the "
                "rows and planes apart"
            )
        self._fn(
            2,
            y.data_ptr(),
            hit.data_ptr(),
            xq.data_ptr(),
            limbs.data_ptr(),
            scale.data_ptr(),
            z.data_ptr(),
            m,
            o,
            ci,
            limbs.stride(0),
            limbs.stride(1),
            float(beta),
        )

    def self_check(self, fn: Any) -> str | None:
        """The three passes against float64 arithmetic, on rows with zeros, a NaN, an
        infinity and levels of +128 (none; one or several beside a -128, mended; alone,
        negated) and a block of a tile's limbs (the rows of some of its outputs)."""
        return self._first_mismatch(fn, [()], _check_kernel)


def _check_kernel(kernel: NativeIntMvmKernel) -> str | None:
    gen = torch.Generator().manual_seed(0)
    b, o, ci, m = 2, 37, 45, 19
    w = torch.randn(b, o, ci, generator=gen, dtype=torch.float32) * 0.3
    w[0, 3] = 0.0  # an all-zero row
    w[1, 5, 7] = 1e-30  # tiny beside its row
    w[1, 6, 2] = math.nan
    w[0, 7, 1] = math.inf
    limbs = torch.empty(3, b, o, ci, dtype=torch.int8)
    scale = torch.empty(b, o, dtype=torch.float32)
    kernel.limbs(w, limbs, scale)
    if not (math.isnan(scale[1, 6]) and math.isinf(scale[0, 7]) and scale[0, 3] == 0):
        return "the scales of a NaN, an infinite and a zero row are wrong"
    finite = torch.isfinite(scale)
    s64 = scale.double().unsqueeze(-1)
    back = limbs[0].double() + (limbs[1].double() + limbs[2].double() / BASE) / BASE
    err = ((back * s64 - w.double()).abs() * finite.unsqueeze(-1)).nan_to_num(0.0)
    if bool((err > (s64 * 2.0**-16.9).nan_to_num(0.0)).any()):  # half a step of 127 * 254^2
        return f"limbs off their weights by up to {float(err.max()):.3g}"
    xq = torch.randint(-128, 129, (b, m, ci), generator=gen).float()
    xq[:, :, 5] = xq[:, :, 5].clamp(max=127)
    xq[0, 2] = 128.0  # a whole vector at +128
    xq[1, 3] = xq[1, 3].clamp(max=127)
    xq[1, 3, 9] = 128.0  # exactly one
    xq[1, 4, 3] = math.nan
    # in both tiles (tile 1's mended rows read a block of its limbs: the row stride)
    for bi, row, plus, minus in [
        (bi, *case)
        for bi in (0, 1)
        for case in [(5, [1], [2]), (6, [3, 4], [5]), (7, [8], []), (8, [], [0])]
    ]:
        xq[bi, row] = xq[bi, row].clamp(-127, 127)
        xq[bi, row, plus] = 128.0  # one or several +128 beside a -128 (mended), one alone
        xq[bi, row, minus] = -128.0  # (negated), a -128 alone (nothing to mend)
    k8 = torch.empty(b, m, ci, dtype=torch.int8)
    hit = torch.empty(b * m, dtype=torch.int32)
    kernel.pack(xq, k8, hit)
    count = (xq == 128).sum(dim=-1).view(-1)
    negated = (count > 0) & ~(xq == -128).any(dim=-1).view(-1)
    want_k8 = torch.where(negated.view(b, m, 1), -xq, xq).clamp(-128, 127).nan_to_num(0.0)
    if not torch.equal(k8, want_k8.to(torch.int8)):
        return "packed levels differ"
    first = (xq == 128).float().argmax(dim=-1).view(-1).int()
    want = torch.where(count == 0, -1, torch.where(count == 1, first, -2))
    if not torch.equal(hit, torch.where(negated, -3, want).int()):
        return "the marks of levels of 128 differ"
    if not ((hit == -3).any() and (hit >= 0).any() and (hit == -2).any()):
        return "the check's levels lack a negated, a mended or a several-times mended row"
    # every tile whole, and a block of a tile's outputs (an output tile of bound management's
    # rounds: its limbs a block of the tile's rows, the mended inputs' limbs read at an offset)
    for bi, cols in [(0, slice(0, o)), (1, slice(0, o)), (1, slice(4, 25))]:
        x = xq[bi].nan_to_num(0.0)
        lmb, sc, wb, ok = limbs[:, bi, cols], scale[bi, cols], w[bi, cols], finite[bi, cols]
        y = torch.empty(3, m, wb.shape[0], dtype=torch.int32)
        for beta in (0.0, 0.75):
            for i in range(3):
                torch._int_mm(k8[bi], lmb[i].t(), out=y[i])
            z = torch.randn(m, wb.shape[0], generator=gen, dtype=torch.float32)
            ref = x.double() @ wb.double().T + beta * z.double()
            kernel.combine(y, hit[bi * m : (bi + 1) * m], x, lmb, sc, z, beta)
            # the limbs' resolution, and a few roundings of float32 of the sum
            tol = x.abs().sum(dim=1, keepdim=True).double() * sc.double() * 2.0**-16.9
            tol = tol + (ref.abs() + beta * z.double().abs()) * 2.0**-21
            bad = ((z.double() - ref).abs() > tol)[:, ok]
            if bool(bad.any()):
                return f"products off the float64 product (tile {bi}, columns {cols}, beta {beta})"
    return None


#: The kernel, one per process.
INT_MVM = NativeIntMvmKernel()


def cached_limbs(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """The limbs and row scales of the tile matrices ``w`` (float32 ``(B, O, ci)``, contiguous,
    CPU), computed once and kept on the tensor until it changes; None where a row is not
    finite (the float32 GEMM then runs, with its NaN and infinity semantics)."""
    version = 0 if w.is_inference() else w._version
    cached = getattr(w, "_aimc_limbs", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    b, o, ci = w.shape
    limbs = torch.empty(3, b, o, ci, dtype=torch.int8)
    scale = torch.empty(b, o, dtype=torch.float32)
    INT_MVM.limbs(w, limbs, scale)
    out = (limbs, scale) if bool(torch.isfinite(scale).all()) else None
    keep_limbs(w, out)
    return out


def keep_limbs(w: Tensor, limbs: tuple[Tensor, Tensor] | None) -> None:
    """Keep ``limbs`` (``(limbs, scales)`` of ``w``, or None: a row not finite) on ``w`` as
    :func:`cached_limbs` would, for its next call."""
    w._aimc_limbs = (0 if w.is_inference() else w._version, limbs)  # type: ignore[attr-defined]


def int_bmm_(
    z: Tensor,
    xq: Tensor,
    limbs: tuple[Tensor, Tensor],
    beta: float,
    k8: Tensor,
    hit: Tensor,
    y: Tensor,
) -> Tensor:
    """``z <- beta * z + W xq`` per tile (``beta = 0`` ignores ``z``), ``xq`` ``(B, N, ci)``
    whole-number levels in ``[-128, 128]``, ``W`` given by its :func:`cached_limbs`; ``k8``
    (int8, ``xq``'s shape), ``hit`` (int32 ``(B * N,)``) and ``y`` (int32 ``(3, N, O)``) are
    scratch buffers.

    ``z`` ``(B, N, O)`` may also hold output tiles (bound management's rounds: one matrix per
    input tile and block of ``O`` columns, ``B`` = input tiles x blocks): with limbs of
    ``O * to`` outputs per tile, batch ``b`` takes block ``b % to`` of tile ``b // to``."""
    lmb, scale = limbs
    nb, n = xq.shape[:2]
    cols = z.shape[2]
    to = lmb.shape[2] // cols if cols else 1
    if lmb.shape[1] * to != nb or to * cols != lmb.shape[2]:
        raise ValueError(
            f"aimc._intmvm: limbs of {lmb.shape[1]} tiles x {lmb.shape[2]} columns for "
            f"{nb} matrices of {cols} columns"
        )
    INT_MVM.pack(xq, k8, hit)
    for b in range(nb):
        t, c0 = b // to, (b % to) * cols
        tile = lmb[:, t, c0 : c0 + cols]  # (3, cols, ci): rows of the tile's limbs
        for i in range(3):
            # its transpose, column-major: oneDNN's int8 GEMM as fast as on a row-major copy
            # (one input: strides (1, 1), which _int_mm reads as rows 1 apart: copied)
            op = tile[i].t()
            if op.shape[0] == 1:
                op = torch.empty(op.shape, dtype=op.dtype).copy_(op)
            torch._int_mm(k8[b], op, out=y[i])
        INT_MVM.combine(
            y, hit[b * n : (b + 1) * n], xq[b], tile, scale[t, c0 : c0 + cols], z[b], beta
        )
    return z
