"""HWA training edge cases: low-precision weights in the post-step, a learned input range that
crossed zero, a layer applied twice while its range initialises, an all-zero batch during the
initialisation, the padding cells of an uneven split, and grouped channels_last convolutions
against float64 ``F.conv2d``. Each of the first five failed before its fix (2026-12-06 review).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import float16_remapped_zero_row

import aimc
from aimc import presets
from aimc.nn import AnalogConv2d, AnalogLinear


def _hwa_config(**mapping) -> aimc.AnalogConfig:
    """``standard_hwa()`` without a device model (the training forward does not use it)."""
    cfg = presets.standard_hwa().replace(device=aimc.DeviceConfig())
    return cfg.replace(mapping=cfg.mapping.replace(**mapping)) if mapping else cfg


# -- post_step of a float16 model -------------------------------------------------------------


def test_post_step_remap_of_a_float16_layer_keeps_an_all_zero_column_finite():
    """An analog layer accepts float16 weights (``WEIGHT_DTYPES``), but ``post_step``'s
    ``columnwise`` remap of a float16 weight turns an all-zero output row (a pruned or
    zero-initialised unit) into NaN: ``hwa._remap`` clamps the column maxima with
    ``clamp_min(1e-12)`` in the weight's dtype, where 1e-12 underflows to 0, and divides
    0 / 0. The next training forward then refuses the layer ("weight has 8 non-finite
    values"), although nothing diverged. float32 / bfloat16 / float64 keep the row at 0."""
    model = float16_remapped_zero_row(_hwa_config())
    w = model[0].weight
    assert torch.isfinite(w).all(), f"{int((~torch.isfinite(w)).sum())} non-finite weights"
    assert (w[1] == 0).all()
    y = model(torch.randn(3, 8).half())  # raised: non-finite weights
    assert torch.isfinite(y).all()


# -- a learned input range that crossed zero --------------------------------------------------


def test_an_input_range_learned_through_zero_is_refused_naming_the_layer():
    """The learned input range is an ordinary Parameter: with Adam and a stretch of zero inputs
    only its decay pushes it, by about ``lr`` per step, and it crosses zero. Used as it is,
    ``clamp(x, -r, r)`` of a negative range maps every input to ``|r|``: an output that no
    longer depends on the input (AIHWKIT clips at ``|r|`` but divides by the signed ``r``,
    negating the input). The forward refuses it, naming the layer, the field and the value;
    likewise an infinite, NaN or zero range, in eval too."""
    cfg = _hwa_config()
    torch.manual_seed(0)
    layer = AnalogLinear(8, 3, config=cfg, seed=1).train()
    layer.analog_name = "enc.fc"
    with torch.no_grad():
        layer.input_range.fill_(1.0)
        layer.input_range_batches.fill_(cfg.hwa.input_range_init_batches)  # calibrated
    opt = torch.optim.Adam([layer.input_range], lr=0.05)
    zeros = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=r"'enc.fc' input_range is -[0-9.e-]+; allowed: positive"):
        for _ in range(40):
            opt.zero_grad()
            layer(zeros).sum().backward()
            opt.step()
    assert float(layer.input_range.detach()) < 0
    layer.eval()
    for bad in (0.0, float("inf"), float("nan"), 1e-40):
        with torch.no_grad():
            layer.input_range.fill_(bad)
        with pytest.raises(ValueError, match="input_range is"), torch.no_grad():
            layer(torch.randn(2, 8))


def test_an_all_zero_batch_does_not_count_towards_the_range_initialisation():
    """As AIHWKIT: a batch without spread (std 0) is skipped during the range's initialisation
    from data, not counted (it had pulled the running mean towards ``init_std * 1e-6``)."""
    cfg = _hwa_config()
    layer = AnalogLinear(8, 3, config=cfg, seed=1).train()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    layer(torch.zeros(32, 8))
    assert int(layer.input_range_batches) == 0
    layer(x)
    assert int(layer.input_range_batches) == 1
    expected = cfg.hwa.input_range_init_std * float(x.std())
    assert abs(float(layer.input_range.detach()) - expected) < 1e-4 * expected


# -- a layer applied twice before the backward --------------------------------------------------


def test_a_layer_applied_twice_in_one_step_trains_while_its_range_initialises():
    """A module applied twice in one forward (weight sharing: a recurrent cell, a siamese
    encoder, ``f(f(x))``) is an ordinary PyTorch pattern. During the first
    ``input_range_init_batches`` training batches each forward updates the learned range in
    place (``hwa.update_input_range``: ``input_range.mul_().add_()``), which bumps the version
    of the range the first call saved for its backward (``_ScaledAnalogMVM`` /
    ``_InputRange``), so the backward raises autograd's "modified by an inplace operation"
    (naming no layer). AIHWKIT writes the initialisation through ``.data``."""
    torch.manual_seed(0)
    layer = AnalogLinear(8, 8, config=_hwa_config(), seed=1).train()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    y = layer(layer(x))
    y.square().sum().backward()  # raised: "modified by an inplace operation"
    assert layer.input_range.grad is not None and torch.isfinite(layer.input_range.grad).all()


