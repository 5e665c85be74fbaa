"""The gradient of learned output scales in one pass over the ADC's levels (eager CPU backward).

A training forward of learned output scales (``_ScaledAnalogMVM``) keeps every input tile's
output as the ADC's integer levels and the digital factors that rescale them
(:class:`aimc.mvm.TileOutputs`). The scales' gradient is, per input tile ``t`` and output
column ``o``,

    grad_alpha[t, o] = col_scale[t, o] * sum_n factor[t, n, o // cols] * levels[t, n, o]
                                                 * grad[n, o]

which the tensor code computes per tile as a conversion of the levels to float32, a product
with the output gradient and a matrix-vector product with the factors (three passes over
``(N, O)`` float32 tensors per tile: 42 ms of a 1.1 s ``standard_hwa`` training step of the
``bench_hwa_step.py`` MLP stack on the AVX-512 host). This kernel (:data:`SOURCE`) reads each
level once and each output gradient once per input tile (from cache: a task's gradient block
is 64 columns), forms the same float32 products (level times gradient, times factor) and sums
them over the vectors in float64, so that its result is within float32 rounding of the exact
sum, as the tensor code's float32 sums are (checked at build against float64 arithmetic;
where the check fails the tensor code runs, warned once). Switched off with
``AIMC_GRAD_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._native import _LEVEL_KINDS, _check_buffers, _NativeKernel

#: The C++ source: ``kernel(lev, grad, f, cs, out, kind, g, ti, n, to, cols)``: ``lev``
#: ``(g * ti, n, to * cols)`` levels (kind 1: int8, 2: int16, 3: float32), ``grad``
#: ``(g, n, to * cols)`` float32, ``f`` ``(g * ti, n, to)`` float32 or 0 (all ones), ``cs``
#: ``(g * ti, to * cols)`` float32 or 0 (all ones), ``out`` ``(g * ti, to * cols)`` float32.
SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cstdint>

// columns per task: a block of 64 gradients of every vector stays in cache while the
// input tiles of the block are summed one after the other
constexpr int64_t AIMC_C = 64;

// acc[0..c) += (float(lev[j]) * grad[j]) * f in float32, summed in float64
template <typename T>
static inline void aimc_accumulate(double* acc, const T* lev, const float* grad, float f,
                                   int64_t c) {
    int64_t j = 0;
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 vf = _mm512_set1_ps(f);
    for (; j + 16 <= c; j += 16) {
        __m512 v;
        if constexpr (sizeof(T) == 1) {
            v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(lev + j))));
        } else if constexpr (sizeof(T) == 2) {
            v = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lev + j))));
        } else {
            v = _mm512_loadu_ps(reinterpret_cast<const float*>(lev + j));
        }
        const __m512 p = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_loadu_ps(grad + j)), vf);
        const __m256 lo = _mm512_castps512_ps256(p);
        const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1));
        _mm512_storeu_pd(acc + j, _mm512_add_pd(_mm512_loadu_pd(acc + j), _mm512_cvtps_pd(lo)));
        _mm512_storeu_pd(acc + j + 8,
                         _mm512_add_pd(_mm512_loadu_pd(acc + j + 8), _mm512_cvtps_pd(hi)));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256 vf = _mm256_set1_ps(f);
    for (; j + 8 <= c; j += 8) {
        __m256 v;
        if constexpr (sizeof(T) == 1) {
            v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(lev + j))));
        } else if constexpr (sizeof(T) == 2) {
            v = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(lev + j))));
        } else {
            v = _mm256_loadu_ps(reinterpret_cast<const float*>(lev + j));
        }
        const __m256 p = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_loadu_ps(grad + j)), vf);
        _mm256_storeu_pd(acc + j, _mm256_add_pd(_mm256_loadu_pd(acc + j),
                                                _mm256_cvtps_pd(_mm256_castps256_ps128(p))));
        _mm256_storeu_pd(acc + j + 4, _mm256_add_pd(_mm256_loadu_pd(acc + j + 4),
                                                    _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1))));
    }
#endif
    for (; j < c; ++j) {
        const float p = (static_cast<float>(lev[j]) * grad[j]) * f;
        acc[j] += static_cast<double>(p);
    }
}

template <typename T>
static void aimc_scale_grad(const T* lev, const float* grad, const float* f, const float* cs,
                            float* out, int64_t g, int64_t ti, int64_t n, int64_t to,
                            int64_t cols) {
    const int64_t width = to * cols;
    const int64_t chunks = (cols + AIMC_C - 1) / AIMC_C;  // per output tile
    // the input tiles innermost: a thread sums one column block of every tile in turn
    const int64_t tasks = g * to * chunks * ti;
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
        int64_t rest = task;
        const int64_t t = rest % ti;
        rest /= ti;
        const int64_t ch = rest % chunks;
        rest /= chunks;
        const int64_t k = rest % to;  // the output tile: one factor per vector
        const int64_t gi = rest / to;
        const int64_t b = gi * ti + t;
        const int64_t c0 = k * cols + ch * AIMC_C;
        const int64_t c = std::min(AIMC_C, (k + 1) * cols - c0);
        alignas(64) double acc[AIMC_C] = {};
        for (int64_t v = 0; v < n; ++v) {
            const float fv = f != nullptr ? f[(b * n + v) * to + k] : 1.0f;
            aimc_accumulate(acc, lev + (b * n + v) * width + c0, grad + (gi * n + v) * width + c0,
                            fv, c);
        }
        float* dst = out + b * width + c0;
        for (int64_t j = 0; j < c; ++j) {
            const float s = static_cast<float>(acc[j]);
            dst[j] = cs != nullptr ? s * cs[b * width + c0 + j] : s;
        }
    }
}

extern "C" void kernel(int64_t lev, int64_t grad, int64_t f, int64_t cs, int64_t out,
                       int64_t kind, int64_t g, int64_t ti, int64_t n, int64_t to, int64_t cols) {
    const float* gp = reinterpret_cast<const float*>(grad);
    const float* fp = reinterpret_cast<const float*>(f);
    const float* cp = reinterpret_cast<const float*>(cs);
    float* op = reinterpret_cast<float*>(out);
    if (kind == 1) {
        aimc_scale_grad(reinterpret_cast<const int8_t*>(lev), gp, fp, cp, op, g, ti, n, to, cols);
    } else if (kind == 2) {
        aimc_scale_grad(reinterpret_cast<const int16_t*>(lev), gp, fp, cp, op, g, ti, n, to,
                        cols);
    } else {
        aimc_scale_grad(reinterpret_cast<const float*>(lev), gp, fp, cp, op, g, ti, n, to, cols);
    }
}
"""


