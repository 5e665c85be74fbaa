"""HWA knobs against AIHWKIT 1.2.0 at the level of the weights (issue 12, part "HWA").

* Weight modifiers: the perturbed weights of a training forward, read out through a perfect
  periphery with one-hot inputs (``y = I W_mod^T``), several draws on each side; compared are
  the std of the perturbation in bins of ``|W| / a`` and the fraction of weights whose sign
  flipped (AIHWKIT's ``ProgNoise`` keeps every sign). The output-level statistics of the same
  modifiers are cases of the harness (``cases_hwa.HWA_CASES``).
* Clipping and remapping are deterministic: AIHWKIT's ``tile.post_update_step()`` (its
  ``rpu_config.clip`` / ``rpu_config.remap``) and ``aimc.post_step(layer)`` on the same weights
  give the same tile weights and scales to float precision, every tile of a layer split over
  several input tiles included (each tile is remapped on its own and keeps its own output
  scale), also after a further "step" (a perturbation of the remapped weights, then post-step
  again).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import aimc

from .cases_hwa import PCM_PROG_COEFFS

TINY = 2e-6  # float32 rounding of the weights (|W| <~ 1)


# -- builders ------------------------------------------------------------------------------------


def _weights(out: int, inp: int, seed: int = 0, std: float = 0.05) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * std, torch.randn(out, generator=g) * std


def _aihwkit(
    w: Tensor,
    b: Tensor | None,
    *,
    digital_bias: bool = True,
    mapping: dict | None = None,
    rpu=None,
    **fields,
):
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig

    rpu = InferenceRPUConfig() if rpu is None else rpu
    rpu.forward.is_perfect = True
    rpu.mapping.digital_bias = digital_bias
    for name, value in (mapping or {}).items():
        setattr(rpu.mapping, name, value)
    for name, value in fields.items():
        setattr(rpu, name, value)
    layer = AnalogLinear(w.shape[1], w.shape[0], bias=b is not None, rpu_config=rpu)
    layer.set_weights(w.clone(), None if b is None else b.clone())
    return layer


def _aimc(w: Tensor, b: Tensor | None, hwa: aimc.HWAConfig, **mapping) -> aimc.nn.AnalogLinear:
    cfg = aimc.AnalogConfig(
        io=aimc.IOConfig(is_perfect=True), mapping=aimc.MappingConfig(**mapping), hwa=hwa
    )
    digital = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        digital.weight.copy_(w)
        if b is not None:
            digital.bias.copy_(b)
    return aimc.nn.AnalogLinear.from_digital(digital, cfg, seed=0)


# -- weight modifiers ----------------------------------------------------------------------------


def _modifier_rpu(kind: str, **kw):
    from aihwkit.simulator.parameters.enums import WeightModifierType
    from aihwkit.simulator.parameters.inference import WeightModifierParameter

    return WeightModifierParameter(type=getattr(WeightModifierType, kind), **kw)


def _read_aihwkit(w: Tensor, modifier, draws: int) -> list[Tensor]:
    layer = _aihwkit(w, None, modifier=modifier)
    layer.train()
    eye = torch.eye(w.shape[1])
    out = []
    for _ in range(draws):
        for tile in layer.analog_tiles():
            tile.post_update_step()
        with torch.no_grad():
            out.append(layer(eye).t().clone())
    return out


def _read_aimc(w: Tensor, hwa: aimc.HWAConfig, draws: int) -> list[Tensor]:
    layer = _aimc(w, None, hwa).train()
    eye = torch.eye(w.shape[1])
    out = []
    for i in range(draws):
        layer.manual_seed(100 + i)
        with torch.no_grad():
            out.append(layer(eye).t().clone())
    return out


def _binned_std(w: Tensor, mods: list[Tensor], bins: int = 4) -> list[float]:
    """Std of ``W_mod - W`` in ``bins`` equally populated bins of ``|W|`` (the polynomial
    modifiers' std grows with ``|W| / a``)."""
    order = w.abs().flatten().argsort()
    d = torch.stack([m - w for m in mods]).flatten(1)[:, order]
    return [float(part.double().std()) for part in d.chunk(bins, dim=1)]


def _flips(w: Tensor, mods: list[Tensor]) -> float:
    return statistics_mean([float(((m * w) < 0).double().mean()) for m in mods])


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)


