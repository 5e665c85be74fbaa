"""Learned output scales per tile (AIHWKIT's ``out_scaling_alpha`` of each tile module): shape,
forward and gradients against a tile-by-tile reference, HWA remapping per tile, ``to_digital``,
and checkpoints of the older per-column shape."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import aimc
from aimc import presets
from aimc.functional import split_sizes
from aimc.nn import AnalogConv1d, AnalogLinear


def _config(columnwise: bool, **mapping) -> aimc.AnalogConfig:
    """Perfect IO, learned output scales, small tiles (uneven splits by default)."""
    fields = {
        "max_input_size": 4,
        "max_output_size": 4,
        "learn_out_scaling": True,
        "out_scaling_columnwise": columnwise,
        **mapping,
    }
    return aimc.AnalogConfig(
        io=aimc.IOConfig(is_perfect=True), mapping=aimc.MappingConfig(**fields)
    )


def _linear(columnwise: bool, in_f: int = 13, out_f: int = 10, seed: int = 0, **mapping):
    torch.manual_seed(seed)
    layer = AnalogLinear(in_f, out_f, config=_config(columnwise, **mapping), seed=seed)
    with torch.no_grad():
        layer.bias.normal_()
        layer.out_scale.uniform_(0.5, 2.0)
    return layer


def _reference(x: Tensor, w: Tensor, b: Tensor | None, alpha: Tensor, columnwise: bool) -> Tensor:
    """``y = sum_t alpha_t * (x_t @ W_t.T) + b``, tile by tile, from the split sizes: ``x``
    ``(N, K)``, ``w`` ``(O, K)``, ``alpha`` ``(ti, O)`` or ``(ti, to)`` (one group)."""
    ins = split_sizes(w.shape[1], 4)
    outs = split_sizes(w.shape[0], 4)
    y = 0
    start = 0
    for t, size in enumerate(ins):
        z = x[:, start : start + size] @ w[:, start : start + size].T
        a = alpha[t] if columnwise else torch.repeat_interleave(alpha[t], torch.tensor(outs))
        y = y + z * a
        start += size
    return y if b is None else y + b


def test_out_scale_shape_per_tile():
    assert _linear(True).out_scale.shape == (1, 4, 10)  # 13 = 4+3+3+3 inputs, per column
    assert _linear(False).out_scale.shape == (1, 4, 3)  # 10 = 4+3+3 outputs, per tile
    conv = AnalogConv1d(6, 4, 3, groups=2, config=_config(True))  # 3 * 3 = 9 inputs per group
    assert conv.out_scale.shape == (2, 3, 2)
    assert AnalogLinear(4, 3, config=_config(False)).out_scale.shape == (1, 1, 1)


@pytest.mark.parametrize("columnwise", [True, False])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "no_grad"])
def test_forward_equals_tile_by_tile_reference(columnwise, grad):
    layer = _linear(columnwise)
    x = torch.randn(5, 13)
    with torch.set_grad_enabled(grad):
        y = layer(x)
    alpha = layer.out_scale.detach()[0].double()
    ref = _reference(
        x.double(), layer.weight.detach().double(), layer.bias.detach(), alpha, columnwise
    )
    torch.testing.assert_close(y.detach().double(), ref, atol=1e-5, rtol=1e-5)
    # the alphas matter: one scale for the whole layer column would give something else
    mean = alpha.mean(dim=0, keepdim=True).expand_as(alpha)
    wrong = _reference(x.double(), layer.weight.detach().double(), None, mean, columnwise)
    assert (y.detach().double() - layer.bias.detach() - wrong).abs().max() > 1e-2


@pytest.mark.parametrize("columnwise", [True, False])
def test_forward_with_weight_scaling(columnwise):
    """The learned scales ride on the per-tile / per-column weight-scaling rescale."""
    for weight_columnwise in (False, True):
        layer = _linear(
            columnwise, weight_scaling_omega=1.0, weight_scaling_columnwise=weight_columnwise
        )
        x = torch.randn(5, 13)
        alpha = layer.out_scale.detach()[0].double()
        w = layer.weight.detach().double()
        ref = _reference(x.double(), w, layer.bias.detach(), alpha, columnwise)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                y = layer(x)
            torch.testing.assert_close(y.detach().double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("columnwise", [True, False])
def test_gradients_match_tile_by_tile_reference(columnwise):
    """Perfect IO: the gradients of x, b and every tile's alpha are those of the float64
    tile-by-tile formula (the forward computes in float32, hence the tolerances); W's is
    AIHWKIT's, ``alpha * g x x / (r * mapping scale)`` (``weight_grad_factor``; r and the mapping
    scale 1 here: the formula's own)."""
    layer = _linear(columnwise)
    x = torch.randn(6, 13, requires_grad=True)
    up = torch.randn(6, 10)
    layer(x).backward(up)
    xr = x.detach().double().requires_grad_()
    wr = layer.weight.detach().double().requires_grad_()
    br = layer.bias.detach().double().requires_grad_()
    ar = layer.out_scale.detach()[0].double().requires_grad_()
    _reference(xr, wr, br, ar, columnwise).backward(up.double())
    for got, want in (
        (x.grad, xr.grad),
        (layer.weight.grad, wr.grad),
        (layer.bias.grad, br.grad),
        (layer.out_scale.grad[0], ar.grad),
    ):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # and the reference itself is the derivative: a finite difference of one tile's alpha
    with torch.no_grad():
        eps = 1e-3
        a0 = layer.out_scale[0, 2, 1].item()
        losses = []
        for a in (a0 + eps, a0 - eps):
            layer.out_scale[0, 2, 1] = a
            losses.append(float((layer(x) * up).sum()))
        fd = (losses[0] - losses[1]) / (2 * eps)
    assert abs(fd - layer.out_scale.grad[0, 2, 1].item()) < 2e-2 * max(1.0, abs(fd))


