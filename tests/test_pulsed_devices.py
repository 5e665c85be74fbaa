"""Pulsed device plugins (``aimc.pulsed.devices``) through one shared battery.

Each row of ``DEVICES`` is a (name, config) pair; every test of the battery runs on every row
(peft's custom-models pattern). Step sizes are checked against closed forms written here from
REFERENCE.md §6 (not imported from ``aimc``). Statistical checks use fixed seeds and enough
devices that the tolerances are many standard errors wide.
"""

from __future__ import annotations

import math

import pytest
import torch

from aimc.pulsed import PulsedConfig, presets
from aimc.pulsed.devices import apply_pulses, get
from aimc.pulsed.devices.soft_bounds import symmetry_point

N = 20_000  # devices per statistical check: mean s.e. 0.3/sqrt(N) = 0.2 %, tolerances >= 1.5 %

DEVICES = [
    ("constant_step", PulsedConfig(device="constant_step")),
    (
        "linear_step",
        PulsedConfig(
            device="linear_step", params={"gamma_up": 0.5, "gamma_down": 0.8, "up_down": 0.1}
        ),
    ),
    ("soft_bounds", PulsedConfig(device="soft_bounds", params={"up_down": -0.2})),
    ("exp_step", PulsedConfig(device="exp_step")),
    ("pow_step", PulsedConfig(device="pow_step", params={"pow_gamma": 2.0})),
    (
        "piecewise_step",
        PulsedConfig(
            device="piecewise_step",
            params={"piecewise_up": (1.5, 1.0, 0.2), "piecewise_down": (0.1, 1.0, 2.0)},
        ),
    ),
    ("preset_reram_soft_bounds", presets.reram_soft_bounds()),
    ("preset_ecram", presets.ecram()),
    ("preset_pcm_pair", presets.pcm_pair()),
]
IDS = [name for name, _ in DEVICES]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- closed forms of the mean step (REFERENCE.md §6), written independently of aimc -------------


def _interp(nodes, rel):
    pos = rel.clamp(0, 1) * (len(nodes) - 1)
    lo = pos.floor().clamp(max=len(nodes) - 2)
    frac = pos - lo
    t = torch.tensor(nodes)
    return t[lo.long()] * (1 - frac) + t[lo.long() + 1] * frac


def reference_steps(cfg: PulsedConfig, w, d):
    """Mean magnitude of one up / one down pulse at weight ``w`` for devices ``d`` (d2d dict)."""
    p = cfg.params
    up, down = d["dw_up"], d["dw_down"]
    hi, lo = d["w_max"], d["w_min"]
    if cfg.device == "constant_step":
        return up, down
    if cfg.device == "soft_bounds":
        return up * (1 - w / hi), down * (1 - w / lo)
    if cfg.device == "linear_step":
        ref_hi, ref_lo = (p.w_max, p.w_min) if p.mean_bound_reference else (hi, lo)
        fu = (1 - d["gamma_up"] * w / ref_hi).clamp_min(0)
        fd = (1 - d["gamma_down"] * w / ref_lo).clamp_min(0)
        return up * fu, down * fd
    if cfg.device == "exp_step":
        z = 2 * p.a * w / (hi - lo) + p.b
        y_up = (1 - p.A_up * torch.exp(p.gamma_up * z)).clamp_min(0)
        y_down = (1 - p.A_down * torch.exp(-p.gamma_down * z)).clamp_min(0)
        return up * y_up, down * y_down
    if cfg.device == "pow_step":
        g = d["pow_gamma"]
        return up * ((hi - w) / (hi - lo)) ** g, down * ((w - lo) / (hi - lo)) ** g
    if cfg.device == "piecewise_step":
        rel = (w - lo) / (hi - lo)
        return up * _interp(p.piecewise_up, rel), down * _interp(p.piecewise_down, rel)
    raise AssertionError(cfg.device)


