"""The ``chip`` HWA weight modifier: every training forward is a freshly programmed and drifted
chip (the device model's own statistics, REFERENCE.md §2-3), at a log-uniform random time, with
straight-through gradients.

The strongest check is exact: with the time and seeds the modifier drew, its tiles equal bit for
bit those of ``program_chip`` + ``drift_chip`` + ``chip_tiles`` (the deployed chip), for every
device model, compensation, layer type and chunking. The statistical check compares, per weight,
the mean and std of the error over 300 draws against ``aimc.program`` + ``aimc.drift`` over 300
seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import aimc
from aimc import AnalogConfig, HWAConfig, presets
from aimc.devices import DEVICE_MODELS
from aimc.hwa import draw_chip_sample, modify_weights
from aimc.mvm import TileWeights, units
from aimc.nn import AnalogConv2d, AnalogLinear
from aimc.nn import chip as chip_module

HOUR, YEAR = 3600.0, 365.25 * 86400.0
COMPENSATIONS = ("global", "per_column", "exact_reference", "none")


def chip_config(
    model: str = "pcm",
    comp: str = "global",
    t_min: float = HOUR,
    t_max: float = 10 * YEAR,
    base: AnalogConfig | None = None,
    **mapping,
) -> AnalogConfig:
    """``bert_squad`` (noisy periphery, per-column weight scaling, learned output scales,
    512-row tiles) with the chip modifier and the given device model and compensation."""
    cfg = presets.bert_squad() if base is None else base
    if mapping:
        cfg = cfg.replace(mapping=cfg.mapping.replace(**mapping))
    return cfg.replace(
        device=cfg.device.replace(model=model, params=None, drift_compensation=comp),
        hwa=cfg.hwa.replace(modifier="chip", modifier_t_min=t_min, modifier_t_max=t_max),
    )


def linear(cfg: AnalogConfig, k: int = 40, o: int = 30, seed: int = 5) -> AnalogLinear:
    torch.manual_seed(0)
    return AnalogLinear(k, o, config=cfg, seed=seed).train()


def drawn(layer) -> tuple[float, int, int]:
    """The ``(t, program_seed, drift_seed)`` the layer's next training forward will draw."""
    gen = layer.generator(layer.weight)
    copy = torch.Generator(device=gen.device).set_state(gen.get_state())
    return draw_chip_sample(layer.analog_config.hwa, copy)


def same_tiles(a: TileWeights, b: TileWeights) -> bool:
    scales = (a.scale is None and b.scale is None) or torch.equal(a.scale, b.scale)
    absw = (a.w_abs is None and b.w_abs is None) or torch.equal(a.w_abs, b.w_abs)
    return torch.equal(a.w, b.w) and scales and absw


def effective(layer, tw: TileWeights) -> torch.Tensor:
    """The tiles as weights in the layer's units: ``(B, O_pad, ci)`` times the digital rescale
    (weight scaling x drift compensation) of each column."""
    lo = tw.layout
    in_unit, out_unit = units(layer.analog_config.io)
    w = tw.w / (in_unit / out_unit)
    if tw.scale is None:
        return w
    s = tw.scale if tw.scale.shape[1] == lo.padded_out else tw.scale.repeat_interleave(lo.cols, 1)
    return w * s.unsqueeze(2)


# -- exact: the modifier's chip is the deployed chip ---------------------------------------------


@pytest.mark.parametrize("comp", COMPENSATIONS)
@pytest.mark.parametrize("model", sorted(DEVICE_MODELS))
def test_modifier_is_the_programmed_and_drifted_chip(model, comp):
    layer = linear(chip_config(model, comp, max_input_size=16, max_output_size=12))
    t, program_seed, drift_seed = drawn(layer)
    assert HOUR <= t <= 10 * YEAR
    tw = layer.active_tiles()  # the training forward's tiles
    for storage in ("full", "lean"):
        layer.program_chip(program_seed, storage)
        layer.drift_chip(t, drift_seed)
        assert same_tiles(tw, layer.chip_tiles()), storage


@pytest.mark.parametrize("model", sorted(DEVICE_MODELS))
def test_every_device_model_trains_linear_and_conv(model, monkeypatch):
    """Linear and Conv2d, one chunk and many chunks: a finite training forward on the chip,
    fresh every forward, equal to the deployed chip; eval is untouched by it."""
    monkeypatch.setattr(chip_module, "CHUNK_WEIGHTS", 16 * 12 * 2)  # two tiles per chunk
    cfg = chip_config(model, max_input_size=16, max_output_size=12)
    torch.manual_seed(0)
    conv = AnalogConv2d(3, 20, 3, padding=1, config=cfg, seed=2).train()  # 27 x 20: 2 x 2 tiles
    for layer, x in (
        (linear(cfg), torch.randn(6, 40)),
        (conv, torch.randn(2, 3, 5, 5)),
    ):
        assert len(chip_module._chunks(layer.tile_layout())) > 1
        t, program_seed, drift_seed = drawn(layer)
        tw = layer.active_tiles()
        layer.program_chip(program_seed, "lean")
        layer.drift_chip(t, drift_seed)
        assert same_tiles(tw, layer.chip_tiles())
        y1, y2 = layer(x), layer(x)
        assert torch.isfinite(y1).all() and not torch.equal(y1, y2)  # resampled
        layer.eval()
        layer.manual_seed(layer.seed)
        with torch.no_grad():
            before = layer(x)
        layer.train()
        layer(x)  # a training forward in between does not change the programmed chip
        layer.eval()
        layer.manual_seed(layer.seed)
        with torch.no_grad():
            assert torch.equal(layer(x), before)


