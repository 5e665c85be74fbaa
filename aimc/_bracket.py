"""The ``pcm_read`` noise of an eager CPU forward from a bfloat16 variance MVM, bracketed.

``pcm_read`` weight noise adds to each tile output (in ADC steps) ``sqrt(var) * zeta``, ``zeta``
a standard normal draw and ``var = out_noise^2 + gain * sum_j x'_j^2 |W_ij|`` (the variance
MVM, :func:`aimc.mvm._variance_`), and the ADC then rounds the output to a whole number of
steps. The ADC's level is all that leaves the tile, so the variance only has to be accurate
enough to decide it. This module computes the variance MVM in bfloat16 (oneDNN's bfloat16
matmul: about half the time of its float32 one on a CPU with AVX512-BF16 or AMX, and a quarter
of MKL's float32 GEMM on the Zen 5 host), and proves, output by output, that the float32
variance would round to the same level:

* **the bound.** Rounding ``x'^2`` and ``|W|`` to bfloat16 (8 significant bits: a relative
  error of at most ``u = 2**-8`` each), accumulating the products in float32 (oneDNN's default
  "strict" accumulation mode: float32 accumulators for floating-point data; ``k`` terms of one
  sign: at most ``k * 2**-24``) and rounding the result to bfloat16 (``u`` again) keeps the
  bfloat16 product ``v_b`` within ``eps = (1 + u)^3 (1 + k 2**-24) - 1`` (1.2 %, plus a margin)
  of the exact ``v``: ``v`` lies in ``[v_b / (1 + eps), v_b / (1 - eps)]``. (Denormal inputs,
  which the bfloat16 instructions flush to zero, only lower ``v_b``; an absolute slack sized
  from the operands' largest values covers them, :func:`flush_slack`.)
* **the decision.** ``y = z + sqrt(out_noise^2 + gain v) * zeta`` moves monotonically with
  ``v``, and the ADC's rounding (half to even, as PyTorch rounds) is monotonic, so where both
  ends of the bracket round to the same level, every variance inside it does, the float32 one
  included: the kernel writes that level's end of the bracket, which the ADC rounds to it.
* **the rest.** Where the two ends round differently (0.1-0.6 % of the outputs on the
  benchmark layers under ``bert_squad``, whose noise has a standard deviation of about one
  ADC step: ``benchmarks/bench_bf16_bracket.py``), the kernel
  computes that output's variance in float32 (one dot product of ``x'^2`` and the row of
  ``|W|``) and the output from it, as the float32 path does.

So every output is the level the float32 computation gives, up to float rounding: as between
two float32 GEMMs that sum in different orders, an output whose exact value lies on a rounding
tie can land one level apart (the float32 path adds the signal onto the drawn noise, this one
the noise onto the signal). The draws are the same ones, from the same stream. The statistics
are those of the float32 path, not approximately but output for output; what bfloat16 changes
is only which outputs need the second, exact look. This is not ``IOConfig.w_noise_bf16``, which
uses the bfloat16 variance as the variance (statistics within the bfloat16 rounding).

Only where the ADC rounds (``out_res > 0``: without rounding every bit of the variance shows in
the output), for float32 CPU tensors of an eager forward, on x86 CPUs with native bfloat16
matmuls (AVX512-BF16 or AMX: elsewhere PyTorch emulates them, much slower than float32),
with the kernel built and its self-check passed (which also checks the bound on the bfloat16
matmul of this machine); switched off with ``AIMC_BF16_BRACKET=0`` (the float32 variance MVM
everywhere).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._native import _check_buffers, _NativeKernel

#: The environment variable that switches the bracket off (``"0"``)
ENV = "AIMC_BF16_BRACKET"

#: bfloat16's unit roundoff (8 significant bits)
_U = 2.0**-8
#: the relative margin on top of the bound (float32 rounding of the bracket's own arithmetic:
#: a few operations of ``2**-24`` each)
_MARGIN = 2.0**-18
#: the smallest normal float32 (and bfloat16): bfloat16 dot-product instructions flush
#: denormal inputs and results to zero
_TINY = 2.0**-126


def flush_slack(k: int, max_x2: float, max_w: float) -> float:
    """The absolute slack on the upper end for flushed denormals, over ``k`` terms whose
    factors are at most ``max_x2`` and ``max_w``: a term with a denormal factor is below
    ``2**-126`` times the other factor (rounded up to bfloat16), a product or partial sum that
    underflows is below ``2**-126``; twice that, per term."""
    return 2.0 * k * _TINY * max(1.0, max_x2, max_w)


def bracket_eps(k: int) -> float:
    """The bound on the relative error of the bfloat16 variance MVM over ``k`` terms (see the
    module docstring), with a margin."""
    return (1 + _U) ** 3 * (1 + k * 2.0**-24) - 1 + _MARGIN


BRACKET_SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <cmath>
#include <cstdint>
#include <cstring>

using VecF = at::vec::Vectorized<float>;

// c (at most VecF::size()) bfloat16 values at p as float32 lanes, the rest zero: a bfloat16 is
// the upper half of the float32 with the same bits
static inline VecF aimc_load_bf16(const uint16_t* p, int64_t c) {
#if defined(CPU_CAPABILITY_AVX512)
    if (c == 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return VecF(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if (c == 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return VecF(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
#endif
    float f[VecF::size()] = {};
    for (int64_t l = 0; l < c; ++l) {
        const uint32_t bits = uint32_t(p[l]) << 16;
        std::memcpy(&f[l], &bits, sizeof(float));
    }
    return VecF::loadu(f);
}

// z (b, n, o) float32: the signal W x' in ADC steps, overwritten by the noisy output before
// the ADC; zeta (b, n, o) the standard normal draws; vb (b, n, o) bfloat16 bits: the bfloat16
// variance MVM x'^2 |W|^T (no gain, no offset); x2 (b, n, k) float32 x'^2; w (b, o, k) float32
// |W|. The variance is offset + gain * v; v lies in [vb * c_lo, vb * c_hi + slack]. Returns
// (in *count) how many outputs needed the float32 variance.
extern "C" void kernel(const int64_t z_addr, const int64_t zeta_addr, const int64_t vb_addr,
                       const int64_t x2_addr, const int64_t w_addr, const int64_t count_addr,
                       const int64_t b, const int64_t n, const int64_t o, const int64_t k,
                       const float offset, const float gain, const float c_lo,
                       const float c_hi, const float slack) {
    float* const z = reinterpret_cast<float*>(z_addr);
    const float* const zeta = reinterpret_cast<const float*>(zeta_addr);
    const uint16_t* const vb = reinterpret_cast<const uint16_t*>(vb_addr);
    const float* const x2 = reinterpret_cast<const float*>(x2_addr);
    const float* const w = reinterpret_cast<const float*>(w_addr);
    constexpr int64_t V = VecF::size();
    const VecF vofs(offset), vgain(gain), vlo(c_lo), vhi(c_hi), vslack(slack);
    int64_t total = 0;
    #pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t row = 0; row < b * n; ++row) {
        const int64_t bi = row / n;
        float* const zr = z + row * o;
        const float* const er = zeta + row * o;
        const uint16_t* const vr = vb + row * o;
        const float* const xr = x2 + row * k;
        const float* const wt = w + bi * o * k;
        for (int64_t j = 0; j < o; j += V) {
            const int64_t c = std::min(V, o - j);
            const VecF v = aimc_load_bf16(vr + j, c);
            const VecF zz = c == V ? VecF::loadu(zr + j) : VecF::loadu(zr + j, c);
            const VecF ze = c == V ? VecF::loadu(er + j) : VecF::loadu(er + j, c);
            const VecF s_lo = at::vec::fmadd(vgain, v * vlo, vofs).sqrt();
            const VecF s_hi = at::vec::fmadd(vgain, at::vec::fmadd(v, vhi, vslack), vofs).sqrt();
            const VecF y_lo = at::vec::fmadd(s_lo, ze, zz);
            const VecF y_hi = at::vec::fmadd(s_hi, ze, zz);
            // lanes whose two ends round to the same level (NaN never does)
            const int same = (y_lo.round() - y_hi.round()).zero_mask();
            if (c == V) y_lo.store(zr + j); else y_lo.store(zr + j, c);
            const int all = c == V ? int((1LL << V) - 1) : int((1LL << c) - 1);
            if ((same & all) == all) continue;
            float zs[V], es[V];
            zz.store(zs);
            ze.store(es);
            for (int64_t l = 0; l < c; ++l) {
                if (same & (1 << l)) continue;
                // the float32 variance of this output: one dot product
                const float* const wr = wt + (j + l) * k;
                VecF a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
                int64_t i = 0;
                for (; i + 4 * V <= k; i += 4 * V) {
                    a0 = at::vec::fmadd(VecF::loadu(xr + i), VecF::loadu(wr + i), a0);
                    a1 = at::vec::fmadd(VecF::loadu(xr + i + V), VecF::loadu(wr + i + V), a1);
                    a2 = at::vec::fmadd(
                        VecF::loadu(xr + i + 2 * V), VecF::loadu(wr + i + 2 * V), a2);
                    a3 = at::vec::fmadd(
                        VecF::loadu(xr + i + 3 * V), VecF::loadu(wr + i + 3 * V), a3);
                }
                for (; i + V <= k; i += V)
                    a0 = at::vec::fmadd(VecF::loadu(xr + i), VecF::loadu(wr + i), a0);
                float lanes[V];
                ((a0 + a1) + (a2 + a3)).store(lanes);
                float dot = 0.0f;
                for (int64_t q = 0; q < V; ++q) dot += lanes[q];
                for (; i < k; ++i) dot += xr[i] * wr[i];
                zr[j + l] = zs[l] + std::sqrt(offset + gain * dot) * es[l];
                ++total;
            }
        }
    }
    *reinterpret_cast<int64_t*>(count_addr) = total;
}
"""


