"""What every analog layer shares: config, seeded generators, tile cache, the analog MVM.

The digital weight stays an ordinary ``nn.Parameter`` of the layer (of the same shape as in the
digital module it replaces); the tiles are a function of it, recomputed whenever the weight
changes (tracked by the tensor's version counter) and cached otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._boundmask import BOUND_MASK, unpack_bits
from .._intmvm import INT_MVM, keep_limbs
from .._tiles import TILES
from ..compensation import valid_mask
from ..config import AnalogConfig, OutputBoundMask, WeightModifier, WeightNoiseType
from ..functional import TileLayout, tile_weights
from ..hwa import (
    RangeLearning,
    clip_input,
    clipped_scratch,
    column_maxima,
    draw_chip_sample,
    modify_weights,
    outside_range_grad,
    range_grad,
    update_input_range,
)
from ..mvm import (
    INT_MIN_VECTORS,
    INT_MIN_VECTORS_FRESH,
    TileOutputs,
    TileWeights,
    _dac_levels_int8,
    analog_mvm,
    batched_matmul,
    combine_scales,
    dac_clips_range,
    units,
)
from ..random import CounterStream, check_seed, derive_seed
from .checks import check_finite_weights, check_input_range, compute_dtype, layer_label
from .chip import ChipMixin


def _float32_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """An analog Function's ``backward`` run with autocast off on the gradient's device: its
    products in float32, as the forward's. (``.backward()`` called inside an autocast region
    runs a custom backward under it: its matmuls would give bfloat16 gradients, and the
    output-bound mask's sparse product has no bfloat16 CPU kernel — it raised.)"""

    @functools.wraps(backward)
    def run(ctx: Any, grad: Tensor, *rest: Any) -> Any:
        with torch.autocast(device_type=grad.device.type, enabled=False):
            return backward(ctx, grad, *rest)

    return run


