"""Tile splitting, quantizers, DAC/ADC levels of the full MVM, exact tiling, and the RNG helpers.

Expected behaviour: REFERENCE.md §1 (DAC/ADC, tiling) and the docstrings of
:mod:`aimc.functional`, :mod:`aimc.mvm` and :mod:`aimc.random`. Every random draw uses a fixed
seed; statistical tolerances are stated next to each assertion.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc import AnalogConfig, IOConfig, MappingConfig
from aimc import random as arandom
from aimc._kernels import FusedKernel
from aimc.functional import (
    TileLayout,
    quantize,
    split_size,
    split_sizes,
    stochastic_round,
    tile_weights,
)
from aimc.mvm import TileWeights, analog_mvm, units
from aimc.nn import AnalogLinear

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

#: An IO config without any noise or management, so that only the converters act.
QUIET = dict(out_noise=0.0, bound_management="none", noise_management="none")


def build_tiles(weight: torch.Tensor, cfg: AnalogConfig) -> TileWeights:
    """Tile matrices of a ``(G, O, K)`` weight exactly as ``AnalogLayerMixin.tile_weights``."""
    g, o, k = weight.shape
    layout = TileLayout.build(g, o, k, cfg.mapping)
    w_t, scale = tile_weights(weight, layout, cfg.mapping)
    w_abs = None
    if cfg.io.w_noise_type == "pcm_read" and cfg.io.w_noise > 0 and not cfg.io.is_perfect:
        w_abs = w_t.abs()
    in_unit, out_unit = units(cfg.io)
    return TileWeights(layout, w_t * (in_unit / out_unit), scale, w_abs)


def mvm(x: torch.Tensor, weight: torch.Tensor, cfg: AnalogConfig, seed: int = 0) -> torch.Tensor:
    return analog_mvm(x, build_tiles(weight, cfg), cfg.io, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# split_size


@pytest.mark.parametrize(
    "n, max_size, expected",
    [
        (768, 512, (2, 384)),
        (3072, 512, (6, 512)),
        (512, 512, (1, 512)),
        (513, 512, (2, 257)),
        (1025, 512, (3, 342)),
        (1, 512, (1, 1)),
        (700, 0, (1, 700)),
        (5, 0, (1, 5)),
        (10, 3, (4, 3)),
        (7, 1, (7, 1)),
    ],
)
def test_split_size_examples(n, max_size, expected):
    assert split_size(n, max_size) == expected


@pytest.mark.parametrize("n", [0, -1])
def test_split_size_rejects_empty(n):
    with pytest.raises(ValueError):
        split_size(n, 512)


@SETTINGS
@given(n=st.integers(1, 20_000), max_size=st.integers(1, 1024))
def test_split_size_properties(n, max_size):
    tiles, size = split_size(n, max_size)
    assert tiles == math.ceil(n / max_size)  # REFERENCE §1: ceil(n / max) parts
    assert size <= max_size
    assert tiles * size >= n  # covers all rows
    # a tile holds its part: the largest part of AIHWKIT's split
    assert (tiles, size) == (len(split_sizes(n, max_size)), max(split_sizes(n, max_size)))


# --------------------------------------------------------------------------------------------
# split_sizes: AIHWKIT 1.2.0 TileModuleArray.get_split_sizes


@pytest.mark.parametrize(
    "n, max_size, expected",
    [
        (13, 4, [4, 3, 3, 3]),
        (1030, 512, [344, 343, 343]),
        (1025, 512, [342, 342, 341]),
        (768, 512, [384, 384]),
        (3072, 512, [512] * 6),
        (256, 100, [86, 85, 85]),
        (10, 3, [3, 3, 2, 2]),
        (700, 0, [700]),  # 0 = no split
        (13, 0, [13]),
        (512, 512, [512]),
        (1, 4, [1]),
    ],
)
def test_split_sizes_examples(n, max_size, expected):
    assert split_sizes(n, max_size) == expected
    tiles, size = split_size(n, max_size)
    assert (tiles, size) == (len(expected), max(expected))


@pytest.mark.parametrize("n", [0, -1])
def test_split_sizes_rejects_empty(n):
    with pytest.raises(ValueError):
        split_sizes(n, 512)


@SETTINGS
@given(n=st.integers(1, 20_000), max_size=st.integers(0, 1024))
def test_split_sizes_match_aihwkit_rule(n, max_size):
    sizes = split_sizes(n, max_size)
    if max_size <= 0:
        assert sizes == [n]
        return
    # AIHWKIT TileModuleArray.get_split_sizes, verbatim
    n_splits = (n + max_size - 1) // max_size
    base, extra = divmod(n, n_splits)
    assert sizes == [base + (i < extra) for i in range(n_splits)]
    assert sum(sizes) == n and max(sizes) <= max_size and max(sizes) - min(sizes) <= 1


@SETTINGS
@given(
    n=st.integers(1, 300),
    max_size=st.integers(1, 64),
    out=st.integers(1, 40),
    max_out=st.integers(0, 16),
)
def test_layout_places_each_part_at_the_start_of_its_tile(n, max_size, out, max_out):
    mapping = MappingConfig(max_input_size=max_size, max_output_size=max_out)
    lo = TileLayout.build(2, out, n, mapping)
    for size_of, sizes, pos, valid, width in (
        (n, lo.in_sizes, lo.in_positions("cpu"), lo.in_valid("cpu"), lo.rows),
        (out, lo.out_sizes, lo.out_positions("cpu"), lo.out_valid("cpu"), lo.cols),
    ):
        expected = [t * width + r for t, s in enumerate(sizes) for r in range(s)]
        assert pos.tolist() == expected and len(expected) == size_of
        assert valid.sum() == size_of and bool(valid[pos].all())
    x = torch.randn(3, n)
    xp = lo.pad_in(x)
    assert xp.shape == (3, lo.padded_in)
    assert torch.equal(lo.unpad_in(xp), x)
    start = 0
    for t, s in enumerate(lo.in_sizes):  # part t, then zeros, in tile t
        tile = xp.view(3, lo.n_in, lo.rows)[:, t]
        assert torch.equal(tile[:, :s], x[:, start : start + s])
        assert not tile[:, s:].any()
        start += s
    if lo.padded_in == n:  # an even split: no copy at all
        assert lo.pad_in(x) is x and lo.unpad_in(x) is x


@SETTINGS
@given(n=st.integers(1, 5000))
def test_split_size_no_split(n):
    assert split_size(n, 0) == (1, n)
    assert split_size(n, n) == (1, n)
    assert split_size(n, n + 17) == (1, n)


# --------------------------------------------------------------------------------------------
# quantize

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
values = st.lists(finite, min_size=1, max_size=64)
steps = st.floats(1e-3, 10.0, allow_nan=False)


@SETTINGS
@given(xs=values, step=steps, m=st.integers(1, 2000))
def test_quantize_outputs_are_multiples_of_step_within_bound(xs, step, m):
    bound = m * step
    x = torch.tensor(xs, dtype=torch.float64)
    y = quantize(x, step, bound)
    k = y / step
    assert torch.all((k - k.round()).abs() <= 1e-9 * k.abs().clamp(min=1.0))
    assert torch.all(y.abs() <= bound)


@SETTINGS
@given(xs=values, step=steps, bound=st.floats(1e-2, 500.0))
def test_quantize_rounds_to_nearest_level_inside_bound(xs, step, bound):
    x = torch.tensor(xs, dtype=torch.float64)
    y = quantize(x, step, bound)
    inside = x.abs() <= bound
    err = (y - x).abs()[inside]
    tol = 1e-9 * (x.abs()[inside] + step)
    assert torch.all(err <= step / 2 + tol)
    assert torch.all(y.abs() <= bound)


@SETTINGS
@given(xs=values, step=steps, m=st.integers(1, 2000))
def test_quantize_clips_to_bound_outside(xs, step, m):
    bound = m * step
    x = torch.tensor(xs, dtype=torch.float64)
    y = quantize(x, step, bound)
    far_hi = x > bound + step / 2 * (1 + 1e-9)
    far_lo = x < -bound - step / 2 * (1 + 1e-9)
    assert torch.all(y[far_hi] == bound)  # exactly the bound
    assert torch.all(y[far_lo] == -bound)
    near = (x.abs() > bound) & ~far_hi & ~far_lo  # in (bound, bound + step/2]: the top level
    assert torch.allclose(y[near].abs(), torch.full_like(y[near], bound), rtol=1e-12, atol=0)
    assert torch.all(torch.sign(y[near]) == torch.sign(x[near]))


@SETTINGS
@given(xs=values, step=steps, bound=st.floats(0.0, 100.0))
def test_quantize_straight_through_gradient(xs, step, bound):
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    quantize(x, step, bound).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    g = torch.linspace(-2, 3, x.numel(), dtype=torch.float64)
    quantize(x, step, bound).backward(g)
    assert torch.equal(x.grad, g)


@SETTINGS
@given(xs=values, step=st.floats(-10.0, 0.0), bound=st.floats(1e-2, 100.0))
def test_quantize_non_positive_step_skips_rounding(xs, step, bound):
    x = torch.tensor(xs, dtype=torch.float64)
    assert torch.equal(quantize(x, step, bound), x.clamp(-bound, bound))
    assert torch.equal(quantize(x, step, 0.0), x)


@SETTINGS
@given(xs=values, step=steps)
def test_quantize_non_positive_bound_skips_clipping(xs, step):
    x = torch.tensor(xs, dtype=torch.float64)
    expected = torch.round(x / step) * step
    assert torch.equal(quantize(x, step, 0.0), expected)
    assert torch.equal(quantize(x, step, -1.0), expected)


def test_quantize_examples_and_non_finite():
    x = torch.tensor([0.26, -0.74, 5.0, -5.0, 0.0, float("nan"), float("inf"), -float("inf")])
    y = quantize(x, 0.5, 1.0)
    torch.testing.assert_close(y[:5], torch.tensor([0.5, -0.5, 1.0, -1.0, 0.0]))
    assert torch.isnan(y[5])
    assert y[6] == 1.0 and y[7] == -1.0
    # no bound: inf stays inf, NaN stays NaN
    y = quantize(x, 0.5)
    assert torch.isnan(y[5]) and y[6] == float("inf") and y[7] == -float("inf")
    # rounding is half to even (documented)
    y = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]), 1.0)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_quantize_keeps_dtype_and_shape():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        y = quantize(x.to(dtype), 0.1, 1.0)
        assert y.dtype == dtype and y.shape == x.shape


def test_stochastic_round_is_unbiased():
    gen = torch.Generator().manual_seed(3)
    x = torch.full((200_000,), 0.3)
    y = stochastic_round(x, gen)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    # mean of Bernoulli(0.3): standard error sqrt(0.21 / 2e5) ~ 1e-3; allow 5e-3
    assert abs(float(y.mean()) - 0.3) < 5e-3
    z = stochastic_round(torch.tensor([-2.0, 0.0, 7.0]), gen)
    assert z.tolist() == [-2.0, 0.0, 7.0]  # integers stay put


# --------------------------------------------------------------------------------------------
# DAC / ADC levels through the full MVM


def scalar_layer(io: IOConfig, w: float = 1.0, mapping: MappingConfig | None = None):
    cfg = AnalogConfig(io=io, mapping=mapping or MappingConfig())
    lin = AnalogLinear(1, 1, bias=False, config=cfg, seed=0)
    with torch.no_grad():
        lin.weight.fill_(w)
    return lin


def dense_inputs(lo: float, hi: float, n: int = 20_001) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    x = torch.cat([torch.linspace(lo, hi, n), torch.rand(n, generator=gen) * (hi - lo) + lo])
    return x.unsqueeze(1)


@pytest.mark.parametrize("bits, levels", [(7, 127), (8, 255), (5, 31)])
def test_dac_levels_through_layer(bits, levels):
    res = 1 / (2**bits - 2)
    lin = scalar_layer(IOConfig(inp_res=res, out_res=0.0, **QUIET))
    x = dense_inputs(-1.5, 1.5)
    with torch.no_grad():
        y = lin(x).squeeze(1)
    step = 2 * res
    k = y / step
    assert torch.allclose(k, k.round(), atol=1e-4)
    k = k.round().long()
    half = (levels - 1) // 2
    assert sorted(k.unique().tolist()) == list(range(-half, half + 1))
    assert len(y.unique()) == levels
    # each input goes to its nearest level (ties excepted), clipped at inp_bound = 1
    expected = torch.clamp(torch.round(x.squeeze(1) / step), -half, half)
    mism = k != expected.long()
    tie = ((x.squeeze(1) / step).frac().abs() - 0.5).abs() < 1e-4
    assert not torch.any(mism & ~tie)
    assert float(y.abs().max()) == pytest.approx(1.0, abs=1e-6)


def test_dac_levels_scale_with_abs_max_noise_management():
    # identity weight: y_i = s * Q(x_i / s), s = max|x| of the vector, 7-bit DAC
    k_in = 8
    cfg = AnalogConfig(
        io=IOConfig(inp_res=1 / 126, out_res=0.0, out_noise=0.0, bound_management="none"),
    )
    lin = AnalogLinear(k_in, k_in, bias=False, config=cfg)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(k_in))
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(500, k_in, generator=gen) - 0.5) * torch.logspace(-3, 3, 500).unsqueeze(1)
    with torch.no_grad():
        y = lin(x)
    s = x.abs().amax(dim=1, keepdim=True)
    k = y / s * 63
    assert torch.allclose(k, k.round(), atol=1e-3)
    expected = torch.round(x / s * 63)
    tie = ((x / s * 63).frac().abs() - 0.5).abs() < 1e-4
    assert torch.all((k.round() == expected) | tie)
    # the largest input of every vector lands exactly on the top level
    assert torch.allclose(k.abs().amax(dim=1), torch.full((500,), 63.0), atol=1e-3)


@pytest.mark.parametrize("bits, out_bound", [(9, 12.0), (8, 10.0), (6, 3.0)])
def test_adc_levels_through_mvm(bits, out_bound):
    res = 1 / (2**bits - 2)
    io = IOConfig(inp_res=0.0, inp_bound=100.0, out_res=res, out_bound=out_bound, **QUIET)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(weight_scaling_omega=0.0))
    x = dense_inputs(-1.5 * out_bound, 1.5 * out_bound).unsqueeze(0)  # (1, N, 1)
    y = mvm(x, torch.ones(1, 1, 1), cfg)[0, :, 0]
    out_step = io.out_step
    assert out_step == pytest.approx(2 * out_bound * res)
    k = y / out_step
    assert torch.allclose(k, k.round(), atol=1e-3)  # multiples of out_step
    half = 2 ** (bits - 1) - 1  # bound / step
    assert sorted(k.round().long().unique().tolist()) == list(range(-half, half + 1))
    assert float(y.max()) == pytest.approx(out_bound, rel=1e-6)
    assert float(y.min()) == pytest.approx(-out_bound, rel=1e-6)
    # nearest level for unclipped outputs
    xs = x[0, :, 0]
    inside = xs.abs() < out_bound - out_step
    tie = ((xs / out_step).frac().abs() - 0.5).abs() < 1e-3
    err = (y - xs).abs()[inside & ~tie]
    assert float(err.max()) <= out_step / 2 * (1 + 1e-4)


def test_every_input_tile_has_its_own_adc():
    # K = 4 inputs on 2 tiles of 2 rows: each tile clips at out_bound before the digital sum
    io = IOConfig(inp_res=0.0, inp_bound=100.0, out_res=1 / 510, out_bound=12.0, **QUIET)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(max_input_size=2, weight_scaling_omega=0.0))
    w = torch.ones(1, 1, 4)
    x = torch.tensor([[[10.0, 10.0, 0.0, 0.0], [10.0, 10.0, 10.0, 10.0], [1.0, 2.0, 3.0, 4.0]]])
    y = mvm(x, w, cfg)[0, :, 0]
    step = io.out_step
    q = [round(v / step) * step for v in (1.0 + 2.0, 3.0 + 4.0)]  # per-tile ADC, then sum
    expected = torch.tensor([12.0, 24.0, q[0] + q[1]])
    assert abs(float(expected[2]) - 10.0) > 1e-3  # the two ADC roundings are visible
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    k = y / io.out_step
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_dac_and_adc_quantize_together():
    # 7-bit DAC, 9-bit ADC, weight 0.5, no management: y = Q_adc(0.5 * Q_dac(x))
    io = IOConfig(**QUIET)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(weight_scaling_omega=0.0))
    x = dense_inputs(-1.2, 1.2, 5001).unsqueeze(0)
    y = mvm(x, torch.full((1, 1, 1), 0.5), cfg)[0, :, 0]
    k = y / io.out_step
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert len(y.unique()) <= 127  # at most one output level per DAC level
    dac = torch.clamp(torch.round(x[0, :, 0] / io.inp_step), -63, 63) * io.inp_step
    ref = torch.round(0.5 * dac / io.out_step) * io.out_step
    close = (y - ref).abs() <= 1e-5
    assert float(close.float().mean()) > 0.99  # only float ties may land on the other level
    assert torch.all((y - ref).abs() <= io.out_step * 1.001)


def test_adc_clips_at_out_bound_with_weight_scaling():
    # with weight scaling the ADC sees W / max|W|; the clipping level in output units is
    # out_bound * max|W| (the digital rescale undoes the normalisation)
    io = IOConfig(inp_res=0.0, inp_bound=100.0, out_res=0.0, out_bound=2.0, **QUIET)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(weight_scaling_omega=1.0))
    x = torch.tensor([[[1.0], [3.0], [-5.0]]])
    y = mvm(x, torch.full((1, 1, 1), 4.0), cfg)[0, :, 0]
    torch.testing.assert_close(y, torch.tensor([4.0, 8.0, -8.0]))


# --------------------------------------------------------------------------------------------
# Perfect IO: tiling is exact


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    groups=st.integers(1, 3),
    out_size=st.integers(1, 13),
    in_size=st.integers(1, 13),
    n=st.integers(1, 4),
    max_in=st.integers(0, 7),
    max_out=st.integers(0, 7),
    omega=st.sampled_from([0.0, 1.0, 0.37]),
    columnwise=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_perfect_io_tiled_mvm_equals_matmul(
    groups, out_size, in_size, n, max_in, max_out, omega, columnwise, with_bias, seed
):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(groups, out_size, in_size, generator=gen)
    w[..., 0, :] = 0.0  # an all-zero row (column of the tile) must not divide by zero
    x = torch.randn(groups, n, in_size, generator=gen)
    bias = torch.randn(groups, out_size, generator=gen) if with_bias else None
    mapping = MappingConfig(
        max_input_size=max_in,
        max_output_size=max_out,
        weight_scaling_omega=omega,
        weight_scaling_columnwise=columnwise,
    )
    cfg = AnalogConfig(io=IOConfig(is_perfect=True), mapping=mapping)
    tw = build_tiles(w, cfg)
    lo = tw.layout
    assert lo.n_in == split_size(in_size, max_in)[0]
    assert lo.n_out == split_size(out_size, max_out)[0]
    y = analog_mvm(x, tw, cfg.io, torch.Generator().manual_seed(0), bias)
    ref = torch.bmm(x, w.transpose(1, 2))
    if bias is not None:
        ref = ref + bias.unsqueeze(1)
    assert y.shape == (groups, n, out_size)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    out_size=st.integers(1, 12),
    in_size=st.integers(1, 12),
    max_in=st.integers(1, 7),
    max_out=st.integers(1, 7),
    omega=st.sampled_from([0.0, 1.0]),
    columnwise=st.booleans(),
    digital_bias=st.booleans(),
    out_columnwise=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_perfect_io_analog_linear_equals_linear(
    out_size, in_size, max_in, max_out, omega, columnwise, digital_bias, out_columnwise, seed
):
    # learn_out_scaling=True (scales initialised to 1) keeps the layer off its exact F.linear
    # shortcut, so the tiled analog path is exercised
    mapping = MappingConfig(
        max_input_size=max_in,
        max_output_size=max_out,
        weight_scaling_omega=omega,
        weight_scaling_columnwise=columnwise,
        digital_bias=digital_bias,
        learn_out_scaling=True,
        out_scaling_columnwise=out_columnwise,
    )
    cfg = AnalogConfig(io=IOConfig(is_perfect=True), mapping=mapping)
    torch.manual_seed(seed)
    lin = AnalogLinear(in_size, out_size, config=cfg, seed=seed)
    assert not lin.is_exact()
    x = torch.randn(2, 3, in_size)
    with torch.no_grad():
        y = lin(x)
    ref = torch.nn.functional.linear(x, lin.weight.detach(), lin.bias.detach())
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "in_size, out_size, max_in, max_out",
    [(13, 6, 4, 0), (6, 13, 0, 4), (13, 13, 4, 4), (1030, 20, 512, 0), (1025, 1030, 512, 512)],
)
@pytest.mark.parametrize("conv", [False, True])
def test_perfect_io_uneven_split_equals_digital(in_size, out_size, max_in, max_out, conv):
    # ideal periphery: an unevenly split layer (AIHWKIT's 4 + 3 + 3 + 3 etc.) is the digital one
    mapping = MappingConfig(
        max_input_size=max_in,
        max_output_size=max_out,
        weight_scaling_omega=1.0,
        learn_out_scaling=True,  # off the exact F.linear shortcut
    )
    cfg = AnalogConfig(io=IOConfig(is_perfect=True), mapping=mapping)
    torch.manual_seed(0)
    if conv:  # 1x1 convolution: in_size channels
        from aimc.nn import AnalogConv2d

        layer = AnalogConv2d(in_size, out_size, 1, config=cfg, seed=0)
        x = torch.randn(2, in_size, 3, 2)
        ref = torch.nn.functional.conv2d(x, layer.weight.detach(), layer.bias.detach())
    else:
        layer = AnalogLinear(in_size, out_size, config=cfg, seed=0)
        x = torch.randn(5, in_size)
        ref = torch.nn.functional.linear(x, layer.weight.detach(), layer.bias.detach())
    lo = layer.tile_layout()
    assert lo.in_sizes == split_sizes(in_size, max_in)
    assert lo.out_sizes == split_sizes(out_size, max_out)
    assert not layer.is_exact()
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("columnwise", [False, True])
def test_uneven_split_is_the_sum_of_per_part_tiles(columnwise):
    # 13 inputs at 4 -> 4 + 3 + 3 + 3 and 13 outputs at 4: each tile sees exactly its part,
    # with its own noise management (abs max over the part), weight scale and ADC. A
    # deterministic periphery (quantization, no noise) makes the tiled MVM the concatenation
    # over output parts of the digital sum over input parts of one-tile MVMs.
    io = IOConfig(out_noise=0.0, inp_res=1 / 30, out_res=1 / 62, bound_management="none")
    mapping = MappingConfig(weight_scaling_omega=1.0, weight_scaling_columnwise=columnwise)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(1, 13, 13, generator=gen) * 0.3
    x = torch.randn(1, 7, 13, generator=gen)
    x[..., 12] = 5.0  # a large input in the last part only: sets that tile's abs max alone
    tiled = AnalogConfig(io=io, mapping=mapping.replace(max_input_size=4, max_output_size=4))
    y = mvm(x, w, tiled)
    one = AnalogConfig(io=io, mapping=mapping.replace(max_input_size=0, max_output_size=0))
    ins, outs = split_sizes(13, 4), split_sizes(13, 4)
    i0 = [sum(ins[:t]) for t in range(len(ins))]
    o0 = [sum(outs[:t]) for t in range(len(outs))]
    parts = []
    for a, so in zip(o0, outs, strict=True):
        acc = 0
        for b, si in zip(i0, ins, strict=True):
            acc = acc + mvm(x[..., b : b + si], w[:, a : a + so, b : b + si], one)
        parts.append(acc)
    torch.testing.assert_close(y, torch.cat(parts, dim=2), rtol=1e-6, atol=1e-6)
    # the old end padding of the inputs (4 + 4 + 4 + 1) gives a different result
    old = mvm(x[..., :12], w[..., :12], tiled) + mvm(x[..., 12:], w[..., 12:], tiled)
    assert not torch.allclose(y, old, atol=1e-3)


def test_perfect_io_draws_no_random_numbers():
    cfg = AnalogConfig(io=IOConfig(is_perfect=True), mapping=MappingConfig(max_input_size=3))
    w = torch.randn(1, 5, 7, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 4, 7, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(9)
    before = gen.get_state().clone()
    analog_mvm(x, build_tiles(w, cfg), cfg.io, gen)
    assert torch.equal(gen.get_state(), before)


def test_tile_weights_scale_shapes_and_normalisation():
    w = torch.randn(2, 10, 9, generator=torch.Generator().manual_seed(2))
    mapping = MappingConfig(max_input_size=4, max_output_size=3, weight_scaling_omega=0.5)
    lo = TileLayout.build(2, 10, 9, mapping)
    assert (lo.n_in, lo.rows, lo.n_out, lo.cols) == (3, 3, 4, 3)
    w_t, scale = tile_weights(w, lo, mapping)
    assert w_t.shape == (lo.batch, lo.padded_out, lo.rows) and scale.shape == (lo.batch, lo.n_out)
    per_tile = w_t.abs().view(lo.batch, lo.n_out, lo.cols, lo.rows).amax(dim=(2, 3))
    torch.testing.assert_close(per_tile, torch.full_like(per_tile, 0.5))
    col = mapping.replace(weight_scaling_columnwise=True)
    w_c, scale_c = tile_weights(w, lo, col)
    assert scale_c.shape == (lo.batch, lo.padded_out)
    col_max = w_c.abs().amax(dim=2)
    # 10 outputs at 3 -> 3 + 3 + 2 + 2: the last column of tiles 3 and 4 is padding
    valid = lo.out_valid("cpu")
    assert valid.tolist() == [True] * 6 + [True, True, False] * 2
    real = col_max[:, valid]  # padded columns are all zero and keep scale 1
    torch.testing.assert_close(real, torch.full_like(real, 0.5))
    assert torch.all(scale_c[:, ~valid] == 1.0)
    assert not w_c[:, ~valid].any()


# --------------------------------------------------------------------------------------------
# aimc.random

CHUNK = arandom.CHUNK
BIG = 3 * CHUNK + 12_345  # > 2 * CHUNK: chunked path with a short last chunk


KMIN = arandom.KERNEL_MIN
#: float32 draws of BIG values take the counter kernel; float64 ones the chunked MT19937 path
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def draw(fill, numel: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return fill(torch.empty(numel, dtype=dtype), torch.Generator().manual_seed(seed))


#: both families: MT19937 (chip state) and the noise draws (the counter kernel for large f32)
FILLS = pytest.mark.parametrize(
    "fill",
    [arandom.normal_, arandom.uniform_, arandom.noise_normal_, arandom.noise_uniform_],
    ids=["normal", "uniform", "noise_normal", "noise_uniform"],
)
NORMALS = (arandom.normal_, arandom.noise_normal_)


@DTYPES
@FILLS
@pytest.mark.parametrize("numel", [1, 1000, KMIN, 2 * CHUNK - 1, BIG])
def test_same_seed_bit_identical(fill, numel, dtype):
    a, b = draw(fill, numel, 123, dtype), draw(fill, numel, 123, dtype)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(fill, numel, 124, dtype))


@DTYPES
@FILLS
def test_draws_independent_of_thread_count(fill, dtype):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = draw(fill, BIG, 7, dtype)
        torch.set_num_threads(2)
        two = draw(fill, BIG, 7, dtype)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


@FILLS
@pytest.mark.parametrize("numel", [1000, KMIN - 1])
def test_small_tensors_are_plain_torch_draws(fill, numel):
    ref = torch.empty(numel)
    gen = torch.Generator().manual_seed(5)
    if fill in NORMALS:
        ref.normal_(generator=gen)
    else:
        ref.uniform_(generator=gen)
    assert torch.equal(draw(fill, numel, 5), ref)


def _stream(kind: str, numel: int, seed: int) -> torch.Tensor:
    """What a kernel draw of ``numel`` values from a generator seeded ``seed`` must equal: the
    counter stream (tensor operations) at one int64 key drawn from that generator."""
    gen = torch.Generator().manual_seed(seed)
    key = torch.empty((), dtype=torch.int64).random_(generator=gen)
    counter = arandom.counter_normal if kind == "normal" else arandom.counter_uniform
    return counter(key, (numel,))


def _require_native() -> None:
    """Skip the test where the hand-written noise kernel (AVX2 or AVX-512) does not run."""
    if not arandom._NATIVE.usable():
        pytest.skip(f"the hand-written noise kernel does not run here: {arandom._NATIVE.failed}")


def _use_kernel(monkeypatch, kernel: str) -> None:
    """Draw with the inductor kernel (``"inductor"``) or the hand-written one
    (``"native"``, AVX2 or AVX-512: skipped where it does not run)."""
    if kernel == "inductor":
        monkeypatch.setenv("AIMC_RNG_NATIVE", "0")
    else:
        _require_native()


KERNELS = pytest.mark.parametrize("kernel", ["inductor", "native"])


@KERNELS
@pytest.mark.parametrize("kind", ["normal", "uniform"])
@pytest.mark.parametrize("numel", [KMIN, KMIN + 1, 99_991, (1 << 20) + 3])
def test_kernel_equals_the_eager_stream(monkeypatch, kernel, kind, numel):
    """Either noise kernel (odd sizes included: inductor's int64 vector tails, the tensor-op
    words after the kernel's) computes the counter stream of the key it takes from the
    generator: integer bits exactly, so uniforms bit for bit and normals to float rounding of
    log / sin / cos."""
    _use_kernel(monkeypatch, kernel)
    fill = arandom.noise_normal_ if kind == "normal" else arandom.noise_uniform_
    got = draw(fill, numel, 11)
    if kernel == "inductor":
        assert arandom._FILL.built, arandom._FILL.failed  # the kernel, not the fallback
    ref = _stream(kind, numel, 11)
    if kind == "uniform":
        assert torch.equal(got, ref)
    else:
        assert float((got - ref).abs().max()) <= 1e-5


def test_kernel_draw_takes_one_key_from_the_generator():
    g1 = torch.Generator().manual_seed(3)
    arandom.noise_normal_(torch.empty(KMIN), g1)
    g2 = torch.Generator().manual_seed(3)
    torch.empty((), dtype=torch.int64).random_(generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_kernel_normal_distribution():
    """Kolmogorov-Smirnov against N(0, 1), moments, the 4-sigma tail and the 24-bit bound
    (|z| <= sqrt(2 ln 2**25) = 5.887), on 2**22 values (fixed seeds: deterministic)."""
    from scipy import stats

    n = 1 << 22
    t = draw(arandom.noise_normal_, n, 2026).double()
    assert stats.kstest(t[: 1 << 20].numpy(), "norm").pvalue > 1e-3
    assert abs(float(t.mean())) < 4 / math.sqrt(n)
    assert abs(float(t.var()) - 1.0) < 4 * math.sqrt(2 / n)
    assert abs(float((t**3).mean())) < 4 * math.sqrt(15 / n)  # skewness 0
    assert abs(float((t**4).mean()) - 3.0) < 4 * math.sqrt(96 / n)  # kurtosis 3
    p4 = 2 * stats.norm.sf(4.0)  # 6.3e-5: 265 of 2**22 expected
    tail = float((t.abs() > 4.0).double().mean())
    assert abs(tail - p4) < 4 * math.sqrt(p4 / n)
    assert float(t.abs().max()) <= math.sqrt(2 * 25 * math.log(2)) + 1e-5
    # lag-1 autocorrelation within a draw, and two consecutive draws of one generator
    assert abs(float(torch.corrcoef(torch.stack([t[1:], t[:-1]]))[0, 1])) < 4 / math.sqrt(n)
    gen = torch.Generator().manual_seed(5)
    a, b = arandom.noise_normal_(torch.empty(n), gen), arandom.noise_normal_(torch.empty(n), gen)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 4 / math.sqrt(n)


def test_kernel_uniform_distribution():
    from scipy import stats

    n = 1 << 20
    t = draw(arandom.noise_uniform_, n, 77)
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert stats.kstest(t.double().numpy(), "uniform").pvalue > 1e-3
    # 24-bit grid: every value is k / 2**24
    k = t.double() * 2**24
    assert torch.equal(k, k.round())


@pytest.mark.parametrize("kind", ["normal", "uniform", "variance"])
@pytest.mark.parametrize("numel", [KMIN + 5, 786_432, 3_000_017])
def test_native_kernel_equals_the_inductor_kernel(monkeypatch, kind, numel):
    """The hand-written kernel computes what the inductor kernel computes, the scaled draws
    included (the same words, the same float operations in the same order: bit for bit on the
    AVX2 host and on the AVX-512 host; asserted to 1 float32 ulp of the largest value,
    compilers may order differently)."""
    _require_native()
    var = torch.rand(numel, generator=torch.Generator().manual_seed(2)) + 0.1
    fill = {
        "normal": arandom.noise_normal_,
        "uniform": arandom.noise_uniform_,
        "variance": lambda t, g: arandom.noise_normal_(t, g, var=var),
    }[kind]
    native = draw(fill, numel, 31)
    monkeypatch.setenv("AIMC_RNG_NATIVE", "0")
    inductor = draw(fill, numel, 31)
    assert arandom._FILL.built, arandom._FILL.failed
    if kind == "uniform":
        assert torch.equal(native, inductor)
    else:
        assert float((native - inductor).abs().max()) <= 6.0 * 2.0**-23


def test_native_kernel_does_not_depend_on_the_thread_count():
    _require_native()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = draw(arandom.noise_normal_, 1 << 20, 8)
        torch.set_num_threads(3)
        three = draw(arandom.noise_normal_, 1 << 20, 8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_native_kernel_only_on_avx2_and_avx512(monkeypatch):
    """On another vector ISA (ARM, ...) the hand-written kernel is not built, silently: the
    inductor kernel draws the stream."""
    import warnings

    from aimc import _native

    monkeypatch.setattr(_native, "_vec_isa", lambda: "asimd")
    k = _native.NativeNoiseKernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not k.usable()
    assert "'asimd'" in k.failed and "'avx2' or 'avx512'" in k.failed
    monkeypatch.setattr(arandom, "_NATIVE", k)
    got = draw(arandom.noise_normal_, KMIN, 4)
    assert float((got - _stream("normal", KMIN, 4)).abs().max()) <= 1e-6


def test_isa_family():
    from aimc import _native

    assert _native._isa_family("avx512 avx512_vnni") == "avx512"
    assert _native._isa_family("avx512 amx_tile") == "avx512"
    assert _native._isa_family("avx512") == "avx512"
    assert _native._isa_family("avx2") == "avx2"
    assert _native._isa_family("") == ""


@pytest.mark.parametrize(
    ("isa", "source", "name"),
    [("avx2", "SOURCE", "AVX2"), ("avx512 avx512_vnni", "SOURCE_AVX512", "AVX-512")],
)
def test_native_kernel_builds_the_source_of_its_isa(monkeypatch, isa, source, name):
    """Each ISA family builds its own source (the AVX-512 one for every AVX-512 flavour), and
    a build that fails its self-check names that ISA in its one warning."""
    from torch._inductor import codecache

    from aimc import _native

    built = []

    def capture(argtypes, src, *args, **kwargs):
        built.append(src)
        return lambda *a: None  # writes nothing: the self-check fails

    monkeypatch.setattr(_native, "_vec_isa", lambda: isa)
    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", capture)
    k = _native.NativeNoiseKernel()
    with pytest.warns(RuntimeWarning, match=f"the {name} noise kernel could not be built"):
        assert not k.usable()
    assert built == [getattr(_native, source)]


def test_native_kernel_build_failure_warns_once_and_keeps_the_stream(monkeypatch):
    """Where the AVX2 kernel fails to build, one warning names the error and the inductor
    kernel draws the same stream."""
    import warnings

    from torch._inductor import codecache

    from aimc import _native

    def broken(*args, **kwargs):
        raise RuntimeError("CppCompileError: something the compiler said")

    monkeypatch.setattr(_native, "_vec_isa", lambda: "avx2")
    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", broken)
    monkeypatch.setattr(arandom, "_NATIVE", _native.NativeNoiseKernel())
    with pytest.warns(RuntimeWarning, match="AVX2 noise kernel could not be built.*CppCompile"):
        got = draw(arandom.noise_normal_, KMIN + 3, 21)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = draw(arandom.noise_normal_, KMIN + 3, 21)
    assert torch.equal(got, again)
    assert float((got - _stream("normal", KMIN + 3, 21)).abs().max()) <= 1e-6


def test_native_kernel_that_computes_wrongly_is_not_used(monkeypatch):
    """A kernel whose first draws are off the stream (a compiler or CPU quirk) fails its
    self-check at build: one warning that says so, and the inductor kernel draws instead."""
    from torch._inductor import codecache

    from aimc import _native

    def built_wrong(*args, **kwargs):
        def kernel(key, first, second, var, w, half, mode):
            pass  # writes nothing: the self-check's buffers stay NaN

        return kernel

    monkeypatch.setattr(_native, "_vec_isa", lambda: "avx2")
    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", built_wrong)
    monkeypatch.setattr(arandom, "_NATIVE", _native.NativeNoiseKernel())
    with pytest.warns(RuntimeWarning, match="self-check failed: normal draws off the stream"):
        got = draw(arandom.noise_normal_, KMIN, 6)
    assert arandom._NATIVE._fn is None
    assert float((got - _stream("normal", KMIN, 6)).abs().max()) <= 1e-6


def test_native_kernel_refuses_wrong_sizes():
    from aimc import _native

    k = _native.NativeNoiseKernel()
    key = torch.zeros((), dtype=torch.int64)
    with pytest.raises(ValueError, match="multiples of 64"):
        k.fill(torch.empty(100), torch.empty(100), key, "normal", None, 128)
    with pytest.raises(ValueError, match="var has 100 values; needs 192"):
        k.fill(torch.empty(64), torch.empty(64), key, "normal", torch.empty(100), 128)


def _fresh_fill_kernel() -> FusedKernel:
    """A noise kernel as a new process has it: not built, not failed."""
    k = arandom._FILL
    return FusedKernel(k.fn, env=k.env, warn=k.warn, variants=k.variants)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_kernel_build_failure_warns_once_and_keeps_the_stream(monkeypatch, kind):
    """Where torch.compile cannot build the kernel (no C++ compiler), the same stream comes
    from tensor operations, after one warning that names the error."""
    import warnings

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return call

    monkeypatch.setenv("AIMC_RNG_NATIVE", "0")  # the inductor kernel (not the hand-written one)
    monkeypatch.setattr(arandom, "_FILL", _fresh_fill_kernel())
    monkeypatch.setattr(arandom.torch, "compile", broken_compile)
    fill = arandom.noise_normal_ if kind == "normal" else arandom.noise_uniform_
    with pytest.warns(RuntimeWarning, match="no working C.. compiler"):
        got = draw(fill, KMIN + 3, 21)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = draw(fill, KMIN + 3, 21)
    ref = _stream(kind, KMIN + 3, 21)
    assert torch.equal(got, again)
    assert float((got - ref).abs().max()) <= 1e-6


def test_kernel_can_be_switched_off(monkeypatch):
    """AIMC_RNG_KERNEL=0: no compile attempt, no warning, the same stream in tensor operations."""
    import warnings

    def no_compile(fn, **kwargs):
        raise AssertionError("torch.compile called with AIMC_RNG_KERNEL=0")

    def no_native_build():
        raise AssertionError("the hand-written kernel built with AIMC_RNG_KERNEL=0")

    monkeypatch.setenv("AIMC_RNG_KERNEL", "0")
    monkeypatch.setattr(arandom, "_FILL", _fresh_fill_kernel())
    monkeypatch.setattr(arandom.torch, "compile", no_compile)
    native = type(arandom._NATIVE)()
    monkeypatch.setattr(native, "_build", no_native_build)
    monkeypatch.setattr(arandom, "_NATIVE", native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = draw(arandom.noise_normal_, KMIN, 4)
    assert float((got - _stream("normal", KMIN, 4)).abs().max()) <= 1e-6


def test_generator_advances_between_draws():
    gen = torch.Generator().manual_seed(1)
    a = arandom.normal_(torch.empty(BIG), gen)
    b = arandom.normal_(torch.empty(BIG), gen)
    assert not torch.equal(a, b)
    c = arandom.uniform_(torch.empty(500), gen)
    d = arandom.uniform_(torch.empty(500), gen)
    assert not torch.equal(c, d)


@DTYPES
@pytest.mark.parametrize("fill", NORMALS, ids=["normal", "noise_normal"])
def test_normal_statistics_large(fill, dtype):
    t = draw(fill, BIG, 2024, dtype)
    n = t.numel()
    # 4 standard errors: mean SE = 1/sqrt(n), std SE ~ 1/sqrt(2n)
    assert abs(float(t.mean())) < 4 / math.sqrt(n)
    assert abs(float(t.std()) - 1.0) < 4 / math.sqrt(2 * n)
    # per block of CHUNK values as well (f64: each chunk is its own generator)
    for i in range(3):
        c = t[i * CHUNK : (i + 1) * CHUNK]
        assert abs(float(c.mean())) < 4 / math.sqrt(CHUNK)
        assert abs(float(c.std()) - 1.0) < 4 / math.sqrt(2 * CHUNK)
    assert torch.isfinite(t).all()


@DTYPES
@pytest.mark.parametrize("fill", [arandom.uniform_, arandom.noise_uniform_], ids=["u", "noise_u"])
def test_uniform_statistics_large(fill, dtype):
    t = draw(fill, BIG, 99, dtype)
    n = t.numel()
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
    # U[0,1): mean 1/2 (SE sqrt(1/12 n)), variance 1/12 (SE ~ sqrt(1/180 n))
    assert abs(float(t.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(float(t.var()) - 1 / 12) < 4 * math.sqrt(1 / 180 / n)
    for i in range(3):
        c = t[i * CHUNK : (i + 1) * CHUNK]
        assert abs(float(c.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / CHUNK)


@DTYPES
@FILLS
def test_chunks_are_not_copies(fill, dtype):
    t = draw(fill, BIG, 31, dtype)
    chunks = [t[i * CHUNK : (i + 1) * CHUNK] for i in range(3)]
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not torch.equal(chunks[a], chunks[b])
        r = torch.corrcoef(torch.stack([chunks[a], chunks[b]]))[0, 1]
        # correlation of independent samples: SE 1/sqrt(CHUNK) ~ 0.0028; 4 SE
        assert abs(float(r)) < 4 / math.sqrt(CHUNK)
        # nor shifted copies of each other
        r1 = torch.corrcoef(torch.stack([chunks[a][1:], chunks[b][:-1]]))[0, 1]
        assert abs(float(r1)) < 4 / math.sqrt(CHUNK)
    # the large draw is not the plain single-generator draw either
    ref = torch.empty(BIG, dtype=dtype)
    gen = torch.Generator().manual_seed(31)
    (ref.normal_ if fill in NORMALS else ref.uniform_)(generator=gen)
    assert not torch.equal(t, ref)


def test_fill_in_place_and_shapes():
    t = torch.empty(4, CHUNK)  # 4 * CHUNK elements, multi-dimensional
    out = arandom.normal_(t, torch.Generator().manual_seed(0))
    assert out is t and t.shape == (4, CHUNK)
    assert torch.equal(t.view(-1), draw(arandom.normal_, 4 * CHUNK, 0))
    # non-contiguous tensors are filled too (unchunked)
    nc = torch.zeros(2 * CHUNK + 10, 2)[:, 0]
    assert not nc.is_contiguous()
    arandom.uniform_(nc, torch.Generator().manual_seed(0))
    assert float(nc.min()) >= 0.0 and float(nc.std()) > 0.2


@pytest.mark.parametrize("fill", NORMALS, ids=["normal", "noise_normal"])
def test_fill_inside_inference_mode(fill):
    with torch.inference_mode():
        t = draw(fill, BIG, 4)
    assert t.is_inference()
    assert torch.equal(t, draw(fill, BIG, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_chip_state_draws_are_the_chunked_mt19937_stream(dtype):
    """normal_ (programming, drift, read noise: what a lean chip regenerates from its seeds) keeps
    aimc 0.2's stream: one MT19937 generator per CHUNK values, seeded from the caller's."""
    t = draw(arandom.normal_, BIG, 12, dtype)
    gen = torch.Generator().manual_seed(12)
    seeds = torch.randint(0, 1 << 62, (4,), generator=gen).tolist()
    for i, seed in enumerate(seeds):
        ref = torch.empty(min(CHUNK, BIG - i * CHUNK), dtype=dtype)
        ref.normal_(generator=torch.Generator().manual_seed(seed))
        assert torch.equal(t[i * CHUNK : (i + 1) * CHUNK], ref)


def test_derive_seed_stable_and_distinct():
    # pinned values: the derivation must not change between versions or processes
    assert arandom.derive_seed(0, "a") == 7340373685759566269
    assert arandom.derive_seed(1, "a") == 8325196692398154901
    assert arandom.derive_seed(0, "layer.0") == 5174683910037340598
    names = [f"layers.{i}.attn.q_proj" for i in range(200)] + ["", "a", "b", "A"]
    seeds = {arandom.derive_seed(42, name) for name in names}
    assert len(seeds) == len(names)
    by_seed = {arandom.derive_seed(s, "fc1") for s in range(200)}
    assert len(by_seed) == 200
    for s in seeds | by_seed:
        assert 0 <= s < 2**63
    assert arandom.derive_seed(7, "x") == arandom.derive_seed(7, "x")


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**63 - 1])
def test_check_seed_accepts_non_negative_ints(seed):
    assert arandom.check_seed(seed) == seed


@pytest.mark.parametrize("seed", [-1, -(2**40), True, False, 1.0, 0.5, "3", None, [1]])
def test_check_seed_rejects(seed):
    with pytest.raises(ValueError) as info:
        arandom.check_seed(seed, "layer.seed")
    msg = str(info.value)
    assert "layer.seed" in msg and repr(seed) in msg and "allowed" in msg


def test_valid_mask_and_exact_readout_of_an_uneven_split():
    from aimc.compensation import exact_readout, valid_mask

    # 13 inputs at 4 -> 4 + 3 + 3 + 3 (tiles of 4 rows), 7 outputs at 4 -> 4 + 3 (2 x 4 columns)
    mapping = MappingConfig(max_input_size=4, max_output_size=4)
    lo = TileLayout.build(1, 7, 13, mapping)
    mask = valid_mask(lo, torch.device("cpu"))  # (B, ci, O_pad)
    assert mask.shape == (4, 4, 8)
    assert mask[:, :, 0].sum(dim=1).tolist() == [4, 3, 3, 3]
    assert mask[0, 0].tolist() == [True] * 7 + [False]
    assert int(mask.sum()) == 13 * 7
    w = torch.randn(1, 7, 13, generator=torch.Generator().manual_seed(3))
    w_t, _ = tile_weights(w, lo, mapping)
    m = exact_readout(w_t, lo, per_column=False)  # mean |W| per tile, over its part only
    b = 0
    for t, si in enumerate(split_sizes(13, 4)):
        for u, (a, so) in enumerate(((0, 4), (4, 3))):
            ref = w[0, a : a + so, b : b + si].abs().mean()
            torch.testing.assert_close(m[t, u], ref)
        b += si


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nb", [1, 2, 3, 5])
@pytest.mark.parametrize("beta,alpha", [(0.0, 1.0), (0.5, 1.0), (1.0, 0.25)])
def test_bmm_helper_equals_batched_matmul(threads, nb, beta, alpha):
    """``mvm._bmm_`` (one ``addmm`` per batch where the batches do not divide evenly among the
    threads, else one ``bmm``) computes ``beta * z + alpha * a @ b`` in place, to float32
    rounding, and with ``beta = 0`` ignores what ``z`` held (NaN included)."""
    from aimc import mvm

    g = torch.Generator().manual_seed(nb)
    a = torch.randn(nb, 256, 128, generator=g)
    b = torch.randn(nb, 128, 64, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    z0 = torch.randn(nb, 256, 64, generator=g)
    if beta == 0.0:
        z0[0, 0, 0] = float("nan")
    expected = alpha * torch.bmm(a.double(), b.double())
    if beta != 0.0:
        expected += beta * z0.double()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z = z0.clone()
        out = mvm._bmm_(z, a, b, beta=beta, alpha=alpha)
    finally:
        torch.set_num_threads(old)
    assert out.data_ptr() == z.data_ptr()
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("nb", [1, 3, 4])
@pytest.mark.parametrize("grad", [False, True])
def test_batched_matmul_equals_bmm(threads, nb, grad):
    """``mvm.batched_matmul``: ``a @ b`` per batch as a fresh tensor, one GEMM per batch where
    the batches do not divide evenly among the threads (3 on 2), eager (into one buffer, or
    stacked where autograd records) and compiled (stacked: inductor writes each ``mm`` into its
    slice), else one ``bmm``."""
    from aimc import mvm

    g = torch.Generator().manual_seed(nb)
    a = torch.randn(nb, 256, 128, generator=g, requires_grad=grad)
    b = torch.randn(nb, 64, 128, generator=g).transpose(1, 2)  # a transposed weight, as used
    expected = torch.bmm(a.double(), b.double())
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert mvm._split_batches(a, b) == (nb == 3 and threads == 2)
        got = mvm.batched_matmul(a, b)
        outs = [got]
        if threads == 2 and not grad:  # three graphs: nb 3 split, nb 1 and 4 one bmm each
            outs.append(torch.compile(mvm.batched_matmul, fullgraph=True, dynamic=False)(a, b))
    finally:
        torch.set_num_threads(old)
    assert got.requires_grad == grad
    for out in outs:
        assert out.shape == (nb, 256, 64) and out.is_contiguous()
        torch.testing.assert_close(out.detach().double(), expected.detach(), rtol=1e-5, atol=1e-4)
    if grad:
        got.sum().backward()
        torch.testing.assert_close(a.grad, b.sum(dim=2).unsqueeze(1).expand_as(a))


@pytest.mark.parametrize("numel", [1000, KMIN + 7], ids=["plain", "kernel"])
def test_noise_normal_with_a_variance(numel):
    """``var``: the draws are the standard ones times sqrt(var), elementwise (the kernel fuses
    the scaling; small tensors scale after an MT19937 draw)."""
    var = torch.rand(numel, generator=torch.Generator().manual_seed(1)) * 4.0
    got = arandom.noise_normal_(torch.empty(numel), torch.Generator().manual_seed(9), var=var)
    ref = draw(arandom.noise_normal_, numel, 9) * var.sqrt()
    assert float((got - ref).abs().max()) <= 1e-5
    # a tensor stream (the compiled forward's) takes var too
    key = torch.tensor(5, dtype=torch.int64)
    s = arandom.noise_normal_(torch.empty(numel), arandom.KeyedStream(key), var=var)
    assert torch.allclose(s, arandom.KeyedStream(key).normal((numel,)) * var.sqrt())


@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_draws_of_changing_sizes_equal_the_stream(threads):
    """The kernel writes the sines of each word into a reused buffer and copies them into place:
    a large draw, then smaller and odd ones (leftover words in tensor ops), with and without a
    variance, each equals the stream of its key; single-threaded too (a constant folded into
    C++ index arithmetic once made g++ run the one-thread loop only once)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # 200_000: as many sines as the kernel writes, cosines left over (w = n - half < half)
        for numel in [(1 << 20) + 128, KMIN + 64 * 5 + 3, 3 * KMIN + 130, 200_000, KMIN]:
            var = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) + 0.25
            for v in (None, var):
                got = arandom.noise_normal_(
                    torch.full((numel,), 7.0), torch.Generator().manual_seed(4), var=v
                )
                ref = _stream("normal", numel, 4)
                ref = ref if v is None else ref * v.sqrt()
                assert float((got - ref).abs().max()) <= 1e-5, (numel, v is None)
            got = arandom.noise_uniform_(
                torch.full((numel,), 7.0), torch.Generator().manual_seed(4)
            )
            assert torch.equal(got, _stream("uniform", numel, 4)), numel
    finally:
        torch.set_num_threads(old)