class BracketKernel(_NativeKernel):
    """The bracket's kernel (:data:`BRACKET_SOURCE`), built on first use by inductor's C++
    code cache and checked at build against float64 arithmetic on outputs chosen near ADC
    rounding boundaries, through this machine's bfloat16 matmul (so the check covers the bound
    on it too). Switched off with ``AIMC_BF16_BRACKET=0`` or ``AIMC_FUSED_KERNELS=0``."""

    source = BRACKET_SOURCE
    argtypes = ("int64_t",) * 10 + ("float",) * 5
    envs = ("AIMC_FUSED_KERNELS", ENV)
    warning = (
        "aimc: the bracketed bfloat16 variance kernel could not be built ({failed}); the "
        "pcm_read variance MVM runs in float32 instead (the same outputs, slower). Set "
        "AIMC_BF16_BRACKET=0 to skip the attempt."
    )

    def noisy_(
        self,
        z: Tensor,
        zeta: Tensor,
        vb: Tensor,
        x2: Tensor,
        w_abs: Tensor,
        offset: float,
        gain: float,
        max_x2: float,
        max_w: float,
    ) -> int:
        """``z <- z + sqrt(offset + gain * x2 @ w_abs^T) * zeta`` to the ADC's levels (see the
        module docstring), ``vb`` the bfloat16 ``x2 @ w_abs^T``: ``z``, ``zeta``, ``vb``
        ``(B, N, O)``, ``x2`` ``(B, N, K)``, ``w_abs`` ``(B, O, K)``, contiguous CPU tensors
        (checked); ``max_x2`` and ``max_w`` bounds on ``x2`` and ``w_abs`` (finite: the
        denormals' slack, :func:`flush_slack`). Returns how many outputs took the float32
        variance."""
        if not (math.isfinite(max_x2) and math.isfinite(max_w)):
            raise ValueError(
                f"aimc._bracket: max_x2={max_x2}, max_w={max_w}; allowed: finite bounds"
            )
        b, n, o = z.shape
        k = x2.shape[2]
        _check_buffers("bracket", [(z, (b, n, o)), (zeta, (b, n, o)), (x2, (b, n, k))])
        _check_buffers("bracket", [(w_abs, (b, o, k))])
        _check_buffers("bracket", [(vb, (b, n, o))], torch.bfloat16)
        eps = bracket_eps(k)
        count = torch.zeros(1, dtype=torch.int64)
        self._fn(
            z.data_ptr(),
            zeta.data_ptr(),
            vb.data_ptr(),
            x2.data_ptr(),
            w_abs.data_ptr(),
            count.data_ptr(),
            b,
            n,
            o,
            k,
            offset,
            gain,
            1.0 / (1.0 + eps),
            1.0 / (1.0 - eps),
            flush_slack(k, max_x2, max_w),
        )
        return int(count)

    def self_check(self, fn: Any) -> str | None:
        """The kernel on outputs drawn near rounding boundaries, with their bfloat16 variance
        from this machine's bfloat16 matmul, against float64 arithmetic."""
        probe = type(self)()
        probe._fn = fn
        for b, n, o, k in ((2, 37, 70, 384), (1, 64, 33, 1000), (3, 5, 16, 7)):
            found = _bracket_mismatch(probe, b, n, o, k)
            if found is not None:
                return found
        return None