def test_alpha_gradient_uses_each_tiles_noisy_output():
    """Noisy IO: ``d/d alpha_t = sum_n grad_n * z_t,n`` with ``z_t`` tile ``t``'s actual
    analog output (read back with the same noise draws by setting alpha to one-hot tiles)."""
    cfg = presets.standard_hwa()
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=16), hwa=aimc.HWAConfig())
    torch.manual_seed(0)
    layer = AnalogLinear(40, 8, config=cfg, seed=4)  # 40 inputs = 3 tiles of 14 + 13 + 13
    with torch.no_grad():
        layer.out_scale.uniform_(0.5, 2.0)
    alpha = layer.out_scale.detach().clone()
    x = torch.randn(6, 40)
    up = torch.randn(6, 8)
    y = layer(x)
    y.backward(up)
    tiles = []
    for t in range(3):
        with torch.no_grad():
            layer.out_scale.zero_()
            layer.out_scale[0, t] = 1.0
            layer.manual_seed(4)
            tiles.append(layer(x) - layer.bias)  # z_t: the same noise draws
    z = torch.stack(tiles)  # (ti, N, O)
    assert (z[0] - z[1]).abs().max() > 1e-3
    summed = (alpha[0].unsqueeze(1) * z).sum(0) + layer.bias.detach()
    torch.testing.assert_close(y.detach(), summed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.out_scale.grad[0], (up * z).sum(1), atol=1e-4, rtol=1e-4)


def test_inference_path_equals_training_path():
    """Without autograd the scales are folded into the digital rescale (no per-tile outputs):
    the same draws give the same outputs."""
    cfg = presets.standard_hwa()
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=16))
    torch.manual_seed(0)
    layer = AnalogLinear(40, 8, config=cfg, seed=4)
    with torch.no_grad():
        layer.out_scale.uniform_(0.5, 2.0)
    x = torch.randn(6, 40)
    y_train = layer(x)
    assert y_train.requires_grad
    layer.manual_seed(4)
    with torch.no_grad():
        y_infer = layer(x)
    torch.testing.assert_close(y_infer, y_train.detach(), atol=1e-5, rtol=1e-5)


