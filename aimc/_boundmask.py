"""The output-bound mask of the input gradient as one hand-written CPU kernel.

AIHWKIT's tiles zero the output gradient of every tile output at the ADC bound before the input
gradient (``handle_output_bound``). aimc's backward takes the plain ``grad @ W`` and subtracts,
for each input tile ``t``, the part of its outputs at the bound:

    gx[n, tile t] -= sum_{o: |levels[t, n, o]| > below[t, n, o // cols]} grad[n, o] * W[o, tile t]

(``below`` the largest ADC level below the bound in the tile's own units:
:meth:`aimc.mvm.TileOutputs.bound_thresholds`). As tensor code that is a mask over every tile
output (``abs``, a per-output-tile maximum, a comparison), ``nonzero``, a gather of the masked
gradients and one sparse (CSR) product per tile with a copy of the tile's weights: 71 ms of a
947 ms ``standard_hwa`` training step of the ``bench_hwa_step.py`` MLP stack on the AVX-512
host, where 0.8–2.5 % of the tile outputs are at the bound. This kernel (:data:`SOURCE`) reads
each level once (a block of 64 at a time, skipped where none is above its threshold) and, for
each masked output, subtracts the gradient times the tile's row of ``W`` from the vector's
input gradient in place (the row of ``gx`` stays in cache across its tile's masked outputs):
no mask, no index lists, no copies. Its differences from the tensor code are float rounding
only (each masked term subtracted from ``gx`` in turn instead of summed first; checked at
build against float64 arithmetic; where the check fails the tensor code runs, warned once).
Switched off with ``AIMC_MASK_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from ._native import _check_buffers, _NativeKernel

#: ``kernel(lev, kind, below, grad, w, gx, out_map, starts, g, ti, n, to, cols, o, k)``:
#: ``lev`` ``(g * ti, n, to * cols)`` levels (kind 1: int8, 2: int16), ``below`` ``(g * ti, n,
#: to)`` int32 (a level counts where its magnitude exceeds it), ``grad`` ``(g, n, o)``, ``w``
#: ``(g, o, k)`` and ``gx`` ``(g, n, k)`` float32 (``gx`` updated in place), ``out_map``
#: ``(to * cols)`` int64 (each padded output's column, -1 for padding; 0: the identity),
#: ``starts`` ``(ti + 1)`` int64 (each input tile's first input). Kind 3: ``lev`` is the masked
#: outputs' bits instead, ``(g * ti, n, words)`` int64 words (``words = ceil(to * cols / 64)``,
#: output ``j`` at bit ``j % 64`` of word ``j // 64``; ``below`` unused). Kinds 4 and 5 write
#: those bits from int8 and int16 levels and ``below`` into ``gx`` (nothing subtracted; ``grad``,
#: ``w``, ``out_map``, ``starts`` unused).
SOURCE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

// vectors per list chunk of the first pass
constexpr int64_t AIMC_ROWS = 32;

struct AimcEntry {
    int32_t col;
    float s;
};

using AimcVec = at::vec::Vectorized<float>;

// acc[0..len) -= s * w[0..len): each product rounded, then the difference (as the scalar code;
// inductor builds with -fno-tree-loop-vectorize and -ffp-contract=off)
static inline void aimc_axpy(float* acc, const float* w, float s, int64_t len) {
    const AimcVec vs(s);
    int64_t i = 0;
    for (; i + AimcVec::size() <= len; i += AimcVec::size()) {
        (AimcVec::loadu(acc + i) - vs * AimcVec::loadu(w + i)).store(acc + i);
    }
    for (; i < len; ++i) acc[i] -= s * w[i];
}

static inline void aimc_push(std::vector<AimcEntry>& list, int64_t j, const int64_t* out_map,
                             const float* gr) {
    const int64_t col = out_map != nullptr ? out_map[j] : j;
    if (col >= 0) list.push_back({static_cast<int32_t>(col), gr[col]});
}

// emit(j) for every level j of lr[c0..c1) whose magnitude exceeds thr (|level| fits T: the
// ADC's bound is within the type's range), in order
template <typename T, typename Emit>
static inline void aimc_scan(const T* lr, int64_t c0, int64_t c1, int32_t thr, Emit&& emit) {
    if (thr >= static_cast<int32_t>(std::numeric_limits<T>::max())) return;  // none above
    int64_t j = c0;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (sizeof(T) == 2) {
        const __m512i vt = _mm512_set1_epi16(static_cast<int16_t>(thr));
        for (; j + 32 <= c1; j += 32) {
            const __m512i v = _mm512_abs_epi16(_mm512_loadu_si512(lr + j));
            uint32_t m = _mm512_cmpgt_epi16_mask(v, vt);
            while (m != 0) {
                emit(j + __builtin_ctz(m));
                m &= m - 1;
            }
        }
    } else {
        const __m512i vt = _mm512_set1_epi8(static_cast<int8_t>(thr));
        for (; j + 64 <= c1; j += 64) {
            const __m512i v = _mm512_abs_epi8(_mm512_loadu_si512(lr + j));
            uint64_t m = _mm512_cmpgt_epi8_mask(v, vt);
            while (m != 0) {
                emit(j + __builtin_ctzll(m));
                m &= m - 1;
            }
        }
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (sizeof(T) == 2) {
        const __m256i vt = _mm256_set1_epi16(static_cast<int16_t>(thr));
        for (; j + 16 <= c1; j += 16) {
            const __m256i v = _mm256_abs_epi16(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lr + j)));
            // two mask bits per 16-bit lane: keep the even ones
            uint32_t m = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi16(v, vt)))
                         & 0x55555555u;
            while (m != 0) {
                emit(j + (__builtin_ctz(m) >> 1));
                m &= m - 1;
            }
        }
    } else {
        const __m256i vt = _mm256_set1_epi8(static_cast<int8_t>(thr));
        for (; j + 32 <= c1; j += 32) {
            const __m256i v = _mm256_abs_epi8(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lr + j)));
            uint32_t m = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(v, vt)));
            while (m != 0) {
                emit(j + __builtin_ctz(m));
                m &= m - 1;
            }
        }
    }
#endif
    for (; j < c1; ++j) {
        const int32_t l = static_cast<int32_t>(lr[j]);
        if ((l < 0 ? -l : l) > thr) emit(j);
    }
}

// emit(j) for every set bit j of a row of bits (bit j in words[j >> 6] at j & 63), in order
template <typename Emit>
static inline void aimc_scan_bits(const uint64_t* words, int64_t count, Emit&& emit) {
    for (int64_t wi = 0; wi < count; ++wi) {
        uint64_t m = words[wi];
        while (m != 0) {
            emit((wi << 6) + __builtin_ctzll(m));
            m &= m - 1;
        }
    }
}

// the masked outputs of a (tile, vector) row, emitted in order: from its levels and the per
// output tile thresholds, or from its bits
template <typename T>
struct AimcLevelRows {
    const T* lev;
    const int32_t* below;
    int64_t to, cols;
    template <typename Emit>
    void operator()(int64_t row, Emit&& emit) const {
        const T* lr = lev + row * to * cols;
        const int32_t* th = below + row * to;
        for (int64_t kt = 0; kt < to; ++kt) aimc_scan(lr, kt * cols, (kt + 1) * cols, th[kt], emit);
    }
};

struct AimcBitRows {
    const uint64_t* bits;
    int64_t words;
    template <typename Emit>
    void operator()(int64_t row, Emit&& emit) const {
        aimc_scan_bits(bits + row * words, words, emit);
    }
};

// the bits of AimcLevelRows' masked outputs, (rows, words) (bit j of a row: output j)
template <typename T>
static void aimc_pack(const AimcLevelRows<T>& scan, uint64_t* bits, int64_t rows,
                      int64_t words) {
    #pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        uint64_t* out = bits + row * words;
        std::fill(out, out + words, uint64_t{0});
        scan(row, [out](int64_t j) { out[j >> 6] |= uint64_t{1} << (j & 63); });
    }
}

template <typename Scan>
static void aimc_subtract_masked(const Scan& scan, const float* grad, const float* w,
                                 float* gx, const int64_t* out_map, const int64_t* starts,
                                 int64_t g, int64_t ti, int64_t n, int64_t o, int64_t k) {
    const int64_t rows = g * n;
    const int64_t chunks = (rows + AIMC_ROWS - 1) / AIMC_ROWS;
    // pass 1: each (tile, vector)'s masked outputs and their gradients, listed per chunk of
    // vectors (one list per chunk, so that threads never share one)
    std::vector<std::vector<AimcEntry>> lists(chunks);
    std::vector<int64_t> first(g * ti * n + 1, 0), count(g * ti * n, 0);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < chunks; ++ch) {
        std::vector<AimcEntry>& list = lists[ch];
        for (int64_t row = ch * AIMC_ROWS; row < std::min(rows, (ch + 1) * AIMC_ROWS); ++row) {
            const int64_t gi = row / n, v = row % n;
            const float* gr = grad + row * o;
            for (int64_t t = 0; t < ti; ++t) {
                const int64_t b = gi * ti + t;
                first[b * n + v] = static_cast<int64_t>(list.size());
                scan(b * n + v, [&](int64_t j) { aimc_push(list, j, out_map, gr); });
                count[b * n + v] = static_cast<int64_t>(list.size()) - first[b * n + v];
            }
        }
    }
    // pass 2: per (group, tile, block of up to 256 of the tile's inputs: several tasks per tile
    // for the threads) every vector's masked terms. (Narrower blocks, whose columns of W would
    // stay in L2, measured slower: a masked row reads only its own row of W, too few reuse it.)
    constexpr int64_t span = 256;
    std::vector<int64_t> task_tile, task_lo, task_hi;
    for (int64_t gi = 0; gi < g; ++gi) {
        for (int64_t t = 0; t < ti; ++t) {
            for (int64_t i = starts[t]; i < starts[t + 1]; i += span) {
                task_tile.push_back(gi * ti + t);
                task_lo.push_back(i);
                task_hi.push_back(std::min(i + span, starts[t + 1]));
            }
        }
    }
    const int64_t tasks = static_cast<int64_t>(task_tile.size());
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
        const int64_t b = task_tile[task], gi = b / ti;
        const int64_t i0 = task_lo[task], len = task_hi[task] - i0;
        const float* wg = w + gi * o * k + i0;
        for (int64_t v = 0; v < n; ++v) {
            const int64_t c = count[b * n + v];
            if (c == 0) continue;
            const AimcEntry* e = lists[(gi * n + v) / AIMC_ROWS].data() + first[b * n + v];
            float* acc = gx + (gi * n + v) * k + i0;
            for (int64_t m = 0; m < c; ++m) {
                aimc_axpy(acc, wg + static_cast<int64_t>(e[m].col) * k, e[m].s, len);
            }
        }
    }
}

extern "C" void kernel(int64_t lev, int64_t kind, int64_t below, int64_t grad, int64_t w,
                       int64_t gx, int64_t out_map, int64_t starts, int64_t g, int64_t ti,
                       int64_t n, int64_t to, int64_t cols, int64_t o, int64_t k) {
    const int32_t* bp = reinterpret_cast<const int32_t*>(below);
    const float* gp = reinterpret_cast<const float*>(grad);
    const float* wp = reinterpret_cast<const float*>(w);
    float* xp = reinterpret_cast<float*>(gx);
    const int64_t* mp = reinterpret_cast<const int64_t*>(out_map);
    const int64_t* sp = reinterpret_cast<const int64_t*>(starts);
    const int64_t words = (to * cols + 63) / 64;
    const AimcLevelRows<int8_t> rows8{reinterpret_cast<const int8_t*>(lev), bp, to, cols};
    const AimcLevelRows<int16_t> rows16{reinterpret_cast<const int16_t*>(lev), bp, to, cols};
    if (kind == 4 || kind == 5) {  // pack: gx is the bits
        uint64_t* bits = reinterpret_cast<uint64_t*>(gx);
        if (kind == 4) aimc_pack(rows8, bits, g * ti * n, words);
        else aimc_pack(rows16, bits, g * ti * n, words);
    } else if (kind == 3) {
        const AimcBitRows rows{reinterpret_cast<const uint64_t*>(lev), words};
        aimc_subtract_masked(rows, gp, wp, xp, mp, sp, g, ti, n, o, k);
    } else if (kind == 1) {
        aimc_subtract_masked(rows8, gp, wp, xp, mp, sp, g, ti, n, o, k);
    } else {
        aimc_subtract_masked(rows16, gp, wp, xp, mp, sp, g, ti, n, o, k);
    }
}
"""

