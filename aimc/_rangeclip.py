"""The learned input range's clip and its gradient as hand-written CPU kernels.

A training forward of learned input ranges (``standard_hwa``) clips each analog layer's input
to its range into a reused buffer (:func:`aimc.hwa.clipped_scratch`), and its backward clips it
again for the weight gradient and sums the clipped inputs' gradient, and counts the inputs
inside the range, for the range's gradient (:func:`aimc.hwa.range_grad`). As inductor kernels
(:class:`aimc._kernels.FusedKernel`) each call went through ``torch.compile``'s dispatch, about
0.13 ms of guards (three calls per layer and step: 3 ms of a ``standard_hwa`` MLP step of 8
layers); this kernel (:data:`SOURCE`) is called directly. The clip gives the values of
:func:`aimc.hwa._clipped` bit for bit; the range's sum is taken per block of 4,096 values in
float32 vector lanes (256 values each), the lanes and blocks summed in float64 (the same for
any thread count; within float rounding of the tensor code's float32 sum). Checked at build
against the tensor code; where the check fails the inductor kernels run, warned once.
Switched off with ``AIMC_CLIP_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._native import LOAD_PD_SOURCE, _check_buffers, _NativeKernel, nan_equal

#: Values per block of the gradient's partial sums.
BLOCK = 4096

#: ``kernel(mode, x, out, n, r, sums)``: mode 0, ``out = clamp(x, -r, r)`` with +-inf as NaN;
#: mode 1, ``out`` the gradient (read only), ``sums[2b]`` the sum of ``min(out * sign(x), 0)``
#: where ``|x| >= r`` and ``sums[2b + 1]`` the number of values with ``|x| < r`` (NaN counted
#: inside, as the tensor code's ``>=`` test leaves it) over block ``b`` of :data:`BLOCK` values;
#: mode 2, the block moments of ``x`` (:meth:`NativeClipKernel.std`).
SOURCE = (
    r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <algorithm>
#include <cmath>
#include <limits>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

using VecF = at::vec::Vectorized<float>;
using VecD = at::vec::Vectorized<double>;

"""
    + LOAD_PD_SOURCE
    + r"""

static inline double aimc_lanes_sum(const VecD& v) {
    double t[VecD::size()];
    v.store(t);
    double s = 0.0;
    for (int64_t l = 0; l < VecD::size(); ++l) s += t[l];
    return s;
}

// mode 2: per block b, sums[2b] = the float64 sum of its values, sums[2b + 1] = the float64
// sum of their squared deviations from the block's mean (two passes over the block, which
// stays in cache)
static void aimc_block_moments(const float* x, int64_t n, double* sums) {
    constexpr int64_t BLOCK = 4096, W = VecD::size();
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t i0 = blk * BLOCK, i1 = std::min(n, i0 + BLOCK);
        VecD acc(0.0);
        for (int64_t i = i0; i < i1; i += W) acc = acc + aimc_load_pd(x + i, std::min(W, i1 - i));
        const double total = aimc_lanes_sum(acc);
        const VecD mean(total / double(i1 - i0));
        VecD dev(0.0);
        for (int64_t i = i0; i < i1; i += W) {
            const int64_t c = std::min(W, i1 - i);
            VecD d = aimc_load_pd(x + i, c) - mean;
            if (c < W) d = VecD::set(VecD(0.0), d, c);  // the lanes past the end
            dev = dev + d * d;
        }
        sums[2 * blk] = total;
        sums[2 * blk + 1] = aimc_lanes_sum(dev);
    }
}

extern "C" void kernel(int64_t mode, int64_t x_, int64_t out_, int64_t n, float r,
                       int64_t sums_) {
    const float* x = reinterpret_cast<const float*>(x_);
    float* out = reinterpret_cast<float*>(out_);
    double* sums = reinterpret_cast<double*>(sums_);
    if (mode == 2) {
        aimc_block_moments(x, n, sums);
        return;
    }
    constexpr int64_t V = VecF::size();
    constexpr int64_t BLOCK = 4096;
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    const VecF hi(r), lo(-r), inf(std::numeric_limits<float>::infinity()),
        nan(std::numeric_limits<float>::quiet_NaN()), zero(0.0f), one(1.0f), neg(-1.0f);
    #pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t i0 = blk * BLOCK, i1 = std::min(n, i0 + BLOCK);
        VecF acc(0.0f), cnt(0.0f);
        double tail = 0.0, tail_cnt = 0.0;
        for (int64_t i = i0; i < i1; i += V) {
            const int64_t c = std::min(V, i1 - i);
            const VecF v = c == V ? VecF::loadu(x + i) : VecF::loadu(x + i, c);
            const VecF m = v.abs();
            if (mode == 0) {
                // minimum and maximum propagate NaN; an infinity becomes NaN
                const VecF y = VecF::blendv(
                    at::vec::maximum(at::vec::minimum(v, hi), lo), nan, m == inf);
                if (c == V) y.store(out + i); else y.store(out + i, c);
                continue;
            }
            const VecF g = c == V ? VecF::loadu(out + i) : VecF::loadu(out + i, c);
            const VecF outside = m >= hi;  // NaN: inside
            const VecF sign = VecF::blendv(VecF::blendv(zero, neg, v < zero), one, v > zero);
            // min(g * sign, 0): at::vec::minimum propagates NaN, as clamp does
            const VecF part = VecF::blendv(zero, at::vec::minimum(g * sign, zero), outside);
            const VecF in = VecF::blendv(one, zero, outside);
            if (c == V) {
                acc = acc + part;
                cnt = cnt + in;
            } else {
                float lanes[V], ins[V];
                part.store(lanes);
                in.store(ins);
                for (int64_t l = 0; l < c; ++l) {
                    tail += double(lanes[l]);
                    tail_cnt += double(ins[l]);
                }
            }
        }
        if (mode == 1) {
            float lanes[V], ins[V];
            acc.store(lanes);
            cnt.store(ins);
            double s = tail, k = tail_cnt;
            for (int64_t l = 0; l < V; ++l) {
                s += double(lanes[l]);
                k += double(ins[l]);
            }
            sums[2 * blk] = s;
            sums[2 * blk + 1] = k;
        }
    }
}
"""
)