def test_empty_batch_with_tiles():
    layer = _linear(True)
    y = layer(torch.randn(0, 13, requires_grad=True))
    assert y.shape == (0, 10)
    y.sum().backward()
    assert layer.out_scale.grad.abs().sum() == 0


# -- HWA remapping per tile ---------------------------------------------------------------------


@pytest.mark.parametrize("remap,columnwise", [("columnwise", True), ("layerwise", False)])
def test_remap_per_tile(remap, columnwise):
    """Each tile's stored weights reach max |W| = 1 per tile column (columnwise) or per tile
    (layerwise), the factor moves into that tile's scale, the function is unchanged."""
    cfg = _config(columnwise).replace(hwa=aimc.HWAConfig(remap=remap))
    torch.manual_seed(1)
    layer = AnalogLinear(13, 10, config=cfg)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(1, 13) * 3)  # tiles of different magnitude
    x = torch.randn(5, 13)
    with torch.no_grad():
        before = layer(x)
    w0 = layer.weight.detach().clone()
    aimc.post_step(nn.Sequential(layer))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    w = layer.weight.detach()
    ins, outs = split_sizes(13, 4), split_sizes(10, 4)
    start = 0
    for t, size in enumerate(ins):
        block, block0 = w[:, start : start + size], w0[:, start : start + size]
        if remap == "columnwise":
            torch.testing.assert_close(block.abs().amax(dim=1), torch.ones(10))
            torch.testing.assert_close(
                layer.effective_out_scale()[0, t].detach(), block0.abs().amax(dim=1)
            )
        else:
            for j, part in enumerate(block.split(outs, dim=0)):
                assert abs(float(part.abs().max()) - 1.0) < 1e-6
                want = float(block0.split(outs, dim=0)[j].abs().max())
                assert abs(float(layer.effective_out_scale().detach()[0, t, j]) - want) < 1e-6
        start += size
    # AIHWKIT's set_scales: the whole scale in the mapping scales, the learned one back to 1
    assert bool((layer.out_scale.detach() == 1).all())
    torch.testing.assert_close(layer.mapping_scale, layer.effective_out_scale().detach())


def test_remap_with_analog_bias_single_tile():
    cfg = _config(True, max_input_size=0, max_output_size=0, digital_bias=False)
    cfg = cfg.replace(hwa=aimc.HWAConfig(remap="columnwise"))
    torch.manual_seed(2)
    layer = AnalogLinear(6, 3, config=cfg)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([5.0, -0.01, 0.02]))  # the bias holds column 0's max
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = layer(x)
    aimc.post_step(nn.Sequential(layer))
    full = torch.cat([layer.weight.detach(), layer.bias.detach().view(3, 1)], dim=1)
    torch.testing.assert_close(full.abs().amax(dim=1), torch.ones(3))
    assert (
        abs(float(layer.bias.detach()[0]) - 1.0) < 1e-6
        and abs(float(layer.effective_out_scale().detach()[0, 0, 0]) - 5) < 1e-5
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)


def test_columnwise_remap_into_per_tile_scale_needs_equal_columns():
    cfg = _config(False).replace(hwa=aimc.HWAConfig(remap="columnwise"))
    layer = AnalogLinear(13, 10, config=cfg)
    with pytest.raises(ValueError, match="out_scaling_columnwise"):
        aimc.post_step(nn.Sequential(layer))


# -- to_digital ----------------------------------------------------------------------------------


