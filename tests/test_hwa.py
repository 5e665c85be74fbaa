"""Hardware-aware training knobs: modifier statistics, clipping/remapping invariants, input ranges.

Statistical checks use fixed seeds; n >= 50,000 samples and a 3 % tolerance (> 6 standard errors).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc import AnalogConfig, HWAConfig, IOConfig, MappingConfig
from aimc.functional import TileLayout
from aimc.hwa import PROG_NOISE_COEFFS, modify_weights
from aimc.nn import AnalogLinear

PERFECT = IOConfig(is_perfect=True)


def _layout(o: int, k: int, max_out: int = 0) -> TileLayout:
    return TileLayout.build(1, o, k, MappingConfig(max_input_size=0, max_output_size=max_out))


def _draws(kind: str, w: torch.Tensor, **kw) -> torch.Tensor:
    hwa = HWAConfig(modifier=kind, **kw)
    gen = torch.Generator().manual_seed(0)
    lo = _layout(w.shape[1], w.shape[2])
    return modify_weights(w, lo, hwa, gen) - w


@pytest.fixture
def w() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(1, 256, 256, generator=gen) * 2 - 1
    w[0, 0, 0] = 1.0  # a = max|W| = 1 exactly
    return w * 0.5  # now a = 0.5


def test_add_normal_std(w):
    d = _draws("add_normal", w, modifier_std=0.1)
    assert abs(float(d.std()) - 0.1 * 0.5) <= 0.03 * 0.05  # std * a


def test_mult_normal_std(w):
    d = _draws("mult_normal", w, modifier_std=0.1)
    rel = d / (w * 0.1 * 0.5)  # W * std * a * xi
    assert abs(float(rel[w.abs() > 0.05].std()) - 1.0) < 0.03


@pytest.mark.parametrize("kind", ["poly", "prog_noise"])
def test_poly_std(w, kind):
    coeffs = (0.02, 0.1, -0.05)
    d = _draws(kind, w, modifier_std=2.0, modifier_coeffs=coeffs)
    c0, c1, c2 = PROG_NOISE_COEFFS if kind == "prog_noise" else coeffs
    a = 0.5
    rel = w.abs() / a
    expected = a * 2.0 * (c0 + c1 * rel + c2 * rel**2)
    assert abs(float((d / expected).std()) - 1.0) < 0.03


def test_discretize_levels(w):
    d = _draws("discretize", w, modifier_res=1 / 8)
    q = (w + d) / (0.5 / 8)  # multiples of a * res
    assert torch.allclose(q, q.round(), atol=1e-5)
    assert float(d.abs().max()) <= 0.5 / 16 + 1e-6


def test_modifier_per_tile_uses_each_tiles_max():
    w = torch.ones(1, 4, 8)
    w[:, 2:] *= 10.0  # second output tile 10x larger
    lo = TileLayout.build(1, 4, 8, MappingConfig(max_input_size=0, max_output_size=2))
    gen = torch.Generator().manual_seed(0)
    d = modify_weights(w, lo, HWAConfig(modifier="add_normal", modifier_std=0.1), gen) - w
    assert float(d[:, :2].abs().max()) < 1.0  # a = 1 there
    assert float(d[:, 2:].abs().max()) > 1.0  # a = 10 there (and 0.1*10*|xi| > 1 somewhere)


def _layer(hwa: HWAConfig, **mapping) -> AnalogLinear:
    cfg = AnalogConfig(
        io=PERFECT, mapping=MappingConfig(learn_out_scaling=True, **mapping), hwa=hwa
    )
    torch.manual_seed(0)
    return AnalogLinear(32, 16, config=cfg, seed=3)


def test_modifier_only_in_training_and_resampled():
    layer = _layer(HWAConfig(modifier="add_normal", modifier_std=0.05))
    x = torch.randn(8, 32)
    ref = nn.functional.linear(x, layer.weight, layer.bias)
    layer.train()
    with torch.no_grad():
        a, b = layer(x), layer(x)
    assert not torch.equal(a, b) and not torch.allclose(a, ref, atol=1e-3)
    layer.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-5)  # perfect IO, no device: exact in eval


def test_modifier_gradient_is_straight_through():
    layer = _layer(HWAConfig(modifier="add_normal", modifier_std=0.05)).train()
    x = torch.randn(8, 32, requires_grad=True)
    g = torch.randn(8, 16)
    layer(x).backward(g)
    assert torch.allclose(layer.weight.grad, g.t() @ x.detach(), atol=1e-5)


def test_fixed_and_gaussian_clipping():
    layer = _layer(HWAConfig(clip="fixed", clip_value=0.05))
    aimc.post_step(nn.Sequential(layer))
    assert float(layer.weight.detach().abs().max()) <= 0.05 + 1e-7
    layer = _layer(HWAConfig(clip="layer_gaussian", clip_sigma=1.0))
    std = float(layer.weight.detach().std())
    aimc.post_step(nn.Sequential(layer))
    assert float(layer.weight.detach().abs().max()) <= std + 1e-6


@pytest.mark.parametrize("remap,columnwise", [("layerwise", False), ("columnwise", True)])
def test_remap_keeps_the_function(remap, columnwise):
    layer = _layer(HWAConfig(remap=remap), out_scaling_columnwise=columnwise).eval()
    x = torch.randn(8, 32)
    with torch.no_grad():
        before = layer(x)
    aimc.post_step(nn.Sequential(layer))
    mags = layer.weight.abs().amax(dim=1)
    if remap == "columnwise":
        assert torch.allclose(mags, torch.ones(16))
    else:
        assert torch.isclose(mags.max(), torch.tensor(1.0))
    with torch.no_grad():
        assert torch.allclose(layer(x), before, atol=1e-5)


def test_columnwise_remap_needs_columnwise_out_scale():
    layer = _layer(HWAConfig(remap="columnwise"), out_scaling_columnwise=False)
    with pytest.raises(ValueError, match="out_scaling_columnwise"):
        aimc.post_step(nn.Sequential(layer))


def test_optimizer_hook_runs_post_step():
    layer = _layer(HWAConfig(clip="fixed", clip_value=0.01)).train()
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = aimc.register_post_step_hook(opt, model)
    layer(torch.randn(4, 32)).square().sum().backward()
    opt.step()
    assert float(layer.weight.detach().abs().max()) <= 0.01 + 1e-7
    handle.remove()


def test_input_range_initialised_from_data_then_learned():
    hwa = HWAConfig(learn_input_range=True, input_range_init_batches=5)
    layer = _layer(hwa).train()
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 32, generator=gen) * 2.0 for _ in range(5)]
    for x in xs:
        layer(x)
    # mean of 3 * std over the first 5 batches (std ~ 2 -> range ~ 6)
    expected = sum(3 * float(x.std()) for x in xs) / 5
    assert abs(float(layer.input_range.detach()) - expected) < 1e-4
    assert int(layer.input_range_batches) == 5
    # learning: a range far too small gets a negative loss gradient pushing it up
    with torch.no_grad():
        layer.input_range.fill_(0.5)
    opt = torch.optim.SGD([layer.input_range], lr=0.01)
    before = float(layer.input_range.detach())
    for _ in range(5):
        opt.zero_grad()
        y = layer(xs[0])
        target = nn.functional.linear(xs[0], layer.weight, layer.bias).detach()
        (y - target).square().mean().backward()
        opt.step()
    assert float(layer.input_range.detach()) > before


@pytest.mark.parametrize(
    "relative,scale,min_inside,expect",
    [
        # widening part: x=-3 (g=1 -> -1), x=2 (g=-4 -> -4), x=5 (g=5: narrowing, dropped);
        # times r=2 (relative); 2 of 5 inside (0.4 < 0.5): no decay
        (True, 1.0, 0.5, -5.0 * 2.0),
        (True, 0.5, 0.3, -5.0 * 2.0 * 0.5 + 0.1 * 2.0),  # 0.4 > 0.3: decay * r
        (False, 0.5, 0.3, -5.0 + 0.1 * 2.0),  # the scale only with relative (AIHWKIT)
    ],
)
def test_input_range_gradient_formula(relative, scale, min_inside, expect):
    # AIHWKIT 1.2.0's TileWithPeriphery.post_backward
    x = torch.tensor([-6.0, -1.0, 0.4, 4.0, 10.0], requires_grad=True)
    r = torch.tensor([2.0], requires_grad=True)
    rl = aimc.hwa.RangeLearning(0.1, relative, scale, min_inside)
    y = aimc.hwa.clip_input(x, r, rl)
    g = torch.tensor([1.0, 2.0, 3.0, -4.0, 5.0])
    y.backward(g)
    assert torch.equal(y.detach(), torch.tensor([-2.0, -1.0, 0.4, 2.0, 2.0]))
    assert torch.equal(x.grad, g)  # straight through the clip, for every input
    torch.testing.assert_close(r.grad, torch.tensor([expect]))


def test_clip_input_refuses_a_bare_decay():
    with pytest.raises(TypeError, match="rl must be an aimc.hwa.RangeLearning.*float 0.1"):
        aimc.hwa.clip_input(torch.zeros(3), torch.ones(1), 0.1)


def test_range_learning_of_the_config():
    hwa = HWAConfig(
        input_range_decay=0.002,
        input_range_gradient_relative=False,
        input_range_gradient_scale=2.0,
        input_range_min_inside=0.9,
    )
    assert aimc.hwa.RangeLearning.of(hwa) == (0.002, False, 2.0, 0.9)
    assert aimc.hwa.RangeLearning.of(HWAConfig()) == (0.001, True, 1.0, 0.95)  # AIHWKIT's


@pytest.mark.parametrize("shape", [(7,), (3, 1000), (2, 5, 33)])
def test_fused_input_range_kernels_equal_the_formulas(shape):
    """The fused CPU kernels of the input range (one pass each way) give the eager formulas'
    values: the clipped input and dx exactly, NaN and +-inf included (inf -> NaN), the range
    gradient up to the order of its sum; and they were built (not the eager fallback)."""
    from aimc.hwa import _CLIP_BACKWARD, _CLIP_FORWARD, _clip_backward, _clip_forward, _run_fused

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 2
    flat = x.view(-1)
    flat[0], flat[-1] = float("inf"), float("nan")
    if flat.numel() > 2:
        flat[1] = -float("inf")
    g = torch.randn(shape, generator=gen)
    r = torch.tensor([1.5])
    y, code = _run_fused(_CLIP_FORWARD, x, r)
    y_e, code_e = _clip_forward(x, r)
    torch.testing.assert_close(y, y_e, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(code, code_e) and code.dtype == torch.int8 and code.shape == x.shape
    assert torch.isnan(y.view(-1)[0]) and torch.isnan(y.view(-1)[-1])
    s, inside = _run_fused(_CLIP_BACKWARD, code, g)
    s_e, inside_e = _clip_backward(code, g)
    assert int(inside) == int(inside_e)
    torch.testing.assert_close(s, s_e, rtol=1e-5, atol=1e-5)
    # the byte code carries what the range's gradient needs of x: the widening part
    # min(g * sign(x), 0) summed over the outside (|x| >= r, +-inf included), and the count of
    # the inside (|x| < r, NaN)
    outside = x.abs() >= r
    assert int(inside) == int((~outside).sum())
    torch.testing.assert_close(s, torch.where(outside, (g * torch.sign(x)).clamp(max=0), 0.0).sum())
    for kernel in (_CLIP_FORWARD, _CLIP_BACKWARD):  # built, not the eager fallback
        assert kernel.failed is None and kernel.compiled is not None and kernel.built


def test_input_range_gradient_on_noncontiguous_input():
    """A transposed input and gradient take the same values as contiguous ones."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, 30, generator=gen) * 2
    g = torch.randn(30, 40, generator=gen)
    out = []
    for x in (base.t(), base.t().contiguous()):
        x = x.detach().requires_grad_()
        r = torch.tensor([1.0], requires_grad=True)
        y = aimc.hwa.clip_input(x, r, aimc.hwa.RangeLearning(0.0, True, 1.0, 0.95))
        y.backward(g)
        out.append((y.detach(), x.grad, r.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    torch.testing.assert_close(out[0][2], out[1][2], rtol=1e-5, atol=1e-5)


def test_input_range_is_the_dac_range_in_eval():
    hwa = HWAConfig(learn_input_range=True)
    cfg = AnalogConfig(
        io=IOConfig(out_noise=0.0, inp_res=0.0, out_res=0.0, bound_management="none"), hwa=hwa
    )
    layer = AnalogLinear(8, 4, bias=False, config=cfg).eval()
    with torch.no_grad():
        layer.input_range.fill_(2.0)
    x = torch.tensor([[3.0, -3.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        y = layer(x)
    clipped = torch.tensor([[2.0, -2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(y, clipped @ layer.weight.T, atol=1e-5)
    assert int(layer.input_range_batches) == 0  # eval never updates the range


def test_standard_hwa_trains_with_post_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    aimc.convert(model, aimc.presets.standard_hwa())
    # remapping moves the weight scale into the output scale, which slows plain SGD on the
    # remapped weights (AIHWKIT has the same effect): a larger learning rate
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    aimc.register_post_step_hook(opt, model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, 4, generator=gen) * 0.3
    model.train()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]  # measured 1.46 -> 0.25
    for layer in (model[0], model[2]):
        assert float(layer.weight.detach().abs().amax(dim=1).max()) <= 1.0 + 1e-6


def test_io_stream_shares_the_weight_draw_but_not_the_io_noise():
    """Data-parallel ranks: same weight modifier draw (as one process), independent IO noise."""
    hwa = HWAConfig(modifier="add_normal", modifier_std=0.1)
    noisy = AnalogConfig(io=IOConfig(out_noise=0.1), hwa=hwa)
    exact_io = AnalogConfig(io=IOConfig(is_perfect=True), hwa=hwa)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    outs = {}
    for name, cfg in (("noisy", noisy), ("exact", exact_io)):
        layer = AnalogLinear(16, 4, config=cfg).train()
        for stream in (None, 0, 1):
            layer.manual_seed(5, io_stream=stream)
            outs[name, stream] = layer(x).detach()
    # perfect IO: only the weight draw is random, and every stream draws the same weights
    assert torch.equal(outs["exact", None], outs["exact", 0])
    assert torch.equal(outs["exact", 0], outs["exact", 1])
    # with output noise the ranks' noise differs
    assert not torch.equal(outs["noisy", 0], outs["noisy", 1])
    assert not torch.equal(outs["noisy", None], outs["noisy", 0])
    with pytest.raises(ValueError, match="io_stream: got -1"):
        layer.manual_seed(5, io_stream=-1)


def test_tile_std_follows_aihwkit_uneven_split():
    # 13 inputs at 4 -> 4 + 3 + 3 + 3, 10 outputs at 4 -> 4 + 3 + 3: the std of each tile is
    # taken over exactly its part of the weight (unbiased), padding excluded
    from aimc.functional import split_sizes
    from aimc.hwa import _tile_std

    w = torch.randn(2, 10, 13, generator=torch.Generator().manual_seed(0))
    lo = TileLayout.build(2, 10, 13, MappingConfig(max_input_size=4, max_output_size=4))
    std = _tile_std(w, lo)
    assert std.shape == w.shape
    ref = torch.empty_like(w, dtype=torch.float64)
    a = 0
    for so in split_sizes(10, 4):
        b = 0
        for si in split_sizes(13, 4):
            block = w[:, a : a + so, b : b + si].double()
            ref[:, a : a + so, b : b + si] = block.reshape(2, -1).std(dim=1).view(2, 1, 1)
            b += si
        a += so
    torch.testing.assert_close(std, ref)


@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "first_layer"])
def test_scaled_mvm_that_clips_its_own_input_equals_clip_input_then_mvm(x_grad):
    """The training forward of learned output scales clips its input itself (a reused buffer,
    the clip's gradient in place on x's): the same outputs and the same gradients of x, W, b,
    alpha and the range as ``clip_input`` followed by the MVM, values beyond the range, NaN and
    +-inf included; the range still learns where x needs no gradient (a first layer)."""
    from aimc.nn.base import _ScaledAnalogMVM

    cfg = aimc.presets.standard_hwa()
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=16, max_output_size=8))
    layer = AnalogLinear(40, 12, config=cfg, seed=2).train()
    with torch.no_grad():
        layer.input_range.fill_(1.5)
        layer.out_scale.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(1, 9, 40, generator=gen) * 2
    x0[0, 2, 5], x0[0, 4, 30], x0[0, 6, 0] = float("inf"), float("nan"), -float("inf")
    up = torch.randn(1, 9, 12, generator=gen)
    rl = aimc.hwa.RangeLearning(0.01, True, 1.0, 0.5)
    results = []
    for own in (False, True):
        layer.zero_grad()
        layer.manual_seed(5)
        x = x0.clone().requires_grad_(x_grad)
        r = layer.input_range
        w = layer.weight.view(1, 12, 40)
        b = layer.bias.view(1, 12)
        alpha = layer.out_scale_columns()
        if own:
            y = _ScaledAnalogMVM.apply(x, w, b, alpha, layer, r, rl)
        else:
            xc = aimc.hwa.clip_input(x, r, rl).contiguous()
            y = _ScaledAnalogMVM.apply(xc, w, b, alpha, layer, r, None)
        y.backward(up)
        grads = [t.grad.clone() for t in (layer.weight, layer.bias, layer.out_scale, r)]
        results.append((y.detach(), x.grad, grads))
    (y0, gx0, g0), (y1, gx1, g1) = results
    assert torch.isnan(y0[0, 2]).all() and torch.isnan(y0[0, 4]).all()
    torch.testing.assert_close(y1, y0, rtol=0, atol=0, equal_nan=True)
    if x_grad:
        torch.testing.assert_close(gx1, gx0, rtol=0, atol=0, equal_nan=True)
        # straight through the clip: beyond the range too (the NaN and inf rows aside)
        beyond = (x0.abs() >= 1.5) & x0.isfinite()
        assert (gx1[beyond] != 0).all()
    else:
        assert gx0 is None and gx1 is None
    for a, b_ in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert g1[3].abs().item() > 0  # the range has a gradient


def test_hwa_layer_clips_its_own_input_in_training():
    """standard_hwa() layers train through the self-clipping path, and it is the same step:
    the range and the weights after a few SGD steps equal those of the clip_input path."""
    from aimc.nn import base

    cfg = aimc.presets.standard_hwa()
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=16))
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(7)) * 3
    state = []
    for own in (True, False):
        torch.manual_seed(0)  # the weight's initialisation
        layer = AnalogLinear(40, 8, config=cfg, seed=1).train()
        opt = torch.optim.SGD(layer.parameters(), lr=0.05)
        calls = []
        original = base._ScaledAnalogMVM.apply

        def spy(*args, original=original, calls=calls, own=own):
            calls.append(args[6])
            if not own and args[6] is not None:  # the reference: clip_input, then the MVM
                xc = aimc.hwa.clip_input(args[0], args[5], args[6]).contiguous()
                return original(xc, *args[1:6], None)
            return original(*args)

        base._ScaledAnalogMVM.apply = spy
        try:
            for _ in range(3):
                opt.zero_grad()
                layer(x).square().mean().backward()
                opt.step()
        finally:
            base._ScaledAnalogMVM.apply = original
        assert calls and all(c == aimc.hwa.RangeLearning.of(cfg.hwa) for c in calls)
        state.append({k: v.clone() for k, v in layer.state_dict().items() if torch.is_tensor(v)})
    assert "input_range" in state[0]
    for k, v in state[0].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, state[1][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.Linear(768, 96), id="two even input tiles"),
        pytest.param(lambda: nn.Linear(1000, 40), id="uneven input tiles"),
        pytest.param(lambda: nn.Linear(64, 48), id="one tile"),
        pytest.param(lambda: nn.Conv2d(4, 8, 3, groups=2, padding=1), id="grouped conv"),
    ],
)
@pytest.mark.parametrize("sigmas", [2.9, 1.0], ids=["few clipped", "many clipped"])
def test_range_gradient_of_a_first_layer_from_the_clipped_entries(make, sigmas, monkeypatch):
    """A layer whose input needs no gradient takes the learned range's gradient from the clipped
    inputs' entries of the input gradient alone (``hwa.outside_range_grad``, where few are
    clipped): the gradient of the whole product's path (forced by a zero threshold) to float
    rounding, on the same forward; with many clipped it is that path. (An ADC bound of 40: no
    output saturates, whose input gradient AIHWKIT's rule zeroes — the whole product's path,
    ``test_saturated_outputs_take_the_whole_products_path``.)"""
    torch.manual_seed(0)
    cfg = aimc.presets.standard_hwa()
    cfg = cfg.replace(io=cfg.io.replace(out_bound=40.0))
    model = aimc.convert(nn.Sequential(make()), cfg, seed=1).train()
    layer = model[0]
    shape = (6, 4, 8, 8) if isinstance(layer, nn.Conv2d) else (300, layer.in_features)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a learned range (initialisation over) of `sigmas` standard deviations
        layer.input_range.fill_(sigmas)
        layer.input_range_batches.fill_(10**6)
        # output scales that differ between the input tiles
        layer.out_scale.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
    y = model(x)
    assert not x.requires_grad and layer.input_range.requires_grad
    ran = []
    real = aimc.nn.base.outside_range_grad
    monkeypatch.setattr(
        aimc.nn.base, "outside_range_grad", lambda *a: ran.append(real(*a)) or ran[-1]
    )
    grads = []
    for limit in (aimc.hwa.SPARSE_RANGE_GRAD_MAX, 0.0):
        monkeypatch.setattr(aimc.hwa, "SPARSE_RANGE_GRAD_MAX", limit)
        (got,) = torch.autograd.grad(y.square().mean(), layer.input_range, retain_graph=True)
        grads.append(got)
    assert len(ran) == 2 and ran[1] is None  # the threshold 0: the whole product's path
    assert (ran[0] is not None) == (sigmas > 2)  # 0.4 % of a normal clipped at 2.9 sigma
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().item() > 0