def test_same_stream_same_chip_and_draws_advance():
    layer = linear(chip_config())
    layer.manual_seed(11)
    a = layer.active_tiles().w.clone()
    b = layer.active_tiles().w.clone()
    layer.manual_seed(11)
    assert torch.equal(layer.active_tiles().w, a) and not torch.equal(a, b)


# -- statistics: the modifier's errors are those of aimc.program + aimc.drift ---------------


def _errors(cfg: AnalogConfig, n: int, use_modifier: bool, t: float) -> torch.Tensor:
    """``(n, weights)`` errors of the effective (compensated) weights against the target."""
    layer = linear(cfg, k=24, o=16)
    model = nn.Sequential(layer)
    target = effective(layer, layer.tile_weights()).flatten()
    out = []
    for i in range(n):
        if use_modifier:
            tw = layer.active_tiles()
        else:
            aimc.drift(aimc.program(model, seed=i), t, seed=10_000 + i)
            tw = layer.chip_tiles()
        out.append(effective(layer, tw).flatten() - target)
    return torch.stack(out).double()


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float, float]:
    """Per weight: ``mean(z^2)`` and ``max|z|`` of the mean differences in standard errors, and
    mean and max of ``|log(std_a / std_b)|``."""
    n = a.shape[0]
    se = ((a.var(0) + b.var(0)) / n).sqrt()
    z = (a.mean(0) - b.mean(0)) / se
    log_ratio = (a.std(0) / b.std(0)).log()
    return (
        float(z.square().mean()),
        float(z.abs().max()),
        float(log_ratio.mean()),
        float(log_ratio.abs().max()),
    )


@pytest.mark.parametrize("comp", ["global", "none"])
def test_error_statistics_match_program_and_drift(comp):
    """Fixed t (t_min == t_max = 1 day), 16 x 24 layer on 2 x 2 tiles, noisy bert_squad
    periphery (so the compensation readout is noisy too), 300 draws each.

    Tolerances: for 384 weights the mean differences in standard errors z are ~N(0, 1), so
    mean(z^2) is 1 +- 0.07 (independent weights; weights of a tile share a compensation factor,
    which widens it) — allowed 0.75..1.35 — and max|z| < 4.5 (p ~ 0.3 % over 384 weights). A
    sample std of 300 draws has a relative error ~ 1/sqrt(2 * 300) = 4 %, a ratio of two ~6 %:
    the mean log ratio (over 384 weights) within +-0.03 and every one within +-0.3 (5 sigma).
    The same check between the modifier at 1 hour and the chip at 10 years fails it (power)."""
    day = 86400.0
    cfg = chip_config("pcm", comp, day, day, max_input_size=12, max_output_size=8)
    mod = _errors(cfg, 300, True, day)
    ref = _errors(cfg, 300, False, day)
    assert float(ref.std()) > 1e-3  # the errors are real noise, not rounding
    z2, zmax, log_mean, log_max = _compare(mod, ref)
    assert 0.75 < z2 < 1.35 and zmax < 4.5, (z2, zmax)
    assert abs(log_mean) < 0.03 and log_max < 0.3, (log_mean, log_max)
    # power: another drift time is detected
    early = chip_config("pcm", comp, HOUR, HOUR, max_input_size=12, max_output_size=8)
    other = _errors(early, 300, True, HOUR)
    ref_late = _errors(
        cfg.replace(hwa=cfg.hwa.replace(modifier_t_min=10 * YEAR, modifier_t_max=10 * YEAR)),
        300,
        False,
        10 * YEAR,
    )
    z2, zmax, log_mean, log_max = _compare(other, ref_late)
    assert z2 > 1.35 or abs(log_mean) > 0.03


# -- the drift time --------------------------------------------------------------------------------