_KINDS = {torch.int8: 1, torch.int16: 2}


class NativeBoundMaskKernel(_NativeKernel):
    """The input gradient less the outputs at the ADC bound, per input tile, in one pass over the
    ADC's integer levels (:data:`SOURCE`), where the tensor code builds a mask, its index lists
    and one sparse product per tile. Within float32 rounding of the exact result (checked at
    build against float64 arithmetic; where the check fails the tensor code runs, warned once).
    Switched off with ``AIMC_MASK_NATIVE=0`` or ``AIMC_FUSED_KERNELS=0``."""

    source = SOURCE
    argtypes = ("int64_t",) * 15
    envs = ("AIMC_FUSED_KERNELS", "AIMC_MASK_NATIVE")
    warning = (
        "aimc: the output-bound mask kernel could not be built ({failed}); the input gradient's "
        "mask runs as tensor operations instead (the same values to float rounding, slower). "
        "Set AIMC_MASK_NATIVE=0 to skip the attempt."
    )

    @staticmethod
    def takes(levels: Tensor) -> bool:
        """Whether the kernel reads levels of this type (int8 or int16 on the CPU)."""
        return levels.dtype in _KINDS and levels.device.type == "cpu"

    def subtract_masked(
        self,
        gx: Tensor,
        grad: Tensor,
        levels: Tensor,
        below: Tensor,
        w: Tensor,
        tiles: int,
        in_sizes: list[int],
        out_map: Tensor | None,
    ) -> None:
        """``gx`` ``(G, N, K)`` less, for each input tile ``t`` and vector ``n``, ``grad[:, n, o]
        * w[:, o, tile t]`` summed over the outputs ``o`` whose level ``|levels[t, n, o_pad]|``
        exceeds ``below[t, n, o_pad // cols]``, in place: ``levels`` ``(G * ti, N, O_pad)`` int8
        or int16, ``below`` ``(G * ti, N, to)`` int32, ``grad`` ``(G, N, O)``, ``w`` ``(G, O, K)``
        float32, ``out_map`` ``(O_pad,)`` int64 (each padded output's column, -1 for padding) or
        None (no padding); ``in_sizes`` the inputs of each tile. Contiguous CPU tensors
        (checked)."""
        g, n, k = gx.shape
        o = grad.shape[-1]
        b, _, width = levels.shape
        to = below.shape[-1]
        kind = _KINDS.get(levels.dtype, 0)
        if kind == 0:
            raise ValueError(f"aimc._boundmask: levels as {levels.dtype}; allowed: int8, int16")
        if b != g * tiles or len(in_sizes) != tiles or sum(in_sizes) != k or width % max(to, 1):
            raise ValueError(
                f"aimc._boundmask: levels {tuple(levels.shape)}, thresholds {tuple(below.shape)} "
                f"and {tiles} input tiles of {in_sizes} do not fit a gradient {tuple(gx.shape)}"
            )
        _check_buffers("output-bound mask", [(levels, (b, n, width))], levels.dtype)
        _check_buffers("output-bound mask", [(below, (b, n, to))], torch.int32)
        self._check_gradient(gx, grad, w, b, tiles, in_sizes, width, out_map)
        starts = torch.tensor([0, *itertools.accumulate(in_sizes)], dtype=torch.int64)
        ptrs = (levels.data_ptr(), kind, below.data_ptr(), grad.data_ptr(), w.data_ptr())
        m = out_map.data_ptr() if out_map is not None else 0
        self._fn(*ptrs, gx.data_ptr(), m, starts.data_ptr(), g, tiles, n, to, width // to, o, k)

    def pack_bits(self, levels: Tensor, below: Tensor) -> Tensor:
        """``(B, N, ceil(O_pad / 64))`` int64: the bits of the outputs whose level
        ``|levels[b, n, o]|`` exceeds ``below[b, n, o // cols]`` (output ``o`` at bit ``o % 64``
        of word ``o // 64``; the padding bits of the last word 0), from ``levels`` ``(B, N,
        O_pad)`` int8 or int16 and ``below`` ``(B, N, to)`` int32 — what a training forward
        keeps of its tile outputs for :meth:`subtract_bits`: an eighth of int8 levels, a
        sixteenth of int16 ones. Contiguous CPU tensors (checked)."""
        b, n, width = levels.shape
        to = below.shape[-1]
        kind = _KINDS.get(levels.dtype, 0)
        if kind == 0:
            raise ValueError(f"aimc._boundmask: levels as {levels.dtype}; allowed: int8, int16")
        if to < 1 or width % to:
            raise ValueError(
                f"aimc._boundmask: levels {tuple(levels.shape)} do not split into the "
                f"thresholds' {to} output tiles"
            )
        _check_buffers("output-bound mask", [(levels, (b, n, width))], levels.dtype)
        _check_buffers("output-bound mask", [(below, (b, n, to))], torch.int32)
        bits = torch.empty(b, n, -(-width // 64), dtype=torch.int64)
        args = (levels.data_ptr(), kind + 3, below.data_ptr(), 0, 0, bits.data_ptr(), 0, 0)
        self._fn(*args, 1, b, n, to, width // to, 0, 0)
        return bits

    def subtract_bits(
        self,
        gx: Tensor,
        grad: Tensor,
        bits: Tensor,
        width: int,
        w: Tensor,
        tiles: int,
        in_sizes: list[int],
        out_map: Tensor | None,
    ) -> None:
        """:meth:`subtract_masked` with the masked outputs given as :meth:`pack_bits`'s bits
        ``(G * ti, N, ceil(width / 64))`` of ``width`` padded outputs: the same terms in the
        same order, so the same result bit for bit."""
        g, n, k = gx.shape
        o = grad.shape[-1]
        b = bits.shape[0]
        if bits.dtype != torch.int64 or bits.shape[1:] != (n, -(-width // 64)):
            raise ValueError(
                f"aimc._boundmask: bits {tuple(bits.shape)} {bits.dtype} do not hold {width} "
                f"outputs of {n} vectors as int64 words"
            )
        self._check_gradient(gx, grad, w, b, tiles, in_sizes, width, out_map)
        _check_buffers("output-bound mask", [(bits, tuple(bits.shape))], torch.int64)
        starts = torch.tensor([0, *itertools.accumulate(in_sizes)], dtype=torch.int64)
        ptrs = (bits.data_ptr(), 3, 0, grad.data_ptr(), w.data_ptr())
        m = out_map.data_ptr() if out_map is not None else 0
        self._fn(*ptrs, gx.data_ptr(), m, starts.data_ptr(), g, tiles, n, 1, width, o, k)

    @staticmethod
    def _check_gradient(
        gx: Tensor,
        grad: Tensor,
        w: Tensor,
        b: int,
        tiles: int,
        in_sizes: list[int],
        width: int,
        out_map: Tensor | None,
    ) -> None:
        """The checks of the gradient's operands common to both subtractions."""
        g, n, k = gx.shape
        o = grad.shape[-1]
        if b != g * tiles or len(in_sizes) != tiles or sum(in_sizes) != k:
            raise ValueError(
                f"aimc._boundmask: {b} tile rows and {tiles} input tiles of {in_sizes} do not "
                f"fit a gradient {tuple(gx.shape)}"
            )
        _check_buffers("output-bound mask", [(grad, (g, n, o)), (w, (g, o, k)), (gx, (g, n, k))])
        if out_map is not None:
            _check_buffers("output-bound mask", [(out_map, (width,))], torch.int64)
        elif width != o:
            raise ValueError(f"aimc._boundmask: {width} padded outputs need a map to {o}")

    def self_check(self, fn: Any) -> str | None:
        """The kernel against float64 arithmetic: each level type, one and several groups,
        input and output tiles, padded outputs, thresholds that mask nothing and everything;
        and the bits of the same masks (:meth:`pack_bits`, :meth:`subtract_bits`) against the
        levels' comparison."""
        return self._first_mismatch(fn, _cases(), _mismatch)


def subtract_masked_reference(
    gx: Tensor,
    grad: Tensor,
    levels: Tensor,
    below: Tensor,
    w: Tensor,
    tiles: int,
    in_sizes: list[int],
    out_map: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(result, bound)`` in float64: :meth:`NativeBoundMaskKernel.subtract_masked`'s result
    computed densely, and the sum of the magnitudes of its terms (which bounds the float32
    rounding error)."""
    g, n, k = gx.shape
    b, _, width = levels.shape
    to = below.shape[-1]
    cols = width // to
    mag = levels.to(torch.int32).abs().view(b, n, to, cols)
    mask = (mag > below.unsqueeze(-1)).view(g, tiles, n, width)
    if out_map is not None:
        keep = out_map >= 0
        mask = mask[..., keep]
        order = torch.argsort(out_map[keep])
        mask = mask[..., order]
    res, bound = gx.double().clone(), gx.double().abs()
    start = 0
    for t, size in enumerate(in_sizes):
        wt = w.double()[:, :, start : start + size]
        gm = grad.double() * mask[:, t]
        res[:, :, start : start + size] -= gm @ wt
        bound[:, :, start : start + size] += gm.abs() @ wt.abs()
        start += size
    return res, bound


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    # (g, tiles, in_sizes, n, to, cols, o, level dtype, threshold)
    for g, tiles, in_sizes, n, to, cols, o, dtype, top in [
        (1, 1, [37], 5, 1, 70, 70, torch.int8, None),
        (2, 3, [4, 3, 3], 7, 2, 16, 32, torch.int16, None),
        (1, 2, [33, 33], 9, 3, 24, 70, torch.int16, None),  # padded outputs (3 x 24 for 70)
        (1, 2, [5, 4], 3, 1, 130, 130, torch.int8, -1),  # every output masked
        (1, 2, [5, 4], 3, 1, 130, 130, torch.int8, 127),  # none
        (1, 1, [40], 4, 2, 100, 200, torch.int16, 32767),  # none
        (1, 2, [5, 4], 3, 2, 70, 130, torch.int16, -1),  # every output, padding too (masked)
    ]:
        b, width = g * tiles, to * cols
        # an ADC bound within the type: never -128 as an int8 level
        big = 127 if dtype == torch.int8 else 400
        levels = torch.randint(-big, big + 1, (b, n, width), generator=gen).to(dtype)
        below = torch.randint(big // 2, big, (b, n, to), generator=gen, dtype=torch.int32)
        if top is not None:
            below.fill_(top)
        k = sum(in_sizes)
        f32 = torch.float32  # (whatever the process's default dtype)
        grad = torch.randn(g, n, o, generator=gen, dtype=f32)
        w = torch.randn(g, o, k, generator=gen, dtype=f32)
        gx = torch.randn(g, n, k, generator=gen, dtype=f32)
        out_map = None
        if width != o:
            # AIHWKIT's uneven split: each output tile's part, then padding
            sizes = [o // to + (i < o % to) for i in range(to)]
            out_map = torch.full((width,), -1, dtype=torch.int64)
            start = 0
            for i, size in enumerate(sizes):
                out_map[i * cols : i * cols + size] = torch.arange(start, start + size)
                start += size
            levels.view(b, n, to, cols)[:, :, out_map.view(to, cols) < 0] = 0
        cases.append((gx, grad, levels, below, w, tiles, in_sizes, out_map))
    return cases


def unpack_bits(bits: Tensor, width: int) -> Tensor:
    """``(B, N, width)`` bool from :meth:`NativeBoundMaskKernel.pack_bits`'s words (tensor code,
    any device: output ``j`` at bit ``j % 64`` of word ``j // 64``)."""
    b, n, words = bits.shape
    shifts = torch.arange(64, device=bits.device, dtype=torch.int64)
    flat = (bits.unsqueeze(-1) >> shifts) & 1  # (B, N, words, 64)
    return flat.view(b, n, words * 64)[..., :width].bool()


def _mismatch(kernel: NativeBoundMaskKernel, gx: Tensor, grad: Tensor, *args: Any) -> str | None:
    out = gx.clone()
    kernel.subtract_masked(out, grad, *args)
    ref, bound = subtract_masked_reference(gx, grad, *args)
    # each product and each of at most o + 1 differences rounded once to float32
    tol = bound * (grad.shape[-1] + 2) * 2.0**-23
    levels, below, w, tiles, in_sizes, out_map = args
    if not bool(((out.double() - ref).abs() <= tol).all()):
        return f"input gradient off the float64 result ({levels.dtype} levels)"
    bits = kernel.pack_bits(levels, below)
    b, n, width = levels.shape
    to = below.shape[-1]
    mag = levels.to(torch.int32).abs().view(b, n, to, width // to)
    if not torch.equal(unpack_bits(bits, width), (mag > below.unsqueeze(-1)).view(b, n, width)):
        return f"the mask's bits differ from the levels' comparison ({levels.dtype} levels)"
    out_bits = gx.clone()
    kernel.subtract_bits(out_bits, grad, bits, width, w, tiles, in_sizes, out_map)
    if not torch.equal(out_bits, out):
        return f"the input gradient from the bits differs from the levels' ({levels.dtype})"
    return None


#: The kernel, one per process.
BOUND_MASK = NativeBoundMaskKernel()
