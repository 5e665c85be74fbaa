"""Pulse trains, coincidence counting and the pulsed update of an array (``aimc.pulsed.update``,
``aimc.pulsed.PulsedArray``): closed forms of the expected update, statistics of the stochastic
one with fixed seeds, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from aimc.pulsed import (
    PulsedArray,
    PulsedConfig,
    UpdateConfig,
    expected_counts,
    presets,
    pulse_probabilities,
    slot_counts,
)

IDEAL = {
    "dw_min_dtod": 0.0,
    "dw_min_std": 0.0,
    "up_down_dtod": 0.0,
    "w_max_dtod": 0.0,
    "w_min_dtod": 0.0,
    "w_max": 10.0,
    "w_min": -10.0,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(seed: int = 0, b: int = 8, n_in: int = 6, n_out: int = 5):
    g = gen(seed)
    return torch.randn(b, n_in, generator=g), torch.randn(b, n_out, generator=g)


@pytest.mark.parametrize("um", [True, False])
@pytest.mark.parametrize("blm", [True, False])
def test_expected_counts_are_the_sgd_step(um, blm):
    """``E[n_up - n_down] dw_min = -lr delta^T x`` when no probability is clipped."""
    x, d = batch()
    x, d = 0.3 * x, 0.3 * d  # small enough that no probability is clipped at 1
    cfg = UpdateConfig(update_management=um, update_bl_management=blm)
    lr, dw_min = 0.001, 0.01
    p_x, p_d, _ = pulse_probabilities(x, d, lr, dw_min, cfg)
    assert p_x.max() < 1 and p_d.max() < 1
    up, down = expected_counts(x, d, lr, dw_min, cfg)
    torch.testing.assert_close((up - down) * dw_min, -lr * d.t() @ x, rtol=1e-4, atol=1e-6)


def test_update_and_bl_management():
    x, d = batch()
    x[3] = 0.0  # a sample with no input fires nothing
    cfg = UpdateConfig(desired_bl=31)
    lr, dw_min = 0.05, 0.001
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    x_max, d_max = x.abs().amax(1), d.abs().amax(1)
    expected_bl = torch.ceil(lr * x_max * d_max / dw_min).clamp(1, 31)
    expected_bl[3] = 0
    torch.testing.assert_close(bl.squeeze(1), expected_bl)
    live = torch.arange(8) != 3
    # update management: the largest x- and d-probabilities of a sample are equal
    torch.testing.assert_close(p_x.amax(1)[live], p_d.amax(1)[live])
    assert (p_x[3] == 0).all()


def test_stochastic_counts_average_to_expected():
    x, d = batch(1, b=4)
    cfg = UpdateConfig()
    lr, dw_min = 0.02, 0.01
    up_e, down_e = expected_counts(x, d, lr, dw_min, cfg)
    g = gen(2)
    reps = 400
    up_sum, down_sum = torch.zeros_like(up_e), torch.zeros_like(down_e)
    for _ in range(reps):
        for up, down in slot_counts(x, d, lr, dw_min, cfg, g):
            assert (up >= 0).all() and (down >= 0).all()
            assert torch.equal(up, up.round()) and torch.equal(down, down.round())
            up_sum += up
            down_sum += down
    # the count per device is a sum of Bernoullis: std <= sqrt(E / reps)
    tol = 5 * ((up_e + down_e) / reps).sqrt() + 0.02
    assert ((up_sum / reps - up_e).abs() <= tol).all()
    assert ((down_sum / reps - down_e).abs() <= tol).all()


def ideal_array(n_out=5, n_in=6, mode="stochastic", **update):
    cfg = PulsedConfig(
        device="constant_step",
        params={**IDEAL, "dw_min": 0.001, "up_down": 0.0},
        update=UpdateConfig(mode=mode, **update),
    )
    return PulsedArray(n_out, n_in, cfg, seed=0)


def test_expected_mode_is_exactly_sgd_for_an_ideal_device():
    x, d = batch(3)
    arr = ideal_array(mode="expected")
    arr.update(x, d, 0.002, gen(0))  # small enough that no probability is clipped at 1
    torch.testing.assert_close(arr.weight(), -0.002 * d.t() @ x, rtol=1e-4, atol=1e-6)


def test_stochastic_update_is_unbiased_sgd():
    x, d = batch(4)
    lr, reps = 0.002, 300
    g = gen(5)
    total = torch.zeros(5, 6)
    for _ in range(reps):
        arr = ideal_array()
        arr.update(x, d, lr, g)
        total += arr.weight()
    target = -lr * d.t() @ x
    # per device var <= dw_min * |target| / reps (Poisson-like pulse counts)
    tol = 5 * (0.001 * target.abs() / reps).sqrt() + 2e-4
    assert ((total / reps - target).abs() <= tol).all()


def test_zero_input_or_zero_lr_changes_nothing():
    cfg = presets.reram_soft_bounds()
    arr = PulsedArray(5, 6, cfg, seed=1)
    arr.write(torch.full((5, 6), 0.1))
    before = arr.weight().clone()
    x, d = batch(6)
    arr.update(torch.zeros_like(x), d, 0.1, gen(0))
    arr.update(x, torch.zeros_like(d), 0.1, gen(0))
    arr.update(x, d, 0.0, gen(0))
    assert torch.equal(arr.weight(), before)


def test_bl_management_off_uses_desired_bl_slots():
    x, d = batch(7)
    cfg = UpdateConfig(desired_bl=7, update_bl_management=False)
    _, _, bl = pulse_probabilities(x, d, 1e-4, 0.001, cfg)
    assert (bl == 7).all()


def test_same_seed_same_update_trajectory():
    x, d = batch(8)
    cfg = presets.ecram()
    weights = []
    for seed in (3, 3, 4):
        arr = PulsedArray(5, 6, cfg, seed=seed)
        g = gen(seed)
        for _ in range(5):
            arr.update(x, d, 0.05, g)
        weights.append(arr.weight())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_one_sided_pair_refresh_keeps_the_weight():
    cfg = presets.pcm_pair()
    arr = PulsedArray(40, 30, cfg, seed=2)
    arr.write(torch.full((40, 30), 0.3))
    plus, minus = arr.devices
    minus.w.copy_(1.7 * minus.d2d_w_max / 2)  # both devices high: 0.85 of w_max > 0.75
    plus.w.copy_(minus.w + 0.3)
    plus.w.copy_(plus.clip(plus.w))
    before = arr.weight().clone()
    refreshed = arr.refresh(gen(3))
    assert refreshed > 0
    assert (minus.w < 0.1).float().mean() > 0.9  # the minus device was reset
    err = (arr.weight() - before).abs()
    assert err.median() < 0.1  # re-written within a few steps of the PCM device


@pytest.mark.parametrize(
    "x_shape,d_shape,match",
    [((4, 5), (4, 5), "x has shape"), ((4, 6), (3, 5), "delta has shape"), ((6,), (5,), "x has")],
)
def test_bad_batches_raise(x_shape, d_shape, match):
    arr = ideal_array()
    with pytest.raises(ValueError, match=match):
        arr.update(torch.ones(x_shape), torch.ones(d_shape), 0.1, gen(0))


def test_non_finite_batch_raises():
    arr = ideal_array()
    x, d = batch()
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        arr.update(x, d, 0.1, gen(0))


def test_array_rejects_bad_config():
    with pytest.raises(ValueError, match="config: got dict"):
        PulsedArray(2, 3, {"device": "constant_step"})  # type: ignore[arg-type]