class NativeClipKernel(_NativeKernel):
    """The input range's clip and gradient (:data:`SOURCE`) on contiguous float32 CPU tensors,
    called without ``torch.compile``'s dispatch. Switched off with ``AIMC_CLIP_NATIVE=0`` or
    ``AIMC_FUSED_KERNELS=0``."""

    source = SOURCE
    argtypes = ("int64_t", "int64_t", "int64_t", "int64_t", "float", "int64_t")
    envs = ("AIMC_FUSED_KERNELS", "AIMC_CLIP_NATIVE")
    warning = (
        "aimc: the input-range clip kernel could not be built ({failed}); the inductor "
        "kernels run instead (the same values, slower to call). Set AIMC_CLIP_NATIVE=0 to "
        "skip the attempt."
    )

    def clip_into(self, x: Tensor, r: float, out: Tensor) -> None:
        """``out <- clamp(x, -r, r)``, +-inf as NaN; contiguous float32 CPU (checked)."""
        _check_buffers("clip", [(x, tuple(x.shape)), (out, tuple(x.shape))])
        self._fn(0, x.data_ptr(), out.data_ptr(), x.numel(), r, 0)

    def range_sums(self, x: Tensor, r: float, grad: Tensor) -> tuple[float, int]:
        """``(s, inside)`` of :func:`aimc.hwa._range_sums`: ``s`` the sum of
        ``min(grad * sign(x), 0)`` where ``|x| >= r``, ``inside`` the number of values with
        ``|x| < r`` (or NaN); contiguous float32 CPU (checked); ``grad`` is not written."""
        _check_buffers("clip", [(x, tuple(x.shape)), (grad, tuple(x.shape))])
        sums = torch.zeros(max(1, -(-x.numel() // BLOCK)), 2, dtype=torch.float64)
        self._fn(1, x.data_ptr(), grad.data_ptr(), x.numel(), r, sums.data_ptr())
        return float(sums[:, 0].sum()), int(sums[:, 1].sum())

    def std(self, x: Tensor) -> float:
        """The unbiased standard deviation of ``x``'s values (contiguous float32 CPU,
        checked), from float64 moments of blocks of :data:`BLOCK` values combined in float64
        (Chan et al.'s pairwise update): within float64 rounding of ``x.double().std()``; NaN
        where a value is not finite or ``x`` has fewer than two."""
        _check_buffers("clip", [(x, tuple(x.shape))])
        n = x.numel()
        if n < 2:
            return math.nan
        blocks = -(-n // BLOCK)
        sums = torch.zeros(blocks, 2, dtype=torch.float64)
        self._fn(2, x.data_ptr(), 0, n, 0.0, sums.data_ptr())
        counts = torch.full((blocks,), float(BLOCK), dtype=torch.float64)
        counts[-1] = n - (blocks - 1) * BLOCK
        means = sums[:, 0] / counts
        mean = sums[:, 0].sum() / n
        m2 = sums[:, 1].sum() + (counts * (means - mean).square()).sum()
        return float((m2 / (n - 1)).sqrt())

    def self_check(self, fn: Any) -> str | None:
        """The clip and gradient against the tensor code, on values inside, at and beyond the
        range, ties, zeros, NaN and infinities, and a length with a vector tail and several
        blocks; the standard deviation against float64's."""
        return self._first_mismatch(fn, _cases(), _mismatch)


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for n, r in [(1, 0.5), (37, 1.0), (3 * BLOCK + 21, 2.5)]:
        x = torch.randn(n, generator=gen, dtype=torch.float32) * 2 * r
        specials = [r, -r, math.nan, math.inf, -math.inf, 0.0, -0.0, r * (1 - 2**-23), 1e30]
        x[: min(n, len(specials))] = torch.tensor(specials[:n], dtype=torch.float32)
        g = torch.randn(n, generator=gen, dtype=torch.float32)
        cases.append((x, r, g))
    return cases


def _mismatch(kernel: NativeClipKernel, x: Tensor, r: float, g: Tensor) -> str | None:
    from .hwa import _clipped, _range_sums

    out = torch.full_like(x, 7.0)
    kernel.clip_into(x, r, out)
    rt = torch.tensor(r, dtype=torch.float32)
    ref = _clipped(x, rt, x.abs())
    if not nan_equal(out, ref):
        return f"clipped values differ (r {r})"
    got_g = g.clone()
    total, inside = kernel.range_sums(x, r, got_g)
    ref_total, ref_inside = (float(v) for v in _range_sums(x, rt, g))
    if not torch.equal(got_g, g):
        return f"the gradient was written (r {r})"
    if inside != ref_inside:
        return f"{inside} inputs inside the range, not {ref_inside} (r {r})"
    bound = float((g.double().abs() * (x.abs() >= r)).sum()) * 2.0**-20
    if not abs(total - ref_total) <= bound + 1e-30:
        return f"the range's sum {total} differs from {ref_total} (r {r})"
    for v in (g * 3 + 100.0, x):  # an offset mean; NaN and infinities (NaN)
        got, want = kernel.std(v), float(v.double().std()) if v.numel() > 1 else math.nan
        near = abs(got - want) <= 1e-12 * abs(want) or (math.isnan(got) and math.isnan(want))
        if not near:
            return f"standard deviation {got} differs from {want}"
    return None


#: The kernel, one per process.
CLIP = NativeClipKernel()