MODIFIERS = [
    # (name, aimc HWAConfig kwargs, AIHWKIT type, AIHWKIT kwargs, weight std)
    ("add_normal", {"modifier_std": 0.1}, "ADD_NORMAL", {"std_dev": 0.1}),
    ("mult_normal", {"modifier_std": 1.0}, "MULT_NORMAL", {"std_dev": 1.0}),
    ("poly", {"modifier_std": 5.0}, "POLY", {"std_dev": 5.0}),
    (
        "prog_noise",
        {"modifier_std": 5.0},
        "PROG_NOISE",
        {"std_dev": 5.0, "coeffs": list(PCM_PROG_COEFFS)},
    ),
]


@pytest.mark.parametrize("name,kw,kind,rpu_kw", MODIFIERS, ids=[m[0] for m in MODIFIERS])
def test_modifier_perturbation_by_weight_magnitude(name, kw, kind, rpu_kw):
    """The perturbation's std in 4 bins of ``|W|`` (2 x 8192 weights per bin and side: SE of
    a ratio ~1 %) within 5 %; the fraction of flipped signs within 10 % (+ 0.002 absolute)."""
    w, _ = _weights(128, 256, seed=1)
    hwa = aimc.HWAConfig(modifier=name, **kw)
    if name == "poly":
        hwa = hwa.replace(modifier_coeffs=(0.0105392, 0.0768, -0.046925))
    mine = _read_aimc(w, hwa, draws=2)
    ref = _read_aihwkit(w, _modifier_rpu(kind, **rpu_kw), draws=2)
    sa, sb = _binned_std(w, mine), _binned_std(w, ref)
    for k, (a, b) in enumerate(zip(sa, sb, strict=True)):
        assert abs(a - b) <= 0.05 * b, f"{name} bin {k}: aimc std {a:.4g}, AIHWKIT {b:.4g}"
    fa, fb = _flips(w, mine), _flips(w, ref)
    assert abs(fa - fb) <= 0.1 * fb + 0.002, f"{name}: sign flips aimc {fa:.4f}, AIHWKIT {fb:.4f}"
    if name == "prog_noise":
        assert fa == 0.0 and fb == 0.0  # the sign is kept (noise mirrored at zero)


def test_modifier_a_is_per_tile():
    """768 inputs = 2 tiles of 384; the second tile's weights are 4x larger, so its ``a`` and
    hence its add_normal noise is 4x larger on both sides."""
    w, _ = _weights(64, 768, seed=2)
    w[:, 384:] *= 4.0
    mine = _read_aimc(w, aimc.HWAConfig(modifier="add_normal", modifier_std=0.1), draws=2)
    ref = _read_aihwkit(w, _modifier_rpu("ADD_NORMAL", std_dev=0.1), draws=2)
    for half in (slice(0, 384), slice(384, 768)):
        a = float(torch.stack([m[:, half] - w[:, half] for m in mine]).std())
        b = float(torch.stack([m[:, half] - w[:, half] for m in ref]).std())
        amax = float(w[:, half].abs().max())
        assert abs(a - b) <= 0.03 * b and abs(b - 0.1 * amax) <= 0.03 * b


def test_discretize_matches_exactly_including_halves():
    """``a Q(W / a)``: AIHWKIT rounds halves away from zero (``roundf``)."""
    res = 1 / 16
    g = torch.Generator().manual_seed(3)
    w = (torch.randint(-16, 17, (32, 64), generator=g).float() + 0.5) * (res / 1)  # halves
    w = w.clamp(-1, 1)
    w[0, 0] = 1.0  # a = 1: the halves stay halves
    mine = _read_aimc(w, aimc.HWAConfig(modifier="discretize", modifier_res=res), draws=1)[0]
    ref = _read_aihwkit(w, _modifier_rpu("DISCRETIZE", res=res), draws=1)[0]
    assert torch.allclose(mine, ref, atol=TINY, rtol=0)


# -- clipping and remapping ----------------------------------------------------------------------