# -- the weight modifier and the tiles' padding -------------------------------------------------


def test_the_weight_modifier_leaves_the_tile_padding_out_of_the_outputs(monkeypatch):
    """An uneven split pads each input part with zero rows "within its own tile (zero
    rows/columns change neither the MVM nor any of its noise terms)" (aimc.functional). The
    HWA weight modifier (``hwa.modify_weights``, called by ``active_tiles``) draws its noise
    over the whole padded tile matrix, so the padding gets weights; with input noise
    (``io.inp_noise``, drawn on every DAC row, padded ones included) those phantom rows add
    to the real outputs. Here 13 inputs at 4 (4 + 3 + 3 + 3) leave three phantom rows: with
    the modifier's padding zeroed (the same draws) 49 of 640 outputs move by up to 0.13 (ADC
    levels flipped; outputs up to 2.7). AIHWKIT's tiles have no padding."""
    from aimc.nn import base

    cfg = aimc.AnalogConfig(
        io=aimc.IOConfig(inp_noise=0.05),
        mapping=aimc.MappingConfig(max_input_size=4, max_output_size=4),
        hwa=aimc.HWAConfig(modifier="add_normal", modifier_std=0.1),
    )
    original = base.modify_weights

    def padding_zeroed(w, layout, hwa, gen):
        out = original(w, layout, hwa, gen)
        lo = layout
        valid = lo.out_valid(w.device).view(-1, 1) & lo.in_valid(w.device).view(
            lo.n_in, lo.rows
        ).unsqueeze(1)
        return out * valid.repeat(lo.groups, 1, 1)

    x = torch.randn(64, 13, generator=torch.Generator().manual_seed(1))
    outputs = []
    for zeroed in (False, True):
        if zeroed:
            monkeypatch.setattr(base, "modify_weights", padding_zeroed)
        torch.manual_seed(0)
        layer = AnalogLinear(13, 10, config=cfg, seed=1).train()
        assert layer.tile_layout().padded_in == 16
        outputs.append(layer(x).detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize("when", ["modifier", "programmed", "drifted", "chip modifier"])
def test_the_padding_cells_of_an_uneven_split_stay_zero(when):
    """The tile matrices of an uneven split (13 inputs x 10 outputs at 4 x 4: 4 + 3 + 3 + 3 by
    4 + 3 + 3) hold padding cells, which a crossbar of AIHWKIT's does not have: they stay zero
    whatever the HWA modifier, the programming noise and the drift draw there (a padded input
    row gets input noise; a padded column's output joins bound management's test)."""
    from aimc.compensation import valid_mask

    cfg = aimc.AnalogConfig(
        io=aimc.IOConfig(inp_noise=0.05),
        mapping=aimc.MappingConfig(max_input_size=4, max_output_size=4),
        hwa=aimc.HWAConfig(modifier="add_normal", modifier_std=0.1),
    )
    if when != "modifier":
        pcm = presets.pcm_inference()
        cfg = cfg.replace(device=pcm.device)
    if when == "chip modifier":
        cfg = cfg.replace(hwa=aimc.HWAConfig(modifier="chip", modifier_t_min=10.0))
    torch.manual_seed(0)
    layer = AnalogLinear(13, 10, config=cfg, seed=1)
    lo = layer.tile_layout()
    assert lo.has_padding and lo.padded_in == 16 and lo.padded_out == 12
    if when in ("modifier", "chip modifier"):
        layer.train()
        tiles = layer.active_tiles().w
    else:
        aimc.program(layer, seed=2)
        if when == "drifted":
            aimc.drift(layer, 3600.0, seed=3)
        tiles = layer.eval().chip_tiles().w
    padding = ~valid_mask(lo, tiles.device).transpose(1, 2)
    assert padding.sum() == 16 * 12 - 13 * 10
    assert (tiles[padding] == 0).all()
    assert (tiles[~padding] != 0).float().mean() > 0.9


# -- a gap of the suite: grouped channels_last convolutions against float64 -------------------


def test_grouped_channels_last_conv_training_gradients_equal_float64_conv():
    """Perfect IO, learned input range (values beyond it) and output scales, groups=2, an
    uneven input split (36 -> 9 x 4), channels_last input and weight: the output and the
    gradients of the input, weight, bias, range and output scales equal float64
    ``F.conv2d`` on the clipped input (the output scales equal across input tiles, so the
    reference is one per output channel and their gradients sum over the tiles; the weight's
    as AIHWKIT's, without the output scale and divided by the range), with
    AIHWKIT's input-range learning: the input gradient straight through the clip, the range's
    from the widening part of the clipped inputs' gradient."""
    cfg = _hwa_config(max_input_size=10).replace(io=aimc.IOConfig(is_perfect=True))
    cfg = cfg.replace(hwa=cfg.hwa.replace(input_range_decay=0.01))
    torch.manual_seed(0)
    layer = AnalogConv2d(8, 6, 3, padding=2, dilation=2, groups=2, config=cfg, seed=1).train()
    a = torch.rand(6, generator=torch.Generator().manual_seed(5)) + 0.5
    with torch.no_grad():
        layer.input_range.fill_(1.1)
        layer.input_range_batches.fill_(10**6)
        layer.out_scale.copy_(a.view(2, 1, 3).expand_as(layer.out_scale))
    layer = layer.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(6)) * 1.5
    x = x.to(memory_format=torch.channels_last).requires_grad_(True)
    y = layer(x)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    y.backward(up)

    xr = x.detach().double().requires_grad_(True)
    wr = layer.weight.detach().double().requires_grad_(True)
    br = layer.bias.detach().double().requires_grad_(True)
    rr = layer.input_range.detach().double().requires_grad_(True)
    ar = a.double().requires_grad_(True)
    # the clip's value, its input gradient straight through (AIHWKIT's input-range learning)
    xc = xr + (torch.clamp(xr, -rr.detach(), rr.detach()) - xr).detach()
    ref = F.conv2d(xc, wr * ar.view(-1, 1, 1, 1), br, padding=2, dilation=2, groups=2)
    ref.backward(up.double())
    # the range's gradient: the widening part of the clipped inputs' gradient, times r, plus
    # the decay while more than 95 % of the inputs are inside; the inputs are the tile inputs,
    # the padded input's patches (as AIHWKIT's unfolded convolution on CPU)
    from aimc.nn.conv import im2col

    cols = im2col(F.pad(xr.detach(), (2, 2, 2, 2)), (3, 3), (1, 1), (2, 2))[0]  # (N, 72)
    upm = up.double().permute(0, 2, 3, 1).reshape(cols.shape[0], 6)
    wa = (wr * ar.view(-1, 1, 1, 1)).detach().reshape(2, 3, 36)
    gx = torch.cat([upm[:, 3 * i : 3 * i + 3] @ wa[i] for i in range(2)], dim=1)
    rv = rr.detach()
    s = (gx * (cols >= rv)).clamp(max=0).sum() - (gx * (cols <= -rv)).clamp(min=0).sum()
    inside = float((cols.abs() < rv).double().mean())
    assert 0.2 < inside < 0.95  # clipped inputs of both signs
    r_grad = rv * s + 0.01 * rv * (inside > 0.95)
    tol = {"rtol": 1e-5, "atol": 2e-5}
    torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, **tol)
    # the weight's: AIHWKIT's, autograd's divided by the range (Layer.weight_grad_factor,
    # alpha / (r * m); the mapping scales are 1 before a remap)
    want_w = wr.grad / rv
    torch.testing.assert_close(layer.weight.grad.double(), want_w, **tol)
    torch.testing.assert_close(layer.bias.grad.double(), br.grad, **tol)
    torch.testing.assert_close(layer.input_range.grad.double(), r_grad.view(1), **tol)
    torch.testing.assert_close(layer.out_scale.grad.sum(dim=1).reshape(-1).double(), ar.grad, **tol)