@pytest.mark.parametrize("columnwise", [True, False])
@pytest.mark.parametrize(
    "kind", ["linear_13x10", "linear_1030x9", "grouped_conv", "analog_bias_one_tile"]
)
def test_to_digital_folds_per_tile_scales(kind, columnwise):
    """Each input tile's block of columns times that tile's scales: the digital twin computes
    what the noise-free analog layer did (uneven splits, groups, an analog bias)."""
    torch.manual_seed(3)
    cfg = _config(columnwise)
    if kind == "linear_13x10":
        digital, x = nn.Linear(13, 10), torch.randn(4, 13)
    elif kind == "linear_1030x9":  # 1030 at 512: 344 + 343 + 343
        cfg = _config(columnwise, max_input_size=512, max_output_size=512)
        digital, x = nn.Linear(1030, 9), torch.randn(4, 1030)
    elif kind == "grouped_conv":  # 5 * 3 = 15 inputs per group at 4: 4 + 4 + 4 + 3
        digital, x = nn.Conv1d(10, 6, 3, groups=2, padding=1), torch.randn(2, 10, 7)
    else:
        cfg = _config(columnwise, max_input_size=0, max_output_size=0, digital_bias=False)
        digital, x = nn.Linear(6, 5), torch.randn(4, 6)
    model = aimc.convert(nn.Sequential(digital), cfg)
    layer = model[0]
    assert layer.analog_bias() == (kind == "analog_bias_one_tile")
    assert layer.tile_layout().n_in == (
        1 if kind == "analog_bias_one_tile" else 3 + (kind != "linear_1030x9")
    )
    with torch.no_grad():
        layer.out_scale.uniform_(0.5, 2.0)
        analog = model(x)
    aimc.to_digital(model)
    assert type(model[0]) is type(digital)
    with torch.no_grad():
        torch.testing.assert_close(model(x), analog, atol=1e-5, rtol=1e-5)


# -- checkpoints ---------------------------------------------------------------------------------


def _old_forward(layer: nn.Module, x: Tensor, old: Tensor) -> Tensor:
    """The function of an earlier aimc layer: one scale per layer column (or one per layer)."""
    return (x @ layer.weight.detach().T) * old + layer.bias.detach()


@pytest.mark.parametrize("old_shape", ["per_column", "scalar"])
def test_old_per_column_checkpoint_broadcasts_to_every_tile(old_shape):
    layer = _linear(True, seed=5)
    state = layer.state_dict()
    old = torch.rand(10) + 0.5 if old_shape == "per_column" else torch.tensor([1.7])
    state["out_scale"] = old
    fresh = AnalogLinear(13, 10, config=_config(True))
    fresh.load_state_dict(state)
    assert fresh.out_scale.shape == (1, 4, 10)
    torch.testing.assert_close(fresh.out_scale.detach(), old.view(1, 1, -1).expand(1, 4, 10))
    x = torch.randn(3, 13)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), _old_forward(fresh, x, old), atol=1e-5, rtol=1e-5)


def test_old_scalar_checkpoint_loads_into_per_tile_scale():
    layer = _linear(False, seed=5)
    state = layer.state_dict()
    state["out_scale"] = torch.tensor([0.8])
    layer.load_state_dict(state)
    torch.testing.assert_close(layer.out_scale.detach(), torch.full((1, 4, 3), 0.8))


def test_old_grouped_conv_checkpoint():
    torch.manual_seed(6)
    conv = AnalogConv1d(10, 6, 3, groups=2, padding=1, config=_config(True))
    state = conv.state_dict()
    old = torch.rand(6) + 0.5  # (G * O,)
    state["out_scale"] = old
    conv.load_state_dict(state)
    torch.testing.assert_close(conv.out_scale.detach(), old.view(2, 1, 3).expand(2, 4, 3))


@pytest.mark.parametrize(
    "columnwise,bad", [(True, (7,)), (True, (1, 3, 10)), (False, (10,)), (False, (2, 2))]
)
def test_bad_out_scale_shape_is_named(columnwise, bad):
    model = aimc.convert(nn.Sequential(nn.Linear(13, 10)), _config(columnwise))
    state = model.state_dict()
    state["0.out_scale"] = torch.ones(bad)
    want = "(1, 4, 10)" if columnwise else "(1, 4, 3)"
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "AnalogLinear '0'" in msg and "out_scale" in msg
    assert str(tuple(bad)) in msg and want in msg


