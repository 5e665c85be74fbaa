"""Review of the learned / static input range paths (2026-12-06): each test failed before its
fix because of a bug (see its docstring for what was wrong, the reference behaviour and the
measured numbers)."""

from __future__ import annotations

import pytest
import torch

import aimc
from aimc import calibrate_input_ranges, convert, presets
from aimc.config import WeightRemap

pytestmark = pytest.mark.usefixtures("at_most_two_threads")


def _split_configs():
    cfg = presets.analog_foundation()
    per_tile = cfg.replace(
        mapping=cfg.mapping.replace(max_output_size=4, out_scaling_columnwise=False)
    )
    return {"two_input_tiles": (cfg, 600), "per_tile_scale_two_output_tiles": (per_tile, 16)}


@pytest.mark.parametrize("case", list(_split_configs()))
def test_calibrate_input_ranges_handles_a_layer_split_over_tiles(case):
    """``calibrate_input_ranges`` crashes on every layer whose learned output scale has more
    than one value per output column: a layer with more inputs than
    ``mapping.max_input_size`` (512 in ``analog_foundation``, ``standard_hwa``, ``bert_squad``),
    or a per-tile scale (``out_scaling_columnwise=False``) with an output split.

    ``calibrate._digital_matmul`` multiplies the output by ``out_scale.view(G, 1, -1)``, but
    the learned scale is ``(G, ti, O)`` column-wise (one per *input tile*, as AIHWKIT has one
    ``out_scaling_alpha`` per tile module) or ``(G, ti, to)`` per tile. Measured:
    ``RuntimeError: The size of tensor a (8) must match the size of tensor b (16)`` (600
    inputs, 2 input tiles) and ``... b (2)`` (2 output tiles). The digital function that
    ``analog_matmul`` computes is ``sum_t alpha_t x_t W_t^T + b`` with each column's own tile
    scale. Consequence: ``aimc lm-drift`` with its default ``analog_foundation`` config fails
    on any real LM (GPT-2's MLP ``c_proj`` has 3072 inputs; a GPT-2 with ``n_embd=192``:
    "size of tensor a (192) must match ... b (384)"). Fix: calibrate.py ``_digital_matmul``,
    scale each weight by its tile's scale (``layer.tile_layout().per_weight(
    layer.out_scale_columns())``) before the matmul.
    """
    cfg, k = _split_configs()[case]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(k, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model = convert(net, cfg, seed=0)
    first = model[0]
    lo = first.tile_layout()
    assert lo.n_in * lo.n_out > 1
    with torch.no_grad():  # e.g. after training / remapping: each tile has its own scale
        first.out_scale.copy_(
            torch.rand(first.out_scale.shape, generator=torch.Generator().manual_seed(2)) + 0.5
        )
    x = torch.randn(16, k, generator=torch.Generator().manual_seed(1))
    ranges = calibrate_input_ranges(model, [x])
    w, b = net[0].weight.detach(), net[0].bias.detach()
    scale = lo.per_weight(first.out_scale_columns().detach())[0]  # (O, K): each weight's tile
    h = torch.relu(x @ (w * scale).T + b)
    assert ranges["0"] == pytest.approx(float(x.abs().max()), rel=1e-6)
    assert ranges["2"] == pytest.approx(float(h.abs().max()), rel=1e-5)


def _shared_layer(learn_out_scaling: bool):
    """A ``standard_hwa`` layer (noise-free, no ADC bound, no device model), range not yet
    initialised from data."""
    cfg = presets.standard_hwa().replace(device=aimc.DeviceConfig())
    cfg = cfg.replace(io=cfg.io.replace(is_perfect=True, out_bound=0.0))
    if not learn_out_scaling:
        cfg = cfg.replace(
            mapping=cfg.mapping.replace(learn_out_scaling=False),
            hwa=cfg.hwa.replace(remap=WeightRemap.NONE),
        )
    torch.manual_seed(1)
    digital = torch.nn.Linear(16, 4)
    return aimc.nn.AnalogLinear.from_digital(digital, cfg, seed=0), digital


def _grad_of_two_calls(learn_out_scaling: bool):
    """The weight gradient of one layer applied to ``x1`` then ``x2`` during the range's
    initialisation from data, and the gradient of the function its forwards computed."""
    layer, digital = _shared_layer(learn_out_scaling)
    layer.train()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(64, 16, generator=g)
    x2 = torch.randn(64, 16, generator=g) * 3
    gy1, gy2 = torch.randn(64, 4, generator=g), torch.randn(64, 4, generator=g)
    y1 = layer(x1)
    r1 = float(layer.input_range.detach())
    y2 = layer(x2)
    r2 = float(layer.input_range.detach())
    assert r2 > 1.5 * r1  # the second call moved the range
    w, b = digital.weight.detach(), digital.bias.detach()
    torch.testing.assert_close(y1.detach(), x1.clamp(-r1, r1) @ w.T + b, rtol=1e-5, atol=1e-5)
    ((y1 * gy1).sum() + (y2 * gy2).sum()).backward()
    # (AIHWKIT's weight gradient, aimc's since 2026-12-06: divided by each call's range)
    want = gy1.T @ x1.clamp(-r1, r1) / r1 + gy2.T @ x2.clamp(-r2, r2) / r2
    return layer.weight.grad, want


def test_weight_grad_of_a_layer_applied_twice_uses_each_calls_own_range():
    """A layer applied twice before one backward (weight sharing: ALBERT, a Siamese net) while
    its range is still initialised from data: ``_ScaledAnalogMVM`` (the own-clip training path
    of every config with learned output scales, i.e. ``standard_hwa``) saves the range
    *parameter* and clips the saved input again in the backward with its value *at backward
    time* (``clipped_scratch(x_in, r)``), which the second call's ``update_input_range`` moved
    through ``.data`` (no version bump, so autograd does not notice). The first call's weight
    gradient is then ``g1^T clip(x1, r2)`` instead of ``g1^T clip(x1, r1)``, the gradient of
    the function its forward computed. The clip_input path (``learn_out_scaling=False``) keeps
    a per-call code and is right (checked first, below); ``_ScaledAnalogMVM``'s own comment
    promises "the values and gradients of clip_input followed by this function". Measured
    (noise-free, no ADC bound): r1 = 3.084, r2 = 6.090; weight-gradient error 1.19 (max |grad|
    60.4, 28 of 64 entries off) with learned output scales, 0.0 without. The range gradient's
    outside set is taken with r2 as well. (AIHWKIT's ``pre_update`` also re-clips with the
    current range; aimc's weight gradient, AIHWKIT's since 2026-12-06, divides by each call's
    own range.)
    Fix: base.py ``_ScaledAnalogMVM.forward`` saves the forward's range value (a 1-element
    clone) for the backward's ``clipped_scratch`` / ``range_grad`` / ``outside_range_grad``.
    """
    got, want = _grad_of_two_calls(learn_out_scaling=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # clip_input path: right
    got, want = _grad_of_two_calls(learn_out_scaling=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_training_step_after_an_inference_mode_eval_does_not_crash():
    """A ``standard_hwa`` layer (learned range and output scales) that ran a forward under
    ``torch.inference_mode()`` (a validation loop: PyTorch Lightning's default, or
    ``aimc``-style ``with torch.inference_mode(): evaluate(model)``) and then trains, with its
    weights unchanged in between, crashes in the training forward: ``RuntimeError: Inference
    tensors cannot be saved for backward``. The tile cache built under inference mode
    (``tile_weights``: its key, ``ChipMixin._weight_key``, is the weight's pointer and version,
    unchanged) is reused by the training forward, and ``_ScaledAnalogMVM`` saves the
    per-column scales derived from those inference tensors (``out.col_scale``) for the
    backward. The digital twin (``nn.Linear``) trains fine after the same eval. The same
    happens in eval mode and in train mode under inference mode, and for every config with
    learned output scales (``bert_squad`` too), at HEAD and in the working tree. Fix: include
    ``torch.is_inference_mode_enabled()`` in the tile-cache key (base.py ``tile_weights``), or
    build the cached tiles with ``torch.inference_mode(False)`` as ``program_chip`` does.
    """
    cfg = presets.standard_hwa().replace(device=aimc.DeviceConfig())
    torch.manual_seed(0)
    digital = torch.nn.Linear(8, 4)
    layer = aimc.nn.AnalogLinear.from_digital(torch.nn.Linear(8, 4), cfg, seed=0)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    for module in (digital, layer):
        module.eval()
        with torch.inference_mode():
            module(x)
        module.train()
        module(x).sum().backward()
    assert layer.weight.grad is not None and layer.input_range.grad is not None


def test_calibration_leaves_out_batches_without_spread():
    """``method="std"`` (and ``"quantile"``) average the batches' estimates; an all-zero batch
    (padding, say) gave the estimate 0 and pulled the range down (two batches, one of zeros:
    half the range), where the HWA initialisation from data skips such a batch."""
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Linear(16, 4)), presets.analog_foundation())
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    for method in ("std", "quantile"):
        alone = calibrate_input_ranges(model, [x], method=method)
        with_zeros = calibrate_input_ranges(model, [x, torch.zeros(32, 16)], method=method)
        assert with_zeros == pytest.approx(alone)
    with pytest.raises(ValueError, match="no finite, non-zero input"):
        calibrate_input_ranges(model, [torch.zeros(32, 16)], method="std")
