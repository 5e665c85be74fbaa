"""A layer's tile matrices in one pass over its weights (eager CPU forwards that rebuild them).

Where the tiles change at every forward (training: the optimizer moves the weights), laying
the weight ``(G, O, K)`` out as tile matrices takes six passes in tensor code: each tile
row's maximum and minimum (weight scaling), the division into the contiguous tiles, the
multiplication by the ADC-per-DAC gain, ``|W|`` for ``pcm_read`` weight noise, and, where the
MVM runs in int8, the limbs (:mod:`aimc._intmvm`), which read the tiles once more. This
kernel (:data:`SOURCE`) does it row by row: each tile row of the weight is read once, its
scale (column-wise weight scaling) taken from its own maximum, and the tile row, its
absolute values and its limbs written while it is in cache. Per-tile scaling takes one more
pass over the weight for the rows' maxima first. HWA's post-step (a ``fixed`` clip and a
``columnwise`` remap, five tensor passes) is one more mode, in place. The values are those of
the tensor code bit for bit (the same float32 divisions and products; the limbs by the same
C++ as :mod:`aimc._intmvm`'s), checked at build on even and uneven splits, each scaling,
gain, and rows with zeros, NaN and infinities; where the check fails the tensor code runs,
warned once.
Switched off with ``AIMC_TILES_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._intmvm import LIMB_SOURCE
from ._native import _check_buffers, _NativeKernel, nan_equal
from .config import MappingConfig
from .functional import TileLayout, tile_weights

#: ``kernel(mode, w, tiles, wabs, limbs, lscale, s, in_start, out_start, g, o, k, ti, ci, to,
#: cols, omega, gain, flags)``: the weight ``w`` ``(g, o, k)`` as tiles ``(g * ti, to * cols,
#: ci)``, input part ``t`` holding inputs ``in_start[t]..in_start[t + 1]`` in its first rows,
#: output part ``p`` outputs ``out_start[p]..`` in its first columns (int64 arrays; zeros
#: after each part). Mode 0: ``s`` ``(g * ti, to * cols)`` gets each tile row's max |w| (NaN
#: if it holds NaN). Mode 1: each tile row divided by its ``s`` (flag 1), times ``gain``
#: (flag 2), into ``tiles``; mode 2: ``s`` first set to the row's ``max |w| / omega`` (1 for
#: an all-zero row), then as mode 1. With ``wabs``: ``|tiles|`` before the gain (the forward's
#: ``TileWeights.w_abs``); with ``limbs``: the limbs ``(3, g * ti, to * cols, ci)`` of the
#: tiles (after the gain) and their scales ``lscale``. Mode 3: HWA's post-step on the weight
#: in place (``tiles``: the weight), each (group, output, input part) segment clipped to
#: ``+-omega`` (flag 4) and divided by its max |w|, which ``s`` ``(g, ti, o)`` gets.
SOURCE = (
    LIMB_SOURCE
    + r"""
