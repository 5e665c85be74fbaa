"""The training forward's own kernels: the tile kernel (:mod:`aimc._tiles`: tiles, ``|W|`` and
int8 limbs in one pass over the weights), the input-range clip kernel
(:mod:`aimc._rangeclip`) and the clip left to the DAC where it subsumes it
(:func:`aimc.mvm.dac_clips_range`).

Each replaces tensor code value for value, so each is checked for equality with it: the
kernels against their references, whole training steps with a kernel on and off. Tests that
need a kernel skip where it cannot be built (no C++ compiler).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import mlp_train_step
from hypothesis import given, settings
from hypothesis import strategies as st

import aimc
from aimc import _intmvm, _rangeclip, _tiles, hwa, mvm, presets
from aimc._native import nan_equal
from aimc.config import BoundManagement, MappingConfig, NoiseManagement
from aimc.functional import TileLayout
from aimc.nn import AnalogLinear


def _require(kernel) -> None:
    if not kernel.usable():
        pytest.skip(f"the kernel does not run here: {kernel.failed}")


# -- the tile kernel --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    g=st.integers(1, 2),
    o=st.integers(1, 50),
    k=st.integers(1, 90),
    max_in=st.sampled_from([0, 16, 33]),
    max_out=st.sampled_from([0, 7, 16]),
    omega=st.sampled_from([0.0, 1.0, 0.6]),
    columnwise=st.booleans(),
    gain=st.sampled_from([1.0, 1.7, 0.25]),
    special=st.sampled_from([None, math.nan, math.inf, 0.0]),
    seed=st.integers(0, 2**16),
)
def test_tile_kernel_equals_the_tensor_code(
    g, o, k, max_in, max_out, omega, columnwise, gain, special, seed
):
    """Tiles and scales bit for bit, ``|W|`` before the gain, limbs within their resolution
    (the same C++ as the int8 MVM's: bit for bit its limbs where that kernel runs), on even and
    uneven splits, every weight scaling, with zero rows, NaN and infinities."""
    _require(_tiles.TILES)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(g, o, k, generator=gen) * torch.rand(g, o, 1, generator=gen)
    if special is not None:
        w[-1, o // 2, k // 3] = special
        w[0, 0] = 0.0
    mapping = MappingConfig(
        max_input_size=max_in,
        max_output_size=max_out,
        weight_scaling_omega=omega,
        weight_scaling_columnwise=columnwise,
    )
    lo = TileLayout.build(g, o, k, mapping)
    tiles, scale, wabs, limbs = _tiles.TILES.build(w, lo, mapping, gain, True, True)
    ref, ref_scale, ref_abs = _tiles.tiles_reference(w, lo, mapping, gain)
    assert nan_equal(tiles, ref) and nan_equal(wabs, ref_abs)
    assert (scale is None) == (ref_scale is None)
    if scale is not None:
        assert nan_equal(scale, ref_scale)
    finite = bool(torch.isfinite(ref).all())
    assert (limbs is not None) == finite
    if limbs is not None and _intmvm.INT_MVM.usable():
        want = _intmvm.cached_limbs(ref.clone())
        assert torch.equal(limbs[0], want[0]) and torch.equal(limbs[1], want[1])


def test_tile_kernel_leaves_out_what_is_not_asked_for():
    _require(_tiles.TILES)
    w = torch.randn(1, 20, 30)
    mapping = MappingConfig(max_input_size=16)
    lo = TileLayout.build(1, 20, 30, mapping)
    tiles, scale, wabs, limbs = _tiles.TILES.build(w, lo, mapping, 1.0, False, False)
    assert wabs is None and limbs is None and tiles.shape == (2, 20, 15)
    with pytest.raises(ValueError, match=r"weight \(1, 20, 31\) for a layout of \(1, 20, 30\)"):
        _tiles.TILES.build(torch.randn(1, 20, 31), lo, mapping, 1.0, False, False)
    with pytest.raises(ValueError, match="contiguous: False"):
        _tiles.TILES.build(torch.randn(1, 30, 20).transpose(1, 2), lo, mapping, 1.0, False, False)


@pytest.mark.parametrize("preset", ["standard_hwa", "pcm_inference", "bert_squad"])
def test_training_step_is_the_same_with_the_tile_kernel(monkeypatch, preset):
    """Outputs and every gradient of a training step (2,048 vectors: the int8 MVM, with limbs
    from the tile kernel where it runs) with the kernel and with ``AIMC_TILES_NATIVE=0``."""
    _require(_tiles.TILES)
    cfg = getattr(presets, preset)().replace(device=aimc.DeviceConfig())
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=64))
    results = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_TILES_NATIVE", env)
        results.append(mlp_train_step(cfg, (96, 130, 40), 2048))
    assert torch.equal(results[0][0], results[1][0])
    for k, v in results[0][1].items():
        assert torch.equal(v, results[1][1][k]), k


def test_the_forward_refuses_non_finite_weights_with_the_tile_kernel():
    _require(_tiles.TILES)
    for cfg in (presets.standard_hwa(), aimc.AnalogConfig()):  # scaled; not scaled
        layer = AnalogLinear(6, 5, config=cfg.replace(device=aimc.DeviceConfig())).train()
        layer.analog_name = "fc"
        with torch.no_grad():
            layer.weight[3, 1] = math.nan
        with pytest.raises(ValueError, match=r"forward: AnalogLinear 'fc' weight has 1 non-finite"):
            layer(torch.ones(2, 6))


def test_the_tile_kernel_builds_limbs_only_where_the_forward_uses_them(monkeypatch):
    """In training, limbs are built with the tiles for a forward on at least
    ``INT_MIN_VECTORS_FRESH`` vectors (where the int8 MVM then runs), not for fewer."""
    _require(_tiles.TILES)
    if not _intmvm.INT_MVM.usable():
        pytest.skip("no int8 MVM on this CPU")
    calls = []
    real = _tiles.TILES.build

    def spy(*args, **kwargs):
        calls.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(_tiles.TILES, "build", spy)
    layer = AnalogLinear(64, 32, config=presets.standard_hwa().replace(device=aimc.DeviceConfig()))
    layer.train()
    for n in (mvm.INT_MIN_VECTORS_FRESH, 16):
        with torch.no_grad():
            layer.weight.add_(0.0)  # a new version: the tiles are rebuilt
        layer(torch.randn(n, 64))
    assert calls == [True, False]


# -- the input-range clip kernel --------------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 3 * _rangeclip.BLOCK + 40),
    r=st.floats(0.05, 5.0),
    specials=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_clip_kernel_equals_the_tensor_code(n, r, specials, seed):
    _require(_rangeclip.CLIP)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 2 * r
    values = [math.nan, math.inf, -math.inf, r, -r, 0.0]
    for i in range(min(specials, n)):
        x[int(torch.randint(n, (1,), generator=gen))] = values[i]
    rt = torch.tensor(r, dtype=torch.float32)
    out = torch.empty_like(x)
    _rangeclip.CLIP.clip_into(x, float(rt), out)
    assert nan_equal(out, hwa._clipped(x, rt, x.abs()))
    g = torch.randn(n, generator=gen)
    got = g.clone()
    total, inside = _rangeclip.CLIP.range_sums(x, float(rt), got)
    ref, ref_inside = (v.item() for v in hwa._range_sums(x.double(), rt.double(), g.double()))
    assert torch.equal(got, g)  # read only: the input gradient passes through the clip
    assert inside == ref_inside == int((~(x.abs() >= rt)).sum())
    # float32 partial sums of 256 values per vector lane, then float64
    bound = float((g.double().abs() * (x.abs() >= rt)).sum()) * 2.0**-16
    assert abs(total - ref) <= bound


def test_clip_kernel_sum_does_not_depend_on_the_thread_count():
    _require(_rangeclip.CLIP)
    x = torch.randn(10 * _rangeclip.BLOCK + 7, generator=torch.Generator().manual_seed(1)) * 3
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    sums = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            sums.append(_rangeclip.CLIP.range_sums(x, 1.0, g.clone()))
    finally:
        torch.set_num_threads(threads)
    assert sums[0] == sums[1] == sums[2]


def test_clip_kernel_refuses_wrong_buffers():
    _require(_rangeclip.CLIP)
    with pytest.raises(ValueError, match=r"got \(5,\) torch.float64"):
        _rangeclip.CLIP.clip_into(torch.zeros(5), 1.0, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got \(4,\) torch.float32.*expected.*\(5,\)"):
        _rangeclip.CLIP.range_sums(torch.zeros(5), 1.0, torch.zeros(4))


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        (_tiles.NativeTileKernel, "tile kernel could not be built.*self-check"),
        (_rangeclip.NativeClipKernel, "clip kernel could not be built.*self-check"),
    ],
)
def test_a_kernel_that_computes_wrongly_warns_and_is_not_used(monkeypatch, kernel, message):
    from torch._inductor import codecache

    monkeypatch.setattr(
        codecache.CppPythonBindingsCodeCache, "load_pybinding", lambda *a, **k: lambda *b: None
    )
    k = kernel()
    with pytest.warns(RuntimeWarning, match=message):
        assert not k.usable()


# -- the clip left to the DAC ----------------------------------------------------------------


def _hwa_step(monkeypatch, clip_in_dac: bool, x: torch.Tensor):
    if not clip_in_dac:
        monkeypatch.setattr("aimc.nn.base.dac_clips_range", lambda *a: False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.Linear(40, 24))
    aimc.convert(model, presets.standard_hwa().replace(device=aimc.DeviceConfig()), seed=1)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AnalogLinear):
                m.input_range.fill_(0.8)  # many inputs beyond the range
                m.input_range_batches.fill_(10**6)  # the range as set (no initialisation)
    xr = x.clone().requires_grad_(True)
    y = model(xr)
    y.nan_to_num(0.0).square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    monkeypatch.undo()
    return y.detach(), xr.grad, grads


def test_the_dac_clips_beyond_the_range_as_the_clip_does(monkeypatch):
    """``standard_hwa`` training: outputs and every gradient (input, weights, bias, output
    scales, input range) bit for bit with the input clipped before the DAC and without, on
    inputs within, at and far beyond the range, and with NaN and +-inf (NaN outputs for their
    vectors either way)."""
    if not mvm._DAC.usable():
        pytest.skip(f"no fused DAC here: {mvm._DAC.failed}")
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)) * 1.5
    x[0, :5] = torch.tensor([0.8, -0.8, 100.0, -1e30, 0.7999999])
    x[1, 3], x[2, 7], x[3, 40] = math.nan, math.inf, -math.inf
    y1, gx1, g1 = _hwa_step(monkeypatch, True, x)
    y0, gx0, g0 = _hwa_step(monkeypatch, False, x)
    assert nan_equal(y1, y0) and nan_equal(gx1, gx0)
    assert y1[1:4].isnan().all() and not y1[4:].isnan().any()
    for k in g0:
        assert nan_equal(g1[k], g0[k]), k


def test_the_clip_stays_where_the_dac_would_not_give_its_values():
    """A DAC bound wider than the range, no bound, bound management's rounds (they rescale the
    inputs), or no DAC at all: the input is clipped first."""
    x = torch.randn(1, 4, 8)
    r = torch.tensor([1.0])
    io = presets.standard_hwa().io
    if not mvm._DAC.usable():
        pytest.skip(f"no fused DAC here: {mvm._DAC.failed}")
    none = io.replace(noise_management=NoiseManagement.NONE)  # (other DAC bounds need it)
    assert mvm.dac_clips_range(x, io, r)
    assert mvm.dac_clips_range(x, none.replace(inp_bound=0.5), r)
    assert not mvm.dac_clips_range(x, io, None)
    assert not mvm.dac_clips_range(x, none.replace(inp_bound=2.0), r)
    assert not mvm.dac_clips_range(x, none.replace(inp_bound=0.0), r)
    assert not mvm.dac_clips_range(x, io.replace(bound_management=BoundManagement.ITERATIVE), r)
    assert not mvm.dac_clips_range(x, io.replace(inp_noise=0.01), r)
    assert not mvm.dac_clips_range(x, io, torch.tensor([-0.5]))  # a range learned negative
    assert not mvm.dac_clips_range(x, aimc.IOConfig(is_perfect=True), r)


# -- the post-step's clip and remap -----------------------------------------------------------


@pytest.mark.parametrize(
    ("layer_kind", "max_in", "clip"),
    [
        ("linear", 512, "fixed"),
        ("linear", 100, "fixed"),
        ("linear", 64, "none"),
        ("conv", 40, "fixed"),
    ],
)
def test_post_step_is_the_same_with_the_tile_kernel(monkeypatch, layer_kind, max_in, clip):
    """``post_step``'s ``fixed`` clip and ``columnwise`` remap in one kernel pass: the weights
    and the output scales bit for bit as the tensor code leaves them (even and uneven input
    splits, a convolution's weight matrix), the weight's version moved (cached tiles and
    autograd see the change)."""
    _require(_tiles.TILES)
    cfg = presets.standard_hwa().replace(device=aimc.DeviceConfig())
    cfg = cfg.replace(
        mapping=cfg.mapping.replace(max_input_size=max_in),
        hwa=cfg.hwa.replace(clip=aimc.config.WeightClip(clip)),
    )
    results = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_TILES_NATIVE", env)
        torch.manual_seed(0)
        if layer_kind == "conv":
            model = torch.nn.Sequential(torch.nn.Conv2d(5, 7, 3))
        else:
            model = torch.nn.Sequential(torch.nn.Linear(256, 48))
        aimc.convert(model, cfg, seed=1)
        layer = model[0]
        with torch.no_grad():
            layer.weight.mul_(3.0)  # beyond the clip
            layer.weight.view(-1)[5] = 0.0
            layer.out_scale.uniform_(0.5, 2.0)
        before = layer.weight._version
        aimc.post_step(model)
        assert layer.weight._version > before
        # (the remap moves the scale into mapping_scale and resets out_scale to 1)
        assert bool((layer.out_scale.detach() == 1).all())
        results.append((layer.weight.detach().clone(), layer.mapping_scale.detach().clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_post_step_kernel_refuses_a_wrong_weight():
    _require(_tiles.TILES)
    lo = TileLayout.build(1, 4, 10, MappingConfig(max_input_size=5))
    with pytest.raises(ValueError, match=r"weight \(1, 4, 11\) for a layout of \(1, 4, 10\)"):
        _tiles.TILES.clip_remap_(torch.zeros(1, 4, 11), lo, 1.0, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"got \(1, 4, 2\).*expected.*\(1, 2, 4\)"):
        _tiles.TILES.clip_remap_(torch.zeros(1, 4, 10), lo, 1.0, torch.zeros(1, 4, 2))


# -- the input range's initialisation ---------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 3 * _rangeclip.BLOCK + 40),
    offset=st.sampled_from([0.0, 3.0, -1e4]),
    special=st.sampled_from([None, math.nan, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_std_kernel_is_float64s_std(n, offset, special, seed):
    """Within float64 rounding of ``x.double().std()`` (a mean far from zero included); NaN for
    a non-finite value or fewer than two values."""
    _require(_rangeclip.CLIP)
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.3 + offset
    if special is not None and n:
        x[n // 2] = special
    got = _rangeclip.CLIP.std(x)
    want = float(x.double().std()) if n > 1 else math.nan
    if math.isnan(want) or math.isinf(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-12)


def test_input_range_initialisation_is_the_same_with_the_kernel(monkeypatch):
    """The ranges after three initialisation batches: torch's float32 ``std`` and the kernel's
    float64 one agree to float32 rounding."""
    _require(_rangeclip.CLIP)
    ranges = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_CLIP_NATIVE", env)
        layer = AnalogLinear(
            300, 20, config=presets.standard_hwa().replace(device=aimc.DeviceConfig())
        )
        layer.train()
        for i in range(3):
            x = torch.randn(64, 300, generator=torch.Generator().manual_seed(i)) * (i + 1) + 0.5
            with torch.no_grad():
                layer(x)
        assert int(layer.input_range_batches) == 3
        ranges.append(layer.input_range.detach().clone())
    torch.testing.assert_close(ranges[0], ranges[1], rtol=2e-7, atol=0)


@pytest.mark.parametrize("native", ["1", "0"])
def test_post_step_reaches_a_channels_last_convolutions_weight(monkeypatch, native):
    """A channels_last convolution's weight has no ``(G, O, K)`` view (its weight matrix is a
    copy): the clip and remap are written back into it, as for the contiguous twin (before,
    both changed the copy only: the post-step silently did nothing)."""
    monkeypatch.setenv("AIMC_TILES_NATIVE", native)
    cfg = presets.standard_hwa().replace(device=aimc.DeviceConfig())
    weights = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(5, 7, 3))
        aimc.convert(model, cfg, seed=1)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            assert not model[0].weight.is_contiguous()
        with torch.no_grad():
            model[0].weight.mul_(9.0)  # beyond the clip
        aimc.post_step(model)
        weights.append(model[0].weight.detach().contiguous())
    assert torch.equal(weights[0], weights[1])
    assert float(weights[1].abs().amax()) == 1.0  # remapped: every column's max is 1
