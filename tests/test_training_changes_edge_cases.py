"""Edge cases of the 2026-12-07 training-path changes: the output-bound mask kept as bits, the
``alpha / (r m)`` weight gradient, the ``set_scale`` buffer, ``exact_shortcut`` and the
one-weight tile's std (a helper's review; the first three tests failed before their fixes).

* ``test_ideal_preset_input_gradient_equals_the_digital_model``: ``presets.ideal()`` equals the
  digital model in training too (``hwa.output_bound_mask="none"``: with AIHWKIT's mask, which
  its perfect tiles apply, ``exact_shortcut`` sent its layers through the analog path and the
  input gradient of every output beyond 11.988 was dropped).
* ``test_ideal_preset_float64_training_forward_is_the_digital_op``: so its float64 training
  forward is the digital op, as under ``no_grad``.
* ``test_first_post_step_uses_the_scale_of_the_weight_being_trained``: ``set_scale`` is taken
  from the weight the layer trains (first training forward or post-step), not at construction:
  a weight written after it (``weight.copy_``, ``nn.init``) was clipped at the construction
  weight's column maxima (``standard_hwa``: 4.2 -> 0.18).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import aimc
from aimc import _boundmask, presets
from aimc.hwa import _tile_std
from aimc.nn import AnalogLinear


def _noise_free_hwa(**mapping):
    c = presets.standard_hwa()
    c = c.replace(io=c.io.replace(out_noise=0.0, w_noise=0.0), device=aimc.DeviceConfig())
    if mapping.get("digital_bias") is False:
        c = c.replace(hwa=c.hwa.replace(learn_input_range=False))
    if mapping:
        c = c.replace(mapping=c.mapping.replace(**mapping))
    return c


# --------------------------------------------------------------------------------------------
# findings (fail)
# --------------------------------------------------------------------------------------------


def test_ideal_preset_input_gradient_equals_the_digital_model():
    """docs/configuration.md and presets.ideal(): "perfect IO, no tiling: equals the digital
    model". A two-layer model whose second layer's outputs exceed 12: before b82b6c0 both layers
    took the is_exact() shortcut (F.linear) and every gradient was the digital model's. Now the
    second layer's input needs a gradient, exact_shortcut() declines, and the output-bound mask
    drops the gradient of every output beyond 0.999 * 12 (out_bound stays 12 under
    is_perfect=True). Seen: input gradient off by 9.7 (of 9.7), first layer's weight gradient
    off by 83."""
    torch.manual_seed(0)
    dig = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        dig[2].weight.mul_(40)
    ana = aimc.convert(copy.deepcopy(dig), presets.ideal())
    x = torch.randn(5, 16)
    xa, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yd = ana(xa), dig(xd)
    assert yd.abs().max() > 12  # outputs past the (perfect-IO) ADC bound
    torch.testing.assert_close(ya, yd, rtol=1e-5, atol=1e-5)  # the forward is the digital one
    ya.sum().backward()
    yd.sum().backward()
    torch.testing.assert_close(xa.grad, xd.grad, rtol=1e-5, atol=1e-5)
    for (name, pa), pd in zip(ana.named_parameters(), dig.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pd.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_ideal_preset_float64_training_forward_is_the_digital_op():
    """A float64 ideal() layer: its forward under no_grad is F.linear in float64 (exact), but
    with an input that needs a gradient exact_shortcut() sends it through the analog path,
    which computes in float32: 2.4e-7 off the float64 digital op (0 before b82b6c0). The same
    input and weights give two different outputs depending on x.requires_grad."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(50, 20).double()
    model = aimc.convert(torch.nn.Sequential(lin), presets.ideal())
    x = torch.randn(8, 50, dtype=torch.float64)
    ref = F.linear(x, lin.weight, lin.bias).detach()
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    y = model(x.clone().requires_grad_(True))
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.detach(), ref, rtol=1e-12, atol=1e-12)