extern "C" void kernel(int64_t mode, int64_t w_, int64_t tiles_, int64_t wabs_, int64_t limbs_,
                       int64_t lscale_, int64_t s_, int64_t in_start_, int64_t out_start_,
                       int64_t g, int64_t o, int64_t k, int64_t ti, int64_t ci, int64_t to,
                       int64_t cols, float omega, float gain, int64_t flags) {
    const float* w = reinterpret_cast<const float*>(w_);
    float* tiles = reinterpret_cast<float*>(tiles_);
    float* wabs = reinterpret_cast<float*>(wabs_);
    int8_t* limbs = reinterpret_cast<int8_t*>(limbs_);
    float* lscale = reinterpret_cast<float*>(lscale_);
    float* s = reinterpret_cast<float*>(s_);
    const int64_t* in_start = reinterpret_cast<const int64_t*>(in_start_);
    const int64_t* out_start = reinterpret_cast<const int64_t*>(out_start_);
    const bool divide = (flags & 1) != 0, scaled = (flags & 2) != 0;
    if (mode == 3) {
        // HWA's post-step on the weight itself (tiles_: w, in place): each (group, output,
        // input part) segment clipped to +-omega (flag 4), then divided by its max |w|
        // (at least 1e-12, NaN kept), which s ((g, ti, o)) gets
        float* wm = reinterpret_cast<float*>(tiles_);
        const bool clip = (flags & 4) != 0;
        const VecF hi(omega), lo(-omega);
        constexpr int64_t V = VecF::size();
        #pragma omp parallel for schedule(static)
        for (int64_t task = 0; task < g * o * ti; ++task) {
            const int64_t gi = task / (o * ti), oi = task / ti % o, t = task % ti;
            const int64_t j0 = in_start[t], n = in_start[t + 1] - j0;
            float* seg = wm + (gi * o + oi) * k + j0;
            if (clip) {
                for (int64_t j = 0; j < n; j += V) {
                    const int64_t c = std::min(V, n - j);
                    // clamp: NaN stays NaN (as torch.clamp)
                    VecF v = c == V ? VecF::loadu(seg + j) : VecF::loadu(seg + j, c);
                    v = at::vec::clamp(v, lo, hi);
                    if (c == V) v.store(seg + j); else v.store(seg + j, c);
                }
            }
            const float m = n > 0 ? aimc_abs_max(seg, n) : 0.0f;
            const float sc = std::isnan(m) ? m : std::max(m, 1e-12f);
            s[(gi * ti + t) * o + oi] = sc;
            const VecF vs(sc);
            for (int64_t j = 0; j < n; j += V) {
                const int64_t c = std::min(V, n - j);
                const VecF v = (c == V ? VecF::loadu(seg + j) : VecF::loadu(seg + j, c)) / vs;
                if (c == V) v.store(seg + j); else v.store(seg + j, c);
            }
        }
        return;
    }
    const int64_t width = to * cols, rows = g * ti * width;
    const int64_t plane = rows * ci;
    // in the weight's order (group, output, input part): each tile row reads on where the
    // one before stopped (the tiles' rows, one stream per input part, are written in order)
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < rows; ++task) {
        const int64_t gi = task / (width * ti), op = task / ti % width, t = task % ti;
        const int64_t b = gi * ti + t, row = b * width + op, part = op / cols, r = op % cols;
        const int64_t o_first = out_start[part], o_count = out_start[part + 1] - o_first;
        const int64_t j0 = in_start[t];
        // a padded output column reads nothing: all zeros
        const int64_t n = r < o_count ? in_start[t + 1] - j0 : 0;
        const float* src = w + (gi * o + o_first + r) * k + j0;
        if (mode == 0) {
            s[row] = n > 0 ? aimc_abs_max(src, n) : 0.0f;
            continue;
        }
        float sc = 1.0f;
        if (mode == 2) {
            const float m = n > 0 ? aimc_abs_max(src, n) : 0.0f;
            sc = m == 0.0f ? 1.0f : m / omega;  // (NaN stays NaN)
            s[row] = sc;
        } else if (divide) {
            sc = s[row];
        }
        const VecF vs(sc), vg(gain);
        float* dst = tiles + row * ci;
        constexpr int64_t V = VecF::size();
        for (int64_t j = 0; j < ci; j += V) {
            const int64_t c = std::min(V, ci - j);
            // the padding's zeros divided and scaled like the weights (0 / NaN is NaN)
            const int64_t have = std::max<int64_t>(0, std::min(c, n - j));
            VecF v = have == V ? VecF::loadu(src + j)
                               : (have > 0 ? VecF::loadu(src + j, have) : VecF(0.0f));
            if (divide || mode == 2) v = v / vs;
            // |W| of the normalised weights, before the gain
            if (wabs != nullptr) {
                float* a = wabs + row * ci + j;
                if (c == V) v.abs().store(a); else v.abs().store(a, c);
            }
            if (scaled) v = v * vg;
            if (c == V) v.store(dst + j); else v.store(dst + j, c);
        }
        if (limbs != nullptr) {
            int8_t* d = limbs + row * ci;
            lscale[row] = aimc_limb_row(dst, ci, d, d + plane, d + 2 * plane);
        }
    }
}
"""
)


class NativeTileKernel(_NativeKernel):
    """The tile matrices, ``|W|`` and the int8 limbs of a weight in one pass
    (:data:`SOURCE`), where the tensor code makes six; the same values bit for bit (checked at
    build). Switched off with ``AIMC_TILES_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``."""

    source = SOURCE
    argtypes = ("int64_t",) * 16 + ("float", "float", "int64_t")
    envs = ("AIMC_FUSED_KERNELS", "AIMC_TILES_NATIVE")
    warning = (
        "aimc: the tile kernel could not be built ({failed}); the tiles are laid out by tensor "
        "operations instead (the same values, slower). Set AIMC_TILES_NATIVE=0 to skip the "
        "attempt."
    )

    def build(
        self,
        w: Tensor,
        layout: TileLayout,
        mapping: MappingConfig,
        gain: float,
        want_abs: bool,
        want_limbs: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor] | None]:
        """``(tiles, scale, |W|, (limbs, limb scales))`` of the weight ``w`` (contiguous
        float32 CPU ``(G, O, K)``, checked): :func:`aimc.functional.tile_weights`'s tiles and
        scale, the tiles multiplied by ``gain`` where it is not 1, the absolute values of the
        tiles before that (``want_abs``) and :func:`aimc._intmvm.cached_limbs`'s limbs of the
        tiles (``want_limbs``; None where a row is not finite), the unwanted parts None."""
        lo = layout
        g, o, k = _check_weight(w, lo)
        _check_buffers("tile", [(w, (g, o, k))])
        b, width, ci = lo.batch, lo.padded_out, lo.rows
        tiles = torch.empty(b, width, ci, dtype=torch.float32)
        wabs = torch.empty(b, width, ci, dtype=torch.float32) if want_abs else None
        limbs = torch.empty(3, b, width, ci, dtype=torch.int8) if want_limbs else None
        lscale = torch.empty(b, width, dtype=torch.float32) if want_limbs else None
        in_start, out_start = _starts(lo.in_sizes), _starts(lo.out_sizes)
        omega = mapping.weight_scaling_omega
        scale = per_row = None
        mode, flags = 1, 2 if gain != 1.0 else 0
        if omega > 0 and mapping.weight_scaling_columnwise:
            mode, scale = 2, torch.empty(b, width, dtype=torch.float32)
            per_row = scale
        elif omega > 0:
            w_max = torch.empty(b, width, dtype=torch.float32)
            self._call(0, w, None, None, None, None, w_max, in_start, out_start, lo, 0.0, 1.0, 0)
            w_max = w_max.view(b, lo.n_out, lo.cols).amax(dim=-1)  # (B, to)
            scale = torch.where(w_max == 0, torch.ones_like(w_max), w_max / omega)
            per_row = scale.repeat_interleave(lo.cols, 1).contiguous()
            flags |= 1
        self._call(
            mode,
            w,
            tiles,
            wabs,
            limbs,
            lscale,
            per_row,
            in_start,
            out_start,
            lo,
            omega,
            gain,
            flags,
        )
        lmb = None
        if limbs is not None and lscale is not None and bool(torch.isfinite(lscale).all()):
            lmb = (limbs, lscale)
        return tiles, scale, wabs, lmb

    def clip_remap_(self, w: Tensor, layout: TileLayout, clip: float | None, scale: Tensor) -> None:
        """HWA's post-step on the weight ``w`` (contiguous float32 CPU ``(G, O, K)``, in place):
        clipped to ``+-clip`` (None: not clipped), then each tile's column (the ``O`` x ``ti``
        segments of its input parts) divided by its max ``|w|`` (at least ``1e-12``), which
        ``scale`` ``(G, ti, O)`` gets: :func:`aimc.hwa.post_step`'s ``fixed`` clip and
        ``columnwise`` remap of a layer without analog bias, bit for bit (checked)."""
        lo = layout
        g, o, k = _check_weight(w, lo)
        _check_buffers("tile", [(w, (g, o, k)), (scale, (g, lo.n_in, o))])
        in_start, out_start = _starts(lo.in_sizes), _starts([o])
        flags = 4 if clip is not None else 0
        bound = clip if clip is not None else 0.0
        self._call(3, w, w, None, None, None, scale, in_start, out_start, lo, bound, 1.0, flags)

    def _call(
        self,
        mode: int,
        w: Tensor,
        tiles: Tensor | None,
        wabs: Tensor | None,
        limbs: Tensor | None,
        lscale: Tensor | None,
        s: Tensor | None,
        in_start: Tensor,
        out_start: Tensor,
        lo: TileLayout,
        omega: float,
        gain: float,
        flags: int,
    ) -> None:
        ptrs = (0 if t is None else t.data_ptr() for t in (w, tiles, wabs, limbs, lscale, s))
        sizes = (lo.groups, lo.out_size, lo.in_size, lo.n_in, lo.rows, lo.n_out, lo.cols)
        self._fn(mode, *ptrs, in_start.data_ptr(), out_start.data_ptr(), *sizes, omega, gain, flags)

    def self_check(self, fn: Any) -> str | None:
        """The kernel against the tensor code (and :mod:`aimc._intmvm`'s limbs arithmetic) on
        even and uneven splits, each weight scaling, a gain, and rows with zeros, NaN and
        infinities; the post-step's clip and remap likewise."""
        return self._first_mismatch(fn, _cases(), _mismatch) or self._first_mismatch(
            fn, _remap_cases(), _remap_mismatch
        )


def _starts(sizes: list[int]) -> Tensor:
    """Where each part of ``sizes`` starts, and the end: int64 ``(len(sizes) + 1,)``."""
    return torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)