def test_resume_with_old_optimizer_state_is_named(tmp_path):
    """torch.optim does not check the shapes it loads: a run's checkpoint whose Adam moments
    of ``out_scale`` have the old per-column shape is refused when it is loaded."""
    from aimc.experiments.safeio import RunDirError, load_state

    layer = _linear(True)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.randn(3, 13)).sum().backward()
    opt.step()
    state = opt.state_dict()
    index = [i for i, p in enumerate(layer.parameters()) if p is layer.out_scale][0]
    load_state(torch.optim.Adam(layer.parameters(), lr=1e-3), state, tmp_path, "hint")  # fits
    state["state"][index]["exp_avg"] = torch.zeros(10)  # one moment per layer column
    with pytest.raises(RunDirError, match=rf"'exp_avg' of parameter {index} has shape \(10,\)"):
        load_state(torch.optim.Adam(layer.parameters(), lr=1e-3), state, tmp_path, "hint")


def _io(kind: str) -> aimc.IOConfig:
    base = presets.standard_hwa().io
    if kind == "8-bit":  # standard_hwa: bound 10 = 127 steps of its 8-bit ADC
        return base
    if kind == "9-bit, bound management":  # 255 steps: int16 levels, saturating rounds
        return presets.pcm_inference().io.replace(out_noise=0.1)
    if kind == "bound off the grid":  # 63.5 steps: not whole levels, kept as float32
        return base.replace(out_res=1 / 127.0, out_bound=10.0)
    return base.replace(out_res=0.0)  # no output quantization: float32


@pytest.mark.parametrize(
    "kind, dtype",
    [
        ("8-bit", torch.int8),
        ("9-bit, bound management", torch.int16),
        ("bound off the grid", torch.float32),
        ("unquantized", torch.float32),
    ],
)
@pytest.mark.parametrize("columnwise", [True, False])
def test_compact_tile_outputs_equal_the_per_tile_outputs(kind, dtype, columnwise):
    """The training forward of learned output scales keeps every input tile's output as the
    ADC's levels plus their rescale (``per_tile="compact"``); rebuilt, they are exactly the
    ``per_tile=True`` outputs (same seed), a NaN input vector included, in the narrowest type
    that holds the levels."""
    from aimc.mvm import _level_dtype

    io = _io(kind)
    assert _level_dtype(io) == dtype
    mapping = presets.standard_hwa().mapping.replace(
        max_input_size=24, max_output_size=16, weight_scaling_columnwise=columnwise
    )
    cfg = aimc.AnalogConfig(io=io, mapping=mapping)
    layer = AnalogLinear(60, 40, bias=False, config=cfg, seed=3).eval()
    x = torch.randn(1, 33, 60, generator=torch.Generator().manual_seed(4)) * 3
    x[0, 5, 30] = float("nan")
    outs = []
    for per_tile in (True, "compact"):
        layer.manual_seed(7)
        outs.append(aimc.nn.base._run_mvm(layer, x, None, None, per_tile))
    full, compact = outs
    assert compact.levels.dtype == dtype
    for t in range(full.shape[1]):
        torch.testing.assert_close(compact.tile(t), full[:, t], rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(full[:, 1, 5]).all()  # the tile that saw the NaN, for that vector
    # the learned scales' gradient and the scaled sum, computed without rebuilding the tiles
    gen = torch.Generator().manual_seed(5)
    grad = torch.randn(1, 33, 40, generator=gen)
    want = torch.stack([(full[:, t] * grad).sum(dim=1) for t in range(full.shape[1])], dim=1)
    got = compact.scale_grad(grad)
    assert torch.isnan(got[:, 1]).all() and not torch.isnan(got[:, [0, 2]]).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, equal_nan=True)
    alpha = torch.rand(1, full.shape[1], 40, generator=gen) + 0.5  # (G, ti, O)
    bias = torch.randn(1, 40, generator=gen)
    lo = layer.tile_layout()
    layer.manual_seed(7)
    tiles, y = aimc.nn.base._run_mvm(
        layer, x, bias, None, "compact", lo.pad_out(alpha, 2).reshape(lo.batch, -1)
    )
    torch.testing.assert_close(tiles.levels, compact.levels, rtol=0, atol=0, equal_nan=True)
    want_y = (full * alpha.unsqueeze(2)).sum(dim=1) + bias.unsqueeze(1)
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(y[:, 5]).all() and not torch.isnan(y[:, 4]).any()