def _bracket_mismatch(kernel: BracketKernel, b: int, n: int, o: int, k: int) -> str | None:
    gen = torch.Generator().manual_seed(b * 1000 + k)
    f32 = torch.float32  # (not the default dtype, which a user may have set to float64)
    levels = torch.randint(-127, 128, (b, n, k), generator=gen).float()
    levels[0, 0] = 0.0  # an all-zero vector
    x2 = levels.square()
    w_abs = torch.rand(b, o, k, generator=gen, dtype=f32)
    w_abs *= torch.rand(b, o, 1, generator=gen, dtype=f32)
    offset, gain = 0.3, 1e-5
    exact = torch.bmm(x2.double(), w_abs.double().transpose(1, 2))
    vb = torch.bmm(x2.bfloat16(), w_abs.bfloat16().transpose(1, 2))
    eps = bracket_eps(k)
    rel = float(((vb.double() - exact).abs() / exact.clamp_min(1e-300)).max())
    if not rel <= eps:
        return f"the bfloat16 matmul is off by {rel:.3g} relative (bound {eps:.3g})"
    zeta = torch.randn(b, n, o, generator=gen, dtype=f32)
    sigma = (exact * gain + offset).sqrt()
    # signals that put about half of the outputs within the bracket of a rounding boundary
    frac = torch.rand(b, n, o, generator=gen, dtype=torch.float64)
    near = torch.rand(b, n, o, generator=gen, dtype=f32) < 0.5
    z64 = torch.randint(-200, 200, (b, n, o), generator=gen).double() + 0.5
    z64 = torch.where(near, z64 + (frac - 0.5) * 2 * eps * sigma * zeta.double().abs(), z64 + frac)
    z64 = z64 - sigma * zeta.double()
    z = z64.float()
    ref = (z.double() + sigma * zeta.double()).round()
    out = z.clone()
    count = kernel.noisy_(
        out, zeta, vb, x2, w_abs, offset, gain, float(x2.max()), float(w_abs.max())
    )
    got = out.double().round()
    # outputs within float32 rounding of a tie may land either way
    tie = ((z.double() + sigma * zeta.double()) % 1.0 - 0.5).abs() < 1e-4
    bad = (got != ref) & ~tie
    if bool(bad.any()):
        return f"{int(bad.sum())} of {bad.numel()} outputs at another level than float64's"
    if count == 0 and b * n * o > 100:
        return "no output took the float32 variance on outputs chosen near boundaries"
    return None