def test_saturated_outputs_take_the_whole_products_path(monkeypatch):
    """Where tile outputs reach the ADC bound, a first layer's range gradient comes from the
    masked input gradient (AIHWKIT's handle_output_bound), not from the clipped entries alone:
    equal to the gradient of a layer whose input needs a gradient."""
    torch.manual_seed(0)
    model = aimc.convert(nn.Sequential(nn.Linear(768, 96)), aimc.presets.standard_hwa(), seed=1)
    layer = model.train()[0]
    x = torch.randn(300, 768, generator=torch.Generator().manual_seed(2)) * 0.5
    with torch.no_grad():
        layer.input_range.fill_(1.0)
        layer.input_range_batches.fill_(10**6)
        layer.weight.abs_()  # positive weights and a positive input mean: saturated outputs
    x = x + 0.05
    grads, masks = [], []
    real = aimc.mvm.TileOutputs.bound_mask
    monkeypatch.setattr(
        aimc.mvm.TileOutputs,
        "bound_mask",
        lambda self, *a: masks.append(real(self, *a)) or masks[-1],
    )
    for needs_x in (False, True):
        layer.manual_seed(3)
        xi = x.clone().requires_grad_(needs_x)
        y = model(xi)
        (got,) = torch.autograd.grad(y.square().mean(), layer.input_range)
        grads.append(got)
    assert all(m is not None and 0 < m.float().mean() < 1 for m in masks), [
        None if m is None else float(m.float().mean()) for m in masks
    ]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", ["tensor", "kernel"])