def test_first_post_step_uses_the_scale_of_the_weight_being_trained():
    """set_scale is computed in _init_out_scale at construction (and on a non-strict digital
    load), never again. AIHWKIT's flow -- build the layer, then set its weights -- done as
    aimc's layer allows (weight.copy_ under no_grad; likewise nn.init.* or reset_parameters)
    keeps the construction-time scale (Kaiming init: column maxima ~0.18). The first post_step
    divides the new weight by it and standard_hwa's fixed clip at 1.0 then cuts every column to
    0.18 in effective terms: effective column maxima 4.23, 6.82, 5.13 -> 0.181, 0.177, 0.181.
    Right: AIHWKIT's set_weights normalises by the weight it is given (nothing to clip, as for
    the same weight through aimc.convert, checked below); even the pre-b82b6c0 code cut to 1.0,
    not 0.18."""
    torch.manual_seed(0)
    w = torch.randn(6, 30) * 2.0
    layer = AnalogLinear(30, 6, config=_noise_free_hwa())
    with torch.no_grad():
        layer.weight.copy_(w)
    aimc.post_step(layer)
    eff = (layer.weight * layer.effective_out_scale().view(-1, 1)).detach()
    # the same weight through aimc.convert: the layer unchanged by the first post_step
    dig = torch.nn.Linear(30, 6)
    with torch.no_grad():
        dig.weight.copy_(w)
    conv = aimc.convert(torch.nn.Sequential(dig), _noise_free_hwa())[0]
    aimc.post_step(conv)
    eff_conv = (conv.weight * conv.effective_out_scale().view(-1, 1)).detach()
    torch.testing.assert_close(eff_conv, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eff, w, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# coverage (pass)
# --------------------------------------------------------------------------------------------


def _first_post_step_case(name):
    x2 = torch.randn(2, 6, 9, 9)
    cases = {
        "linear": (lambda: torch.nn.Linear(30, 10), torch.randn(4, 30), {}),
        "linear-split": (
            lambda: torch.nn.Linear(30, 10),
            torch.randn(4, 30),
            dict(max_input_size=7, max_output_size=4),
        ),
        "analog-bias": (
            lambda: torch.nn.Linear(30, 10),
            torch.randn(4, 30),
            dict(digital_bias=False, max_input_size=64, max_output_size=64),
        ),
        "conv2d-groups-reflect": (
            lambda: torch.nn.Conv2d(6, 8, 3, groups=2, padding=1, padding_mode="reflect"),
            x2,
            dict(max_input_size=10),
        ),
        "conv3d": (lambda: torch.nn.Conv3d(2, 4, 2), torch.randn(2, 2, 4, 4, 4), {}),
    }
    return cases[name]


@pytest.mark.parametrize(
    "name", ["linear", "linear-split", "analog-bias", "conv2d-groups-reflect", "conv3d"]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_first_post_step_keeps_the_function_and_the_digital_twin(name, channels_last):
    """(pass) set_scale moved into mapping_scale at the first post_step (weights x5, nothing
    clipped): the noise-free eval forward and to_digital's twin unchanged."""
    if channels_last and not name.startswith("conv2d"):
        pytest.skip("channels_last: 4-d weights only")
    mk, x, mapping = _first_post_step_case(name)
    torch.manual_seed(1)
    m = torch.nn.Sequential(mk())
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(5)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    aimc.convert(m, _noise_free_hwa(**mapping)).eval()
    assert bool((m[0].set_scale != 1).any())
    twin0 = aimc.to_digital(copy.deepcopy(m))
    with torch.no_grad():
        y0 = m(x)
    aimc.post_step(m)
    assert bool((m[0].set_scale == 1).all())
    with torch.no_grad():
        y1 = m(x)
        twin1 = aimc.to_digital(copy.deepcopy(m))
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)
        torch.testing.assert_close(twin1(x), twin0(x), rtol=1e-5, atol=1e-5)


def test_bits_and_tensor_code_agree_on_a_grouped_channels_last_conv(monkeypatch):
    """(pass) pcm_inference training of a grouped, circular-padded Conv2d with uneven input
    and output splits (padded outputs) whose outputs reach the bound: the input gradient from
    the kernel's bits equals the tensor code's bool mask (float rounding), and the mask acts."""
    if not _boundmask.BOUND_MASK.usable():
        pytest.skip("no bound-mask kernel here")
    cfg = presets.pcm_inference()
    cfg = cfg.replace(
        io=cfg.io.replace(out_noise=0.0, w_noise=0.0),
        device=aimc.DeviceConfig(),
        mapping=cfg.mapping.replace(max_input_size=10, max_output_size=8),
    )
    grads = []
    for env, c in (
        ("1", cfg),
        ("0", cfg),
        ("1", cfg.replace(hwa=cfg.hwa.replace(output_bound_mask="none"))),
    ):
        monkeypatch.setenv("AIMC_MASK_NATIVE", env)
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Conv2d(6, 70, 3, groups=2, padding=1, padding_mode="circular")
        )
        with torch.no_grad():
            for p in m.parameters():
                p.abs_().mul_(20)
        m = m.to(memory_format=torch.channels_last)
        aimc.convert(m, c, seed=1).train()
        x = torch.rand(2, 6, 7, 7, generator=torch.Generator().manual_seed(3)) + 0.5
        x.requires_grad_(True)
        m(x).square().mean().backward()
        grads.append(x.grad)
    scale = float(grads[1].abs().max())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5 * scale)
    assert float((grads[0] - grads[2]).abs().max()) > 1.0  # the mask changed the gradient