#: The process's kernel
BRACKET = BracketKernel()


def abs_bf16(w_abs: Tensor) -> tuple[Tensor, float]:
    """``w_abs`` (float32, contiguous) rounded to bfloat16, and a bound on its largest value,
    kept on the tensor it views (or on itself) until that changes (its version counter, as
    :func:`aimc._intmvm.cached_limbs`), so that the tile matrices convert once, not at every
    forward or bound-management round. A view that is not the whole of a contiguous base is
    converted on its own."""
    base = w_abs if w_abs._base is None else w_abs._base
    whole = base is w_abs or (
        base.is_contiguous()
        and w_abs.is_contiguous()
        and w_abs.numel() == base.numel()
        and w_abs.storage_offset() == base.storage_offset()
    )
    if not whole:
        return w_abs.to(torch.bfloat16).contiguous(), float(w_abs.max()) if w_abs.numel() else 0.0
    version = 0 if base.is_inference() else base._version
    cached = getattr(base, "_aimc_abs_bf16", None)
    if cached is None or cached[0] != version or cached[1].numel() != base.numel():
        top = float(base.max()) if base.numel() else 0.0
        cached = (version, base.detach().to(torch.bfloat16).contiguous(), top)
        base._aimc_abs_bf16 = cached  # type: ignore[attr-defined]
    return (cached[1] if base is w_abs else cached[1].view(w_abs.shape)), cached[2]