def test_kernel_draw_above_the_reused_buffer_limit(monkeypatch):
    """A draw too large for the reused buffer gets its own: the same stream."""
    monkeypatch.setattr(arandom, "SINES_MAX", KMIN // 4)
    numel = 2 * KMIN + 64 * 3 + 5
    got = arandom.noise_normal_(torch.full((numel,), 7.0), torch.Generator().manual_seed(8))
    assert float((got - _stream("normal", numel, 8)).abs().max()) <= 1e-5


def test_noise_normal_variance_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"var has shape \(3,\); allowed: .*\(4,\)"):
        arandom.noise_normal_(torch.empty(4), torch.Generator(), var=torch.ones(3))


def test_keyed_stream_increment_is_a_runtime_tensor_with_the_constant_stream_numbers():
    """``KeyedStream`` passes SplitMix64's increment as a tensor computed from its key (so that
    inductor cannot fold it into int32 index arithmetic on CUDA); the words, and so the draws,
    are those of the constant increment, for any key (negative int64 keys included)."""
    for k in (0, 1, -1, 2**62 + 12345, -(2**63)):
        key = torch.tensor(k, dtype=torch.int64)
        stream = arandom.KeyedStream(key)
        assert stream.gamma.dtype == torch.int64 and int(stream.gamma) == arandom._GAMMA
        assert torch.equal(
            arandom.counter_bits(key, 300, stream.gamma), arandom.counter_bits(key, 300)
        )
        draw_key = arandom.mix64(key + arandom._GAMMA)
        assert torch.equal(stream.normal((7, 33)), arandom.counter_normal(draw_key, (7, 33)))
        draw_key = arandom.mix64(key + arandom._int64(2 * arandom._GAMMA))
        assert torch.equal(stream.uniform((5, 64)), arandom.counter_uniform(draw_key, (5, 64)))