def devices_at_midpoint(cfg: PulsedConfig, n: int = N, seed: int = 0):
    d2d = get(cfg.device).sample_d2d((n,), cfg.params, gen(seed))
    keep = d2d["w_max"] - d2d["w_min"] > 1e-3 * (cfg.params.w_max - cfg.params.w_min)
    for key in ("w_max", "w_min"):  # a rare bound drawn across zero is set to 0: a dead side
        if getattr(cfg.params, key) != 0:
            keep &= d2d[key].abs() > 1e-3
    w = torch.where(keep, 0.5 * (d2d["w_max"] + d2d["w_min"]), d2d["w_min"])
    return d2d, w, keep


# -- the battery -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_zero_pulses_change_nothing(name, cfg):
    d2d, w, _ = devices_at_midpoint(cfg, 1000)
    zero = torch.zeros_like(w)
    out = apply_pulses(get(cfg.device), w, zero, zero, d2d, cfg.params, gen(1))
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.equal(out, w)


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_bounds_never_exceeded(name, cfg):
    model = get(cfg.device)
    d2d, w, _ = devices_at_midpoint(cfg, 2000)
    g = gen(2)
    for _ in range(60):
        n = torch.randint(0, 400, (2, w.numel()), generator=g).float()
        w = apply_pulses(
            model, w, n[0], n[1] * (torch.rand(1, generator=g) < 0.3), d2d, cfg.params, g
        )
        assert (w <= d2d["w_max"]).all() and (w >= d2d["w_min"]).all()
        assert torch.isfinite(w).all()


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
@pytest.mark.parametrize("n_pulses", [1, 4])
def test_mean_step_and_spread_match_closed_form(name, cfg, n_pulses):
    """``n`` pulses at once: mean ``n * step``, spread ``sqrt(n) * dw_min_std * step``
    (multiplicative) or ``sqrt(n) * dw_min_std * dw`` (additive)."""
    p = cfg.params
    d2d, w, keep = devices_at_midpoint(cfg)
    up_ref, down_ref = reference_steps(cfg, w, d2d)
    model = get(cfg.device)
    n = torch.full_like(w, float(n_pulses))
    zero = torch.zeros_like(w)
    for direction, ref, dw in ((1, up_ref, d2d["dw_up"]), (-1, down_ref, d2d["dw_down"])):
        n_up, n_down = (n, zero) if direction == 1 else (zero, n)
        if cfg.one_sided_pair and direction == -1:
            continue  # one-sided devices only ever get up pulses
        mask = keep & (ref > 1e-3 * p.dw_min)
        # keep devices whose n steps stay far from the bounds (the clip is tested elsewhere)
        room = torch.minimum(d2d["w_max"] - w, w - d2d["w_min"])
        reach = n_pulses + 6 * math.sqrt(n_pulses) * p.dw_min_std
        mask &= room > reach * torch.maximum(ref, dw)
        assert mask.float().mean() > 0.5
        new = apply_pulses(model, w, n_up, n_down, d2d, p, gen(3))
        scale = ref if p.mult_noise else dw
        z = ((new - w) * direction - n_pulses * ref)[mask] / scale[mask]
        ratio = ((new - w) * direction / ref)[mask]
        if p.mult_noise:
            assert ratio.mean().item() == pytest.approx(n_pulses, rel=0.015)
        else:
            assert z.mean().item() == pytest.approx(0.0, abs=0.05 * p.dw_min_std)
        expected_std = math.sqrt(n_pulses) * p.dw_min_std
        assert z.std().item() == pytest.approx(expected_std, rel=0.03)


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_expected_step_has_no_noise(name, cfg):
    d2d, w, keep = devices_at_midpoint(cfg, 1000)
    n = torch.full_like(w, 2.0)
    new = apply_pulses(get(cfg.device), w, n, torch.zeros_like(w), d2d, cfg.params, None)
    up_ref, _ = reference_steps(cfg, w, d2d)
    expected = torch.minimum(w + 2 * up_ref, d2d["w_max"])
    torch.testing.assert_close(new[keep], expected[keep], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_d2d_draws_match_reference(name, cfg):
    """AIHWKIT 1.2.0 ``PulsedRPUDevice::populate``: with ``g = 1 + dw_min_dtod xi`` and ``r =
    up_down_dtod xi``, ``dw_up = dw_min (g + min(up_down, 0) + r)``, ``dw_down = dw_min (g -
    max(up_down, 0) - r)`` (so ``up_down`` shortens one direction only and the asymmetry spread
    is additive); bounds ``w (1 + dtod xi)``."""
    p = cfg.params
    d = get(cfg.device).sample_d2d((N,), p, gen(4))
    dw = 0.5 * (d["dw_up"] + d["dw_down"])
    assert dw.mean().item() == pytest.approx(p.dw_min * (1 - abs(p.up_down) / 2), rel=0.02)
    assert (dw.std() / p.dw_min).item() == pytest.approx(p.dw_min_dtod, rel=0.05, abs=1e-3)
    diff = (d["dw_up"] - d["dw_down"]) / p.dw_min
    assert diff.median().item() == pytest.approx(p.up_down, abs=0.01)
    # robust spread: a step drawn across zero (|.|, ~0.4 % of the devices at up_down = -0.2)
    # is an outlier of the difference
    q16, q84 = torch.quantile(diff, torch.tensor([0.158655, 0.841345])).tolist()
    assert (q84 - q16) / 2 == pytest.approx(2 * p.up_down_dtod, rel=0.05, abs=1e-6)
    if p.w_max_dtod < 0.2:
        assert d["w_max"].mean().item() == pytest.approx(p.w_max, rel=0.01)
        assert d["w_max"].std().item() == pytest.approx(abs(p.w_max) * p.w_max_dtod, rel=0.05)
    assert (d["w_max"] >= d["w_min"]).all()


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_same_generator_same_numbers(name, cfg):
    model = get(cfg.device)
    runs = []
    for seed in (5, 5, 6):
        d2d, w, _ = devices_at_midpoint(cfg, 500, seed=seed)
        n = torch.full_like(w, 3.0)
        runs.append(apply_pulses(model, w, n, n, d2d, cfg.params, gen(seed)))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("name,cfg", DEVICES, ids=IDS)
def test_config_round_trip(name, cfg):
    assert PulsedConfig.from_dict(cfg.to_dict()) == cfg
    assert PulsedConfig.from_json(cfg.to_json()) == cfg


# -- model-specific physics ------------------------------------------------------------------------


def test_soft_bounds_converge_to_symmetry_point():
    """Random +-1 pulses drive each soft-bounds device to where its up and down steps are equal
    (Gokmen & Haensch 2020), whatever its starting weight."""
    cfg = PulsedConfig(
        device="soft_bounds",
        params={"dw_min": 0.01, "up_down": 0.0, "up_down_dtod": 0.2, "dw_min_std": 0.3},
    )
    model = get("soft_bounds")
    d2d = model.sample_d2d((2000,), cfg.params, gen(7))
    sp = symmetry_point(d2d)
    g = gen(8)
    w = torch.where(torch.rand(2000, generator=g) < 0.5, d2d["w_max"], d2d["w_min"])
    trace = torch.zeros_like(w)
    for step in range(1500):
        n_up = (torch.rand(2000, generator=g) < 0.5).float()
        w = apply_pulses(model, w, n_up, 1 - n_up, d2d, cfg.params, g)
        if step >= 1000:
            trace += w / 500
    span = (d2d["w_max"] - d2d["w_min"]).mean()
    assert (trace - sp).abs().mean() < 0.02 * span
    assert torch.corrcoef(torch.stack([trace, sp]))[0, 1] > 0.95


def test_constant_step_reaches_bound_after_enough_pulses():
    cfg = PulsedConfig(device="constant_step", params={"dw_min_std": 0.0})
    d2d, w, _ = devices_at_midpoint(cfg, 100)
    n = torch.full_like(w, 1e5)
    out = apply_pulses(get("constant_step"), w, n, torch.zeros_like(w), d2d, cfg.params, None)
    assert torch.equal(out, d2d["w_max"])
