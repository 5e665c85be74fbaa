"""Hardware-aware (HWA) training: weight modifiers, clipping, remapping, learned input ranges.

REFERENCE.md §4; Rasch et al., "Hardware-aware training for large-scale and diverse deep learning
inference workloads using in-memory computing-based accelerators", Nat. Commun. 14, 5282 (2023).

* Weight modifiers perturb the tile weights of the training forward (fresh draws every forward;
  the backward is straight-through to the digital weights). ``a = max|W|`` per tile or layer.
  The ``chip`` modifier is the device model itself: every forward programs a fresh chip and
  reads it at a random time (:func:`draw_chip_sample`; the layer does the rest,
  :meth:`aimc.nn.chip.ChipMixin.fresh_chip_tiles`).
* Clipping and remapping act on the digital weights after an optimizer step:
  :func:`post_step` (call it after ``optimizer.step()``) or :func:`register_post_step_hook`
  (an optimizer step hook that does it for you).
* The learned input range is a per-layer DAC range ``r``: inputs are clipped to ``[-r, r]`` and
  divided by ``r`` (noise management then acts on ``x / r``, as in AIHWKIT); ``r`` is
  initialised from the data and trained as AIHWKIT 1.2.0 trains it
  (``TileWithPeriphery.post_backward``): the input gradient passes straight through the clip,
  and the range's gradient keeps only the part of the clipped inputs' gradient that widens the
  range, relative to ``r``, plus a slow decay while nearly
  all inputs are inside (:class:`RangeLearning`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import _workspace
from ._kernels import FusedKernel
from ._rangeclip import CLIP
from ._tiles import TILES
from .config import HWAConfig, WeightClip, WeightModifier, WeightRemap
from .functional import TileLayout
from .random import noise_normal_

#: PCM programming-noise polynomial (REFERENCE.md §2) divided by g_max = 25 µS.
PROG_NOISE_COEFFS = (0.26348 / 25, 1.9650 / 25, -1.1731 / 25)


def _amax(w: Tensor, layout: TileLayout, per_tile: bool) -> Tensor:
    """``a = max|W|`` broadcastable to ``w`` ``(B, O_pad, ci)``: per tile or per layer."""
    if not per_tile:
        return w.abs().amax().clamp_min(1e-12)
    b, o, c = w.shape
    a = w.abs().view(b, layout.n_out, o // layout.n_out, c).amax(dim=(2, 3)).clamp_min(1e-12)
    return a.repeat_interleave(o // layout.n_out, dim=1).unsqueeze(2)


def modify_weights(w: Tensor, layout: TileLayout, hwa: HWAConfig, gen: torch.Generator) -> Tensor:
    """The perturbed tile weights of one training forward (REFERENCE.md §4)."""
    kind = hwa.modifier
    if kind == WeightModifier.NONE:
        return w
    if kind == WeightModifier.CHIP:
        raise ValueError(
            "hwa.modifier: got 'chip'; allowed here: a modifier that needs no device model "
            "(the chip modifier is applied by the analog layer's training forward, which has "
            "the device model: draw_chip_sample and ChipMixin.fresh_chip_tiles)"
        )
    a = _amax(w, layout, hwa.modifier_per_tile)
    if kind == WeightModifier.DISCRETIZE:
        res = 1.0 / hwa.modifier_res if hwa.modifier_res > 1 else hwa.modifier_res
        return _round_half_away(w / (a * res)) * (a * res)
    xi = noise_normal_(torch.empty_like(w), gen)
    std = hwa.modifier_std
    if kind == WeightModifier.ADD_NORMAL:
        return w + std * a * xi
    if kind == WeightModifier.MULT_NORMAL:
        return w + w * (std * a) * xi
    prog = kind == WeightModifier.PROG_NOISE
    c0, c1, c2 = PROG_NOISE_COEFFS if prog else hwa.modifier_coeffs
    rel = w.abs() / a
    noisy = w + a * std * (c0 + c1 * rel + c2 * rel * rel) * xi
    if prog:  # AIHWKIT ``ProgNoise``: a weight keeps its sign, the noise is mirrored at zero
        return torch.where(w < 0, -noisy.abs(), noisy.abs())
    return noisy


def draw_chip_sample(hwa: HWAConfig, gen: torch.Generator) -> tuple[float, int, int]:
    """``(t, program_seed, drift_seed)`` of one training forward of the ``chip`` modifier, all
    from ``gen``: the drift time ``t = exp(U(ln t_min, ln t_max))`` (log-uniform in
    ``[modifier_t_min, modifier_t_max]``, as many draws per decade of time; ``t_min`` when the
    two are equal) and the seeds of the fresh chip's programming and of its read.

    Drawing seeds (rather than feeding ``gen`` to the device model) makes the modifier's chip
    exactly the one ``program_chip(program_seed)`` then ``drift_chip(t, drift_seed)`` build, on
    every tile chunk of any layer size.
    """
    t_min, t_max = hwa.modifier_t_min, hwa.modifier_t_max
    u = torch.rand(1, generator=gen, device=gen.device, dtype=torch.float64)
    seeds = torch.randint(0, 1 << 62, (2,), generator=gen, device=gen.device).tolist()
    if t_min == t_max:
        t = t_min
    else:
        lo, hi = math.log(t_min), math.log(t_max)
        t = min(max(math.exp(lo + float(u) * (hi - lo)), t_min), t_max)  # rounding of exp/log
    return t, int(seeds[0]), int(seeds[1])


def _round_half_away(v: Tensor) -> Tensor:
    """``roundf``: to the nearest integer, halves away from zero (AIHWKIT's discretization;
    ``torch.round`` rounds halves to even)."""
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def _clipped(x: Tensor, r: Tensor, mag: Tensor) -> Tensor:
    """``clamp(x, -r, r)`` with +-inf as NaN (``mag`` = ``|x|``). ``|x| == inf``, not ``isinf``:
    inductor's CPU kernel vectorizes the comparison, but evaluates ``isinf`` one value at a time
    (measured 4.5 -> 3.1 ms on 3 M values, 2 threads)."""
    return torch.where(mag == float("inf"), float("nan"), torch.maximum(torch.minimum(x, r), -r))


class RangeLearning(NamedTuple):
    """How the learned input range's gradient is formed (AIHWKIT 1.2.0's ``InputRangeParameter``
    and ``TileWithPeriphery.post_backward``), from the inputs ``x`` of a layer and the gradient
    ``g`` of its clipped input::

        dr = s * (r * scale if relative else 1) + decay * r * [mean(|x| < r) > min_inside]
        s  = sum_{x >= r} min(g, 0) - sum_{x <= -r} max(g, 0)

    Only the part of the clipped inputs' gradient that widens the range enters ``s``; the
    decay shrinks the range while more than ``min_inside`` of the inputs are inside it. The
    input gradient passes straight through the clip (``dx = g`` for every input)."""

    decay: float
    """``hwa.input_range_decay`` (AIHWKIT ``decay``)."""
    relative: bool
    """``hwa.input_range_gradient_relative`` (AIHWKIT ``gradient_relative``)."""
    scale: float
    """``hwa.input_range_gradient_scale`` (AIHWKIT ``gradient_scale``; with ``relative`` only)."""
    min_inside: float
    """``hwa.input_range_min_inside`` (AIHWKIT ``input_min_percentage``)."""

    @classmethod
    def of(cls, hwa: HWAConfig) -> RangeLearning:
        """The range learning of ``hwa``'s fields."""
        return cls(
            hwa.input_range_decay,
            hwa.input_range_gradient_relative,
            hwa.input_range_gradient_scale,
            hwa.input_range_min_inside,
        )