def _scaled_sum(x: torch.Tensor, r: torch.Tensor, kind: str) -> torch.Tensor:
    y = torch.clamp(x, -r, r)
    return y * 2 if kind == "double" else y


def test_fused_kernel_names_its_variants_from_the_arguments():
    """Without ``variant``, a FusedKernel names what dynamo guards on itself (dtype, grad,
    sizes 0/1, string constants, modes, threads): a call like an earlier one skips the
    recompile-limit patch, and calls that dynamo tells apart stay correct."""
    from aimc import _kernels

    kernel = FusedKernel(_scaled_sum, env="AIMC_FUSED_KERNELS")
    r = torch.tensor(0.5)
    calls = [
        (torch.randn(300), "double"),
        (torch.randn(17), "double"),  # another size: the same variant
        (torch.randn(300), "plain"),  # another string: another variant
        (torch.randn(1), "double"),  # size 1: specialized by dynamo, named apart
        (torch.randn(40, dtype=torch.float64), "double"),
    ]
    for x, kind in calls:
        assert torch.equal(kernel(x, r.to(x.dtype), kind), _scaled_sum(x, r.to(x.dtype), kind))
    keys = {_kernels.guard_key((x, r.to(x.dtype), kind)) for x, kind in calls}
    assert len(keys) == 4 and kernel.built == keys
    with torch.inference_mode():  # the mode is part of the name
        x = torch.randn(300)
        assert torch.equal(kernel(x, r, "double"), _scaled_sum(x, r, "double"))
    assert len(kernel.built) == 5