def _check_weight(w: Tensor, lo: TileLayout) -> tuple[int, int, int]:
    """``w``'s ``(G, O, K)``, or a ValueError unless it is the layout's."""
    g, o, k = w.shape
    if (g, o, k) != (lo.groups, lo.out_size, lo.in_size):
        raise ValueError(
            f"aimc._tiles: weight {tuple(w.shape)} for a layout of "
            f"{(lo.groups, lo.out_size, lo.in_size)}"
        )
    return g, o, k


def tiles_reference(
    w: Tensor, layout: TileLayout, mapping: MappingConfig, gain: float
) -> tuple[Tensor, Tensor | None]:
    """``(tiles, scale, |W|)`` as the tensor code of the forward computes them
    (:func:`aimc.functional.tile_weights`, ``|W|`` of its tiles, then the gain where it is not
    1): what :meth:`NativeTileKernel.build` must equal."""
    tiles, scale = tile_weights(w, layout, mapping)
    w_abs = tiles.abs()
    if gain != 1.0:
        tiles = tiles * gain
    return tiles, scale, w_abs


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for g, o, k, max_in, max_out, omega, columnwise, gain in [
        (1, 37, 45, 0, 0, 1.0, True, 1.0),
        (2, 40, 60, 24, 16, 1.0, True, 1.7),  # uneven output split (16, 16, 8 -> 14, 13, 13)
        (1, 33, 100, 40, 12, 1.0, False, 0.6),  # uneven input split, per-tile scaling
        (1, 21, 50, 20, 0, 0.0, False, 2.5),  # no weight scaling
        (2, 9, 17, 0, 4, 0.5, False, 1.0),
    ]:
        w = torch.randn(g, o, k, generator=gen, dtype=torch.float32) * 0.3
        w[0, 3] = 0.0  # an all-zero row
        w[0, 5, 2] = -0.0
        w[-1, 1, 1] = 40.0  # an outlier
        cases.append((w, g, max_in, max_out, omega, columnwise, gain))
    for special in (math.nan, math.inf):
        w = cases[1][0].clone()
        w[1, 6, 30] = special
        cases.append((w, *cases[1][1:]))
        w = cases[2][0].clone()
        w[0, 4, 55] = special
        cases.append((w, *cases[2][1:]))
    return cases