def _outside_sums(outside: Tensor, grad: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """``(s, inside)``: ``s = sum(min(g * sign(x), 0))`` over the outside (the widening part
    of the clipped inputs' gradient: ``min(g, 0)`` above the range, ``-max(g, 0)`` below) and
    the number of inputs inside the range."""
    s = torch.where(outside, (grad * sign).clamp(max=0.0), 0.0).sum()
    return s, (~outside).sum()


def _range_grad(s: Tensor, inside: Tensor, n: int, r: Tensor, rl: RangeLearning) -> Tensor:
    """The learned range's gradient (:class:`RangeLearning`) from the sum ``s`` and the count
    ``inside`` of :func:`_outside_sums` over ``n`` inputs, in ``r``'s shape and dtype."""
    rv = r.detach().sum().to(torch.float64)
    g = s.to(torch.float64)
    if rl.relative:
        g = g * (rv * rl.scale)
    if rl.decay > 0:
        frac = inside.to(torch.float64) / max(n, 1)
        g = g + rl.decay * rv * (frac > rl.min_inside).to(torch.float64)
    return g.reshape(r.shape).to(r.dtype)


def _clip_forward(x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``(clamp(x, -r, r), code)``; NaN passes through, +-inf becomes NaN (a clipped inf would be
    a finite, wrong value; a non-finite input gives non-finite outputs, as digitally).

    ``code`` (int8) is what the backward needs of ``x``, a byte per value instead of ``x``
    itself: 0 inside the range (``|x| < r``, or NaN), else ``sign(x) + 2`` (1, 2 or 3)."""
    mag = x.abs()
    code = torch.where(mag >= r, torch.sign(x) + 2, 0.0).to(torch.int8)
    return _clipped(x, r, mag), code


def _clip_backward(code: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_outside_sums` from the forward's ``code``: the outside is ``|x| >= r`` (code not
    0), ``sign(x)`` is ``code - 2``. The input gradient itself passes through the clip."""
    return _outside_sums(code != 0, grad, (code - 2).to(grad.dtype))


def _clip_into(x: Tensor, r: Tensor, out: Tensor) -> None:
    """``out <- clamp(x, -r, r)``, +-inf to NaN (:func:`_clip_forward`'s values, in place)."""
    out.copy_(_clipped(x, r, x.abs()))


def _range_sums(x: Tensor, r: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_outside_sums` from ``x`` itself (the outside ``|x| >= r``; NaN is inside)."""
    return _outside_sums(x.abs() >= r, grad, torch.sign(x))


#: :func:`_clip_forward` / :func:`_clip_backward` (and the in-place :func:`_clip_into` of
#: :func:`clipped_scratch`, :func:`_range_sums` of :func:`range_grad`) as fused CPU kernels
#: (built on first use)
_CLIP_FORWARD = FusedKernel(_clip_forward, env="AIMC_FUSED_KERNELS")
_CLIP_BACKWARD = FusedKernel(_clip_backward, env="AIMC_FUSED_KERNELS")
_CLIP_INTO = FusedKernel(_clip_into, env="AIMC_FUSED_KERNELS")
_RANGE_SUMS = FusedKernel(_range_sums, env="AIMC_FUSED_KERNELS")


def clipped_scratch(x: Tensor, r: Tensor) -> Tensor:
    """``x`` clipped to the learned range ``r`` (+-inf to NaN, as :func:`clip_input`) in the
    calling thread's reused buffer (CPU; a fresh tensor elsewhere): valid until the next call.
    The training forward of a layer that clips its own input (:func:`range_grad` in its
    backward) uses it instead of :func:`clip_input`, whose output is a fresh tensor kept for the
    backward: no new input-sized tensor in either direction."""
    x = x.contiguous()
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return _clipped(x, r.to(x.dtype), x.abs())
    out = _workspace.buffer("clip", x.numel()).view(x.shape)
    if _native_clip(r):
        CLIP.clip_into(x.detach(), float(r.detach().float()), out)
    else:
        _CLIP_INTO(x.detach().view(-1), r.detach().to(x.dtype), out.view(-1), device=x.device)
    return out


def _native_clip(r: Tensor) -> bool:
    """Whether :data:`aimc._rangeclip.CLIP` clips (eager, one range, the kernel built)."""
    return r.numel() == 1 and not torch.compiler.is_compiling() and CLIP.usable()


def range_grad(x: Tensor, r: Tensor, grad: Tensor, rl: RangeLearning) -> Tensor:
    """The learned range's gradient (:class:`RangeLearning`) from the unclipped input ``x`` and
    the gradient ``grad`` of the clipped input (the input's own gradient too: it passes
    through the clip unchanged)."""
    cpu = grad.device.type == "cpu" and grad.is_contiguous() and x.is_contiguous()
    if cpu and grad.dtype == x.dtype == torch.float32 and _native_clip(r):
        s, inside = CLIP.range_sums(x.detach(), float(r.detach().float()), grad)
        sums = (torch.tensor(s, dtype=torch.float64), torch.tensor(inside, dtype=torch.int64))
    elif cpu:
        flat = (x.detach().view(-1), r.detach().to(grad.dtype), grad.view(-1))
        sums = _RANGE_SUMS(*flat, device=x.device)
    else:
        sums = _range_sums(x.detach(), r.detach().to(grad.dtype), grad)
    return _range_grad(*sums, x.numel(), r, rl)


#: :func:`outside_range_grad` sums over the clipped inputs alone where at most this fraction of
#: the inputs is clipped. Each clipped input then costs two gathered rows of ``O`` values
#: against ``O`` multiply-adds of the whole product's GEMM per input: at 1/64 (a learned range
#: at 3 sigma clips about 0.3 %) the sum is still several times cheaper than the GEMM.
SPARSE_RANGE_GRAD_MAX = 1 / 64

#: Gathered values per chunk of :func:`outside_range_grad` (its temporaries stay in the cache).
_GATHER_CHUNK = 1 << 18


def outside_range_grad(
    x: Tensor,
    r: Tensor,
    grad: Tensor,
    w: Tensor,
    alpha: Tensor,
    lo: TileLayout,
    rl: RangeLearning,
) -> Tensor | None:
    """The learned range's gradient of :func:`range_grad` for a layer whose input needs no
    gradient of its own (the first layer of a network fed with data), from the clipped inputs
    (``|x| >= r``) alone: ``gx = grad @ (alpha ⊙ W)``, the clipped input's gradient, computed
    at those entries — one dot product of ``O`` values each instead of the whole ``(G, N, K)``
    product. ``x`` ``(G, N, K)`` the unclipped input, ``grad`` ``(G, N, O)``, ``w``
    ``(G, O, K)``, ``alpha`` ``(G, ti, O)`` each input tile's output scales (``lo``'s tiles).
    None where more than :data:`SPARSE_RANGE_GRAD_MAX` of the inputs are clipped (the caller
    then forms ``gx``). The same gradient up to float rounding (float32 products, the dot
    products summed in float64)."""
    outside = (x.abs() >= r).view(-1)
    idx = outside.nonzero().squeeze(1)
    if idx.numel() > SPARSE_RANGE_GRAD_MAX * x.numel():
        return None
    g, n, k = x.shape
    o = grad.shape[2]
    gi, ni, ki = idx // (n * k), (idx // k) % n, idx % k
    sign = torch.sign(x.detach().reshape(-1)[idx]).double()
    tile = lo.in_positions(x.device)[ki] // lo.rows
    # the rows of W^T, of grad and of alpha that the clipped entries read
    w_rows = w.detach().transpose(1, 2).reshape(g * k, o)  # one transposed copy of W
    g_rows = grad.reshape(g * n, o)
    a_rows = alpha.detach().reshape(g * lo.n_in, o)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = max(1, _GATHER_CHUNK // max(o, 1))
    for s in range(0, idx.numel(), step):
        e = slice(s, s + step)
        wa = w_rows[gi[e] * k + ki[e]] * a_rows[gi[e] * lo.n_in + tile[e]]
        dots = (g_rows[gi[e] * n + ni[e]] * wa).sum(dim=1)
        total += (dots.double() * sign[e]).clamp(max=0.0).sum()
    inside = torch.tensor(x.numel() - idx.numel())
    return _range_grad(total, inside, x.numel(), r, rl)


def _run_fused(kernel: FusedKernel, *args: Tensor) -> Any:
    """``kernel(*args)`` as one fused CPU kernel (a single pass over ``x``, and over the gradient:
    the eager formulas make 4 and 7 passes over activation-sized tensors, 0.15 of a
    ``standard_hwa()`` MLP step's ratio to digital on an AVX-512 host), or eagerly: on other
    devices, inside a graph being compiled, with ``AIMC_FUSED_KERNELS=0``, or where inductor
    cannot build (no C++ compiler; ``aimc.random``'s noise kernel warns about that). The same
    values either way; the backward's sum may differ by float rounding. Every output with as
    many values as the first argument comes back in its shape."""
    x = args[0]
    if not kernel.usable(x.device):
        return kernel.fn(*args)
    # flat contiguous operands: the kernel's variants are then only the dtype, grad or
    # inference mode and the thread count (dynamo guards on them), whatever the layer's shape
    flat = tuple(a.contiguous().view(-1) if a.dim() > 1 else a for a in args)
    out = kernel(*flat, device=x.device)
    outs = out if isinstance(out, tuple) else (out,)
    shaped = tuple(o.view(x.shape) if o.dim() == 1 and o.numel() == x.numel() else o for o in outs)
    return shaped if isinstance(out, tuple) else shaped[0]


class _InputRange(torch.autograd.Function):
    """``clamp(x, -r, r)`` with AIHWKIT's gradients of input-range learning
    (:class:`RangeLearning`): ``dx = g`` for every input (straight through the clip), ``dr``
    from the clipped inputs' gradient. Both directions are one fused kernel on CPU
    (:func:`_run_fused`). Keeps one byte per input value for the backward
    (:func:`_clip_forward`'s code), not the input."""

    @staticmethod
    def forward(ctx, x: Tensor, r: Tensor, rl: RangeLearning) -> Tensor:  # type: ignore[override]
        y, code = _run_fused(_CLIP_FORWARD, x, r.to(x.dtype))
        ctx.save_for_backward(code, r)
        ctx.rl = rl
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        code, r = ctx.saved_tensors
        gr = None
        if ctx.needs_input_grad[1]:
            s, inside = _run_fused(_CLIP_BACKWARD, code, grad)
            gr = _range_grad(s, inside, code.numel(), r, ctx.rl)
        return grad, gr, None


def clip_input(x: Tensor, r: Tensor, rl: RangeLearning) -> Tensor:
    """Clip ``x`` to the learned range ``r``, with the gradients of AIHWKIT's input-range
    learning ``rl`` (:class:`RangeLearning`, e.g. ``RangeLearning.of(config.hwa)``)."""
    if not isinstance(rl, RangeLearning):
        raise TypeError(
            f"clip_input: rl must be an aimc.hwa.RangeLearning (RangeLearning.of(config.hwa)), "
            f"got {type(rl).__name__} {rl!r}"
        )
    return _InputRange.apply(x, r, rl)


@torch.no_grad()
def update_input_range(layer: nn.Module, x: Tensor) -> None:
    """During the first ``input_range_init_batches`` training batches, set the range to the
    running mean of ``input_range_init_std * std(x)``."""
    hwa = layer.analog_config.hwa
    n = int(layer.input_range_batches)
    if n >= hwa.input_range_init_batches or x.numel() < 2:  # no std from an empty batch
        return
    xf = x.detach().float()
    if xf.device.type == "cpu" and xf.is_contiguous() and _native_clip(layer.input_range):
        # one pass over x, float64 moments (aimc._rangeclip; torch's std took 1.4 ms of 3 M
        # values, 11 ms of a standard_hwa MLP step)
        std = torch.tensor(CLIP.std(xf), dtype=torch.float32)
    else:
        std = xf.std()
    # as AIHWKIT: a batch without spread (all zeros, say) is skipped, not counted; and a batch
    # with NaN/inf must not poison the range
    if not (bool(torch.isfinite(std)) and float(std) > 0.0):
        return
    estimate = hwa.input_range_init_std * std
    # through .data, as AIHWKIT: a layer applied twice before one backward (weight sharing)
    # saved the range for its first call, whose version an in-place update would move
    layer.input_range.data.mul_(n / (n + 1)).add_(estimate / (n + 1))
    layer.input_range_batches.add_(1)


@torch.no_grad()
def post_step(model: nn.Module) -> nn.Module:
    """Apply the HWA clipping and remapping of every analog layer to its digital weights.

    Call it after each ``optimizer.step()`` (or use :func:`register_post_step_hook`). Clipping
    runs first, then remapping; remapping moves each tile's scale into its (fixed) mapping
    scale and resets the learned output scale to 1, as AIHWKIT, so the layer's function is
    unchanged by it.
    """
    from .convert import analog_layers

    for _, layer in analog_layers(model):
        hwa = layer.analog_config.hwa
        if hwa.clip == WeightClip.NONE and hwa.remap == WeightRemap.NONE:
            continue
        # (G, O, K): a view of the weight, or a copy where its layout has none (a
        # channels_last convolution's), written back after
        w = layer.weight_matrix()
        _normalise_as_set(layer, w)
        if not _fused_post_step(layer, hwa, w):
            if hwa.clip != WeightClip.NONE:
                _clip(layer, hwa, w)
            if hwa.remap != WeightRemap.NONE:
                _remap(layer, hwa, w)
        if w.untyped_storage().data_ptr() != layer.weight.untyped_storage().data_ptr():
            layer.weight.copy_(w.reshape(layer.weight.shape))
    return model


def _normalise_as_set(layer: nn.Module, w: Tensor) -> None:
    """The first post-step after conversion: the weight divided by AIHWKIT's set_weights scale
    (``layer.set_scale``, the weight scaling of the converted weights) and that scale moved into
    the mapping scale, so that the clip and the remap after it see AIHWKIT's tile weights (a
    fixed clip of 1.0 leaves a converted column whose max |W| is 7.9 as it is, where clipping
    the weight as given cut it to 1). The layer's function is unchanged; nothing where the
    scale is 1 (every later step)."""
    s = getattr(layer, "set_scale", None)
    if s is None:
        return
    layer.take_set_scale()  # (post_step before any training forward: the weight as it is)
    if bool((s == 1).all()) or bool((s == 0).all()):  # done, or a meta weight: nothing to move
        return
    lo = layer.tile_layout()
    divide_columns_(w, layer._scale_columns(s), lo, layer.bias if layer.analog_bias() else None)
    layer.mapping_scale.mul_(s.to(layer.mapping_scale.dtype))
    s.fill_(1.0)
    layer.invalidate_tiles()


def _fused_post_step(layer: nn.Module, hwa: HWAConfig, w: Tensor) -> bool:
    """A ``columnwise`` remap (after a ``fixed`` clip, or none) of a layer without analog bias
    whose weight is a contiguous float32 CPU tensor, in one pass over the weight by the tile
    kernel (:meth:`aimc._tiles.NativeTileKernel.clip_remap_`: the values of :func:`_clip` and
    :func:`_remap` bit for bit, where the tensor code makes five passes); False where it does
    not apply (the tensor code then runs)."""
    if hwa.remap != WeightRemap.COLUMNWISE or hwa.clip not in (WeightClip.NONE, WeightClip.FIXED):
        return False
    if (
        layer.analog_bias()
        or not layer.analog_config.mapping.out_scaling_columnwise
        or w.device.type != "cpu"
        or w.dtype != torch.float32
        or not w.is_contiguous()
        or torch.compiler.is_compiling()
        or not TILES.usable()
    ):
        return False
    lo = layer.tile_layout()
    scale = torch.empty(lo.groups, lo.n_in, lo.out_size, dtype=torch.float32)
    clip = hwa.clip_value if hwa.clip == WeightClip.FIXED else None
    TILES.clip_remap_(w.detach(), lo, clip, scale)
    # written through its address: the version counter moved by hand, as an in-place op would
    torch.autograd.graph.increment_version(layer.weight)
    _move_into_mapping(layer, scale)
    layer.invalidate_tiles()
    return True


def _clip(layer: nn.Module, hwa: HWAConfig, w: Tensor) -> None:
    """Clip the tile weights as AIHWKIT's ``WeightClipper`` does on each tile: ``fixed`` to
    ``+-clip_value``; ``layer_gaussian`` to ``+-clip_sigma * std`` with the (unbiased) std of
    each tile's weights. An analog bias is a row of the tile, so it is clipped (and counted in
    the std) with the weights."""
    analog_bias = layer.analog_bias()
    if hwa.clip == WeightClip.FIXED:
        w.clamp_(-hwa.clip_value, hwa.clip_value)
        if analog_bias:
            layer.bias.clamp_(-hwa.clip_value, hwa.clip_value)
        return
    full = layer._analog_weight(w)  # (G, O, K [+ 1]) with the analog bias as the last input
    bound = (hwa.clip_sigma * _tile_std(full.detach(), layer.tile_layout())).to(w.dtype)
    k = w.shape[2]
    w.clamp_(-bound[..., :k], bound[..., :k])
    if analog_bias:
        b = layer.bias.view(w.shape[0], w.shape[1])
        b.clamp_(-bound[..., k], bound[..., k])


def _tile_std(w: Tensor, layout: TileLayout) -> Tensor:
    """The unbiased std of each tile's elements of ``w`` ``(G, O, K)`` (float64), broadcast
    back to the shape of ``w`` (padding excluded); ``inf`` for a tile of one weight, whose std is
    undefined (AIHWKIT's clip leaves such a tile as it is)."""
    g = w.shape[0]
    lo = layout
    w = w.double()
    vals = lo.pad_out(lo.pad_in(w, 2), 1)  # each part into its tile, zeros after it
    mask = lo.pad_out(lo.pad_in(torch.ones_like(w), 2), 1)
    shape = (g, lo.n_out, lo.cols, lo.n_in, lo.rows)
    vals, mask = vals.reshape(shape), mask.reshape(shape)
    n = mask.sum(dim=(2, 4), keepdim=True)
    mean = vals.sum(dim=(2, 4), keepdim=True) / n
    var = ((vals - mean) * mask).square().sum(dim=(2, 4), keepdim=True) / (n - 1).clamp_min(1)
    var = torch.where(n > 1, var, torch.inf)
    std = var.sqrt().expand(shape).reshape(g, lo.padded_out, lo.padded_in)
    return lo.unpad_out(lo.unpad_in(std, 2), 1)


def _remap(layer: nn.Module, hwa: HWAConfig, w: Tensor) -> None:
    """Remap every tile as AIHWKIT's ``remap_weights`` does on each tile module: divide the
    tile's weights (an analog bias included: it is the tile's last input row) by their max |W|
    per tile column (``columnwise``) or per tile (``layerwise``) and move that factor into the
    tile's own output scale (:func:`_move_into_mapping`), so the function is unchanged."""
    lo = layer.tile_layout()
    full = layer._analog_weight(w).detach()  # (G, O, K [+ 1]), the analog bias as last input
    g = full.shape[0]
    # at least float32: 1e-12 (the clamp of an all-zero column below) is 0 in float16
    mags = column_maxima(full, lo).to(torch.promote_types(full.dtype, torch.float32))
    per_tile = lo.pad_out(mags, 2).view(g, lo.n_in, lo.n_out, lo.cols).amax(dim=3)  # (G,ti,to)
    tile_max = lo.tile_columns(per_tile)  # (G, ti, O)
    columnwise_scale = layer.analog_config.mapping.out_scaling_columnwise
    if hwa.remap == WeightRemap.LAYERWISE:
        mags = tile_max
    elif not columnwise_scale and not bool((mags == tile_max).all()):
        raise ValueError(
            "hwa.remap: 'columnwise' needs mapping.out_scaling_columnwise=True "
            "(one output scale per tile column to move the remap scale into)"
        )
    scale = mags.clamp_min(1e-12)
    divide_columns_(w, scale, lo, layer.bias if layer.analog_bias() else None)
    tile_scale = scale if columnwise_scale else per_tile.clamp_min(1e-12)
    _move_into_mapping(layer, tile_scale)
    layer.invalidate_tiles()


def _move_into_mapping(layer: nn.Module, tile_scale: Tensor) -> None:
    """After a remap divided each tile's weights by ``tile_scale`` (the shape of
    ``layer.out_scale``): the whole output scale, ``out_scale * mapping_scale * tile_scale``,
    into the (not learned) ``mapping_scale``, and the learned ``out_scale`` back to 1 — AIHWKIT's
    ``post_update_step`` (``set_scales(remap_weights(get_scales()))``). The function is
    unchanged; the learned scale's gradient is then the mapping scale times the effective
    scale's, as in AIHWKIT."""
    total = layer.out_scale.detach() * layer.mapping_scale.to(layer.out_scale.dtype)
    layer.mapping_scale.copy_(total * tile_scale.to(total.dtype))
    layer.out_scale.fill_(1.0)


def column_maxima(w: Tensor, lo: TileLayout) -> Tensor:
    """max |W| per (group, input tile, output column), ``(G, ti, O)``, of ``w`` ``(G, O, K)``
    laid out as ``lo``: as ``max(amax, -amin)`` (two reading passes, no weight-sized |W|;
    NaN where a column part holds NaN)."""
    g, o, _ = w.shape
    parts = lo.pad_in(w, 2).view(g, o, lo.n_in, lo.rows)
    return torch.maximum(parts.amax(dim=3), parts.amin(dim=3).neg_()).transpose(1, 2)


def divide_columns_(w: Tensor, scale: Tensor, lo: TileLayout, bias: Tensor | None = None) -> None:
    """``w`` ``(G, O, K)`` divided in place by ``scale`` ``(G, ti, O)``, each input tile's part
    of each column by its own; with an analog ``bias`` (the tile's last input row, ``lo`` then
    laid out for ``K + 1`` inputs) that too."""
    g, o, k = w.shape
    if w.dtype in (torch.float16, torch.bfloat16):
        # divided in float32: the scale of an all-zero column (1e-12) is 0 in float16 (0 / 0)
        wf, bf = w.float(), None if bias is None else bias.float()
        divide_columns_(wf, scale.float(), lo, bf)
        w.copy_(wf)
        if bias is not None:
            bias.copy_(bf)
        return
    if bias is not None or lo.padded_in != k or not w.is_contiguous():
        per_weight = lo.per_weight(scale)  # (G, O, K [+ 1])
        w.div_(per_weight[..., :k].to(w.dtype))
        if bias is not None:
            bias.div_(per_weight[..., k].reshape(-1).to(bias.dtype))
    else:  # an even split: each tile's rows divided in place, no weight-sized scale tensor
        w.view(g, o, lo.n_in, lo.rows).div_(scale.transpose(1, 2).unsqueeze(-1).to(w.dtype))


def register_post_step_hook(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Run :func:`post_step` on ``model`` after every ``optimizer.step()``; returns the handle
    (``handle.remove()`` undoes it)."""
    return optimizer.register_step_post_hook(lambda *_: post_step(model))
