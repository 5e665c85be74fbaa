"""Edge cases of AIHWKIT's weight gradient (81c5635, ``g x clip(x) / (r * mapping_scale)``) found
by a review, each failing before its fix: a path where the factor was not applied (an eval-mode
forward with autograd under ``torch.compile``) and an all-zero column's infinite float16
gradient."""

import pytest
import torch
from conftest import float16_remapped_zero_row

import aimc
from aimc import presets
from aimc.nn import AnalogLinear

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _hwa_config(**mapping) -> aimc.AnalogConfig:
    """``standard_hwa()`` without a device model, noise-free IO."""
    cfg = presets.standard_hwa().replace(
        device=aimc.DeviceConfig(), io=aimc.IOConfig(is_perfect=True)
    )
    return cfg.replace(mapping=cfg.mapping.replace(**mapping)) if mapping else cfg


def _remapped_layer(r: float = 1.7) -> AnalogLinear:
    """A 3-tile layer (24 -> 8 x 3) with learned range and output scales after a post_step
    (clip + column-wise remap: mapping scales per tile column), out_scale not 1."""
    torch.manual_seed(0)
    layer = AnalogLinear(24, 5, config=_hwa_config(max_input_size=8, max_output_size=0), seed=1)
    layer.train()
    aimc.post_step(layer)
    with torch.no_grad():
        layer.input_range.fill_(r)
        layer.input_range_batches.fill_(10**6)
        gen = torch.Generator().manual_seed(11)
        layer.out_scale.copy_(torch.rand(layer.out_scale.shape, generator=gen) + 0.5)
    return layer


def test_compiled_eval_mode_weight_gradient_is_the_eager_ones():
    """An eval-mode forward with autograd under ``torch.compile`` (documented: it stays in the
    graph) takes ``analog_matmul``'s ``_AnalogMVM.apply(..., per_tile=True)`` branch and
    autograd's product with ``out_scale_columns()``: the weight gradient there is still
    autograd's ``alpha * m * g x clip(x)``, not the ``alpha * g x clip(x) / (r * m)`` that the eager
    eval forward (``_ScaledAnalogMVM``) and the training forwards now give.
    ``_AnalogMVM.forward`` stores ``ctx.w_factor`` for it, but the ``per_tile`` backward
    (``_per_tile_backward``) never applies it, and autograd multiplies by alpha * m on top.
    Measured (r 1.7, 3 input tiles, remapped): eager weight.grad[0, :4] = [-1.61, -15.92, 2.35,
    -0.60], compiled [-0.050, -0.496, 0.073, -0.019] (max |diff| 32.9 of max |grad| 33.8);
    the output, out_scale and input_range gradients agree."""
    r = 1.7
    x = torch.randn(9, 24, generator=torch.Generator().manual_seed(2)) * 2
    up = torch.randn(9, 5, generator=torch.Generator().manual_seed(3))
    grads = []
    for compiled in (False, True):
        layer = _remapped_layer(r).eval()
        f = torch.compile(layer, backend="eager") if compiled else layer
        f(x).backward(up)
        grads.append(layer.weight.grad.clone())
    # the oracle: alpha * g x clip(x) / (r * m), each input tile's columns by their own learned
    # and mapping scales
    m = layer.mapping_scale[0].double()  # (ti, O)
    a = layer.out_scale.detach()[0].double()
    gw = up.double().T @ x.double().clamp(-r, r)
    want = torch.cat(
        [gw[:, 8 * t : 8 * t + 8] * (a[t] / (r * m[t]))[:, None] for t in range(3)], dim=1
    )
    torch.testing.assert_close(grads[0].double(), want, rtol=1e-5, atol=1e-5)  # eager: right
    torch.testing.assert_close(grads[1].double(), want, rtol=1e-5, atol=1e-5)  # compiled


def test_float16_remapped_all_zero_column_weight_gradient_is_finite():
    """A float16 layer with an all-zero output row (a pruned or zero-initialised unit):
    ``post_step``'s remap keeps it finite (its mapping scale 1e-12, the clamp of a zero column;
    ``tests/test_hwa_edge_cases.py`` pins that), but the new weight gradient divides by that
    mapping scale: ``weight_grad_factor`` = 1 / (r * 1e-12) = 5e11 at r 2, and the float32
    gradient ~1e11 cast to the float16 weight's gradient is +-inf for the whole row (a mapping
    scale buffer in float16 itself, the model converted first, is 0 and gives inf at once).
    Before 81c5635 the row's gradient was autograd's alpha * m * g x x = 0 (finite); one SGD
    step now makes the weights inf and the next forward refuses the layer."""
    model = float16_remapped_zero_row(_hwa_config())
    layer = model[0]
    with torch.no_grad():
        layer.input_range.fill_(2.0)
        layer.input_range_batches.fill_(10**6)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2)).half()
    model(x).float().sum().backward()
    g = layer.weight.grad
    assert torch.isfinite(g).all(), (
        f"{int((~torch.isfinite(g)).sum())} non-finite of {g.numel()}: {g[1]}"
    )