def test_time_is_log_uniform_in_range():
    """Kolmogorov-Smirnov distance of log(t) from the uniform distribution over 4000 draws:
    < 1.95 / sqrt(n) (the 0.1 % critical value); every t in range; the seeds differ."""
    hwa = HWAConfig(modifier="chip", modifier_t_min=HOUR, modifier_t_max=10 * YEAR)
    gen = torch.Generator().manual_seed(0)
    draws = [draw_chip_sample(hwa, gen) for _ in range(4000)]
    t = torch.tensor([d[0] for d in draws], dtype=torch.float64)
    assert float(t.min()) >= HOUR and float(t.max()) <= 10 * YEAR
    u = ((t.log() - math.log(HOUR)) / (math.log(10 * YEAR) - math.log(HOUR))).sort().values
    n = len(u)
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum(ecdf_hi - u, u - (ecdf_hi - 1 / n)).max())
    assert ks < 1.95 / math.sqrt(n), ks
    # a quarter of the draws in each quarter of the decades (not of the seconds)
    quarters = torch.histc(u, bins=4, min=0, max=1) / n
    assert torch.allclose(quarters, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)
    seeds = {d[1] for d in draws} | {d[2] for d in draws}
    assert len(seeds) == 2 * n


@pytest.mark.parametrize("t", [0.0, 60.0, YEAR])
def test_equal_bounds_fix_the_time(t):
    hwa = HWAConfig(modifier="chip", modifier_t_min=t, modifier_t_max=t)
    gen = torch.Generator().manual_seed(0)
    assert {draw_chip_sample(hwa, gen)[0] for _ in range(5)} == {t}


# -- gradients -------------------------------------------------------------------------------


def test_gradient_is_straight_through():
    """The weight and input gradients are those of ``x @ W.T`` with the digital W, whatever
    chip the forward drew (perfect periphery, no output scales: the plain linear gradients)."""
    cfg = chip_config(base=presets.pcm_weights_only())
    layer = linear(cfg)
    x = torch.randn(7, 40, requires_grad=True)
    g = torch.randn(7, 30)
    y = layer(x)
    digital = x.detach() @ layer.weight.detach().T + layer.bias.detach()
    assert (y - digital).abs().max() > 1e-3  # the forward is the chip's
    (y * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, g.T @ x.detach())
    torch.testing.assert_close(x.grad, g @ layer.weight.detach())
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def test_learned_output_scales_get_the_chips_outputs():
    """With learned output scales (bert_squad) the scale's gradient sees the chip's outputs and
    the weight gradient stays straight-through (through the output scale)."""
    layer = linear(chip_config())
    x = torch.randn(5, 40)
    layer(x).sum().backward()
    assert layer.out_scale.grad is not None and torch.isfinite(layer.out_scale.grad).all()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


# -- bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"modifier_t_min": 10.0, "modifier_t_max": 5.0},
            r"hwa\.modifier_t_min: got 10\.0; "
            r"allowed: a time \(s\) <= hwa\.modifier_t_max, which is 5\.0",
        ),
        (
            {"modifier_t_min": -1.0},
            r"hwa\.modifier_t_min: got -1\.0; allowed: a finite number >= 0",
        ),
        ({"modifier_t_max": float("inf")}, r"hwa\.modifier_t_max: got inf; allowed: a finite"),
        ({"modifier_t_max": float("nan")}, r"hwa\.modifier_t_max: got nan; allowed: a finite"),
        (
            {"modifier_t_min": 0.0},
            r"hwa\.modifier_t_min: got 0\.0; allowed: a time > 0 s when "
            r"below hwa\.modifier_t_max",
        ),
        ({"modifier_t_min": "1h"}, r"hwa\.modifier_t_min: got '1h'; allowed: a number"),
        ({"modifier_t_max": True}, r"hwa\.modifier_t_max: got True; allowed: a number"),
    ],
)
def test_bad_times_name_the_field(changes, message):
    with pytest.raises(ValueError, match="^" + message):
        HWAConfig(modifier="chip", **changes)
    with pytest.raises(ValueError, match="^" + message):  # the path as in every config error
        AnalogConfig.from_dict(
            {**presets.pcm_inference().to_dict(), "hwa": {**HWAConfig().to_dict(), **changes}}
        )


def test_chip_modifier_needs_a_device_model():
    message = r"^config\.hwa\.modifier: got 'chip'; allowed: not 'chip' while device\.model is"
    with pytest.raises(ValueError, match=message):
        AnalogConfig(hwa=HWAConfig(modifier="chip"))
    with pytest.raises(ValueError, match=message):
        presets.ideal().replace(hwa=HWAConfig(modifier="chip"))


def test_modify_weights_refuses_chip():
    from aimc.functional import TileLayout

    lo = TileLayout.build(1, 4, 4, aimc.MappingConfig(max_input_size=0, max_output_size=0))
    with pytest.raises(ValueError, match=r"^hwa\.modifier: got 'chip'; allowed here"):
        modify_weights(torch.ones(1, 4, 4), lo, HWAConfig(modifier="chip"), torch.Generator())


def test_config_round_trips_with_the_times():
    cfg = chip_config(t_min=60.0, t_max=YEAR)
    back = AnalogConfig.from_json(cfg.to_json())
    assert back == cfg and back.hwa.modifier_t_max == YEAR