class _AnalogMVM(torch.autograd.Function):
    """Noisy analog forward; exact digital (straight-through) backward.

    The backward treats every quantizer, clip and noise term as the identity, i.e. it is the
    gradient of ``x @ W.T + b`` — what AIHWKIT's perfect backward pass of inference tiles
    computes. With ``per_tile`` the output is every input tile's own output ``(G, ti, N, O)``
    (no sum, no bias) and the backward takes one gradient per tile: ``x_t @ W_t.T``.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,  # type: ignore[override]
        layer: AnalogLayerMixin,
        input_range: Tensor | None = None,
        per_tile: bool = False,
    ) -> Tensor:
        ctx.has_bias = b is not None
        ctx.layout = layer.tile_layout() if per_tile else None
        ctx.bound = output_bound(layer.analog_config)
        # AIHWKIT's weight gradient divides by the range (Layer.weight_grad_factor); per tile
        # (an eval-mode forward with autograd under torch.compile: the caller multiplies the
        # tile outputs by the output scales through autograd) also undoes that alpha * m
        ctx.w_factor = None
        if per_tile and layer.out_scale is not None:
            alpha = layer.out_scale_columns().detach()
            f = layer.weight_grad_factor(input_range)
            ctx.w_factor = torch.where(alpha != 0, f / alpha, 0.0)  # (G, ti, O)
        elif input_range is not None:
            ctx.w_factor = layer.weight_grad_factor(input_range)
        # the input's gradient zeroes the outputs at the ADC bound, per input tile (AIHWKIT's
        # handle_output_bound): the tile outputs as TileOutputs (the summed forward with output
        # scales of 1, as a layer with learned output scales runs), where an eager forward's
        # input needs a gradient, of which only the mask is kept
        keep = (
            ctx.bound is not None
            and not per_tile
            and ctx.needs_input_grad[0]
            and not torch.compiler.is_compiling()
        )
        with torch.no_grad():
            if not keep:
                ctx.save_for_backward(x, w, None)
                return _run_mvm(layer, x, b, input_range, per_tile)
            lo = layer.tile_layout()
            ones = x.new_ones(lo.batch, lo.padded_out)
            out, y = _run_mvm(layer, x, b, input_range, per_tile="compact", out_scale=ones)
            # only which tile outputs are at the bound is kept for the backward (bits, or a
            # bool mask off the kernel's path; nothing where none is), not the tile outputs
            unit = output_bound_unit(out, input_range, layer.analog_config)
            mask = _saved_bound_mask(out, unit, ctx.bound)
        ctx.save_for_backward(x, w, mask)
        ctx.mask_layout = out.layout
        return y

    @staticmethod
    @_float32_backward
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, w, mask = ctx.saved_tensors
        lo = ctx.layout
        if lo is not None:
            gx, gw = _per_tile_backward(grad, x, w, lo, ctx.needs_input_grad)
            if gw is not None and ctx.w_factor is not None:
                gw = gw * lo.per_weight(ctx.w_factor)
            return gx, gw, None, None, None, None
        gx = None
        if ctx.needs_input_grad[0]:
            gx = batched_matmul(grad, w)
            if mask is not None:  # less the outputs at the bound, per input tile
                _subtract_saved_mask_(gx, grad, w, mask, ctx.mask_layout)
        gw = None
        if ctx.needs_input_grad[1]:
            gw = batched_matmul(grad.transpose(1, 2), x)
            if ctx.w_factor is not None:  # one range per layer: one factor
                gw.mul_(ctx.w_factor.flatten()[0])
        gb = grad.sum(dim=1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


@torch._dynamo.disable
def _take_set_scale(layer: AnalogLayerMixin) -> None:
    """:meth:`AnalogLayerMixin.take_set_scale`, eagerly under ``torch.compile`` (a buffer
    written once, at the first training forward)."""
    layer.take_set_scale()


@torch._dynamo.disable
def _train_mvm(*args: object) -> Tensor:
    """``_AnalogMVM.apply(*args)`` of a layer in training mode, run eagerly under
    ``torch.compile`` (a graph break).

    Dynamo's tracing of the straight-through ``autograd.Function`` in a training forward failed
    in torch 2.13 with an unrelated stride assertion. A compiled model in training mode then
    trains with its analog MVMs eager (the same noise as an eager forward) and everything
    between them compiled. Eval-mode forwards (``aimc.compile``), also with autograd enabled,
    stay in the graph."""
    return _AnalogMVM.apply(*args)


class _ScaledAnalogMVM(torch.autograd.Function):
    """Noisy analog forward with learned output scales, ``y = sum_t alpha_t z_t (+ b)`` over the
    input tiles ``t`` (``z_t`` each tile's analog output, ``alpha`` ``(G, ti, O)``); exact
    digital (straight-through) backward.

    The gradients are those of ``x @ (alpha ⊙ W).T + b`` for ``x`` and ``W`` (``alpha_t``
    scales the weights of tile ``t``: one dense matmul each, as for ``nn.Linear``, plus a
    weight-sized product) and ``sum_n grad_y * z_t`` for ``alpha_t``. The same gradients as
    :class:`_AnalogMVM` with ``per_tile`` followed by autograd's product and sum, without the
    ``(G, ti, N, O)`` product in the forward and the ``(G, ti, N, O)`` output gradient in the
    backward.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,  # type: ignore[override]
        alpha: Tensor,
        layer: AnalogLayerMixin,
        input_range: Tensor | None = None,
        clip_learning: RangeLearning | None = None,
    ) -> Tensor:
        # clip_learning given: x is not clipped yet; the forward clips it to input_range
        # itself, into a reused buffer (or not at all where the DAC's own clip gives the same
        # levels: mvm.dac_clips_range), and the backward takes the range's gradient from x's
        # (hwa.clipped_scratch, hwa.range_grad): no fresh input-sized tensor either way, the
        # values and gradients of clip_input followed by this function
        clip = clip_learning is not None
        with torch.no_grad():
            io = layer.analog_config.io
            pre_clip = clip and not dac_clips_range(x, io, input_range)
            xin = clipped_scratch(x, input_range) if pre_clip else x
            # every input tile's output z_t, kept for alpha's gradient as the ADC's integer
            # levels and their rescale (TileOutputs: an 8-bit ADC's in a quarter of the
            # memory of float32 z_t); y is summed from the float z_t before they are dropped,
            # alpha folded into each tile's digital rescale (as in the inference forward)
            lo = layer.tile_layout()
            a_cols = lo.pad_out(alpha.detach(), 2).reshape(lo.batch, lo.padded_out)
            out, y = _run_mvm(layer, xin, b, input_range, per_tile="compact", out_scale=a_cols)
        # through save_for_backward (None allowed), so that saved-tensor hooks (offloading,
        # checkpointing) see the levels too
        # the range as this forward clipped with (a later forward of the same layer, weight
        # sharing, may move the parameter through .data before this backward)
        r = input_range.detach().clone() if clip else None
        unit = output_bound_unit(out, input_range, layer.analog_config)
        ctx.save_for_backward(x, w, alpha, out.levels, out.factor, out.col_scale, r, unit)
        ctx.bound = output_bound(layer.analog_config)
        ctx.tile_shape = (out.layout, out.groups, out.n)
        ctx.layout = out.layout
        ctx.has_bias = b is not None
        ctx.clip_learning = clip_learning
        # AIHWKIT's weight gradient: 1 / (r * mapping scale) per tile column, not alpha
        # (Layer.weight_grad_factor)
        ctx.w_factor = layer.weight_grad_factor(input_range)
        return y

    @staticmethod
    @_float32_backward
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x_in, w, alpha, levels, factor, col_scale, r, unit = ctx.saved_tensors
        needs = ctx.needs_input_grad
        clip = ctx.clip_learning is not None
        gx = gw = gb = ga = gr = None
        want_gx = needs[0] or (clip and needs[5])  # the range's gradient is made of x's
        if clip and needs[5] and not needs[0] and not _any_at_bound(ctx, levels, factor, unit):
            # x needs no gradient (a first layer fed with data): the range's gradient from the
            # clipped inputs' entries of x's gradient alone, where few are clipped
            gr = outside_range_grad(x_in, r, grad, w, alpha, ctx.layout, ctx.clip_learning)
            want_gx = gr is None
        if want_gx or needs[1]:
            # with clip_learning the saved input is unclipped: clipped again for W's gradient
            x = clipped_scratch(x_in, r) if clip and needs[1] else x_in
            lo = ctx.layout
            if lo.n_in > 1 and lo.padded_in == lo.in_size:
                # each weight's alpha_t by broadcasting over the tile's inputs, (G, O, ti, 1):
                # contiguous reads (a (G, O, K) per-weight alpha would be a transposed gather)
                g, o, k = w.shape
                a_t = alpha.transpose(1, 2).unsqueeze(-1)
                if needs[1]:
                    gw = batched_matmul(grad.transpose(1, 2), x)
                    gw.view(g, o, lo.n_in, lo.rows).mul_(ctx.w_factor.transpose(1, 2).unsqueeze(-1))
                if want_gx:
                    w_a = (w.reshape(g, o, lo.n_in, lo.rows) * a_t).view(g, o, k)
                    gx = batched_matmul(grad, w_a)
            else:
                a_w = lo.per_weight(alpha)  # (G, O, K): each weight's alpha_t
                if needs[1]:
                    gw = batched_matmul(grad.transpose(1, 2), x).mul_(lo.per_weight(ctx.w_factor))
                if want_gx:
                    w_a = w * a_w
                    gx = batched_matmul(grad, w_a)
            if gx is not None:
                # AIHWKIT's tiles zero the output gradient of outputs at the ADC bound (in their
                # units) before the input's gradient: the input (and so the range) gradient only
                _mask_bound_(ctx, gx, grad, w_a, levels, factor, col_scale, unit)
            if clip and gx is not None and needs[5]:
                # the input gradient passes through the clip (AIHWKIT's input-range learning)
                gr = range_grad(x_in, r, gx, ctx.clip_learning)
            gx = gx if needs[0] else None
        if ctx.has_bias and needs[2]:
            gb = grad.sum(dim=1)
        if needs[3]:
            ga = TileOutputs(*ctx.tile_shape, levels, factor, col_scale).scale_grad(grad)
        return gx, gw, gb, ga, None, gr, None


def output_bound(cfg: AnalogConfig) -> float | None:
    """The tile output at which AIHWKIT's tiles zero the output gradient (``handle_output_bound``:
    ``0.999 * out_bound``), or None where the ADC has no bound or ``hwa.output_bound_mask`` is
    ``none`` (or ``saturated`` without an ADC: perfect IO)."""
    io, mode = cfg.io, cfg.hwa.output_bound_mask
    if io.out_bound <= 0 or mode == OutputBoundMask.NONE:
        return None
    if mode == OutputBoundMask.SATURATED and io.is_perfect:
        return None
    return 0.999 * io.out_bound