def _mismatch(
    kernel: NativeTileKernel,
    w: Tensor,
    groups: int,
    max_in: int,
    max_out: int,
    omega: float,
    columnwise: bool,
    gain: float,
) -> str | None:
    mapping = MappingConfig(
        max_input_size=max_in,
        max_output_size=max_out,
        weight_scaling_omega=omega,
        weight_scaling_columnwise=columnwise,
    )
    lo = TileLayout.build(groups, w.shape[1], w.shape[2], mapping)
    tiles, scale, wabs, limbs = kernel.build(w, lo, mapping, gain, True, True)
    ref, ref_scale, ref_abs = tiles_reference(w, lo, mapping, gain)
    what = f"(layout {lo}, omega {omega}, columnwise {columnwise}, gain {gain})"
    if (scale is None) != (ref_scale is None) or (
        scale is not None and ref_scale is not None and not nan_equal(scale, ref_scale)
    ):
        return f"scales differ {what}"
    if not nan_equal(tiles, ref):
        return f"tiles differ {what}"
    if wabs is None or not nan_equal(wabs, ref_abs):
        return f"|tiles| differ {what}"
    finite = bool(torch.isfinite(ref).all())
    if (limbs is not None) != finite:
        return f"limbs {'missing' if finite else 'kept for a non-finite row'} {what}"
    if limbs is not None:
        lmb, ls = limbs
        back = lmb[0].double() + (lmb[1].double() + lmb[2].double() / 254) / 254
        err = (back * ls.double().unsqueeze(-1) - ref.double()).abs()
        if bool((err > ls.double().unsqueeze(-1) * 2.0**-16.9).any()):
            return f"limbs off their weights {what}"
    return None