class NativeScaleGradKernel(_NativeKernel):
    """The output scales' gradient from the ADC's levels in one pass (:data:`SOURCE`), where
    :meth:`aimc.mvm.TileOutputs.scale_grad`'s tensor code makes three per input tile. Within
    float32 rounding of the exact sums (checked at build against float64 arithmetic; where the
    check fails the tensor code runs, warned once). Switched off with ``AIMC_GRAD_NATIVE=0``
    or ``AIMC_FUSED_KERNELS=0``."""

    source = SOURCE
    argtypes = ("int64_t",) * 11
    envs = ("AIMC_FUSED_KERNELS", "AIMC_GRAD_NATIVE")
    warning = (
        "aimc: the output scales' gradient kernel could not be built ({failed}); the gradient "
        "runs as tensor operations instead (the same sums to float rounding, slower). Set "
        "AIMC_GRAD_NATIVE=0 to skip the attempt."
    )

    def scale_grad(
        self,
        levels: Tensor,
        grad: Tensor,
        factor: Tensor | None,
        col_scale: Tensor | None,
        out: Tensor,
        tiles: int,
    ) -> None:
        """Fill ``out`` ``(G * ti, O)`` with ``col_scale * sum_n factor * levels * grad``:
        ``levels`` ``(G * ti, N, O)`` (int8, int16 or float32), ``grad`` ``(G, N, O)``,
        ``factor`` ``(G * ti, N, to)`` (one per output tile of ``O / to`` columns) or None,
        ``col_scale`` ``(G * ti, O)`` or None; contiguous float32 CPU tensors but the levels
        (checked)."""
        b, n, width = levels.shape
        g = b // tiles if tiles > 0 else 0
        to = factor.shape[-1] if factor is not None and factor.dim() == 3 else 1
        kind = _LEVEL_KINDS.get(levels.dtype, 0)
        if kind == 0:
            raise ValueError(
                f"aimc._scalegrad: levels as {levels.dtype}; allowed: int8, int16, float32"
            )
        _check_buffers("scale gradient", [(levels, (g * tiles, n, width))], levels.dtype)
        shapes = [(grad, (g, n, width)), (out, (b, width))]
        if factor is not None:
            shapes.append((factor, (b, n, to)))
        if col_scale is not None:
            shapes.append((col_scale, (b, width)))
        _check_buffers("scale gradient", shapes)
        if to == 0 or width % to:
            raise ValueError(f"aimc._scalegrad: {width} outputs do not split into {to} tiles")
        ptrs = (t.data_ptr() if t is not None else 0 for t in (levels, grad, factor, col_scale))
        self._fn(*ptrs, out.data_ptr(), kind, g, tiles, n, to, width // to)

    def self_check(self, fn: Any) -> str | None:
        """The kernel against float64 sums, each level type, with and without factors and
        column scales, on widths with vector tails and several column blocks."""
        return self._first_mismatch(fn, _cases(), _mismatch)


def scale_grad_reference(
    levels: Tensor, grad: Tensor, factor: Tensor | None, col_scale: Tensor | None, tiles: int
) -> tuple[Tensor, Tensor]:
    """``(sum, bound)`` in float64: the exact ``col_scale * sum_n factor * levels * grad`` of
    :meth:`NativeScaleGradKernel.scale_grad` and ``sum_n |terms|`` times ``|col_scale|``, which
    bounds its float32 rounding error."""
    b, n, width = levels.shape
    g = b // tiles
    terms = levels.double().view(g, tiles, n, width) * grad.double().view(g, 1, n, width)
    if factor is not None:
        to = factor.shape[-1]
        f = factor.double().view(g, tiles, n, to, 1)
        terms = (terms.view(g, tiles, n, to, width // to) * f).view(g, tiles, n, width)
    total, bound = terms.sum(dim=2).view(b, width), terms.abs().sum(dim=2).view(b, width)
    if col_scale is not None:
        total, bound = total * col_scale.double(), bound * col_scale.double().abs()
    return total, bound


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for g, ti, n, to, cols, dtype, fac, cs in [
        (1, 1, 5, 1, 37, torch.int8, True, True),
        (2, 3, 7, 2, 16, torch.int16, True, False),
        (1, 2, 9, 3, 24, torch.float32, False, True),
        (1, 2, 33, 1, 150, torch.int8, True, False),  # several column blocks, a vector tail
        (2, 1, 3, 2, 64, torch.int8, False, False),
        (1, 3, 1, 1, 7, torch.int16, True, True),
    ]:
        b, width = g * ti, to * cols
        lv = torch.randint(-127, 128, (b, n, width), generator=gen).to(dtype)
        if dtype == torch.float32:
            lv = lv + torch.rand(
                b, n, width, generator=gen, dtype=torch.float32
            )  # levels that are not integers
        grad = torch.randn(g, n, width, generator=gen, dtype=torch.float32)
        f = torch.rand(b, n, to, generator=gen, dtype=torch.float32) * 0.1 if fac else None
        c = torch.rand(b, width, generator=gen, dtype=torch.float32) + 0.5 if cs else None
        cases.append((lv, grad, f, c, ti))
    return cases


def _mismatch(
    kernel: NativeScaleGradKernel,
    levels: Tensor,
    grad: Tensor,
    factor: Tensor | None,
    col_scale: Tensor | None,
    tiles: int,
) -> str | None:
    out = torch.full((levels.shape[0], levels.shape[2]), 7.0, dtype=torch.float32)
    kernel.scale_grad(levels, grad, factor, col_scale, out, tiles)
    ref, bound = scale_grad_reference(levels, grad, factor, col_scale, tiles)
    # two float32 roundings per product, one of the float64 sum to float32 and one of the
    # column scale
    tol = bound * 2.0**-22 + ref.abs() * 2.0**-22
    if not bool(((out.double() - ref).abs() <= tol).all()):
        return (
            f"sums off the float64 sums ({levels.dtype} levels, factors {factor is not None}, "
            f"column scales {col_scale is not None})"
        )
    return None


#: The kernel, one per process.
SCALE_GRAD = NativeScaleGradKernel()