def output_bound_unit(
    out: TileOutputs, input_range: Tensor | None, cfg: AnalogConfig
) -> Tensor | None:
    """The value of one ADC level in the units :func:`output_bound` is in: with
    ``hwa.output_bound_mask`` ``aihwkit`` those of AIHWKIT's tile output (its ``x_output``:
    normalised weights times the tile's input, the input divided by the learned range, with
    noise management's scale and bound management's factor applied back), ``(B, N, to)`` or a
    0-dim tensor; with ``saturated`` the ADC's (one step); None without a bound."""
    if output_bound(cfg) is None:
        return None
    if cfg.hwa.output_bound_mask == OutputBoundMask.SATURATED:
        return torch.tensor(units(cfg.io)[1], dtype=torch.float32)
    own = out.own_factor()
    unit = own.float() if isinstance(own, Tensor) else torch.tensor(own, dtype=torch.float32)
    if input_range is not None:  # AIHWKIT's tile input is x / r; aimc's levels scale by r
        unit = unit / input_range.detach().float().reshape(())
    return unit


def _any_at_bound(ctx: Any, levels: Tensor, factor: Tensor | None, unit: Tensor | None) -> bool:
    """Whether any tile output of a backward's forward reached the ADC bound (from the levels and
    :func:`output_bound_unit` the forward saved)."""
    if unit is None:
        return False
    return TileOutputs(*ctx.tile_shape, levels, factor, None).any_at_bound(unit, ctx.bound)


def _mask_bound_(
    ctx: Any,
    gx: Tensor,
    grad: Tensor,
    w: Tensor,
    levels: Tensor,
    factor: Tensor | None,
    col_scale: Tensor | None,
    unit: Tensor | None,
) -> None:
    """``gx`` ``(G, N, K)`` (``grad @ w``, ``w`` the weights the input gradient multiplies,
    output scales folded in) less, for each input tile, the part of its outputs at the ADC bound
    (AIHWKIT's ``handle_output_bound``), in place; from the levels and :func:`output_bound_unit`
    the forward saved (nothing without a bound). On the CPU with integer levels in one pass of
    :data:`aimc._boundmask.BOUND_MASK`; else a mask and :func:`_subtract_masked_`."""
    if unit is None:
        return
    out = TileOutputs(*ctx.tile_shape, levels, factor, col_scale)
    lo = out.layout
    if (
        BOUND_MASK.takes(levels)
        and gx.dtype == grad.dtype == w.dtype == torch.float32
        and gx.device.type == "cpu"
        and gx.is_contiguous()
        and BOUND_MASK.usable()
    ):
        below = out.bound_thresholds(unit, ctx.bound)
        out_map = lo.out_columns(gx.device) if lo.padded_out != lo.out_size else None
        BOUND_MASK.subtract_masked(
            gx, grad.contiguous(), levels, below, w.contiguous(), lo.n_in, lo.in_sizes, out_map
        )
        return
    mask = out.bound_mask(unit, ctx.bound)
    if mask is not None:
        _subtract_masked_(gx, grad, mask, w, lo)


def _saved_bound_mask(out: TileOutputs, unit: Tensor | None, bound: float | None) -> Tensor | None:
    """What a training forward without learned output scales keeps of its tile outputs for the
    output-bound mask of its backward (:func:`_subtract_saved_mask_`): the masked outputs' bits
    (:meth:`aimc._boundmask.NativeBoundMaskKernel.pack_bits`, ``(B, N, ceil(O_pad / 64))``
    int64: 1/8 of int8 levels, 1/16 of int16, 1/32 of float32 tile outputs) on the CPU with
    integer levels, else :meth:`TileOutputs.bound_mask`'s bool mask; None where no output is at
    the bound (or there is no bound). Float levels (no ADC) are compared by the tensor code and
    their bool mask packed into the same bits."""
    if unit is None or bound is None:
        return None
    levels = out.levels
    if levels.device.type != "cpu" or not BOUND_MASK.usable():
        return out.bound_mask(unit, bound)
    if BOUND_MASK.takes(levels):
        bits = BOUND_MASK.pack_bits(levels.contiguous(), out.bound_thresholds(unit, bound))
        return bits if bool(bits.any()) else None
    mask = out.bound_mask(unit, bound)
    if mask is None:
        return None
    # the mask as int8 levels 0 and 1, one threshold 0 per row: its bits
    zero = torch.zeros(*mask.shape[:2], 1, dtype=torch.int32)
    return BOUND_MASK.pack_bits(mask.contiguous().view(torch.int8), zero)


def _subtract_saved_mask_(
    gx: Tensor, grad: Tensor, w: Tensor, mask: Tensor, lo: TileLayout
) -> None:
    """``gx`` ``(G, N, K)`` (``grad @ w``) less the part of the outputs :func:`_saved_bound_mask`
    kept, per input tile, in place: from the bits in one pass of the kernel
    (:meth:`~aimc._boundmask.NativeBoundMaskKernel.subtract_bits`: the same terms in the same
    order as from the levels), else :func:`_subtract_masked_`."""
    if mask.dtype == torch.int64:  # the bits
        if (
            gx.dtype == grad.dtype == w.dtype == torch.float32
            and gx.device.type == "cpu"
            and gx.is_contiguous()
            and BOUND_MASK.usable()
        ):
            out_map = lo.out_columns(gx.device) if lo.padded_out != lo.out_size else None
            BOUND_MASK.subtract_bits(
                gx,
                grad.contiguous(),
                mask,
                lo.padded_out,
                w.contiguous(),
                lo.n_in,
                lo.in_sizes,
                out_map,
            )
            return
        mask = unpack_bits(mask, lo.padded_out)
    _subtract_masked_(gx, grad, mask, w, lo)