# -- backward inside an autocast region -------------------------------------------------------


@pytest.mark.parametrize("onednn", ["1", "0"], ids=["oneDNN GEMMs", "torch.bmm"])
@pytest.mark.parametrize(
    "preset", ["standard_hwa", "pcm_inference"], ids=["learned output scales", "plain"]
)
def test_backward_called_inside_autocast_gives_the_float32_gradients(preset, onednn, monkeypatch):
    """``loss.backward()`` inside ``torch.autocast('cpu', bfloat16)`` (a common pattern) runs
    the analog layers' custom backward with autocast off: it raised in the output-bound mask's
    sparse product (no bfloat16 CPU kernel) under ``standard_hwa``, and would otherwise compute
    the gradients in bfloat16 (``torch.bmm`` follows autocast; aimc's oneDNN products do not).
    The gradients equal those of the backward called outside."""
    monkeypatch.setenv("AIMC_ONEDNN_GEMM", onednn)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.GELU(), torch.nn.Linear(80, 24))
    cfg = getattr(presets, preset)().replace(device=aimc.DeviceConfig())
    model = aimc.convert(net, cfg, seed=0).train()
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 3
    grads = []
    for inside in (False, True):
        model.zero_grad()
        aimc.manual_seed(model, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for outside, inside in zip(*grads, strict=True):
        assert inside.dtype == torch.float32
        assert torch.equal(outside, inside)