@pytest.mark.parametrize("with_alpha", [True, False])
def test_masked_input_gradient_equals_the_dense_per_tile_product(with_alpha, path):
    """``_subtract_masked_`` (a sparse product per input tile) and the native kernel
    (``aimc._boundmask``, from the ADC's levels and per-(tile, vector, output tile) thresholds)
    give the dense per-tile input gradient ``sum_t (grad ⊙ ¬mask_t) @ (alpha_t ⊙ W_t)``: uneven
    input split (13 -> 4+3+3+3), output padding (10 -> 4+3+3), two groups, masks on every
    tile."""
    from aimc._boundmask import BOUND_MASK
    from aimc.nn.base import _subtract_masked_

    if path == "kernel" and not BOUND_MASK.ready():
        pytest.skip(f"no output-bound mask kernel here: {BOUND_MASK.failed}")
    gen = torch.Generator().manual_seed(0)
    g, n, o, k = 2, 7, 10, 13
    lo = TileLayout.build(g, o, k, MappingConfig(max_input_size=4, max_output_size=4))
    grad = torch.randn(g, n, o, generator=gen)
    w = torch.randn(g, o, k, generator=gen)
    alpha = torch.rand(g, lo.n_in, o, generator=gen) + 0.5 if with_alpha else None
    mask_t = torch.rand(g, lo.n_in, n, o, generator=gen) < 0.2  # (G, ti, N, O)
    mask = lo.pad_out(mask_t, 3).reshape(lo.batch, n, lo.padded_out)
    a_w = lo.per_weight(alpha) if with_alpha else torch.ones_like(w)
    gx = torch.bmm(grad, w * a_w)
    if path == "tensor":
        _subtract_masked_(gx, grad, mask, w * a_w, lo)
    else:
        # levels -200 / 200 where masked, 50 elsewhere, 0 in the padding; threshold 100
        sign = torch.where(torch.rand(mask.shape, generator=gen) < 0.5, -1, 1)
        levels = torch.where(mask, 200 * sign, 50).to(torch.int16)
        levels[:, :, ~lo.out_valid(torch.device("cpu"))] = 0
        below = torch.full((lo.batch, n, lo.n_out), 100, dtype=torch.int32)
        out_map = lo.out_columns(torch.device("cpu"))
        BOUND_MASK.subtract_masked(
            gx, grad, levels, below, (w * a_w).contiguous(), lo.n_in, lo.in_sizes, out_map
        )
    want = torch.zeros(g, n, k)
    start = 0
    for t, size in enumerate(lo.in_sizes):
        gt = torch.where(mask_t[:, t], 0.0, grad)
        cols = slice(start, start + size)
        want[:, :, cols] = torch.bmm(gt, (w * a_w)[:, :, cols])
        start += size
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-5)