@pytest.mark.parametrize("shape", [(0, 16), (0, 3, 5, 5)])
def test_empty_batch_training_step_with_the_mask(shape):
    """(pass) an empty batch through the mask-keeping forward (no bits kept) and its backward."""
    mod = torch.nn.Linear(16, 8) if len(shape) == 2 else torch.nn.Conv2d(3, 8, 3)
    m = aimc.convert(torch.nn.Sequential(mod), presets.pcm_inference()).train()
    x = torch.zeros(*shape, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.shape == x.shape
    assert float(m[0].weight.grad.abs().sum()) == 0.0


def test_compiled_eval_weight_gradient_with_learned_scales_not_one():
    """(pass) the per-tile eval-mode path under torch.compile (w_factor = f / alpha) and the
    eager _ScaledAnalogMVM give the same alpha / (r m) weight gradient with out_scale and
    mapping_scale away from 1 and two input tiles."""
    c = _noise_free_hwa(max_input_size=12)
    c = c.replace(io=c.io.replace(inp_res=-1, out_res=-1))
    torch.manual_seed(0)
    m = aimc.convert(torch.nn.Sequential(torch.nn.Linear(30, 6)), c)
    aimc.post_step(m)
    with torch.no_grad():
        m[0].out_scale.copy_(torch.rand_like(m[0].out_scale) + 0.5)
        m[0].mapping_scale.mul_(torch.rand_like(m[0].mapping_scale) + 0.5)
    m.eval()
    x = torch.randn(4, 30)
    res = []
    for compiled in (False, True):
        mm = copy.deepcopy(m)
        f = torch.compile(mm, backend="eager") if compiled else mm
        f(x).square().sum().backward()
        res.append({k: p.grad.clone() for k, p in mm.named_parameters() if p.grad is not None})
    for k, g in res[0].items():
        torch.testing.assert_close(res[1][k], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))


def test_one_weight_tile_std_is_inf_and_layer_gaussian_leaves_it():
    """(pass) _tile_std: inf for a tile of one weight, finite elsewhere."""
    from aimc.functional import TileLayout

    mapping = aimc.MappingConfig(max_input_size=2, max_output_size=1)
    lo = TileLayout.build(1, 2, 3, mapping)
    w = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    std = _tile_std(w, lo)
    assert torch.isinf(std[..., 2]).all()
    assert torch.isfinite(std[..., :2]).all()
