"""The tiled analog matrix-vector multiplication (REFERENCE.md §1), all tiles in one batched op.

Work is done in place on large scratch buffers, in integer units of the converters' steps:
inputs in DAC steps, outputs in ADC steps, so rounding is a plain ``round_`` and the units are
folded into the tile weights and into one digital rescale at the end. Gaussian output noise is
written into the output buffer first and the MVM accumulates onto it (``baddbmm_``), so adding it
costs no extra pass. On CPU the scratch buffers are reused between calls (per thread): fresh
multi-megabyte allocations cost page faults that would otherwise dominate.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from . import _bracket, _workspace
from ._intmvm import INT_MVM, cached_limbs, int_bmm_
from ._kernels import FusedKernel
from ._native import NativeAdcKernel, NativeDacKernel
from ._onednn import MIN_ROWS as ONEDNN_MIN_ROWS
from ._onednn import ONEDNN_GEMM, affine_bmm
from ._onednn import bmm as onednn_bmm
from ._onednn import bmm_ as onednn_bmm_
from ._scalegrad import SCALE_GRAD
from .config import BoundManagement, IOConfig, NoiseManagement, WeightNoiseType, io_config_by_key
from .functional import TileLayout, stochastic_round
from .random import CounterStream, KeyedStream, RowStream, TensorStream, noise_normal_

#: The noise source of one forward: a ``torch.Generator`` (eager) or a tensor stream (compiled).
Rng = torch.Generator | TensorStream


def _compiling() -> bool:
    return torch.compiler.is_compiling()


#: Whether :func:`_check_bf16_cpu` has run in this process (it warns at most once).
_bf16_checked = False


def _native_bf16_cpu() -> bool | None:
    """Whether this x86 CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); ``None`` where
    torch cannot tell (other architectures, or a torch without the probes)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    probes = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(p is None for p in probes):
        return None
    return any(p() for p in probes)


def _check_bf16_cpu() -> None:
    """Warn once when ``io.w_noise_bf16`` runs on an x86 CPU without native bfloat16 matmuls:
    there PyTorch emulates them, measured 35-41x slower than float32 for a 2048 x 384 x 384
    ``bmm`` on an AVX2-only host (2 threads, ``benchmarks/bench_bf16_matmul.py``), so the option
    meant as a speed-up slows the forward down many times."""
    global _bf16_checked
    if _bf16_checked:
        return
    _bf16_checked = True
    if _native_bf16_cpu() is False:
        warnings.warn(
            "aimc: io.w_noise_bf16=True on a CPU without AVX512-BF16 or AMX: PyTorch emulates "
            "bfloat16 matmuls here (measured 35-41x slower than float32 on an AVX2-only "
            "host), so the pcm_read variance MVM gets much slower, not faster; set "
            "io.w_noise_bf16=False (exact float32) on this machine.",
            RuntimeWarning,
            stacklevel=2,
        )