def clip_remap_reference(
    w: Tensor, layout: TileLayout, clip: float | None
) -> tuple[Tensor, Tensor]:
    """``(w, scale)`` as :func:`aimc.hwa.post_step`'s tensor code computes them for a ``fixed``
    clip and a ``columnwise`` remap (no analog bias): what
    :meth:`NativeTileKernel.clip_remap_` must equal."""
    from .hwa import column_maxima, divide_columns_  # (aimc.hwa imports this module)

    w = w.clone()
    if clip is not None:
        w.clamp_(-clip, clip)  # hwa._clip's fixed clip
    scale = column_maxima(w, layout).clamp_min(1e-12)
    divide_columns_(w, scale, layout)
    return w, scale


def _remap_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for g, o, k, max_in, clip in [(1, 9, 40, 16, 1.0), (2, 7, 64, 32, None), (1, 5, 37, 0, 0.3)]:
        w = torch.randn(g, o, k, generator=gen, dtype=torch.float32)
        w[0, 1] = 0.0  # an all-zero row: divided by 1e-12
        w[0, 2, 3] = math.nan
        w[-1, 3, 5] = -math.inf
        cases.append((w, max_in, clip))
    return cases


def _remap_mismatch(
    kernel: NativeTileKernel, w: Tensor, max_in: int, clip: float | None
) -> str | None:
    lo = TileLayout.build(w.shape[0], w.shape[1], w.shape[2], MappingConfig(max_input_size=max_in))
    got = w.clone()
    scale = torch.full((lo.groups, lo.n_in, lo.out_size), 7.0, dtype=torch.float32)
    kernel.clip_remap_(got, lo, clip, scale)
    ref, ref_scale = clip_remap_reference(w, lo, clip)
    if not (nan_equal(got, ref) and nan_equal(scale, ref_scale)):
        return f"post-step clip and remap differ (layout {lo}, clip {clip})"
    return None


#: The kernel, one per process.
TILES = NativeTileKernel()