def _clip(kind: str, **kw):
    from aihwkit.simulator.parameters.enums import WeightClipType
    from aihwkit.simulator.parameters.inference import WeightClipParameter

    return WeightClipParameter(type=getattr(WeightClipType, kind), **kw)


def _remap(kind: str):
    from aihwkit.simulator.parameters.enums import WeightRemapType
    from aihwkit.simulator.parameters.inference import WeightRemapParameter

    return WeightRemapParameter(type=getattr(WeightRemapType, kind), remapped_wmax=1.0)


def _tiles(layer) -> list[tuple[Tensor, Tensor | None]]:
    """AIHWKIT's raw tile weights (``[out, in (+ bias)]``) and mapping scales, per tile."""
    out = []
    for tile in layer.analog_tiles():
        scales = tile.get_scales()
        out.append((tile.tile.get_weights().clone(), None if scales is None else scales.clone()))
    return out


def _post_step(layer) -> None:
    for tile in layer.analog_tiles():
        tile.post_update_step()


def _aimc_tiles(layer: aimc.nn.AnalogLinear) -> list[tuple[Tensor, Tensor | None]]:
    """aimc's tiles as AIHWKIT stores them (one group, no output split): per input tile the
    matrix the crossbar holds (``[out, in (+ analog bias)]``, weight scaling applied) and the
    digital scale of its outputs (weight rescale times the tile's learned output scale)."""
    lo = layer.tile_layout()
    assert lo.groups == 1 and lo.n_out == 1
    tw = layer.tile_weights()  # perfect IO: no ADC/DAC unit gain
    scales = torch.ones(lo.n_in, lo.out_size) if tw.scale is None else tw.scale[:, : lo.out_size]
    if layer.out_scale is not None:
        # (ti, O) or (ti, 1): the learned scale times the mapping scale a remap moved it into
        scales = scales * layer.effective_out_scale().detach()[0]
    out = []
    for t, rows in enumerate(lo.in_sizes):
        scale = (
            None if tw.scale is None and layer.out_scale is None else scales[t].expand(lo.out_size)
        )
        out.append((tw.w[t, : lo.out_size, :rows], scale))
    return out