def _subtract_masked_(gx: Tensor, grad: Tensor, mask: Tensor, w: Tensor, lo: TileLayout) -> None:
    """``gx`` ``(G, N, K)`` (``grad @ w``) less, for each input tile ``t``, the part of its
    masked outputs: ``gx[:, :, tile t] -= (grad ⊙ mask_t) @ w_t``, in place. ``mask``
    ``(B, N, O_pad)`` from :meth:`TileOutputs.bound_mask` (a few percent of the outputs): one
    sparse (CSR) product per tile, about a tenth of the dense GEMM's time where 2 % are masked
    (the dense per-tile product with a masked copy of the gradient took 3x). The tensor code of
    :data:`aimc._boundmask.BOUND_MASK`, for other devices, dtypes and float levels."""
    g, n, o = grad.shape
    m = mask.view(g, lo.n_in, n, lo.padded_out)
    if lo.padded_out != o:
        m = lo.unpad_out(m, 3)
    nz = m.nonzero()  # (M, 4): group, tile, vector, output; ordered by (group, tile) first
    if nz.numel() == 0:
        return
    gi, ti, ni, oi = nz.unbind(1)
    vals = grad.reshape(-1).index_select(0, (gi * n + ni) * o + oi)  # (one flat gather)
    per_tile = torch.bincount(gi * lo.n_in + ti, minlength=g * lo.n_in).tolist()
    starts = [0, *itertools.accumulate(lo.in_sizes)]
    first = 0
    for tile, count in enumerate(per_tile):
        if count == 0:
            continue
        part = slice(first, first + count)
        first += count
        gt, t = divmod(tile, lo.n_in)
        crow = torch.zeros(n + 1, dtype=torch.int64, device=grad.device)
        torch.cumsum(torch.bincount(ni[part], minlength=n), 0, out=crow[1:])
        with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            # (valid by construction: the invariant checks would cost a pass each)
            sp = torch.sparse_csr_tensor(
                crow, oi[part], vals[part], size=(n, o), check_invariants=False
            )
        wt = w[gt, :, starts[t] : starts[t + 1]].contiguous()  # (O, rows of tile t)
        gx[gt, :, starts[t] : starts[t + 1]].sub_(torch.sparse.mm(sp, wt))


@torch._dynamo.disable
def _train_scaled_mvm(*args: object) -> Tensor:
    """``_ScaledAnalogMVM.apply(*args)`` run eagerly under ``torch.compile`` (see
    :func:`_train_mvm`)."""
    return _ScaledAnalogMVM.apply(*args)


def _run_mvm(
    layer: AnalogLayerMixin,
    x: Tensor,
    b: Tensor | None,
    input_range: Tensor | None = None,
    per_tile: bool | str = False,
    out_scale: Tensor | None = None,
) -> Tensor | TileOutputs | tuple[TileOutputs, Tensor]:
    """The analog forward of ``layer`` on ``(G, N, K)`` float32 inputs (no autograd;
    :func:`~aimc.mvm.analog_mvm`'s ``per_tile`` and ``out_scale``)."""
    return analog_mvm(
        x,
        layer.active_tiles(x.shape[1]),
        layer.analog_config.io,
        layer.io_generator(x),
        b,
        None if input_range is None else input_range.detach(),
        per_tile,
        out_scale,
    )


def _native_tiles(w: Tensor) -> bool:
    """Whether the tile kernel lays out the weight ``w``: an eager CPU forward (not traced) of
    float32 weights (a float32 copy of others), the kernel built here."""
    return w.device.type == "cpu" and not torch.compiler.is_compiling() and TILES.usable()


def _per_tile_backward(
    grad: Tensor, x: Tensor, w: Tensor, lo: TileLayout, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None]:
    """Straight-through gradients of ``z_t = x_t @ W_t.T`` for every input tile ``t``:
    ``grad`` ``(G, ti, N, O)``, ``x`` ``(G, N, K)``, ``w`` ``(G, O, K)``. One batched matmul
    over the ``G * ti`` tiles each (a single tile: the plain ``x @ W.T`` gradients)."""
    g, n, _ = x.shape
    o = w.shape[1]
    gt = grad.reshape(lo.batch, n, o)
    gx = gw = None
    if needs[0]:
        # (G, O, ti, ci) -> (G, ti, O, ci) -> (B, O, ci)
        w_t = lo.pad_in(w, 2).view(g, o, lo.n_in, lo.rows).transpose(1, 2)
        gx = batched_matmul(gt, w_t.reshape(lo.batch, o, lo.rows))  # (B, N, ci)
        gx = gx.view(g, lo.n_in, n, lo.rows).transpose(1, 2).reshape(g, n, lo.padded_in)
        gx = lo.unpad_in(gx, 2)
    if needs[1]:
        x_t = lo.pad_in(x, 2).view(g, n, lo.n_in, lo.rows).transpose(1, 2)
        gw = batched_matmul(gt.transpose(1, 2), x_t.reshape(lo.batch, n, lo.rows))  # (B, O, ci)
        gw = gw.view(g, lo.n_in, o, lo.rows).transpose(1, 2).reshape(g, o, lo.padded_in)
        gw = lo.unpad_in(gw, 2)
    return gx, gw