def _scratch(
    slot: int, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A reusable float32 (or bfloat16, int32, int8) buffer (CPU only; other devices have
    caching allocators). A buffer of another dtype than float32 is its own slot,
    ``(dtype, slot)``, in the float32 values that hold it."""
    numel = 1
    for d in shape:
        numel *= d
    if like.device.type != "cpu" or _compiling():
        return torch.empty(shape, device=like.device, dtype=dtype)
    if dtype == torch.float32:
        return _workspace.buffer(slot, numel).view(shape)
    size = _SCRATCH_SIZES.get(dtype)
    if size is None:
        allowed = ", ".join(str(t) for t in (torch.float32, *_SCRATCH_SIZES))
        raise ValueError(f"_scratch: dtype {dtype}; allowed: {allowed}")
    flat = _workspace.buffer((str(dtype), slot), (numel * size + 3) // 4).view(dtype)
    return flat[:numel].view(shape)


#: The bytes per value of the other dtypes :func:`_scratch` gives.
_SCRATCH_SIZES = {torch.bfloat16: 2, torch.int32: 4, torch.int8: 1}


def clear_workspace() -> None:
    """Free the CPU scratch buffers kept by the calling thread (the MVM's and the noise
    kernel's)."""
    _workspace.clear()


@dataclass
class TileWeights:
    """Tile matrices of one layer as the MVM consumes them."""

    layout: TileLayout
    w: Tensor  #: (B, O_pad, ci) normalised weights times ``gain`` (ADC steps per DAC step)
    scale: Tensor | None  #: digital rescale, (B, to) per tile or (B, O_pad) per column; or None
    w_abs: Tensor | None = None  #: |normalised weights| (B, O_pad, ci), for pcm_read noise
    #: whether ``w`` is the same from forward to forward: a chip's tiles (full: cached; lean:
    #: rebuilt at each forward anyway) or the digital weights' in eval mode, not a training
    #: forward's. Its int8 limbs (:mod:`aimc._intmvm`) are then worth building for fewer vectors
    fixed: bool = False


def _peak_reaches(mag: Tensor, unit: Tensor, bound: float) -> bool:
    """Whether the largest of ``mag`` ``(B, N, to, cols)`` per output tile, times ``unit``,
    reaches ``bound`` anywhere (False for no vectors)."""
    if mag.numel() == 0:
        return False
    peak = mag.amax(dim=-1)  # (B, N, to)
    return bool((peak.to(torch.float32) * unit.to(torch.float32) >= bound).any())


@dataclass
class TileOutputs:
    """Every input tile's output of one forward (``analog_mvm(..., per_tile="compact")``), kept
    as the ADC's integer levels and the digital factors that rescale them: the values of
    ``per_tile=True``, in a quarter (8-bit ADC: int8) or half (up to 16 bits: int16) of the
    memory. Where the levels are not integers that fit (no output quantization or bound, a
    bound that is not a whole number of steps) they are kept as float32."""

    layout: TileLayout
    groups: int
    n: int
    levels: Tensor  #: (B, N, O_pad) ADC outputs in ADC steps (int8, int16 or float32)
    factor: Tensor | None  #: (B, N, to) digital rescale per (tile, vector, output tile)
    col_scale: Tensor | None  #: (B, O_pad) column-wise weight rescale, or None
    #: (B, N, to) ``factor`` before a per-tile weight rescale was folded into it (None where
    #: none was): see :meth:`own_factor`
    tile_factor: Tensor | None = None

    def own_factor(self) -> Tensor | float:
        """The levels' factor to the tile's own output (its normalised weights times its input
        as noise management or the learned range scales it back, before any weight or output
        rescale): ``(B, N, to)``, or 1.0."""
        if self.tile_factor is not None:
            return self.tile_factor
        return 1.0 if self.factor is None else self.factor

    def tile(self, t: int) -> Tensor:
        """Input tile ``t``'s rescaled output ``(G, N, O)`` float32 (a fresh tensor): exactly
        ``analog_mvm(..., per_tile=True)[:, t]`` (the same products in the same order)."""
        lo, g, n = self.layout, self.groups, self.n
        z = self.levels.view(g, lo.n_in, n, lo.padded_out)[:, t].to(torch.float32, copy=True)
        if self.col_scale is not None:
            z.mul_(self.col_scale.view(g, lo.n_in, 1, lo.padded_out)[:, t])
        if self.factor is not None:
            f = self.factor.reshape(g, lo.n_in, n, lo.n_out)[:, t]
            z = (z.view(g, n, lo.n_out, lo.cols) * f.unsqueeze(-1)).view(g, n, lo.padded_out)
        return lo.unpad_out(z, 2)

    def bound_mask(self, unit: Tensor, bound: float) -> Tensor | None:
        """``(B, N, O_pad)`` bool: where a tile output, ``|levels| * unit``, reaches ``bound``
        (``unit`` 0-dim or ``(B, N, to)``); None where none does (checked per output tile
        on the largest level first: one pass over the levels when nothing is masked).
        AIHWKIT's ``handle_output_bound`` with ``unit`` the levels' value in its tile-output
        units (:func:`aimc.hwa.output_bound_unit`)."""
        lo, n = self.layout, self.n
        mag = self._magnitudes()
        if not _peak_reaches(mag, unit, bound):
            return None
        u = unit.to(torch.float32)
        if mag.is_floating_point():
            u = u if u.dim() == 0 else u.unsqueeze(-1)
            return (mag * u >= bound).view(lo.batch, n, lo.padded_out)
        below = self.bound_thresholds(unit, bound).to(mag.dtype)
        return (mag > below.unsqueeze(-1)).view(lo.batch, n, lo.padded_out)

    def any_at_bound(self, unit: Tensor, bound: float) -> bool:
        """Whether :meth:`bound_mask` masks any output (one pass over the levels: the largest
        per output tile)."""
        return _peak_reaches(self._magnitudes(), unit, bound)

    def _magnitudes(self) -> Tensor:
        """``|levels|`` as ``(B, N, to, cols)`` (the largest level fits the dtype)."""
        lo = self.layout
        return self.levels.view(lo.batch, self.n, lo.n_out, lo.cols).abs()

    def bound_thresholds(self, unit: Tensor, bound: float) -> Tensor:
        """``(B, N, to)`` int32: the largest magnitude of an integer level below ``bound``, per
        (tile, vector, output tile) — a level ``l`` is masked by :meth:`bound_mask` exactly
        where ``|l|`` exceeds it (``|l| * unit >= bound`` for integer ``l``). -1 masks every
        level; the levels' type's largest value none (``unit`` 0 or NaN: no output reaches the
        bound). Integer levels only."""
        lo, n = self.layout, self.n
        # level * u >= bound <=> level > ceil(bound / u) - 1, clamped to the levels' range
        top = torch.iinfo(self.levels.dtype).max
        u = unit.to(torch.float32)
        below = torch.nan_to_num(torch.ceil(bound / u) - 1, nan=top, posinf=top)
        below = below.clamp(-1, top).to(torch.int32)
        return below.expand(lo.batch, n, lo.n_out).contiguous()

    def scale_grad(self, grad: Tensor) -> Tensor:
        """``(G, ti, O)``: ``sum_n grad[:, n] * tile(t)[:, n]`` for every input tile ``t``, the
        gradient of learned output scales for the output gradient ``grad`` ``(G, N, O)``.

        The tiles are not rebuilt: per tile, one product of the levels with the gradient (into
        a reused buffer on CPU) and one matrix-vector product with the per-vector factors
        (``(1, N) @ (N, O)``), then the column scale, instead of five passes over fresh
        ``(G, N, O)`` tensors. Equal to the rebuilt tiles' sums up to float rounding."""
        lo, g, n = self.layout, self.groups, self.n
        gp = lo.pad_out(grad.float(), 2)  # (G, N, O_pad)
        if gp.device.type == "cpu" and SCALE_GRAD.usable():
            # one pass over the levels (aimc._scalegrad)
            out = torch.empty(lo.batch, lo.padded_out, dtype=torch.float32)
            SCALE_GRAD.scale_grad(
                self.levels.contiguous(),
                gp.contiguous(),
                None if self.factor is None else self.factor.contiguous(),
                None if self.col_scale is None else self.col_scale.contiguous(),
                out,
                lo.n_in,
            )
            return lo.unpad_out(out.view(g, lo.n_in, lo.padded_out), 2)
        levels = self.levels.view(g, lo.n_in, n, lo.padded_out)
        factor = None if self.factor is None else self.factor.view(g, lo.n_in, n, lo.n_out)
        cols = None if self.col_scale is None else self.col_scale.view(g, lo.n_in, lo.padded_out)
        out = torch.empty(g, lo.n_in, lo.padded_out, device=gp.device, dtype=torch.float32)
        for t in range(lo.n_in):
            # int8 * float32 in one mul takes torch's slow mixed-type path (measured 2-5 ms
            # against 0.7 ms for the copy and the float32 product, 1024 x 3072)
            p = _scratch(0, (g, n, lo.padded_out), gp).copy_(levels[:, t]).mul_(gp)
            if factor is None:
                torch.sum(p, dim=1, out=out[:, t])
            elif lo.n_out == 1:  # one factor per vector: (G, 1, N) @ (G, N, O_pad)
                torch.bmm(factor[:, t].transpose(1, 2), p, out=out[:, t].unsqueeze(1))
            else:
                pv = p.view(g, n, lo.n_out, lo.cols).mul_(factor[:, t].unsqueeze(-1))
                torch.sum(pv, dim=1, out=out[:, t].view(g, lo.n_out, lo.cols))
            if cols is not None:
                out[:, t].mul_(cols[:, t])
        return lo.unpad_out(out, 2)


def _level_dtype(io: IOConfig) -> torch.dtype:
    """The narrowest integer type that holds every ADC output level exactly (float32 where the
    outputs are not whole numbers of steps within a bound)."""
    if io.is_perfect or io.out_step <= 0 or io.out_bound <= 0:
        return torch.float32
    top = _f32(_clip_bound(io))  # the clip, in steps, as the float32 clamp sees it
    if top != math.floor(top):
        return torch.float32
    return next((t for t in (torch.int8, torch.int16) if top <= torch.iinfo(t).max), torch.float32)


def _dac_levels_int8(io: IOConfig) -> bool:
    """Whether every DAC level of a forward under ``io`` is a whole number in ``[-128, 128]``
    (the DAC's twin of :func:`_level_dtype`, for the int8 MVM of :mod:`aimc._intmvm`):
    quantized (rounded, deterministically or stochastically), clipped to a whole number of at
    most 128 steps (as the float32 clamp sees it), and no input noise."""
    if io.is_perfect or io.inp_step <= 0 or io.inp_noise > 0 or io.inp_bound <= 0:
        return False
    top = _f32(io.inp_bound / units(io)[0])  # the clip, in steps
    return top == math.floor(top) and top <= 128


def combine_scales(a: Tensor | None, b: Tensor | None, layout: TileLayout) -> Tensor | None:
    """The product of two digital rescales, each ``(B, to)`` per tile or ``(B, O_pad)`` per
    column (or ``None``): per tile if both are, else per column."""
    if a is None or b is None:
        return a if b is None else b
    if a.shape == b.shape:
        return a * b

    def cols(s: Tensor) -> Tensor:
        return s if s.shape[1] == layout.padded_out else s.repeat_interleave(layout.cols, 1)

    return cols(a) * cols(b)


def units(io: IOConfig) -> tuple[float, float]:
    """``(in_unit, out_unit)``: the DAC and ADC steps (1.0 where quantization is off)."""
    if io.is_perfect:
        return 1.0, 1.0
    return (io.inp_step if io.inp_step > 0 else 1.0, io.out_step if io.out_step > 0 else 1.0)


#: The smallest normal float32: a noise-management scale below it counts as 0
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _input_scale(
    xv: Tensor, io: IOConfig, input_range: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Noise-management divisor per (group, vector, input tile) and a finite-input mask.

    With a learned ``input_range`` r (HWA) the divisor is ``r`` times noise management's scale
    of ``clip(x, -r, r) / r``, as AIHWKIT's tile applies noise management to the input it is
    given, ``x / r``: ``r`` without noise management, ``r * nm_thres`` with constant,
    ``min(max |x|, r)`` (capped at ``r * nm_thres``) with abs-max."""
    # (not aminmax(dim=-1): 12x slower than amax and amin on CPU, torch 2.13, 2048 x 384)
    return _scale_of(torch.maximum(xv.amax(dim=-1), xv.amin(dim=-1).neg_()), io, input_range)


def _scale_of(
    amax: Tensor, io: IOConfig, input_range: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`_input_scale` from the inputs' abs-max per (group, vector, input tile)."""
    finite = amax < math.inf  # amax is >= 0 or NaN: isfinite's answer in one kernel (of 3)
    if input_range is not None:
        r = input_range.float().expand_as(amax)
        if io.noise_management != NoiseManagement.ABS_MAX:
            return (r * _constant_scale(io)).clone(), finite
        # the clipped input's abs-max, min(max |x|, r), capped at r * nm_thres: one cap
        # (the fused DAC's, _dac_args); NaN stays NaN, a subnormal abs-max is an all-zero vector
        amax = torch.where(amax < _FLOAT32_TINY, 0.0, amax)
        return torch.minimum(amax, r * _range_cap(io)), finite
    if io.noise_management == NoiseManagement.ABS_MAX:
        # a vector whose abs-max is subnormal is an all-zero vector (AIHWKIT flushes such
        # values; 1 / s would overflow to inf and give NaN levels); NaN stays NaN
        amax = torch.where(amax < _FLOAT32_TINY, 0.0, amax)
        # AIHWKIT: a positive nm_thres caps the abs-max scale
        return (amax.clamp(max=io.nm_thres) if io.nm_thres > 0 else amax), finite
    return torch.full_like(amax, _constant_scale(io)), finite


def _range_cap(io: IOConfig) -> float:
    """Abs-max noise management on ``x / r`` (a learned range ``r``) caps the scale of ``x`` at
    ``r`` times this: 1 (the clipped input's abs-max is at most ``r``), or ``nm_thres`` where
    that is a smaller positive cap."""
    return min(1.0, io.nm_thres) if io.nm_thres > 0 else 1.0


def _constant_scale(io: IOConfig) -> float:
    """The scale of constant (or no) noise management: ``nm_thres``, or 1 where it is 0
    (AIHWKIT's ``computeNoiseManagement``) or noise management is off."""
    value = io.nm_thres if io.noise_management == NoiseManagement.CONSTANT else 1.0
    return value if value > 0 else 1.0


def _traced_constant(fn: Callable[..., float], *args: float) -> float:
    """``fn(*args)`` of a pure, ``functools.lru_cache``'d function of config numbers: through
    its cache, or in a compiled forward the function itself, which dynamo traces to a constant
    (it warns about the cache wrapper)."""
    return fn.__wrapped__(*args) if _compiling() else fn(*args)


@functools.lru_cache(maxsize=64)
def _aihwkit_step(res: float, bound: float) -> float:
    """A converter's step (DAC or ADC, in its input or output units) as AIHWKIT 1.2.0's
    simulator holds it, a float32 value, 0.0 where quantization is off:
    ``checkRes(res) * (2 * bound)``, each operation rounded to float32
    (``IOMetaParameter::initializeForForward``; a resolution above 1, a number of steps,
    becomes ``1 / res`` in float32). The float32 twin of :attr:`IOConfig.inp_step` /
    ``out_step``. Rounding in float64 first and then to float32 gives the same values: 53 bits
    are more than twice 24 plus 2."""
    if res <= 0 or bound <= 0:
        return 0.0
    frac = _f32(res)
    if frac > 1:
        frac = _f32(1.0 / frac)
    return _f32(frac * _f32(2.0 * _f32(bound)))


def _dac_step(io: IOConfig) -> float:
    """The DAC step in input units as AIHWKIT holds it (:func:`_aihwkit_step`)."""
    return _traced_constant(_aihwkit_step, io.inp_res, io.inp_bound)


def _to_levels_(xq: Tensor, io: IOConfig) -> Tensor:
    """In place on inputs already multiplied by ``1 / (s * r)``: divided by the DAC step, in DAC
    steps (before rounding). As AIHWKIT computes a level — ``rint(x * scale / res)`` in float32,
    ``scale = (1 / s) / r`` — and not as one product with ``1 / (s * r * step)``: the two differ
    in the last bit, which decides the rounding of values at half a step (with an odd number of
    steps the largest input of every vector under abs-max noise management is one: at 3.5 steps
    of 2/7 AIHWKIT takes 3 (1 / res is 3.4999998 in float32), a product took 4 and clipped it)."""
    step = _dac_step(io)
    if step <= 0:
        return xq
    if xq.device.type == "cpu":
        return xq.div_(step)
    # PyTorch's CUDA kernel divides by a CPU scalar as a product with its reciprocal ("may lose
    # one bit", BinaryDivTrueKernel.cu); a divisor on the device is divided by
    return xq.div_(xq.new_full((), step))


#: Noise management and the DAC as one hand-written kernel (eager CPU forwards).
_DAC = NativeDacKernel()


def _fused_dac(x: Tensor, io: IOConfig, input_range: Tensor | None) -> bool:
    """Whether :data:`_DAC` computes this forward's noise management and DAC: an eager
    float32 CPU forward (contiguous inputs) with a deterministic, noiseless DAC (stochastic
    rounding and input noise draw from the generator: tensor code) and one input range per
    layer if any."""
    return (
        not io.inp_sto_round
        and (input_range is None or input_range.numel() == 1)
        and io.inp_noise <= 0
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not _compiling()
        and x.is_contiguous()
        and _DAC.usable()
    )


def dac_clips_range(x: Tensor, io: IOConfig, input_range: Tensor | None) -> bool:
    """Whether :func:`analog_mvm` computes from inputs not yet clipped to their learned range
    exactly what it computes from the clipped inputs, so that the clip can be left out: the
    fused DAC (:func:`_fused_dac`) scales by the range and clips at a bound no wider than it
    (``0 < inp_bound <= 1``: a value beyond the range reaches the bound's level either way,
    one inside it is untouched; with constant noise management the DAC's bound in input units
    is ``r * nm_thres * inp_bound``, so that product of the last two at most 1 too; abs-max's
    scale is at most ``r``), and nothing else reads the inputs (no bound management, whose
    rounds rescale them, and a quantizing periphery), for a positive range (the DAC scales by
    1 where it is not). An input of +-inf, which the clip makes NaN, gives NaN outputs either
    way: its tile's abs-max is not finite."""
    return (
        input_range is not None
        and not io.is_perfect
        and io.bound_management == BoundManagement.NONE
        and 0 < io.inp_bound <= 1
        and (
            io.noise_management == NoiseManagement.ABS_MAX
            or _constant_scale(io) * io.inp_bound <= 1
        )
        and _fused_dac(x, io, input_range)
        and float(input_range.detach()) > 0
    )


def _squares_needed(io: IOConfig) -> bool:
    """Whether the eager MVM needs the float32 squares of the levels (``pcm_read``)."""
    return io.w_noise > 0 and io.w_noise_type == WeightNoiseType.PCM_READ and not io.w_noise_bf16


def _dac_args(
    io: IOConfig, in_unit: float, input_range: Tensor | None
) -> tuple[float, float, float, bool, bool]:
    """``(scale, step, bound, round, fixed)`` of :meth:`NativeDacKernel.levels`: the scale as
    :func:`_scale_of` sets it, and the constants that :func:`_to_levels_` and :func:`_dac_`
    use (``<= 0``: that step left out)."""
    if input_range is not None:  # one range per layer: noise management on x / r
        r = float(input_range.detach().float())
        if io.noise_management == NoiseManagement.ABS_MAX:
            scale, fixed = r * _range_cap(io), False  # the abs-max, capped (r > 0: checked)
        else:
            scale, fixed = r * _constant_scale(io), True
    elif io.noise_management == NoiseManagement.ABS_MAX:
        scale, fixed = io.nm_thres, False
    else:
        scale, fixed = _constant_scale(io), True
    bound = io.inp_bound / in_unit if io.inp_bound > 0 else 0.0
    return scale, _dac_step(io), bound, io.inp_step > 0, fixed


def _dac_(xq: Tensor, io: IOConfig, in_unit: float, gen: Rng) -> Tensor:
    """In place on inputs in DAC steps (:func:`_to_levels_`): round, clip, input noise."""
    if io.inp_step > 0:
        if io.inp_sto_round:
            xq.copy_(stochastic_round(xq, gen))
        else:
            xq.round_()
    if io.inp_bound > 0:  # <= 0: no bound (AIHWKIT: infinite)
        bound = io.inp_bound / in_unit
        xq.clamp_(-bound, bound)
    if io.inp_noise > 0:
        noise = torch.empty_like(xq)
        noise_normal_(noise, gen)
        xq.add_(noise, alpha=io.inp_noise / in_unit)
    return xq


#: At most this many batches go through one ``addmm`` each (CPU, eager) instead of one ``bmm``.
_LOOP_MAX_BATCHES = 16
#: ... and only if each product has at least this many multiply-adds.
_LOOP_MIN_MACS = 1 << 20


@torch._dynamo.assume_constant_result
def _num_threads() -> int:
    """``torch.get_num_threads()``; a constant of a compiled graph (dynamo cannot trace it)."""
    return torch.get_num_threads()


def _split_batches(a: Tensor, b: Tensor) -> bool:
    """Whether ``a @ b`` (batched, ``(nb, m, k) @ (nb, k, n)``) should run as one GEMM per batch.

    On CPU, torch's ``bmm`` splits the batch across threads, so a few large products that do
    not divide evenly among the threads (3 input tiles on 2 threads) leave a thread idle; one
    GEMM per batch parallelises inside each product instead (``benchmarks/profile_linear.py``
    times both). Batch counts that divide evenly, small products and many batches keep the single
    ``bmm``.
    """
    nb, m, k = a.shape
    return (
        a.device.type == "cpu"
        and 1 < nb <= _LOOP_MAX_BATCHES
        and nb % _num_threads() != 0
        and m * k * b.shape[2] >= _LOOP_MIN_MACS
    )


def _onednn_takes(a: Tensor, b: Tensor, *more: Tensor) -> bool:
    """Whether the product ``a @ b`` (batched) runs through oneDNN (:mod:`aimc._onednn`): where
    it applies to the operands (float32 on an x86 CPU, eager, outside autograd) and has
    at least :data:`aimc._onednn.MIN_ROWS` rows per batch and no empty dimension."""
    return (
        a.shape[1] >= ONEDNN_MIN_ROWS
        and 0 not in a.shape
        and 0 not in b.shape
        and ONEDNN_GEMM.applies(a, b, *more)
    )


def batched_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` per batch as a fresh tensor, one GEMM per batch where :func:`_split_batches`
    says so (eager and compiled; the sums are those of ``torch.bmm`` up to float rounding),
    through oneDNN where :func:`_onednn_takes` says so (twice as fast as MKL's GEMM on AMD
    CPUs)."""
    if _onednn_takes(a, b):
        return onednn_bmm(a, b)
    if not _split_batches(a, b):
        return torch.bmm(a, b)
    nb = a.shape[0]
    if _compiling() or torch.is_grad_enabled():
        # inductor writes each mm straight into its slice of the stacked result
        return torch.stack([torch.mm(a[i], b[i]) for i in range(nb)])
    out = a.new_empty((nb, a.shape[1], b.shape[2]), dtype=torch.promote_types(a.dtype, b.dtype))
    for i in range(nb):
        torch.mm(a[i], b[i], out=out[i])
    return out


def _bmm_(z: Tensor, a: Tensor, b: Tensor, beta: float = 0.0, alpha: float = 1.0) -> Tensor:
    """``z <- beta * z + alpha * a @ b`` per batch, in place (``beta = 0`` ignores ``z``), one
    ``addmm`` per batch where :func:`_split_batches` says so. A compiled forward does the same
    (``beta = 0`` only). The sums are the same up to float rounding. Through oneDNN where
    :func:`_onednn_takes` says so.
    """
    if _onednn_takes(a, b, z):
        return onednn_bmm_(z, a, b, beta, alpha)
    loop = _split_batches(a, b)
    if _compiling() and beta == 0.0 and alpha == 1.0:
        # dynamo has no out= for bmm; the copy into the fresh z vanishes, and inductor writes
        # each mm of the loop straight into its slice of the stacked result
        z.copy_(batched_matmul(a, b))
    elif loop and not _compiling():
        for i in range(a.shape[0]):
            z[i].addmm_(a[i], b[i], beta=beta, alpha=alpha)
    elif beta == 0.0 and alpha == 1.0:
        torch.bmm(a, b, out=z)
    else:
        z.baddbmm_(a, b, beta=beta, alpha=alpha)
    return z


def _variance_dtype(io: IOConfig, like: Tensor) -> torch.dtype:
    """The dtype of the ``pcm_read`` variance MVM: bfloat16 with ``io.w_noise_bf16`` (warning
    once where a CPU would emulate it: :func:`_check_bf16_cpu`), else ``like``'s."""
    if not io.w_noise_bf16:
        return like.dtype
    if like.device.type == "cpu" and not _compiling():
        _check_bf16_cpu()
    return torch.bfloat16


def _eager_squares(xq: Tensor, io: IOConfig, x2: Tensor | None) -> Tensor:
    """``x2`` if the fused DAC kernel wrote the squared levels there, else ``xq``'s squares in
    a scratch buffer, in the variance MVM's dtype (bfloat16: the float32 square, rounded
    once)."""
    if x2 is None:
        x2 = _scratch(2, tuple(xq.shape), xq, _variance_dtype(io, xq))
        torch.mul(xq, xq, out=x2)
    return x2


def _variance_(var: Tensor, x2: Tensor, w2: Tensor, io: IOConfig) -> Tensor:
    """``(out_noise^2 + (w_noise * in_unit)^2 * x2 @ w2) / out_unit^2``: the ``pcm_read``
    variance in ADC steps squared of the squared levels ``x2`` and the transposed ``|W|``
    ``w2``, in ``var`` (in their dtype; bfloat16 rounds the offset and the result) or, with
    float32 on CPU (:mod:`aimc._onednn`), possibly in a fresh tensor; returns it.

    Where :func:`_onednn_takes` the product: oneDNN's GEMM on ``x2`` scaled by the gain (in a
    scratch buffer), the offset as its bias, where MKL's ``baddbmm`` is twice as slow on AMD
    CPUs; the same products and sums in another order."""
    in_unit, out_unit = units(io)
    offset = (io.out_noise / out_unit) ** 2
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    if _onednn_takes(x2, w2, var):
        x2g = torch.mul(x2, gain, out=_scratch(11, tuple(x2.shape), x2))
        return affine_bmm(var, x2g, w2.transpose(1, 2), offset)
    var.fill_(offset)
    return _bmm_(var, x2, w2, beta=1.0, alpha=gain)


def _mvm_adc(
    xq: Tensor,
    tw: TileWeights,
    io: IOConfig,
    gen: Rng,
    z: Tensor,
    n_out: int | None = None,
    x2: Tensor | None = None,
    adc: bool = True,
    limbs: tuple[Tensor, Tensor] | None = None,
    predict: bool = False,
) -> Tensor | None:
    """``z = ADC(W x' + weight noise + output noise)`` in ADC steps, in place; ``xq`` is
    ``(B, N, ci)``. With ``n_out`` (the number of output tiles in ``z``'s last dimension) returns
    the ``(B, N, n_out)`` mask of the tiles whose output saturated (:func:`_saturated`, tested
    before the clip), or None if none did. ``x2``: ``xq``'s squares (float32) if the fused DAC
    kernel already wrote them (eager ``pcm_read``). ``adc=False``: ``z`` is left before the ADC
    (the fused ADC kernel or :func:`_adc_` takes it from there), and None returned.
    ``limbs``: ``tw.w``'s :func:`aimc._intmvm.cached_limbs`, where ``xq`` holds whole-number
    levels in ``[-128, 128]`` (:func:`_int_limbs`): the MVM then runs in int8.

    ``predict`` (eager ``pcm_read`` with iterative bound management, :func:`_predicting`): the
    variance MVM is left out for the tiles whose output surely saturates
    (:func:`_predicted_variance`); they are in the returned mask (with ``adc=False``: the
    returned mask holds only them, None if none)."""
    in_unit, out_unit = units(io)
    w_t = tw.w.transpose(1, 2)

    def mvm_(z: Tensor, beta: float = 0.0) -> Tensor:  # z <- beta * z + W x'
        if limbs is not None:
            return _int_mvm_(z, xq, limbs, beta)
        return _bmm_(z, xq, w_t, beta=beta)

    kind = io.w_noise_type if io.w_noise > 0 else WeightNoiseType.NONE
    sure = None  # predict: the (B, N, to) tiles known to saturate before their variance
    if kind == WeightNoiseType.NONE and io.out_noise <= 0:
        mvm_(z)
    elif (
        kind == WeightNoiseType.PCM_READ
        and isinstance(gen, torch.Generator)
        and (predict or _bracketing(z, xq.shape[1], tw, io))
    ):
        mvm_(z)  # the signal W x' first, then the noise's standard normal draws
        zeta = noise_normal_(_scratch(9, tuple(z.shape), z), gen)
        x2 = _eager_squares(xq, io, x2)
        if predict:
            sure = _predicted_variance(z, zeta, x2, tw, io, n_out or 1)
        else:
            _bracketed_noise_(z, zeta, x2, tw, io)
    else:
        # else a tensor stream: the compiled forward, or its gathered bound-management rounds
        eager = isinstance(gen, torch.Generator)
        std = None  # of the noise, in ADC steps; None: out_noise / out_unit everywhere
        var_steps = None  # eager pcm_read: the noise variance in ADC steps^2, z's shape
        if kind != WeightNoiseType.NONE:
            gain = (io.w_noise * in_unit) ** 2
            if kind == WeightNoiseType.ADDITIVE_CONSTANT:
                var = xq.square().sum(dim=-1, keepdim=True).mul_(gain).add_(io.out_noise**2)
                std = var.sqrt_().div_(out_unit)
            else:
                # var = out_noise^2 + gain * (x'^2 @ |W|^T): the scale and offset ride on the MVM
                w_abs = tw.w_abs if tw.w_abs is not None else tw.w.abs()
                dtype = _variance_dtype(io, xq)
                w2 = w_abs.to(dtype).transpose(1, 2)
                if eager:  # in ADC steps^2: the noise kernel scales by its square root
                    # scratch buffers: no fresh multi-MB tensors (glibc maps those above 32 MiB
                    # afresh on every call, each 4 KiB page faulting on first touch)
                    x2 = _eager_squares(xq, io, x2)
                    var = _variance_(_scratch(3, tuple(z.shape), z, dtype), x2, w2, io)
                    var_steps = (
                        var if dtype == torch.float32 else _scratch(4, z.shape, z).copy_(var)
                    )
                else:  # compiled: the scale and offset fuse into the noise kernel
                    x2 = xq.square().to(dtype)
                    var = batched_matmul(x2, w2).float().mul_(gain).add_(io.out_noise**2)
                    std = var.sqrt_().div_(out_unit)
        if eager:
            # the noise is drawn into z (scaled as it is written, for pcm_read) and the MVM
            # accumulates onto it (no extra pass)
            noise_normal_(z, gen, var=var_steps)
            if var_steps is not None:
                mvm_(z, 1.0)
            elif std is None:
                mvm_(z, io.out_noise / out_unit)
            else:
                mvm_(z.mul_(std), 1.0)
        else:
            # compiled: the MVM first, then the noise, so that
            # inductor draws it inside the kernel that rounds and clips (a baddbmm onto drawn
            # noise would write the noise, copy it into the output and read it back)
            mvm_(z)
            noise = gen.normal(z.shape)
            if std is None:
                z.add_(noise, alpha=io.out_noise / out_unit)
            else:
                z.addcmul_(noise, std)
    if not adc:
        return sure
    sat = _adc_(z, io, n_out)
    return sure if sat is None else (sat if sure is None else sat | sure)


#: The bracketed bfloat16 variance (:mod:`aimc._bracket`) runs on at least this many vectors
#: per tile (fewer: the float32 variance MVM, whose single call costs less than the bfloat16
#: conversions and the kernel's pass)
BRACKET_MIN_VECTORS = 8


def _bracketing(z: Tensor, n: int, tw: TileWeights, io: IOConfig) -> bool:
    """Whether the noise of this eager ``pcm_read`` MVM on ``n`` vectors per tile comes from
    the bracketed bfloat16 variance (:mod:`aimc._bracket`): float32 CPU tile outputs, not
    traced, an ADC that rounds, the float32 variance (not ``io.w_noise_bf16``), tile matrices
    with their ``|W|``, enough vectors, a CPU with native bfloat16 matmuls, and the kernel
    built (on first use) and not switched off (``AIMC_BF16_BRACKET=0``)."""
    return (
        io.out_step > 0
        and not io.w_noise_bf16
        and z.device.type == "cpu"
        and z.dtype == torch.float32
        and n >= BRACKET_MIN_VECTORS
        and tw.w_abs is not None
        and tw.w_abs.is_contiguous()
        and _native_bf16_cpu() is True
        and _bracket.BRACKET.usable()  # (not traced, not switched off; built on first use)
    )


def _bracketed_noise_(z: Tensor, zeta: Tensor, x2: Tensor, tw: TileWeights, io: IOConfig) -> int:
    """``z <- z + sqrt(var) * zeta`` to the ADC's levels, ``var`` the ``pcm_read`` variance in
    ADC steps squared, from the bfloat16 variance MVM and, where it cannot decide an output's
    level, the float32 one (:mod:`aimc._bracket`); returns how many outputs needed that."""
    in_unit, out_unit = units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    offset = (io.out_noise / out_unit) ** 2
    w_b, max_w = _bracket.abs_bf16(tw.w_abs)
    # a bound on the squared levels (the flushed denormals' slack): 128^2 where the DAC makes
    # whole levels in [-128, 128], else their largest; not finite, or a variance that could
    # come near float32's overflow (where bfloat16's rounding up could overflow alone): the
    # float32 variance
    max_x2 = 128.0**2 if _dac_levels_int8(io) else float(x2.max()) if x2.numel() else 0.0
    v_max = x2.shape[2] * max_x2 * max_w
    if not (v_max < 2.0**120 and gain * v_max + offset < 2.0**120):
        _noise_from_variance_(z, zeta, x2, tw.w_abs.transpose(1, 2), io)
        return z.numel()
    x2b = _scratch(20, tuple(x2.shape), x2, torch.bfloat16).copy_(x2)
    vb = _scratch(21, tuple(z.shape), z, torch.bfloat16)
    torch.bmm(x2b, w_b.transpose(1, 2), out=vb)
    return _bracket.BRACKET.noisy_(z, zeta, vb, x2, tw.w_abs, offset, gain, max_x2, max_w)


def _noise_from_variance_(z: Tensor, zeta: Tensor, x2: Tensor, w2: Tensor, io: IOConfig) -> None:
    """``z <- z + sqrt(var) * zeta``, ``var`` the ``pcm_read`` variance MVM
    (:func:`_variance_`) of ``x2`` and the transposed ``|W|`` ``w2`` in ``x2``'s dtype."""
    var = _variance_(_scratch(3, tuple(z.shape), z, x2.dtype), x2, w2, io)
    z.addcmul_(var.float().sqrt_(), zeta)


#: An eager ``pcm_read`` forward predicts saturation (:func:`_predicted_variance`) where at
#: least this share of its tile matrices' (tile, vector) pairs saturated in the first pass of
#: the layer's previous forward (remembered on the tile matrices). Below it the prediction's
#: extra passes cost about what the variance MVM it saves does, or more (Zen 5 host,
#: 2026-12-07, ``benchmarks/bench_predict_saturation.py``: break-even at 28 % saturated with the
#: float32 variance MVM, a loss there with the bfloat16 one and with the bracketed bfloat16 one,
#: :mod:`aimc._bracket` (1.79x against 1.63x ``nn.Linear``); 60 % and 91 % gain with all three).
PREDICT_MIN_SATURATED = 0.4


def _predicting(x: Tensor, tw: TileWeights, io: IOConfig, gen: Rng, compact: bool) -> bool:
    """Whether this first pass predicts saturation: :func:`_may_predict`, on tile matrices
    that saturated often in their previous forward."""
    return (
        _may_predict(x, io, gen, compact)
        and getattr(tw.w, "_aimc_saturated", 0.0) >= PREDICT_MIN_SATURATED
    )


def _may_predict(x: Tensor, io: IOConfig, gen: Rng, compact: bool) -> bool:
    """Whether a first pass could predict saturation (:func:`_predicted_variance`): an eager
    CPU forward (not compact, not traced) with ``pcm_read`` noise and iterative bound management
    whose first round is allowed."""
    return (
        not compact
        and isinstance(gen, torch.Generator)
        and x.device.type == "cpu"
        and not _compiling()
        and io.bound_management == BoundManagement.ITERATIVE
        and io.w_noise > 0
        and io.w_noise_type == WeightNoiseType.PCM_READ
        and bool(_bm_allowed(1.0, io))
        and _saturation_limit(io) < math.inf
    )


def _remember_saturation(tw: TileWeights, sat: Tensor | None) -> None:
    """Keep on ``tw.w`` the share of (tile, vector) pairs that saturated in this first pass
    (:func:`_predicting` reads it at the layer's next forward)."""
    tw.w._aimc_saturated = 0.0 if sat is None else float(sat.float().mean())  # type: ignore[attr-defined]


def _tile_abs_max(w_abs: Tensor, n_out: int) -> Tensor:
    """The largest ``|W|`` of each (input tile, output tile) matrix, ``(B, to)`` float32, kept
    on ``w_abs`` until it changes (its version counter: as :func:`aimc._intmvm.cached_limbs`,
    an inference-mode tensor written in place keeps what was kept for it)."""
    version = 0 if w_abs.is_inference() else w_abs._version
    cached = getattr(w_abs, "_aimc_abs_max", None)
    if cached is not None and cached[0] == (version, n_out):
        return cached[1]
    b, o, _ = w_abs.shape
    out = w_abs.amax(dim=2).reshape(b, n_out, o // n_out).amax(dim=2).float()
    w_abs._aimc_abs_max = ((version, n_out), out)  # type: ignore[attr-defined]
    return out


#: The relative slack on the bound of a ``pcm_read`` output's noise standard deviation
#: (:func:`_predicted_variance`): covers the float32 rounding of the variance MVM (``ci`` terms
#: of one sign: a relative error below ``ci * 2**-24``, 3e-5 for 512 rows) and of the bound
#: itself ...
_STD_SLACK = 1e-3
#: ... and with the bfloat16 variance (``io.w_noise_bf16``), whose offset and result are
#: rounded to 8 bits (2**-9 each) and whose GEMM may round partial sums: a review found the
#: variance 0.7 % above its exact value, past the float32 slack (a pair marked saturated that
#: was not); 5 % on the standard deviation is about 10 % on the variance.
_STD_SLACK_BF16 = 5e-2
#: ... and the margin in ADC steps by which an output must surely exceed the saturation limit
_LIMIT_MARGIN = 0.01


def _saturation_margins(z: Tensor, zeta: Tensor, s_max: Tensor) -> Tensor:
    """``max_j (|z_j| - s_max |zeta_j|)`` over each tile's outputs: ``z`` and ``zeta``
    ``(B, N, to, cols)``, ``s_max`` ``(B, N, to, 1)``; ``(B, N, to)`` (NaN where a value is)."""
    return (z.abs() - zeta.abs() * s_max).amax(dim=3)


def _noisy_rows(z: Tensor, zeta: Tensor, var: Tensor, rows: Tensor) -> Tensor:
    """``z[rows] + sqrt(var) * zeta[rows]``, ``(K, O)``: ``z`` and ``zeta`` ``(R, O)``, ``var``
    ``(K, O)``, ``rows`` ``(K,)`` row indices."""
    return torch.addcmul(z.index_select(0, rows), var.sqrt(), zeta.index_select(0, rows))


#: :func:`_saturation_margins` and :func:`_noisy_rows` as fused CPU kernels (one pass each, no
#: temporaries of the output's size; built on first use, each checked against its eager code
#: at its first call: they return their values rather than write in place, so that check sees
#: them)
_MARGINS = FusedKernel(_saturation_margins, env="AIMC_FUSED_KERNELS")
_NOISY_ROWS = FusedKernel(_noisy_rows, env="AIMC_FUSED_KERNELS")


def _predicted_variance(
    z: Tensor, zeta: Tensor, x2: Tensor, tw: TileWeights, io: IOConfig, n_out: int
) -> Tensor | None:
    """``z <- z + sqrt(var) * zeta`` (``z`` the signal ``W x'`` in ADC steps, ``zeta`` the
    standard normal draws, ``var`` the ``pcm_read`` variance ``out_noise^2 + gain x'^2 |W|`` in
    ADC steps squared) for every (input tile, vector) whose output is not yet known to saturate;
    returns the ``(B, N, to)`` mask of the tiles known to saturate, or None if none is.

    Saturation predicted exactly, with the noise drawn: an output ``y = m + sigma zeta`` moves
    monotonically with ``sigma`` between ``out_noise`` (no weight noise) and the bound
    ``sigma_max^2 = out_noise^2 + gain max|W| sum(x'^2)`` (``|W| <= max|W|`` term by term), so
    ``|m| - sigma_max |zeta| > limit`` means ``|y| > limit`` whatever the variance MVM would
    give: the tile saturates in this pass, as the full computation would find it. Such a tile's
    first-pass output is never used (bound management redoes it), so its variance is not
    computed: the variance MVM runs only on the other vectors, gathered per tile (all of them
    where fewer than a fifth are known). The outputs are those of the full computation up to
    float rounding: the same draws and decisions, but the noise is added to the finished signal
    and the gathered variance summed over fewer rows, where the full pass lets the GEMM
    accumulate onto the drawn noise, so an output on an ADC rounding tie can move by one level
    (``tests/test_predict_saturation.py``, ``tests/test_predict_saturation_edge_cases.py``).
    The cost: two passes over the output (the margins, the undecided rows' noise) and a buffer
    for the draws, worth it on layers that saturate often (random ``nn.Linear`` weights under
    standard-normal inputs: 29-91 % of the pairs, 92-99 % of them decided)."""
    b, n, o = z.shape
    in_unit, out_unit = units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    offset = (io.out_noise / out_unit) ** 2
    w_abs = tw.w_abs if tw.w_abs is not None else tw.w.abs()
    # the bound on each tile output's standard deviation, (B, N, to, 1)
    n2 = x2.sum(dim=-1, dtype=torch.float32).unsqueeze(2)  # (B, N, 1)
    s_max = (n2 * _tile_abs_max(w_abs, n_out).unsqueeze(1)).mul_(gain).add_(offset).sqrt_()
    s_max = s_max.mul_(1 + (_STD_SLACK_BF16 if io.w_noise_bf16 else _STD_SLACK)).unsqueeze(3)
    cols = o // n_out
    margins = _MARGINS(z.view(b, n, n_out, cols), zeta.view(b, n, n_out, cols), s_max)
    sure = margins > _saturation_limit(io) + _LIMIT_MARGIN  # (B, N, to)
    undecided = ~sure.all(dim=2)  # (B, N): vectors whose variance is needed
    counts = undecided.sum(dim=1)
    k = int(counts.max())
    if k == 0:
        return sure
    dtype = _variance_dtype(io, z)
    w2 = w_abs.to(dtype).transpose(1, 2)
    ci = x2.shape[2]
    bracket = x2.dtype == torch.float32 and _bracketing(z, k, tw, io)
    if k * 5 > n * 4:  # nearly all needed: the whole variance MVM, no gathering
        if bracket:
            _bracketed_noise_(z, zeta, x2, tw, io)
        else:
            _noise_from_variance_(z, zeta, x2.to(dtype), w2, io)
        return sure if bool(sure.any()) else None
    # per tile, the undecided vectors first, then (up to k) decided ones: their outputs get the
    # full computation's values too, and bound management redoes them anyway
    order = torch.argsort((~undecided).to(torch.uint8), dim=1, stable=True)[:, :k]  # (B, k)
    rows = (torch.arange(b).view(b, 1) * n + order).reshape(-1)
    x2_u = _scratch(10, (b * k, ci), x2, x2.dtype)
    torch.index_select(x2.reshape(b * n, ci), 0, rows, out=x2_u)
    z_rows = z.view(b * n, o)
    if bracket:  # the gathered rows' outputs and draws, bracketed, then put back
        z_u = torch.index_select(z_rows, 0, rows, out=_scratch(12, (b * k, o), z))
        zeta_u = torch.index_select(zeta.view(b * n, o), 0, rows, out=_scratch(13, (b * k, o), z))
        _bracketed_noise_(z_u.view(b, k, o), zeta_u.view(b, k, o), x2_u.view(b, k, ci), tw, io)
        z_rows.index_copy_(0, rows, z_u)
        return sure
    var = _variance_(_scratch(3, (b, k, o), z, dtype), x2_u.view(b, k, ci).to(dtype), w2, io)
    z_rows.index_copy_(
        0, rows, _NOISY_ROWS(z_rows, zeta.view(b * n, o), var.float().view(b * k, o), rows)
    )
    return sure


#: The int8 MVM runs on at least this many vectors per tile (fewer: the float32 GEMM, faster
#: there for small tiles: a 384 x 384 tile broke even at about 128 vectors, 2026-12-06) ...
INT_MIN_VECTORS = 128
#: ... and, where the tile matrices change from forward to forward (not ``TileWeights.fixed``:
#: a training forward's), on at least this many, where the GEMMs' saving pays for building the
#: limbs at every forward (about 1.1 ns per weight against 0.2 of a float32 GEMM).
INT_MIN_VECTORS_FRESH = 1024


def _int_limbs(x: Tensor, tw: TileWeights, io: IOConfig, n: int) -> tuple[Tensor, Tensor] | None:
    """The int8 limbs of ``tw.w`` (:mod:`aimc._intmvm`) where this forward's first pass on
    ``n`` vectors per tile runs its MVM in integers: an eager CPU forward (not traced) whose
    DAC levels are whole numbers in ``[-128, 128]``, on enough vectors
    (:data:`INT_MIN_VECTORS`, :data:`INT_MIN_VECTORS_FRESH`), on a CPU with VNNI, with the
    kernel built and not switched off (``AIMC_INT_MVM=0``), and finite tile matrices; else
    None (the float32 GEMM)."""
    if (
        n < (INT_MIN_VECTORS if tw.fixed else INT_MIN_VECTORS_FRESH)
        or x.device.type != "cpu"
        or _compiling()
        or not tw.w.is_contiguous()
        or not _dac_levels_int8(io)
        or not INT_MVM.usable()
    ):
        return None
    return cached_limbs(tw.w)


@torch._dynamo.assume_constant_result
def _int_mvm_ready(io_key: str) -> bool:
    """Whether an eval forward under the IO config ``io_key`` runs its MVM in int8 here (on
    enough vectors): its DAC levels are, and the kernel runs on this CPU. A constant of a
    compiled graph: such a layer runs the eager forward as one op (:func:`_opaque_mvm`), and
    ``AIMC_INT_MVM`` is read when the graph is compiled."""
    io = io_config_by_key(io_key)
    return _dac_levels_int8(io) and INT_MVM.ready()


def _int_mvm_(z: Tensor, xq: Tensor, limbs: tuple[Tensor, Tensor], beta: float) -> Tensor:
    """``z <- beta * z + W xq`` in int8 (:func:`aimc._intmvm.int_bmm_`), in scratch buffers."""
    nb, n, ci = xq.shape
    k8 = _scratch(6, (nb, n, ci), xq, torch.int8)
    hit = _scratch(7, (nb * n,), xq, torch.int32)
    y = _scratch(8, (3, n, z.shape[2]), z, torch.int32)
    return int_bmm_(z, xq, limbs, beta, k8, hit, y)


def _adc_(z: Tensor, io: IOConfig, n_out: int | None) -> Tensor | None:
    """The ADC in place on ``z`` in ADC steps: rounding, the saturation test (with ``n_out``:
    the mask of :func:`_mvm_adc`, or None) and the clip. An eager CPU forward runs it as one
    pass of the ADC kernel (:meth:`aimc._native.NativeAdcKernel.adc_`; the tensor code below
    makes three to five)."""
    if (
        z.device.type == "cpu"
        and z.dtype == torch.float32
        and z.is_contiguous()
        and z.dim() == 3
        and _ADC.usable()
    ):
        limit = math.inf if n_out is None else _saturation_limit(io)
        mask = torch.empty(z.shape[0], z.shape[1], n_out or 1, dtype=torch.bool)
        extremes = _ADC.adc_(z, mask, io.out_step > 0, _clip_bound(io), limit)
        return None if limit == math.inf or _within(extremes, limit) else mask
    if io.out_step > 0:
        z.round_()
    if n_out is None or _compiling() or _saturation_limit(io) == math.inf:
        sat = None if n_out is None else _saturated(z, n_out, io)
        extremes = None
    else:  # eager: one reading pass tells both whether anything saturated and needs the clip
        extremes = _extremes(z)
        sat = _saturated(z, n_out, io, extremes)
    # the clip is skipped where it would change nothing (every output within the float32
    # bound): the common case of a bound-managed forward, one pass over the output fewer
    bound = _clip_bound(io)
    if bound < math.inf and (extremes is None or not _within(extremes, bound)):
        z.clamp_(-bound, bound)
    return sat


def _extremes(z: Tensor) -> tuple[float, float]:
    """``(min, max)`` of ``z`` as Python floats, read in one transfer (one host synchronisation
    on a GPU, where each ``bool(tensor)`` of two comparisons per test took one)."""
    lo, hi = torch.stack(torch.aminmax(z)).tolist()
    return lo, hi


def _within(extremes: tuple[float, float], limit: float) -> bool:
    """Whether ``(min, max)`` (float32 values, :func:`_extremes`) lie in ``[-limit, limit]``,
    compared as float32 compares them with ``limit`` rounded to float32 (False for NaN)."""
    lo, hi = extremes
    limit = _f32(limit)
    return -limit <= lo and hi <= limit


def _clip_bound(io: IOConfig) -> float:
    """The ADC's clip in ADC steps; ``math.inf`` where ``out_bound <= 0`` (no bound, AIHWKIT:
    infinite)."""
    return io.out_bound / units(io)[1] if io.out_bound > 0 else math.inf


def _saturation_limit(io: IOConfig) -> float:
    """The ADC output (in ADC steps, rounded, before the clip) above which AIHWKIT's bound test
    fails: ``|y| > out_bound``, strictly (``finalizeOutput`` of ``rpu_forward_backward_pass.cpp``).

    With quantization, whether the top level ``k = out_bound / step`` itself "exceeds" the bound
    depends on AIHWKIT's float32 arithmetic ``rint(y / res) * res > out_bound``: for the default
    9-bit ADC (bound 12) ``255 * res`` is 12.000001 (saturated), for an 8-bit ADC with bound 10
    ``127 * res`` is exactly 10 (not saturated, no bound-management round). Computed here the
    same way (cached per ``(out_res, out_bound)``, :func:`_traced_constant`).
    """
    return _traced_constant(_limit, io.out_res, io.out_bound)


def _f32(v: float) -> float:
    """``v`` rounded to the nearest float32 (round half to even), in plain Python (traceable)."""
    if v == 0 or v != v or abs(v) == math.inf:
        return v
    m, e = math.frexp(v)
    return math.ldexp(round(m * (1 << 24)) / (1 << 24), e)


@functools.lru_cache(maxsize=64)
def _limit(out_res: float, out_bound: float) -> float:
    if out_bound <= 0:
        return math.inf
    if out_res <= 0:
        return out_bound
    res = 1.0 / out_res if out_res > 1 else out_res
    levels = 1.0 / (2.0 * res)  # out_bound / step
    k = round(levels)
    if abs(levels - k) > 1e-6 * max(1.0, levels):
        return levels  # the rounded levels never equal it
    # AIHWKIT's rint(y / res) * res at level k, in float32 (the uncached step: this function
    # is itself cached, and traced as a whole when compiling)
    top = _f32(_f32(k) * _aihwkit_step.__wrapped__(out_res, out_bound))
    return k - 0.5 if top > _f32(out_bound) else k + 0.5


def _saturated(
    z: Tensor, n_out: int, io: IOConfig, extremes: tuple[float, float] | None = None
) -> Tensor | None:
    """``(B, N, to)`` mask of tiles whose (rounded, not yet clipped) ADC output exceeds the
    bound (:func:`_saturation_limit`), or None if none did (eager; compiled, always the mask).
    ``extremes``: :func:`_extremes` of ``z`` if already computed."""
    limit = _saturation_limit(io)
    if limit == math.inf:
        return None
    if not _compiling() and _within(_extremes(z) if extremes is None else extremes, limit):
        return None
    zv = z.view(z.shape[0], z.shape[1], n_out, -1)
    return (zv.amax(dim=-1) > limit) | (zv.amin(dim=-1) < -limit)


def _bm_allowed(r: Tensor | float, io: IOConfig) -> Tensor | bool:
    """Whether iterative bound management may double ``r`` once more.

    AIHWKIT's rule (``forwardVector`` of ``rpu_forward_backward_pass.cpp``): stop once
    ``r > max_bm_factor`` or ``r > max_bm_res / inp_res``, where AIHWKIT's ``inp_res`` is by then
    the DAC step in input units (``initializeForForward`` multiplies the fraction by
    ``2 * inp_bound``): 2/126 for the default 7-bit DAC, so ``r`` stops at 16 (not 32).

    ``r`` is a float32 tensor, or a Python float (:func:`_bm_rounds`): the bounds are rounded
    to float32 first, so both compare as float32 does.
    """
    ok = r <= _f32(io.max_bm_factor)
    if io.inp_step > 0:
        ok &= r <= _f32(io.max_bm_res / io.inp_step)
    return ok


def analog_mvm(
    x: Tensor,
    tw: TileWeights,
    io: IOConfig,
    generator: torch.Generator | CounterStream,
    bias: Tensor | None = None,
    input_range: Tensor | None = None,
    per_tile: bool | str = False,
    out_scale: Tensor | None = None,
) -> Tensor | TileOutputs | tuple[TileOutputs, Tensor]:
    """Forward of tiled analog crossbars: ``(G, N, K)`` float32 inputs -> ``(G, N, O)``.

    REFERENCE.md §1 steps 1-7 for every tile at once: noise management, DAC, MVM, weight and
    output noise, ADC, iterative bound management (per input vector and tile), digital rescale,
    digital sum over input tiles, then ``bias`` (``(G, O)``) if given. No autograd.

    With ``per_tile=True`` the digital sum is left out: the result is every input tile's
    rescaled output, ``(G, ti, N, O)`` (``bias`` must then be None); with
    ``per_tile="compact"`` (eager only) the same values as :class:`TileOutputs`, the ADC's
    integer levels and their rescale factors (the training forward of learned output scales
    keeps them for its backward). With ``per_tile="compact"`` and ``out_scale`` (learned output
    scales as a digital rescale, ``(B, to)`` per tile or ``(B, O_pad)`` per column) the result
    is ``(tile outputs, y)``, ``y`` the layer's output ``sum_t out_scale_t * z_t + bias``
    computed from the float tile outputs before they are dropped (``bias`` allowed).

    Non-finite inputs: a NaN or +-inf anywhere in the part of an input vector that feeds a tile
    makes that tile's outputs NaN for that vector, hence the layer's outputs for that vector.
    (The periphery would otherwise clip inf to a finite, wrong value.)

    ``generator`` is a ``torch.Generator``, or, in a compiled forward, the layer's
    :class:`~aimc.random.CounterStream` (one fork per call); bound management then runs under
    one ``torch.cond``, its rounds as one custom op (:func:`_bound_management_keyed`) — the same
    algorithm.
    """
    lo = tw.layout
    g, n, k = x.shape
    if (
        isinstance(generator, CounterStream)
        and _compiling()
        and x.device.type == "cpu"
        and not per_tile
        and out_scale is None
        and (
            lo.batch * n * lo.padded_out * 4 >= EAGER_MIN_BYTES
            or (n >= INT_MIN_VECTORS and x.dtype == torch.float32 and _int_mvm_ready(io._key))
        )
    ):
        # a large tile output: the eager forward, whose buffers are reused (see
        # EAGER_MIN_BYTES); or one whose MVM runs in int8 (aimc._intmvm), which inductor's
        # float32 GEMM would not
        key = generator.fork().next_key()
        # the fields read one by one: dataclasses.astuple deep-copies them, and dynamo guards a
        # traced copy of an int on the object's identity, so every layer (its own int objects
        # for equal sizes) compiled a graph of its own
        sizes = [getattr(lo, f.name) for f in fields(lo)]
        return _opaque_mvm(x, tw.w, tw.w_abs, tw.scale, bias, input_range, key, sizes, io._key)
    if isinstance(generator, CounterStream):
        generator = generator.fork()
    compact = per_tile == "compact"
    summed = compact and out_scale is not None
    if per_tile and bias is not None and not summed:
        raise ValueError("analog_mvm: bias must be None with per_tile=True (add it after the sum)")
    if out_scale is not None and not compact:
        raise ValueError("analog_mvm: out_scale is for per_tile='compact' only")
    if compact and (_compiling() or not isinstance(generator, torch.Generator)):
        raise ValueError("analog_mvm: per_tile='compact' is for eager forwards only")
    if n == 0:  # an empty batch
        if compact:
            empty = TileOutputs(lo, g, 0, x.new_zeros(lo.batch, 0, lo.padded_out), None, None)
            return (empty, x.new_zeros(g, 0, lo.out_size)) if summed else empty
        return x.new_zeros((g, lo.n_in, 0, lo.out_size) if per_tile else (g, 0, lo.out_size))
    if lo.padded_in != k:  # an uneven split: each input part into its tile, then zeros
        x = lo.pad_in(x, 2)
    xv = x.view(g, n, lo.n_in, lo.rows)
    xq = _scratch(0, (g, lo.n_in, n, lo.rows), x)
    z = _scratch(1, (lo.batch, n, lo.padded_out), x)

    # the summed training forward: the learned output scales fold into the digital rescale
    scaled = TileWeights(lo, tw.w, combine_scales(tw.scale, out_scale, lo)) if summed else tw

    def finish(factor: Tensor | None) -> Tensor | TileOutputs | tuple[TileOutputs, Tensor]:
        # the digital periphery
        if not compact:
            return _digital(z, factor, tw, g, n, bias, per_tile)
        tiles = _compact(z, factor, tw, g, n, io)  # copies the levels out of z
        if not summed:
            return tiles
        return tiles, _digital(z, factor, scaled, g, n, bias)

    if io.is_perfect:
        xq.copy_(xv.transpose(1, 2))
        _bmm_(z, xq.view(lo.batch, n, lo.rows), tw.w.transpose(1, 2))
        return finish(None)
    in_unit, out_unit = units(io)
    eager = isinstance(generator, torch.Generator)
    if io.w_noise_bf16 and tw.w_abs is not None and eager:
        # eager: |W| in bfloat16 once per forward, in a reused buffer, for the first pass and
        # every bound-management round (each converted it afresh: a weight-sized tensor)
        w_abs = _scratch(5, tuple(tw.w_abs.shape), tw.w_abs, torch.bfloat16)
        tw = TileWeights(tw.layout, tw.w, tw.scale, w_abs.copy_(tw.w_abs), tw.fixed)
    fused = _fused_dac(x, io, input_range)
    # the squared levels of pcm_read (eager), where the fused kernel writes them
    x2 = _scratch(2, (lo.batch, n, lo.rows), x) if fused and eager and _squares_needed(io) else None
    if fused:  # noise management, the DAC and the squares in one pass over the inputs
        amax = x.new_empty(g, n, lo.n_in)
        x2_t = None if x2 is None else x2.view(xq.shape)
        _DAC.levels(x, xq, x2_t, amax, lo.n_in, *_dac_args(io, in_unit, input_range))
        s, finite = _scale_of(amax, io, input_range)
    else:
        s, finite = _input_scale(xv, io, input_range)  # (G, N, ti)
    s_pos = torch.where(s > 0, s, 1.0)  # an all-zero vector divides by 1
    s_div = s_pos.transpose(1, 2).unsqueeze(-1)
    if not fused:
        torch.mul(xv.transpose(1, 2), s_div.reciprocal(), out=xq)
        _dac_(_to_levels_(xq, io), io, in_unit, generator)
    xq3 = xq.view(lo.batch, n, lo.rows)
    bm = io.bound_management == BoundManagement.ITERATIVE
    fused_out = _fused_adc(z, per_tile, summed)
    limbs = _int_limbs(x, tw, io, n)
    remember = bm and _may_predict(x, io, generator, compact)
    predict = remember and _predicting(x, tw, io, generator, compact)
    sat = _mvm_adc(
        xq3, tw, io, generator, z, lo.n_out if bm else None, x2, not fused_out, limbs, predict
    )
    # an all-zero vector (s = 0) gives 0, unless input noise makes it non-zero: AIHWKIT then
    # runs the MVM unscaled (``forwardVector`` short-cuts only without input noise)
    s_out = s if io.inp_noise <= 0 else s_pos
    f_gnt = torch.where(finite, s_out * out_unit, math.nan)

    def to_factor(f_gnt: Tensor) -> Tensor:  # (G, N, ti) -> (B, N, to)
        return f_gnt.transpose(1, 2).reshape(lo.batch, n, 1).expand(-1, -1, lo.n_out)

    if fused_out:  # the ADC and the digital periphery in one pass, unless something saturated
        sure, sat = sat, None  # (predict: the tiles known to saturate, or None)
        if sure is None:
            factor = to_factor(f_gnt)
            # (summed: the levels kept for the output scales' gradient, written by the kernel)
            levels = z.new_empty(z.shape, dtype=_level_dtype(io)) if summed else None
            y = _fused_finish(z, factor, scaled, g, n, bias, io, bm, levels)
            if y is not None:
                if remember:
                    _remember_saturation(tw, None)
                return y if levels is None else (_compact(z, factor, tw, g, n, io, levels), y)
        sat = _adc_(z, io, lo.n_out if bm else None)
        if sure is not None:
            sat = sure if sat is None else sat | sure
    if remember:
        _remember_saturation(tw, sat)

    if bm and sat is not None and limbs is not None:
        # the int8 MVM packs a NaN level as 0: a vector with a non-finite input (its outputs
        # NaN by the finite mask) has a finite product there, which may saturate; the float32
        # GEMM's NaN never does. No rounds for it (they would spend the others' noise draws)
        sat &= finite.transpose(1, 2).reshape(lo.batch, n, 1)
        if not bool(sat.any()):
            sat = None
    if bm and sat is not None:
        if isinstance(generator, KeyedStream):
            return _bound_management_keyed(
                z,
                sat,
                f_gnt,
                xv.transpose(1, 2).reshape(lo.batch, n, lo.rows),
                s_div.reshape(lo.batch, n, 1),
                tw,
                io,
                generator,
                lambda z, r, f: _digital(z, to_factor(f) * r, tw, g, n, bias, per_tile, False),
            )
        # the inputs as (G, n_in, N, rows), a view: the rounds gather their rows from it
        x_t = xv.transpose(1, 2)
        r = _bound_management(
            z, sat, x_t, s_div.reshape(lo.batch, n, 1), _output_tiles(tw), io, generator, limbs
        )
        factor = to_factor(f_gnt) * r
        if fused_out and not compact:  # z holds ADC levels: the kernel's rounding and clip
            y = _fused_finish(z, factor, tw, g, n, bias, io, False)  # change nothing
            if y is not None:
                return y
        return finish(factor)
    return finish(to_factor(f_gnt))


#: A compiled CPU forward whose tile outputs (``G * ti * N * O_pad`` float32 values) take at
#: least this many bytes runs the eager forward as one opaque op (:func:`_opaque_mvm`). A
#: compiled graph allocates its buffers afresh on every call, and glibc maps an allocation of
#: 32 MiB or more afresh from the system each time (its largest ``mmap`` threshold), so each
#: call faulted in every 4 KiB page of the tile outputs and of the noise drawn for them (about
#: 24,600 faults per call for a 768 x 3072 layer on 2,048 tokens); the eager forward writes them
#: into buffers it keeps between calls. Below 32 MiB glibc serves them from its heap, but gives
#: the heap's top back to the system when enough of it is free, and the faults come back: a
#: 384 x 384 ``pcm_inference`` layer on 12,288 tokens (a SQuAD batch; 18.9 MiB of tile
#: outputs) took 9,184 faults per compiled call and 44-50 against 32-37 ms opaque (2026-12-05;
#: at 3-16 MiB the two were within each other's spread). Smaller forwards stay in the graph,
#: where inductor fuses the periphery.
EAGER_MIN_BYTES = 16 << 20


@torch.library.custom_op(f"{__package__.replace('.', '_')}::eager_mvm", mutates_args=())
def _opaque_mvm(
    x: Tensor,
    w: Tensor,
    w_abs: Tensor | None,
    scale: Tensor | None,
    bias: Tensor | None,
    input_range: Tensor | None,
    key: Tensor,
    sizes: list[int],
    io_key: str,
) -> Tensor:
    """:func:`analog_mvm` of a compiled forward run as eager code (its reused buffers and fused
    noise kernel), its noise drawn from a ``torch.Generator`` seeded with ``key`` (the
    forward's key from the layer's counter stream: the same seeds give the same numbers, and
    the same algorithm and distributions as the eager forward). ``sizes``: the
    :class:`~aimc.functional.TileLayout`'s fields, in order."""
    gen = torch.Generator(device=x.device).manual_seed(int(key))
    tw = TileWeights(TileLayout(*sizes), w, scale, w_abs, fixed=True)  # an eval forward's
    y = analog_mvm(x, tw, io_config_by_key(io_key), gen, bias, input_range)
    return y if y.is_contiguous() else y.contiguous()  # type: ignore[union-attr]


@_opaque_mvm.register_fake
def _(x, w, w_abs, scale, bias, input_range, key, sizes, io_key):
    return x.new_empty(x.shape[0], x.shape[1], TileLayout(*sizes).out_size)


def _compact(
    z: Tensor,
    factor: Tensor | None,
    tw: TileWeights,
    g: int,
    n: int,
    io: IOConfig,
    levels: Tensor | None = None,
) -> TileOutputs:
    """The tile outputs ``z`` ``(B, N, O_pad)`` in ADC steps and their rescale as
    :class:`TileOutputs` (the levels copied out of ``z``, which may be a scratch buffer, unless
    the fused ADC kernel already wrote them into ``levels``)."""
    lo = tw.layout
    raw = factor
    factor, col_scale = _digital_scales(factor, tw)  # a per-tile scale folded, as _digital does
    if factor is not None:
        factor = factor.expand(lo.batch, n, lo.n_out)
    tile_factor = None
    if tw.scale is not None and col_scale is None:  # a per-tile scale was folded
        own = raw if raw is not None else factor.new_ones(())
        tile_factor = own.expand(lo.batch, n, lo.n_out)
    if levels is None:
        levels = z.to(_level_dtype(io), copy=True)
    return TileOutputs(lo, g, n, levels, factor, col_scale, tile_factor)


def _digital(
    z: Tensor,
    factor: Tensor | None,
    tw: TileWeights,
    g: int,
    n: int,
    bias: Tensor | None,
    per_tile: bool = False,
    inplace: bool = True,
) -> Tensor:
    """``y = sum_tiles z * factor * weight_rescale + bias`` into a fresh ``(G, N, O)`` tensor.

    ``factor`` is ``(B, N, to)``; the input tiles of a group are accumulated in turn (each step
    one fused multiply-add over the group's output). With ``per_tile`` the terms are returned
    unsummed, ``(G, ti, N, O)`` (a fresh tensor: ``z`` may be a scratch buffer). Column-wise
    scales are applied to ``z`` in place unless ``inplace`` is False (a ``torch.cond`` branch
    may not mutate its inputs).
    """
    lo = tw.layout
    factor, col_scale = _digital_scales(factor, tw)
    if col_scale is not None:
        z = z.mul_(col_scale.unsqueeze(1)) if inplace else z * col_scale.unsqueeze(1)
    if per_tile:
        zt = z.view(lo.batch, n, lo.n_out, lo.cols)
        if factor is None:
            zt = zt.clone()
        else:
            zt = zt * factor.expand(lo.batch, n, lo.n_out).unsqueeze(-1)
        return lo.unpad_out(zt.view(g, lo.n_in, n, lo.padded_out), 3)
    zv = z.view(g, lo.n_in, n, lo.n_out, lo.cols)
    y = torch.empty(g, n, lo.n_out, lo.cols, device=z.device, dtype=z.dtype)
    base = None if bias is None else lo.pad_out(bias, 1).reshape(g, 1, lo.n_out, lo.cols)
    # without a bias, the first term is a plain copy or product: addcmul (and add) with a 0-dim
    # base take a slow broadcasting path (measured 4x a plain mul on 2048 x 384)
    if factor is None:
        if base is None:
            y.copy_(zv[:, 0])
        else:
            torch.add(base, zv[:, 0], out=y)
        for t in range(1, lo.n_in):
            y.add_(zv[:, t])
    else:
        fv = factor.expand(lo.batch, n, lo.n_out).reshape(g, lo.n_in, n, lo.n_out, 1)
        if base is None:
            torch.mul(zv[:, 0], fv[:, 0], out=y)
        else:
            torch.addcmul(base, zv[:, 0], fv[:, 0], out=y)
        for t in range(1, lo.n_in):
            y.addcmul_(zv[:, t], fv[:, t])
    y = y.view(g, n, lo.padded_out)
    return y if lo.padded_out == lo.out_size else lo.unpad_out(y, 2)


def _digital_scales(factor: Tensor | None, tw: TileWeights) -> tuple[Tensor | None, Tensor | None]:
    """``(factor, column scales)`` of :func:`_digital`: a per-tile scale of ``tw`` folded into
    ``factor`` (``(B, N, to)``), column-wise scales (``(B, O_pad)``) returned apart."""
    lo = tw.layout
    if tw.scale is None:
        return factor, None
    if tw.scale.shape[1] != lo.n_out:  # column-wise
        return factor, tw.scale
    scale = tw.scale.unsqueeze(1)  # (B, 1, to)
    return (scale if factor is None else factor * scale), None


#: The ADC and the digital periphery as one hand-written kernel (eager CPU forwards).
_ADC = NativeAdcKernel()


@contextlib.contextmanager
def unfused_adc() -> Iterator[None]:
    """The ADC and the digital periphery as tensor code while open (``AIMC_ADC_NATIVE=0``),
    for instruments that wrap :func:`_mvm_adc` to read a first pass's rounded tile outputs and
    saturation mask, which the fused ADC kernel does not produce (the values are the same)."""
    before = os.environ.get("AIMC_ADC_NATIVE")
    os.environ["AIMC_ADC_NATIVE"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["AIMC_ADC_NATIVE"]
        else:
            os.environ["AIMC_ADC_NATIVE"] = before


def _fused_adc(z: Tensor, per_tile: bool | str, summed: bool) -> bool:
    """Whether :data:`_ADC` finishes this forward: an eager CPU forward that sums its tiles
    (``summed``: the training forward of learned output scales, which also keeps the levels)."""
    return (
        (not per_tile or summed) and z.device.type == "cpu" and not _compiling() and _ADC.usable()
    )


def _fused_finish(
    z: Tensor,
    factor: Tensor,
    tw: TileWeights,
    g: int,
    n: int,
    bias: Tensor | None,
    io: IOConfig,
    bm: bool,
    levels: Tensor | None = None,
) -> Tensor | None:
    """The layer's output from the tile outputs ``z`` before the ADC, by :data:`_ADC`: the
    ADC's rounding and clip and :func:`_digital` in one pass (and with ``levels``, ``z``'s
    shape, the clipped levels as :func:`_compact` keeps them). None (``z`` untouched) where an
    output saturates (bound management) or is NaN: the tensor code then takes over, from
    :func:`_adc_`."""
    lo = tw.layout
    factor, col_scale = _digital_scales(factor, tw)
    y = z.new_empty(g, n, lo.padded_out)
    base = None if bias is None else lo.pad_out(bias, 1).reshape(g, lo.padded_out).contiguous()
    f = factor.expand(lo.batch, n, lo.n_out).contiguous()
    cs = None if col_scale is None else col_scale.contiguous()
    if any(t is not None and t.dtype != torch.float32 for t in (f, cs, base)):
        return None  # (a float64 bias or scale given to analog_mvm directly: tensor code)
    bound = _f32(_clip_bound(io))  # the float32 clip (that _level_dtype checked fits)
    ext = _ADC.finish(z, y, f, cs, base, lo.n_in, io.out_step > 0, bound, levels)
    if bm and not _within(ext, _saturation_limit(io)):
        return None
    if not _within(ext, math.inf):  # NaN
        return None
    return y if lo.padded_out == lo.out_size else lo.unpad_out(y, 2)


def _output_tiles(tw: TileWeights) -> TileWeights:
    """``tw`` split along the outputs as well: one ``(cols, rows)`` matrix per (input tile,
    output tile), ``(B * to, cols, rows)``, without digital scales (what a bound-management
    round recomputes)."""
    lo = tw.layout
    shape = (tw.w.shape[0] * lo.n_out, lo.cols, lo.rows)
    return TileWeights(
        lo, tw.w.view(shape), None, None if tw.w_abs is None else tw.w_abs.view(shape)
    )


def _bound_management(
    z: Tensor,
    sat: Tensor,
    x_t: Tensor,
    s_div: Tensor,
    w_sub: TileWeights,
    io: IOConfig,
    gen: torch.Generator | Tensor,
    limbs: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Iterative bound management (REFERENCE.md §1.6), per input vector and tile.

    Tiles whose output saturated are recomputed with their input halved (``r <- 2r``) and fresh
    noise, until nothing saturates or the stop rule holds. Updates ``z`` in place and returns
    ``r`` of shape ``(B, N, to)``. Each round gathers, for every tile, only the vectors that
    saturated there (padded to the largest count), recomputes them in one batched MVM and copies
    the rows back (row-wise ``index_select`` / ``index_copy_``). ``w_sub`` holds one matrix per
    (input tile, output tile) (:func:`_output_tiles`). ``x_t``: the inputs per tile,
    ``(B, N, rows)``, or the layer's inputs as a ``(G, n_in, N, rows)`` view (input tile ``b``
    of group ``b // n_in``, part ``b % n_in``: the eager forward's, read without a copy).

    ``gen`` is a ``torch.Generator`` (eager forwards), or the ``(rounds,)`` int64 keys of a
    tensor stream's rounds (compiled forwards, :func:`_gathered_rounds`): round ``k`` then draws
    from :class:`~aimc.random.RowStream` of key ``k``, i.e. for each pair it redoes exactly the
    values that a round recomputing every (input tile, vector, output tile) would draw there.

    ``limbs``: the first pass's int8 limbs of the tile matrices (:func:`_int_limbs`), or None;
    a round on at least :data:`INT_MIN_VECTORS` vectors per (input tile, output tile) then runs
    its MVM in int8 too (its DAC levels are whole numbers as the first pass's are).
    """
    nb, n, n_out = sat.shape
    rows_in, cols = w_sub.w.shape[2], w_sub.w.shape[1]
    in_unit = units(io)[0]
    r = torch.ones(sat.shape, device=z.device, dtype=torch.float32)
    if x_t.dim() == 4:  # (G, n_in, N, rows): tile b = g n_in + t reads x[g, v, t]
        n_in = x_t.shape[1]
        x_rows = x_t.transpose(1, 2).reshape(-1, rows_in)  # row (g N + v) n_in + t
        b_ar = torch.arange(nb, device=z.device)
        src_base = ((b_ar // n_in) * (n * n_in) + b_ar % n_in).view(nb, 1, 1)
        src_step = n_in
    else:  # (B, N, rows)
        x_rows = x_t.reshape(nb * n, rows_in)
        src_base, src_step = None, 1
    z_rows = z.view(nb * n * n_out, cols)  # row (b*N + v)*to + t
    base = (torch.arange(nb, device=z.device) * n).view(nb, 1, 1)
    t_ar = torch.arange(n_out, device=z.device).view(1, n_out, 1)
    # row (b*to + t)*N + v of a round over every pair: where the keyed rounds' draws come from
    pair_base = (torch.arange(nb * n_out, device=z.device) * n).view(nb, n_out, 1)
    round_no = 0
    while True:
        redo = (sat & _bm_allowed(r, io)).transpose(1, 2)  # (B, to, N)
        counts = redo.sum(dim=2)  # (B, to)
        k = int(counts.max())
        if k == 0:
            return r
        r = torch.where(redo.transpose(1, 2), r * 2, r)
        # per tile, the saturated vectors first
        order = torch.argsort((~redo).to(torch.uint8), dim=2, stable=True)[..., :k]  # (B,to,k)
        if isinstance(gen, torch.Generator):
            g: torch.Generator | RowStream = gen
        else:
            g = RowStream(gen[round_no], (pair_base + order).reshape(-1), nb * n_out * n)
        round_no += 1
        rows = (base + order).reshape(-1)  # rows of x_rows
        # AIHWKIT's input scale (1 / s) / r: r is a power of two, so the division is exact
        inv = (
            s_div.reshape(-1)[rows]
            .reciprocal_()
            .div_(r.transpose(1, 2).reshape(nb, n_out, n).gather(2, order).reshape(-1))
        )
        src = rows if src_base is None else (src_base + order * src_step).reshape(-1)
        xq = _to_levels_(x_rows.index_select(0, src).mul_(inv.unsqueeze(1)), io)
        xq = _dac_(xq, io, in_unit, g).view(nb * n_out, k, rows_in)
        zs = torch.empty(nb * n_out, k, cols, dtype=torch.float32, device=z.device)
        lb = limbs if limbs is not None and k >= INT_MIN_VECTORS else None
        sat_new = _mvm_adc(xq, w_sub, io, g, zs, 1, None, True, lb)  # (B*to, k, 1), or None
        valid = (torch.arange(k, device=z.device).view(1, 1, k) < counts.unsqueeze(2)).reshape(-1)
        pos = valid.nonzero().squeeze(1)
        dst = ((base + order) * n_out + t_ar).reshape(-1).index_select(0, pos)
        z_rows.index_copy_(0, dst, zs.view(-1, cols).index_select(0, pos))
        sat = torch.zeros(nb * n * n_out, dtype=torch.bool, device=z.device)
        if sat_new is not None:
            sat[dst] = sat_new.reshape(-1)[pos]
        sat = sat.view(nb, n, n_out)


# the namespace follows the package name, so that two copies of aimc (an A/B benchmark that
# imports the previous version beside this one) register two ops
@torch.library.custom_op(f"{__package__.replace('.', '_')}::bound_management", mutates_args=())
def _gathered_rounds(
    z: Tensor,
    sat: Tensor,
    x_t: Tensor,
    s_div: Tensor,
    w: Tensor,
    w_abs: Tensor | None,
    keys: Tensor,
    io_key: str,
) -> tuple[Tensor, Tensor]:
    """:func:`_bound_management` of a tensor-stream forward as one opaque op, so that a compiled
    graph runs the gathered rounds (data-dependent shapes, Python control flow) as eager code:
    returns the new ``z`` and ``r``. ``w`` / ``w_abs``: :func:`_output_tiles`' matrices;
    ``keys``: the rounds' keys."""
    z = z.clone()
    r = _bound_management(
        z, sat, x_t, s_div, TileWeights(None, w, None, w_abs), io_config_by_key(io_key), keys
    )  # type: ignore[arg-type]
    return z, r


@_gathered_rounds.register_fake
def _(z, sat, x_t, s_div, w, w_abs, keys, io_key):
    return torch.empty_like(z), torch.empty(sat.shape, dtype=torch.float32, device=z.device)


def _bm_rounds(io: IOConfig) -> int:
    """How many times bound management can double ``r`` at most (:func:`_bm_allowed`)."""
    r, rounds = 1.0, 0
    while rounds < 64 and _bm_allowed(r, io):
        r, rounds = 2 * r, rounds + 1
    return rounds


def _bound_management_keyed(
    z: Tensor,
    sat: Tensor,
    f_gnt: Tensor,
    x_t: Tensor,
    s_div: Tensor,
    tw: TileWeights,
    io: IOConfig,
    gen: KeyedStream,
    finish: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> Tensor:
    """Iterative bound management of a tensor-stream (compiled) forward; returns
    ``finish(z, r, f_gnt)`` (the digital periphery) of the final ``z`` and ``r`` (``(B, N, to)``),
    ``f_gnt`` passed through.

    One ``torch.cond`` decides whether any round is needed: if not, the branch is ``finish``
    alone (a ``torch.cond`` output may not alias its input, so a branch that returned ``z``
    unchanged would copy it; ``finish`` reads ``z`` once anyway, so a forward in which nothing
    saturates costs nothing beyond the first pass). If so, the rounds run as one custom op
    (:func:`_gathered_rounds`), :func:`_bound_management`'s algorithm, which recomputes only the
    pairs that saturated, as the eager forward does. Their noise comes from keys drawn here up
    front, one per possible round (round ``k`` takes key ``k``), and at each redone pair it is
    the value a round over every pair would draw there (:class:`~aimc.random.RowStream`), so the
    numbers depend neither on which other pairs saturated nor on how they are gathered.
    Before, the compiled rounds recomputed every pair (nested ``torch.cond`` up to aimc 0.3.0,
    then a ``torch.while_loop``) and kept the redone ones: the same numbers, to float rounding,
    at 1.5–1.9 times the eager forward's time on layers that saturate often.
    """
    rounds = _bm_rounds(io)
    r = torch.ones(sat.shape, device=z.device, dtype=torch.float32)
    if rounds == 0:  # the stop rule allows no round (e.g. max_bm_factor < 1)
        return finish(z, r, f_gnt)
    keys = torch.stack([gen.next_key() for _ in range(rounds)])
    w_sub = _output_tiles(tw)
    io_key = io._key  # a constant of the graph (IOConfig keeps it current)

    def run(z: Tensor, r: Tensor, sat: Tensor, f_gnt: Tensor) -> Tensor:
        z, r = _gathered_rounds(z, sat, x_t, s_div, w_sub.w, w_sub.w_abs, keys, io_key)
        return finish(z, r, f_gnt)

    def done(z: Tensor, r: Tensor, sat: Tensor, f_gnt: Tensor) -> Tensor:
        return finish(z, r, f_gnt)

    pred = (sat & _bm_allowed(r, io)).any()
    # f_gnt is an operand in its natural (G, N, ti) layout: inductor (torch 2.13) gives a
    # transposed or expanded tensor that a branch takes other strides than it traced with
    return torch.cond(pred, run, done, (z, r, sat, f_gnt))