def _aimc_effective(layer: aimc.nn.AnalogLinear) -> tuple[Tensor, Tensor | None]:
    """The function's weights and bias: each input tile's block times its output scales."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if layer.out_scale is None:
        return w, b
    full = layer._analog_weight().detach()
    full = full * layer.tile_layout().per_weight(layer.out_scale_columns().detach())
    k = w.shape[1]
    return full[0, :, :k], full[0, :, k] if layer.analog_bias() else b


_FIXED = ({"clip": "fixed", "clip_value": 0.08}, ("FIXED_VALUE", 0.08))
_GAUSS = ({"clip": "layer_gaussian", "clip_sigma": 2.0}, ("LAYER_GAUSSIAN", 2.0))
_LAYER = ({"remap": "layerwise"}, "LAYERWISE_SYMMETRIC")
_COLUMN = ({"remap": "columnwise"}, "CHANNELWISE_SYMMETRIC")
_STANDARD = {"clip": "fixed", "clip_value": 1.0, "remap": "columnwise"}

CLIP_REMAP = [
    # (id, in_features, aimc HWAConfig kwargs, AIHWKIT clip (type, value), remap, digital_bias)
    ("clip fixed 0.08", 256, _FIXED[0], _FIXED[1], None, True),
    ("clip fixed 0.08, analog bias", 256, _FIXED[0], _FIXED[1], None, False),
    ("clip gaussian 2", 256, _GAUSS[0], _GAUSS[1], None, True),
    ("clip gaussian 2, analog bias", 256, _GAUSS[0], _GAUSS[1], None, False),
    ("clip gaussian 2, 2 tiles", 768, _GAUSS[0], _GAUSS[1], None, True),
    ("remap layerwise", 256, _LAYER[0], None, _LAYER[1], True),
    ("remap columnwise", 256, _COLUMN[0], None, _COLUMN[1], True),
    ("remap columnwise, analog bias", 256, _COLUMN[0], None, _COLUMN[1], False),
    ("remap columnwise, 2 tiles", 768, _COLUMN[0], None, _COLUMN[1], True),
    ("remap layerwise, 2 tiles", 768, _LAYER[0], None, _LAYER[1], True),
    ("remap columnwise, 1030 inputs = 344 + 343 + 343", 1030, _COLUMN[0], None, _COLUMN[1], True),
    ("remap layerwise, 1030 inputs = 344 + 343 + 343", 1030, _LAYER[0], None, _LAYER[1], True),
    (
        "StandardHWA: clip 1 + remap columnwise",
        256,
        _STANDARD,
        ("FIXED_VALUE", 1.0),
        _COLUMN[1],
        True,
    ),
    (
        "StandardHWA: clip 1 + remap columnwise, 2 tiles",
        768,
        _STANDARD,
        ("FIXED_VALUE", 1.0),
        _COLUMN[1],
        True,
    ),
]


@pytest.mark.parametrize(
    "inp,hwa_kw,clip,remap,digital_bias",
    [c[1:] for c in CLIP_REMAP],
    ids=[c[0] for c in CLIP_REMAP],
)
def test_clip_and_remap_match(inp, hwa_kw, clip, remap, digital_bias):
    w, b = _weights(64, inp, seed=4)
    fields = {}
    if clip is not None:
        kind, value = clip
        fields["clip"] = (
            _clip(kind, fixed_value=value) if kind == "FIXED_VALUE" else _clip(kind, sigma=value)
        )
    if remap is not None:
        fields["remap"] = _remap(remap)
    ref = _aihwkit(w, b, digital_bias=digital_bias, **fields)
    columnwise = hwa_kw.get("remap") == "columnwise"
    mine = _aimc(
        w,
        b,
        aimc.HWAConfig(**hwa_kw),
        digital_bias=digital_bias,
        learn_out_scaling=remap is not None,
        out_scaling_columnwise=columnwise,
    )
    gen = torch.Generator().manual_seed(5)
    for step in range(2):  # post-step, a "training step" (perturbation), post-step again
        _post_step(ref)
        aimc.post_step(mine)
        w_ref, b_ref = ref.get_weights()  # the effective (digital) weights
        w_mine, b_mine = _aimc_effective(mine)
        assert torch.allclose(w_mine, w_ref, atol=TINY, rtol=1e-5), f"step {step}: weights"
        if b is not None:
            assert torch.allclose(b_mine, b_ref, atol=TINY, rtol=1e-5), f"step {step}: bias"
        # every tile's stored weights and output scales agree too (AIHWKIT remaps per tile)
        ref_tiles, my_tiles = _tiles(ref), _aimc_tiles(mine)
        assert len(ref_tiles) == len(my_tiles) == mine.tile_layout().n_in
        for t, ((tile_ref, s_ref), (tile_mine, s_mine)) in enumerate(
            zip(ref_tiles, my_tiles, strict=True)
        ):
            assert torch.allclose(tile_mine, tile_ref, atol=TINY, rtol=1e-5), f"tile {t}"
            if remap is not None:
                assert torch.allclose(s_mine, s_ref.expand(64), rtol=1e-5), f"tile {t} scales"
        # a training step: the same perturbation of the stored tile weights on both sides
        dw = torch.randn(64, inp, generator=gen) * (0.2 if remap is not None else 0.01)
        start = 0
        for tile in ref.analog_tiles():  # tiles split the inputs (no output split here)
            t = tile.tile.get_weights()
            n = tile.in_size
            t[:, :n] += dw[:, start : start + n]
            tile.tile.set_weights(t)
            start += n
        with torch.no_grad():
            mine.weight.add_(dw)


def _standard_hwa_pair(w: Tensor, max_input_size: int):
    """AIHWKIT's ``StandardHWATrainingPreset`` and aimc's ``standard_hwa()`` (perfect forward:
    the tiles are compared, not the noise) with ``max_input_size`` rows per tile."""
    from aihwkit.simulator.presets import StandardHWATrainingPreset

    ref = _aihwkit(
        w, None, rpu=StandardHWATrainingPreset(), mapping={"max_input_size": max_input_size}
    )
    cfg = aimc.presets.standard_hwa()
    cfg = cfg.replace(
        io=aimc.IOConfig(is_perfect=True),
        mapping=cfg.mapping.replace(max_input_size=max_input_size),
    )
    digital = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        digital.weight.copy_(w)
    return ref, aimc.nn.AnalogLinear.from_digital(digital, cfg, seed=0)


def test_standard_hwa_multi_tile_remap_stores_aihwkit_tiles():
    """AIHWKIT remaps every tile on its own: 256 inputs at ``max_input_size = 100`` are 3 tiles
    of 86 + 85 + 85 rows, each tile column is scaled to max |W| = 1 and its factor goes into
    that tile's scale. aimc's per-tile output scales store the same tile matrices and scales
    (float rounding), after a post-step and after a further perturbed step; with one scale per
    layer column (earlier aimc) the tiles without a column's maximum held ~0.85x AIHWKIT's."""
    w, _ = _weights(64, 256, seed=6)
    w[:, 86:171] *= 3.0  # the middle tile holds most column maxima
    ref, mine = _standard_hwa_pair(w, 100)
    assert [t.in_size for t in ref.analog_tiles()] == mine.tile_layout().in_sizes == [86, 85, 85]
    gen = torch.Generator().manual_seed(7)
    for step in range(2):
        _post_step(ref)
        aimc.post_step(mine)
        ref_tiles, my_tiles = _tiles(ref), _aimc_tiles(mine)
        if step == 0:
            first_tile = ref_tiles[0][0]
        for t, ((tile_ref, s_ref), (tile_mine, s_mine)) in enumerate(
            zip(ref_tiles, my_tiles, strict=True)
        ):
            assert torch.allclose(tile_ref.abs().amax(dim=1), torch.ones(64), atol=1e-6)
            assert torch.allclose(tile_mine, tile_ref, atol=TINY, rtol=1e-5), f"{step}: tile {t}"
            assert torch.allclose(s_mine, s_ref, rtol=1e-5), f"step {step}: tile {t} scales"
        w_ref, _ = ref.get_weights()
        assert torch.allclose(_aimc_effective(mine)[0], w_ref, atol=TINY, rtol=1e-5)
        dw = torch.randn(64, 256, generator=gen) * 0.2
        start = 0
        for tile in ref.analog_tiles():
            t = tile.tile.get_weights()
            t[:, : tile.in_size] += dw[:, start : start + tile.in_size]
            tile.tile.set_weights(t)
            start += tile.in_size
        with torch.no_grad():
            mine.weight.add_(dw)
    # one scale per layer column (the column's max over the whole row) would store tile 0 at
    # a fraction of AIHWKIT's: the comparison above tells the two apart
    per_row = w[:, :86] / w.abs().amax(dim=1, keepdim=True)
    assert float((per_row.abs().amax(dim=1) / first_tile.abs().amax(dim=1)).mean()) < 0.6


def test_forward_and_alpha_gradient_per_tile_match_aihwkit():
    """Each tile's output is scaled by its own learned ``out_scaling_alpha`` before the sum
    over input tiles; the gradient of every tile's alpha is ``sum grad * tile output``. Perfect
    forward on both sides (deterministic), 256 inputs = 3 tiles, random alphas per tile."""
    w, b = _weights(64, 256, seed=8)
    mapping = {"max_input_size": 100, "learn_out_scaling": True, "out_scaling_columnwise": True}
    ref = _aihwkit(w, b, mapping=mapping)
    mine = _aimc(w, b, aimc.HWAConfig(), **mapping)
    g = torch.Generator().manual_seed(9)
    alphas = torch.rand(3, 64, generator=g) + 0.5
    with torch.no_grad():
        for tile, a in zip(ref.analog_tiles(), alphas, strict=True):
            tile.out_scaling_alpha.copy_(a)
        mine.out_scale.copy_(alphas.unsqueeze(0))
    x = torch.randn(16, 256, generator=g)
    up = torch.randn(16, 64, generator=g)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, ym = ref(xr), mine(xm)
    assert torch.allclose(ym, yr, atol=1e-5, rtol=1e-5)
    yr.backward(up)
    ym.backward(up)
    assert torch.allclose(xm.grad, xr.grad, atol=1e-5, rtol=1e-5)
    grads = torch.stack([tile.out_scaling_alpha.grad for tile in ref.analog_tiles()])
    assert torch.allclose(mine.out_scale.grad[0], grads, atol=1e-4, rtol=1e-5)