class AnalogLayerMixin(ChipMixin):
    """Analog behaviour shared by :class:`AnalogLinear` and the analog convolutions.

    Subclasses provide :meth:`weight_matrix` (the weight as ``(groups, out, in)``) and call
    :meth:`analog_matmul` on ``(groups, vectors, in)`` inputs.
    """

    analog_config: AnalogConfig
    weight: Tensor
    bias: Tensor | None
    groups_: int = 1

    def _init_analog(self, config: AnalogConfig | None, seed: int) -> None:
        config = AnalogConfig() if config is None else config
        if not isinstance(config, AnalogConfig):
            raise ValueError(f"config: got {type(config).__name__}; allowed: aimc.AnalogConfig")
        self.analog_config = config
        #: the qualified name :func:`aimc.convert` found the layer under (used in messages)
        self.analog_name: str = getattr(self, "analog_name", "")
        self.seed = check_seed(seed)
        self._generators: dict[str, torch.Generator] = {}
        self.io_stream: int | None = None
        self._seed_compiled_stream()
        self._tile_cache: tuple[tuple[Any, ...], TileWeights] | None = None
        self._init_out_scale()
        if config.hwa.learn_input_range:
            device = self.weight.device
            # AIHWKIT InputRangeParameter.init_value = 3.0 (replaced by the data estimate
            # during the first training batches)
            self.input_range = nn.Parameter(
                torch.full((1,), 3.0, device=device, dtype=torch.float32)
            )
            self.register_buffer(
                "input_range_batches", torch.zeros((), dtype=torch.int64, device=device)
            )
        else:
            self.input_range = None

    def _init_out_scale(self) -> None:
        shape = self.out_scale_shape()
        self.out_scale = (
            None
            if shape is None
            else nn.Parameter(torch.ones(shape, device=self.weight.device, dtype=torch.float32))
        )
        # AIHWKIT's mapping scales: the part of each tile's output scale that is not learned.
        # A remap (hwa.remap) moves the whole scale here and resets out_scale to 1, as
        # AIHWKIT's post_update_step does (set_scales): the learned parameter is then always
        # near 1 and its gradient is the mapping scale times the effective scale's
        mapping = (
            None
            if shape is None
            else torch.ones(shape, device=self.weight.device, dtype=torch.float32)
        )
        self.register_buffer("mapping_scale", mapping)
        # AIHWKIT's set_weights stores each tile normalised by its weight scaling (the tile
        # column's max |W| / omega) and that scale as the tile's mapping scale; aimc keeps the
        # weight as given until the first post_step (hwa.post_step moves this scale into the
        # mapping scale there, before clipping: AIHWKIT clips the normalised tile weights). The
        # scale is taken from the weight the layer trains (take_set_scale): at the first
        # training forward, or that post_step, after any write to the weight since conversion;
        # zeros until then
        pending = None if shape is None else torch.zeros(shape, device=self.weight.device)
        self.register_buffer("set_scale", pending)
        self._set_scale_pending = shape is not None

    def _set_scale_pending_now(self) -> bool:
        """Whether a training forward takes the set_weights scale now (its first, with
        autograd)."""
        return getattr(self, "_set_scale_pending", False) and torch.is_grad_enabled()

    def take_set_scale(self) -> None:
        """Take AIHWKIT's set_weights scale of the weight as it is now into ``set_scale``, if not
        taken yet (a layer with learned output scales, before its first training forward or
        post-step: :meth:`_set_weights_scale`)."""
        if not getattr(self, "_set_scale_pending", False):
            return
        if self.weight.device.type == "meta":
            return
        with torch.no_grad():
            self.set_scale.copy_(self._set_weights_scale())
        self._set_scale_pending = False

    def _set_weights_scale(self) -> Tensor:
        """AIHWKIT's ``apply_weight_scaling`` scale of the current weight (an analog bias
        included), in :meth:`out_scale_shape`: max |W| per tile column
        (``mapping.weight_scaling_columnwise``) or per tile, divided by
        ``mapping.weight_scaling_omega``, 1 for an all-zero column (AIHWKIT's ``alpha == 0``) or
        a non-finite one. Ones without weight scaling, for a weight not yet materialised (the
        meta device), and for column-wise weight scaling with per-tile output scales (AIHWKIT's
        mapping scale is then per column, which a per-tile scale cannot hold)."""
        shape = self.out_scale_shape()
        m = self.analog_config.mapping
        ones = torch.ones(shape, device=self.weight.device, dtype=torch.float32)
        if (
            m.weight_scaling_omega <= 0
            or self.weight.device.type == "meta"
            or (m.weight_scaling_columnwise and not m.out_scaling_columnwise)
        ):
            return ones
        lo = self.tile_layout()
        with torch.no_grad():
            full = self._analog_weight().detach().float()
            mags = column_maxima(full, lo)  # (G, ti, O)
            if not m.weight_scaling_columnwise:
                per_tile = lo.pad_out(mags, 2).view(lo.groups, lo.n_in, lo.n_out, lo.cols)
                per_tile = per_tile.amax(dim=3)  # (G, ti, to)
                mags = lo.tile_columns(per_tile) if m.out_scaling_columnwise else per_tile
            scale = mags / m.weight_scaling_omega
            return torch.where(torch.isfinite(scale) & (scale > 0), scale, 1.0).reshape(shape)

    def out_scale_shape(self) -> tuple[int, int, int] | None:
        """Shape of the learned output scale (``mapping.learn_out_scaling``), one per tile as in
        AIHWKIT (each tile module has its own ``out_scaling_alpha``): ``(G, ti, O)`` with
        ``mapping.out_scaling_columnwise`` (per input tile and output column), else
        ``(G, ti, to)`` (per tile); ``None`` without learned output scaling. ``G`` groups,
        ``ti`` / ``to`` tiles along the inputs / outputs, ``O`` outputs per group."""
        m = self.analog_config.mapping
        if not m.learn_out_scaling:
            return None
        lo = self.tile_layout()
        return (lo.groups, lo.n_in, lo.out_size if m.out_scaling_columnwise else lo.n_out)

    def effective_out_scale(self) -> Tensor | None:
        """Each tile's output scale as the forward applies it, ``out_scale * mapping_scale``
        (:meth:`out_scale_shape`; differentiable in ``out_scale``), or ``None``."""
        if self.out_scale is None:
            return None
        return self.out_scale * self.mapping_scale.to(self.out_scale.dtype)

    def out_scale_columns(self) -> Tensor | None:
        """The output scale per (group, input tile, output column), ``(G, ti, O)`` float32:
        the learned ``out_scale`` times the ``mapping_scale`` a remap set (differentiable in
        ``out_scale``), or ``None``."""
        if self.out_scale is None:
            return None
        return self._scale_columns(self.effective_out_scale().float())

    def _scale_columns(self, values: Tensor) -> Tensor:
        """A per-tile scale of :meth:`out_scale_shape` per (group, input tile, output column),
        ``(G, ti, O)``: itself with ``mapping.out_scaling_columnwise``, else each output tile's
        value repeated over its columns."""
        if self.analog_config.mapping.out_scaling_columnwise:
            return values
        return self.tile_layout().tile_columns(values)

    def weight_grad_factor(self, input_range: Tensor | None) -> Tensor | None:
        """AIHWKIT's factor on a training backward's weight gradient, per (group, input tile,
        output column) ``(G, ti, O)`` float32: ``alpha / (r * mapping_scale)``. AIHWKIT's
        ``InferenceTile`` writes ``alpha * g ⊗ clip(x) / (r * m)`` into its tile weights'
        gradient (the learned output scale ``alpha`` multiplies the tile's output outside its
        analog function, so its update sees ``alpha * g``; the clipped input is divided by the
        range ``r``, the output gradient by the mapping scale ``m``), not its forward's
        ``alpha * m * g ⊗ clip(x)``; aimc's weight after a remap is AIHWKIT's tile weight (column
        maxima 1, the magnitude in ``mapping_scale``), so the same factor gives AIHWKIT's
        gradient, and before a remap (``mapping_scale`` 1, the weight not normalised) the same
        effective update under SGD. 0 for an all-zero tile column (its mapping scale at the
        remap's floor, 1e-12, in magnitude: a mapping scale made negative by a remap of a
        negative learned scale divides as AIHWKIT's does). None where it is 1 (no learned output
        scale, no range)."""
        if self.out_scale is None and input_range is None:
            return None
        lo = self.tile_layout()
        if self.out_scale is None:
            f = torch.ones(lo.groups, lo.n_in, lo.out_size, device=self.weight.device)
        else:
            m = self._scale_columns(self.mapping_scale.detach().float())
            alpha = self._scale_columns(self.out_scale.detach().float())
            # an all-zero tile column (the remap's floor 1e-12, or 0 once a half-precision
            # buffer underflows) keeps the zero gradient it had: its 1/m would overflow float16
            f = torch.where(m.abs() > 1e-12, alpha / m, 0.0)
        if input_range is not None:
            f = f / input_range.detach().float().reshape(())
        return f

    def _out_scale_tiles(self, lo: TileLayout) -> Tensor:
        """The learned output scale as a digital rescale of the MVM, ``(B, to)`` per tile or
        ``(B, O_pad)`` per column (no autograd)."""
        alpha = self.effective_out_scale().detach().float()
        if not self.analog_config.mapping.out_scaling_columnwise:
            return alpha.reshape(lo.batch, lo.n_out)
        return lo.pad_out(alpha, 2).reshape(lo.batch, lo.padded_out)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "out_scale"
        # a digital checkpoint's weight (no output scales, no set_weights scale): the scale
        # AIHWKIT's set_weights would give the loaded weight, taken when it trains
        rescale = (
            self.out_scale is not None
            and prefix + "weight" in state_dict
            and key not in state_dict
            and prefix + "set_scale" not in state_dict
        )
        if self.out_scale is not None and key in state_dict:
            state_dict[key] = self._checkpoint_out_scale(state_dict[key])
            # a checkpoint from before the mapping scales: its out_scale is the whole scale
            # (ones where the checkpoint's tensors are: load_state_dict(assign=True) keeps them)
            value = state_dict[key]
            device = value.device if isinstance(value, Tensor) else self.mapping_scale.device
            ones = torch.ones(self.mapping_scale.shape, dtype=self.mapping_scale.dtype)
            state_dict.setdefault(prefix + "mapping_scale", ones.to(device))
            # and from before the set_weights scale: its weights are the layer's as they are
            state_dict.setdefault(prefix + "set_scale", ones.to(device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.out_scale is not None:
            if rescale:
                self.set_scale.zero_()
            s = self.set_scale
            # (zeros: not taken yet; a meta-device buffer is taken when it has values)
            self._set_scale_pending = s.device.type == "meta" or bool((s == 0).all())

    def _checkpoint_out_scale(self, value: Any) -> Any:
        """A checkpoint's ``out_scale`` in this layer's per-tile shape. Earlier aimc kept one scale
        per layer column, ``(G * O,)``, or one per layer, ``(1,)``: it is broadcast to every
        input tile (the same function). Any other shape is an error."""
        want = tuple(self.out_scale.shape)
        if not isinstance(value, Tensor) or tuple(value.shape) == want:
            return value
        g = want[0]
        o = self.weight_matrix().shape[1]
        columnwise = self.analog_config.mapping.out_scaling_columnwise
        if value.numel() == 1 and value.dim() <= 1:
            return value.reshape(1, 1, 1).expand(want).contiguous()
        if columnwise and tuple(value.shape) == (g * o,):
            return value.reshape(g, 1, o).expand(want).contiguous()
        old = f"({g * o},) or (1,)" if columnwise else "(1,)"
        raise ValueError(
            f"checkpoint of {layer_label(self)}: out_scale has shape {tuple(value.shape)}; "
            f"allowed: {want} (per tile: groups, input tiles, "
            f"{'output columns' if columnwise else 'output tiles'}) or the {old} of a "
            "checkpoint with one output scale per layer column (broadcast to every tile)"
        )

    # -- randomness ------------------------------------------------------------------------
    def manual_seed(self, seed: int, io_stream: int | None = None) -> None:
        """Restart this layer's noise streams from ``seed`` (on every device).

        By default one stream feeds both the HWA weight modifier and the IO noise (output noise,
        stochastic rounding). With ``io_stream=k`` the IO noise comes from a second stream
        derived from ``(seed, k)`` while the weight modifier keeps the ``seed`` stream: data-
        parallel ranks pass their rank as ``k``, so all ranks draw the same weight realization
        for a mini-batch (as one process would) but independent noise for their samples.
        """
        self.seed = check_seed(seed)
        self.io_stream = None if io_stream is None else check_seed(io_stream, "io_stream")
        self._generators = {}
        self._seed_compiled_stream()

    def _seed_compiled_stream(self) -> None:
        """(Re)start the IO noise stream of compiled forwards (:class:`aimc.random.CounterStream`),
        kept as the non-persistent buffer ``io_rng_state``, from ``(seed, io_stream)``."""
        name = "compiled-io" if self.io_stream is None else f"compiled-io{self.io_stream}"
        state = CounterStream.initial_state(derive_seed(self.seed, name), self.weight.device)
        old = getattr(self, "io_rng_state", None)
        if isinstance(old, Tensor) and old.device == state.device and not old.is_inference():
            # in place: a compiled model guards on the buffer, and a new one made under
            # inference mode (e.g. aimc.manual_seed there) would make it compile again
            old.copy_(state)
        else:
            self.register_buffer("io_rng_state", state, persistent=False)

    def generator(self, like: Tensor, stream: str = "") -> torch.Generator:
        """The layer's generator on the device of ``like`` (created on first use): the main
        stream from ``seed``, a named ``stream`` from ``derive_seed(seed, stream)``."""
        key = f"{stream}@{like.device}"
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=like.device)
            gen.manual_seed(derive_seed(self.seed, stream) if stream else self.seed)
            self._generators[key] = gen
        return gen

    def io_generator(self, like: Tensor) -> torch.Generator | CounterStream:
        """The generator of the IO noise (see :meth:`manual_seed`); in a compiled forward
        (``torch.compile``), the layer's :class:`~aimc.random.CounterStream`."""
        if torch.compiler.is_compiling():
            return CounterStream(self.io_rng_state)
        return self.generator(like, "" if self.io_stream is None else f"io{self.io_stream}")

    # -- tiles -----------------------------------------------------------------------------
    def weight_matrix(self) -> Tensor:
        """The weight as a ``(groups, out, in)`` tensor (a view where possible)."""
        raise NotImplementedError

    def analog_bias(self) -> bool:
        """Whether the bias is an extra analog input row of the tile.

        As AIHWKIT 1.2.0: only with ``digital_bias=False`` and when the layer fits on one tile
        (``in <= max_input_size`` and ``out <= max_output_size``, or no split), which then has
        ``in + 1`` rows; a layer split over several tiles adds its bias digitally."""
        m = self.analog_config.mapping
        if m.digital_bias or self.bias is None:
            return False
        _, o, k = self.weight_matrix().shape
        if m.max_input_size == 0 and m.max_output_size == 0:
            return True
        return k <= m.max_input_size and o <= m.max_output_size

    def tile_layout(self) -> TileLayout:
        """How this layer's weight (with an analog bias row) is split onto tiles."""
        g, o, k = self.weight_matrix().shape
        m = self.analog_config.mapping
        if self.analog_bias():  # one tile of k + 1 rows, even past max_input_size
            return TileLayout.build(g, o, k + 1, m.replace(max_input_size=0, max_output_size=0))
        return TileLayout.build(g, o, k, m)

    def _analog_weight(self, w: Tensor | None = None) -> Tensor:
        """The weight matrix (``w``, or :meth:`weight_matrix`) with an analog bias as its last
        input."""
        w = self.weight_matrix() if w is None else w
        if self.analog_bias():
            b = self.bias.reshape(w.shape[0], w.shape[1], 1).to(w.dtype)
            w = torch.cat([w, b], dim=2)
        return w

    def tile_weights(self, vectors: int = 0) -> TileWeights:
        """Tile matrices of the current weight (cached until the weight or bias changes; in a
        compiled forward computed in the graph, since the cache key cannot be traced).
        ``vectors``: how many vectors per tile the forward that asks will multiply, for the
        int8 MVM's limbs (built with the tiles where that forward will use them)."""
        if torch.compiler.is_compiling():
            return self._make_tile_weights(check=False)
        key = self._weight_key() + (self._config_key(),)
        cached = self._tile_cache
        # tiles built under inference_mode are inference tensors, which a forward outside it
        # cannot save for a backward (a training step after a validation pass)
        usable = cached is not None and cached[0] == key
        if usable and (torch.is_inference_mode_enabled() or not cached[1].w.is_inference()):
            return cached[1]
        tw = self._make_tile_weights(check=True, vectors=vectors)
        tw.fixed = True
        self._tile_cache = (key, tw)
        return tw

    def _config_key(self) -> tuple[Any, ...]:
        """What of the (mutable) config the cached tiles depend on: the IO config (the DAC/ADC
        gain folded into the tiles, ``|W|`` for ``pcm_read``) and the mapping (the layout, the
        weight scaling). A field changed in place after a forward rebuilds the tiles."""
        cfg = self.analog_config
        mapping = cfg.mapping
        return cfg.io._key, tuple(getattr(mapping, f.name) for f in dataclasses.fields(mapping))

    def _make_tile_weights(self, check: bool, vectors: int = 0) -> TileWeights:
        cfg = self.analog_config
        with torch.no_grad():
            w = self._analog_weight()
            layout = self.tile_layout()
            need_abs = cfg.io.w_noise_type == WeightNoiseType.PCM_READ and cfg.io.w_noise > 0
            need_abs = need_abs and not cfg.io.is_perfect
            if _native_tiles(w):
                return self._native_tile_weights(w.detach().float().contiguous(), need_abs, vectors)
            w_t, scale = tile_weights(w, layout, cfg.mapping)
            # amax propagates NaN, so the per-tile scales tell cheaply whether any weight is
            # non-finite; without weight scaling the tiles themselves are checked (compiled:
            # not checked, a non-finite weight gives NaN outputs)
            if check and not bool(torch.isfinite(w_t if scale is None else scale).all()):
                check_finite_weights(self, "forward")
            w_abs = w_t.abs() if need_abs else None
            in_unit, out_unit = units(cfg.io)
            if in_unit != out_unit:
                # in place on fresh tiles; out of place where they share the weight's storage
                # (no weight scaling, one input tile), and always in a compiled forward (dynamo
                # cannot trace a storage's data_ptr: checked first, so it is never asked)
                if torch.compiler.is_compiling() or (
                    w_t.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
                ):
                    w_t = w_t * (in_unit / out_unit)
                else:
                    w_t.mul_(in_unit / out_unit)
            return TileWeights(layout, w_t, scale, w_abs)

    def _native_tile_weights(self, w: Tensor, need_abs: bool, vectors: int) -> TileWeights:
        """:meth:`_make_tile_weights` by the tile kernel (:mod:`aimc._tiles`), the int8 MVM's
        limbs with the tiles where a forward on ``vectors`` vectors will use them."""
        cfg = self.analog_config
        layout = self.tile_layout()
        threshold = INT_MIN_VECTORS_FRESH if self.training else INT_MIN_VECTORS
        want_limbs = vectors >= threshold and _dac_levels_int8(cfg.io) and INT_MVM.usable()
        in_unit, out_unit = units(cfg.io)
        w_t, scale, w_abs, limbs = TILES.build(
            w, layout, cfg.mapping, in_unit / out_unit, need_abs, want_limbs
        )
        # the weights themselves where nothing scales them (the tiles carry the gain)
        if not bool(torch.isfinite(w if scale is None else scale).all()):
            check_finite_weights(self, "forward")
        if want_limbs:
            keep_limbs(w_t, limbs)
        return TileWeights(layout, w_t, scale, w_abs)

    def active_tiles(self, vectors: int = 0) -> TileWeights:
        """The tiles the forward uses: the programmed chip in eval mode when the layer has a
        device model, else the digital weights (perturbed by the HWA weight modifier while
        training). ``vectors``: as :meth:`tile_weights`."""
        if not self.training and self.has_device():
            return self.chip_tiles()
        hwa = self.analog_config.hwa
        modified = self.training and hwa.any_modifier  # limbs of the tiles would go unused
        tw = self.tile_weights(0 if modified else vectors)
        if not (self.training and hwa.any_modifier):
            # in training mode the weights change at every step
            return dataclasses.replace(tw, fixed=False) if self.training else tw
        gen = self.generator(tw.w)
        if hwa.modifier == WeightModifier.CHIP:
            # a fresh chip per forward (its time and seeds from the modifier stream, so all
            # data-parallel ranks draw the same chip); the backward stays straight-through
            return self.fresh_chip_tiles(*draw_chip_sample(hwa, gen))
        in_unit, out_unit = units(self.analog_config.io)
        gain = in_unit / out_unit
        w = modify_weights(tw.w / gain, tw.layout, hwa, gen)
        if tw.layout.has_padding:  # the padding cells of an uneven split stay zero
            w = w * valid_mask(tw.layout, w.device).transpose(1, 2)
        return TileWeights(tw.layout, w * gain, tw.scale, None if tw.w_abs is None else w.abs())

    def invalidate_tiles(self) -> None:
        """Drop cached tiles (only needed after writing to ``weight.data`` directly)."""
        self._tile_cache = None

    # -- forward ---------------------------------------------------------------------------
    def analog_matmul(self, x: Tensor) -> Tensor:
        """``(G, N, in)`` -> ``(G, N, out)`` through the tiles, plus bias and output scales.

        Each input tile's output is scaled by its own learned output scale
        (:meth:`out_scale_shape`) before the digital sum over input tiles, as in AIHWKIT.

        Computation is float32 whatever the input dtype; the result has the input's dtype
        (under autocast: the dtype autocast gives the digital op, :func:`.checks.compute_dtype`).
        """
        dtype = compute_dtype(x)  # (under autocast: its dtype, as the digital op)
        cfg = self.analog_config
        w = self._analog_weight()
        xf = x.float()
        r = self.input_range
        analog_bias = self.analog_bias()
        learning = RangeLearning.of(cfg.hwa)
        # the training forward of learned output scales clips its own input (_ScaledAnalogMVM's
        # clip_learning): no fresh input-sized tensors for the clip in either direction
        own_clip = (
            r is not None
            and self.out_scale is not None
            and not analog_bias
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        )
        if self.training and self._set_scale_pending_now():
            _take_set_scale(self)
        if r is not None:
            if not torch.compiler.is_compiling():
                check_input_range(self, r)
            if self.training:
                update_input_range(self, xf)
            if not own_clip:
                xf = clip_input(xf, r, learning)
        if analog_bias:
            xf = torch.cat([xf, xf.new_ones(*xf.shape[:-1], 1)], dim=-1)
        bias = None
        if not analog_bias and self.bias is not None:
            bias = self.bias.float().view(xf.shape[0], -1)
        xf = xf.contiguous()
        # the weight only feeds the backward: no float32 copy of it without autograd
        grad = torch.is_grad_enabled() and (w.requires_grad or xf.requires_grad)
        if grad:
            w = w.float()
        if self.out_scale is None:
            # without autograd (eager) the autograd.Function would only add its call overhead
            eager_no_grad = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            if eager_no_grad or (
                not grad
                and (r is None or not r.requires_grad)
                and (bias is None or not bias.requires_grad)
            ):  # no autograd node (and none a compiled graph would have to trace)
                return _run_mvm(self, xf, bias, r).to(dtype)
            mvm = _train_mvm if self.training else _AnalogMVM.apply
            return mvm(xf, w, bias, self, r).to(dtype)
        lo = self.tile_layout()
        train = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (xf, w, bias, self.out_scale, r)
        )
        if train and (self.training or not torch.compiler.is_compiling()):
            # every input tile's output z_t, then y = sum_t alpha_t z_t (+ bias), with the
            # gradients of x, W, b, alpha_t (and r) in one backward (_ScaledAnalogMVM)
            mvm = _train_scaled_mvm if self.training else _ScaledAnalogMVM.apply
            clip_learning = learning if own_clip else None
            return mvm(xf, w, bias, self.out_scale_columns(), self, r, clip_learning).to(dtype)
        if own_clip:  # nothing needs a gradient after all
            xf = clip_input(xf, r, learning)
        if train:
            # an eval-mode forward with autograd under torch.compile: the same, traced in
            # autograd's terms (dynamo traces _AnalogMVM in eval mode)
            z = _AnalogMVM.apply(xf, w, None, self, r, True)  # (G, ti, N, O)
            y = z * self.out_scale_columns().unsqueeze(2)
            y = y[:, 0] if lo.n_in == 1 else y.sum(dim=1)
            return (y if bias is None else y + bias.unsqueeze(1)).to(dtype)
        # inference: alpha_t joins each input tile's digital rescale before the sum over tiles,
        # and the bias is added in the same pass (no extra passes over the output)
        tw = self.active_tiles()
        tw = TileWeights(
            tw.layout,
            tw.w,
            combine_scales(tw.scale, self._out_scale_tiles(lo), lo),
            tw.w_abs,
            tw.fixed,
        )
        with torch.no_grad():
            y = analog_mvm(
                xf,
                tw,
                cfg.io,
                self.io_generator(xf),
                bias,
                None if r is None else r.detach(),
            )
        return y.to(dtype)

    def exact_shortcut(self, x: Tensor) -> bool:
        """Whether the forward on ``x`` may be the digital op itself: :meth:`is_exact`, and no
        output-bound mask (:func:`output_bound`: AIHWKIT's masks with perfect IO too) can act on
        ``x``'s gradient."""
        if not self.is_exact():
            return False
        grad = torch.is_grad_enabled() and x.requires_grad
        return not grad or output_bound(self.analog_config) is None

    def is_exact(self) -> bool:
        """True when the forward is exactly the digital one (perfect IO, no out scaling, no
        device model, no HWA weight modifier or input range)."""
        cfg = self.analog_config
        return (
            cfg.io.is_perfect
            and self.out_scale is None
            and cfg.device.model == "none"
            and not cfg.hwa.any_modifier
            and not cfg.hwa.learn_input_range
        )

    def analog_extra_repr(self) -> str:
        lo = self.tile_layout()
        return (
            f"tiles={lo.groups}x{lo.n_in}x{lo.n_out} of {lo.rows}x{lo.cols}, "
            f"perfect={self.analog_config.io.is_perfect}, seed={self.seed}"
        )

    # -- checkpoint: the config travels with the state ---------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"config": self.analog_config.to_dict(), "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        where = f"checkpoint of {layer_label(self)}"
        if not isinstance(state, dict) or "config" not in state or "seed" not in state:
            raise ValueError(
                f"{where}: the analog extra state is not a dict with 'config' and 'seed' "
                f"(got {type(state).__name__}); was it written by aimc?"
            )
        try:
            loaded = AnalogConfig.from_dict(state["config"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        if loaded != self.analog_config:
            diff = _dict_diff(self.analog_config.to_dict(), loaded.to_dict())
            raise ValueError(
                f"{where}: its config differs from the layer's config: " + "; ".join(diff)
            )
        self.manual_seed(state["seed"])


def _dict_diff(mine: dict[str, Any], theirs: dict[str, Any], path: str = "") -> list[str]:
    """``field.path: model=..., checkpoint=...`` for every leaf that differs."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        name = f"{path}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_diff(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: model={a!r}, checkpoint={b!r}")
    return out
