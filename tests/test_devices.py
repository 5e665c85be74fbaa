"""Device physics on plain tensors (``aimc.devices``): the PCM statistical model, the custom-drift
PCM model, the Gaussian model and the weight <-> conductance-pair mapping.

Expected values are computed here from REFERENCE.md §2 (constants copied from the reference, not
imported from ``aimc``). Statistical checks use fixed seeds (``torch.Generator``) and enough
devices that the stated tolerances are many standard errors wide; where a clamp (at 0 for
conductances) or the ``|.|`` folding of the drift exponent matters, the exact moments of the
rectified / folded normal distribution are used as the expectation.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import aimc
from aimc.config import AnalogConfig, DeviceConfig
from aimc.devices.gaussian import GaussianParams
from aimc.devices.pcm import PCMParams
from aimc.devices.pcm_custom_drift import PCMCustomDriftParams

PCM = aimc.devices.get("pcm")
CUSTOM = aimc.devices.get("pcm_custom_drift")
GAUSS = aimc.devices.get("gaussian")

# REFERENCE.md §2 constants.
C_PROG = (0.26348, 1.9650, -1.1731)
T0 = 20.0
T_READ = 250e-9
HOUR, DAY, YEAR = 3600.0, 86400.0, 365.25 * 86400.0

N = 50_000  # devices per statistical check: std rel. s.e. ~ 1/sqrt(2N) = 0.3 %, 3 % is 9 s.e.


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def full(g: float, n: int = N) -> torch.Tensor:
    return torch.full((n,), float(g), dtype=torch.float32)


# -- reference formulas (REFERENCE.md §2) -------------------------------------------------------


def sigma_prog(g: float, g_max: float = 25.0) -> float:
    r = g / g_max
    return (C_PROG[0] + C_PROG[1] * r + C_PROG[2] * r * r) * g_max / 25.0


def nu_stats(g: float, g_max: float = 25.0) -> tuple[float, float]:
    log_r = math.log(max(abs(g / g_max), 1e-7))
    mu = min(max(-0.0155 * log_r + 0.0244, 0.049), 0.1)
    sigma = min(max(-0.0125 * log_r - 0.0059, 0.008), 0.045)
    return mu, sigma


def q_s(g: float, g_max: float = 25.0) -> float:
    return min(0.0088 / max((abs(g) / g_max) ** 0.65, 1e-3), 0.2)


def sigma_read(t_inf: float) -> float:
    t = t_inf + T0
    return math.sqrt(math.log((t + T_READ) / (2 * T_READ)))


# -- moments of clamped / folded normals ----------------------------------------------------------


def _pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def rectified_moments(mu: float, s: float) -> tuple[float, float]:
    """Mean and std of ``max(0, N(mu, s^2))``."""
    a = mu / s
    m1 = mu * _cdf(a) + s * _pdf(a)
    m2 = (mu * mu + s * s) * _cdf(a) + mu * s * _pdf(a)
    return m1, math.sqrt(max(m2 - m1 * m1, 0.0))


def folded_moments(mu: float, s: float) -> tuple[float, float]:
    """Mean and std of ``|N(mu, s^2)|``."""
    m1 = s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * (
        1 - 2 * _cdf(-mu / s)
    )
    m2 = mu * mu + s * s
    return m1, math.sqrt(m2 - m1 * m1)


def mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return x.mean().item(), x.std().item()


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ==============================================================================================
# PCM: programming noise


@pytest.mark.parametrize("g", [1.0, 5.0, 10.0, 20.0, 25.0])
def test_pcm_programming_noise_std_follows_polynomial(g):
    state = PCM.program(full(g), PCMParams(), gen(1))
    exp_mean, exp_std = rectified_moments(g, sigma_prog(g))  # clamp at 0 only matters at 1 µS
    mean, std = mean_std(state["g"])
    assert rel(std, exp_std) < 0.03, (std, exp_std)  # 3 % (~9 s.e.)
    # unbiased: mean within 5 standard errors of the (clamp-corrected) target
    assert abs(mean - exp_mean) < 5 * exp_std / math.sqrt(N), (mean, exp_mean)


@pytest.mark.parametrize("g", [10.0, 20.0, 25.0])
def test_pcm_programming_noise_mean_is_target_far_from_zero(g):
    out = PCM.program(full(g), PCMParams(), gen(2))["g"]
    assert abs(out.double().mean().item() - g) < 5 * sigma_prog(g) / math.sqrt(N)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_pcm_prog_noise_scale_scales_std(scale):
    g = 15.0
    out = PCM.program(full(g), PCMParams(prog_noise_scale=scale), gen(3))["g"]
    assert rel(mean_std(out)[1], scale * sigma_prog(g)) < 0.03


def test_pcm_prog_noise_scale_zero_programs_exactly():
    target = torch.linspace(0, 25, 1001)
    out = PCM.program(target, PCMParams(prog_noise_scale=0.0), gen(4))["g"]
    assert torch.equal(out, target)


def test_pcm_prog_noise_same_draw_scaled_by_prog_noise_scale():
    # same generator seed -> the same xi: the deviation scales exactly with prog_noise_scale
    target = full(12.0, 1000)
    d1 = PCM.program(target, PCMParams(prog_noise_scale=1.0), gen(5))["g"] - target
    d3 = PCM.program(target, PCMParams(prog_noise_scale=3.0), gen(5))["g"] - target
    torch.testing.assert_close(d3, 3 * d1, rtol=1e-5, atol=1e-5)


def test_pcm_programming_clamps_at_zero():
    out = PCM.program(full(0.0), PCMParams(), gen(6))["g"]
    assert out.min().item() >= 0.0
    frac_zero = (out == 0).double().mean().item()
    assert abs(frac_zero - 0.5) < 0.02  # half the draws are negative -> clamped to 0 (s.e. 0.2 %)
    exp_mean, exp_std = rectified_moments(0.0, sigma_prog(0.0))
    mean, std = mean_std(out)
    assert rel(mean, exp_mean) < 0.03 and rel(std, exp_std) < 0.03


@pytest.mark.parametrize("g_max", [10.0, 50.0, 100.0])
@pytest.mark.parametrize("frac", [0.2, 0.8])
def test_pcm_programming_noise_scales_with_g_max(g_max, frac):
    g = frac * g_max
    out = PCM.program(full(g), PCMParams(g_max=g_max), gen(7))["g"]
    expected = sigma_prog(g, g_max)  # = polynomial(g/g_max) * g_max / 25
    assert math.isclose(expected, sigma_prog(frac * 25.0) * g_max / 25.0, rel_tol=1e-12)
    assert rel(mean_std(out)[1], expected) < 0.03


def test_pcm_prog_coeff_is_used():
    out = PCM.program(full(10.0), PCMParams(prog_coeff=(1.0, 0.0, 0.0)), gen(8))["g"]
    assert rel(mean_std(out)[1], 1.0) < 0.03  # constant 1 µS std at g_max = 25


# ==============================================================================================
# PCM: drift exponent


@pytest.mark.parametrize("g", [0.0, 0.5, 1.0, 3.0, 5.0, 10.0, 25.0])
def test_pcm_drift_exponent_statistics(g):
    nu = PCM.program(full(g), PCMParams(), gen(10))["nu"]
    mu, sigma = nu_stats(g)
    exp_mean, exp_std = folded_moments(mu, sigma)  # nu = |mu + sigma xi|
    mean, std = mean_std(nu)
    assert rel(mean, exp_mean) < 0.03, (mean, exp_mean)  # s.e. <= 0.3 %
    assert rel(std, exp_std) < 0.05, (std, exp_std)  # s.e. ~ 0.3-0.5 %


@pytest.mark.parametrize("g", [10.0, 25.0])
def test_pcm_drift_exponent_unfolded_where_mu_dominates(g):
    # mu >> sigma: |.| folding is irrelevant, nu ~ N(mu, sigma^2) directly
    nu = PCM.program(full(g), PCMParams(), gen(11))["nu"]
    mu, sigma = nu_stats(g)
    mean, std = mean_std(nu)
    assert rel(mean, mu) < 0.03 and rel(std, sigma) < 0.05


def test_pcm_drift_exponent_clip_bounds():
    assert nu_stats(0.0) == (0.1, 0.045)  # g_rel -> 1e-7: both at their upper clip
    assert nu_stats(25.0) == (0.049, 0.008)  # g = g_max: max(0.0244, 0.049), max(-0.0059, 0.008)
    mu, sigma = aimc.devices.pcm.nu_mean_std(torch.tensor([0.0, 1e-12, 25.0]), PCMParams())
    torch.testing.assert_close(mu, torch.tensor([0.1, 0.1, 0.049]))
    torch.testing.assert_close(sigma, torch.tensor([0.045, 0.045, 0.008]))


@pytest.mark.parametrize("g", [0.3, 2.0, 4.0, 7.0, 18.0])
def test_pcm_nu_mean_std_function_matches_reference(g):
    mu, sigma = aimc.devices.pcm.nu_mean_std(torch.tensor([g], dtype=torch.float64), PCMParams())
    exp_mu, exp_sigma = nu_stats(g)
    assert math.isclose(mu.item(), exp_mu, rel_tol=1e-9)
    assert math.isclose(sigma.item(), exp_sigma, rel_tol=1e-9)


def test_pcm_drift_exponent_uses_target_not_programmed_conductance():
    # huge programming noise must not change the nu statistics of a 25 µS target
    nu = PCM.program(full(25.0), PCMParams(prog_noise_scale=20.0), gen(12))["nu"]
    mean, std = mean_std(nu)
    assert rel(mean, 0.049) < 0.03 and rel(std, 0.008) < 0.05


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])
def test_pcm_drift_scale_multiplies_nu(scale):
    target = torch.linspace(0, 25, 5001)
    nu1 = PCM.program(target, PCMParams(), gen(13))["nu"]
    nus = PCM.program(target, PCMParams(drift_scale=scale), gen(13))["nu"]
    torch.testing.assert_close(nus, scale * nu1, rtol=1e-6, atol=0)


def test_pcm_nu_non_negative():
    target = torch.cat([full(0.0), full(0.5), full(25.0)])
    nu = PCM.program(target, PCMParams(), gen(14))["nu"]
    assert nu.min().item() >= 0
    assert torch.isfinite(nu).all()


# ==============================================================================================
# PCM: drift


@pytest.mark.parametrize("g", [1.0, 5.0, 25.0])
@pytest.mark.parametrize("t", [HOUR, DAY, YEAR])
def test_pcm_median_drift_factor(g, t):
    params = PCMParams(read_noise_scale=0.0)
    state = PCM.program(full(g), params, gen(20))
    g_t = PCM.drift(state, t, params, gen(21))
    ok = state["g"] > 0
    ratio = (g_t[ok] / state["g"][ok]).double()
    t_total = t + T0
    # per device the ratio is exactly (t_total/t0)^-nu (no read noise)
    expected = (t_total / T0) ** (-state["nu"][ok].double())
    torch.testing.assert_close(ratio, expected, rtol=2e-5, atol=0)
    # the median drift factor is the factor of the median nu ~ mu_nu: within 2 %
    mu, _ = nu_stats(g)
    assert rel(ratio.median().item(), (t_total / T0) ** (-mu)) < 0.02


def test_pcm_no_drift_at_time_zero_without_read_noise():
    params = PCMParams(read_noise_scale=0.0)
    state = PCM.program(torch.linspace(0, 25, 1001), params, gen(22))
    assert torch.equal(PCM.drift(state, 0.0, params, gen(23)), state["g"])
    assert torch.equal(PCM.drift(state, 0, params, gen(23)), state["g"])


def test_pcm_drift_is_monotone_in_time_without_read_noise():
    params = PCMParams(read_noise_scale=0.0)
    state = PCM.program(torch.linspace(0.5, 25, 1001), params, gen(24))
    prev = state["g"]
    for t in [1.0, HOUR, DAY, YEAR]:
        g_t = PCM.drift(state, t, params, gen(25))
        assert (g_t <= prev).all()
        prev = g_t


@pytest.mark.parametrize("g", [5.0, 10.0, 25.0])
@pytest.mark.parametrize("t", [0.0, HOUR, YEAR])
def test_pcm_read_noise_std(g, t):
    params = PCMParams(drift_scale=0.0, prog_noise_scale=0.0)
    state = PCM.program(full(g), params, gen(30))
    g_t = PCM.drift(state, t, params, gen(31))
    dev = (g_t.double() - g) / g
    expected = q_s(g) * sigma_read(t)  # at most 0.14 here: the clamp at 0 is > 7 sigma away
    mean, std = dev.mean().item(), dev.std().item()
    assert rel(std, expected) < 0.03, (std, expected)
    assert abs(mean) < 5 * expected / math.sqrt(N)


def test_pcm_read_noise_time_and_conductance_dependence_exact():
    """Same read seed -> the same xi: per device the relative deviations at two times (or two
    conductances) are in the exact ratio of sigma_read (or Q_s) -- no statistics involved."""
    params = PCMParams(drift_scale=0.0, prog_noise_scale=0.0)

    def rel_dev(g: float, t: float) -> torch.Tensor:
        state = PCM.program(full(g, 2000), params, gen(40))
        return (PCM.drift(state, t, params, gen(41)).double() - g) / g

    base = rel_dev(10.0, 0.0)
    for t in (1.0, HOUR, YEAR):
        torch.testing.assert_close(
            rel_dev(10.0, t), base * (sigma_read(t) / sigma_read(0.0)), rtol=1e-4, atol=1e-7
        )
    for g in (2.0, 25.0):
        torch.testing.assert_close(
            rel_dev(g, 0.0), base * (q_s(g) / q_s(10.0)), rtol=1e-4, atol=1e-7
        )


def test_pcm_read_noise_at_time_zero_is_evaluated_at_t0():
    params = PCMParams(drift_scale=0.0, prog_noise_scale=0.0)
    state = PCM.program(full(10.0), params, gen(32))
    g_t = PCM.drift(state, 0.0, params, gen(33))
    assert not torch.equal(g_t, state["g"])  # read noise present at t_inference = 0
    std = ((g_t.double() - 10.0) / 10.0).std().item()
    assert rel(std, q_s(10.0) * math.sqrt(math.log((T0 + T_READ) / (2 * T_READ)))) < 0.03


def test_pcm_read_noise_fresh_on_every_call():
    params = PCMParams()
    state = PCM.program(torch.linspace(1, 25, 1000), params, gen(34))
    g = gen(35)
    a = PCM.drift(state, HOUR, params, g)
    b = PCM.drift(state, HOUR, params, g)  # generator advanced: new read noise
    assert not torch.equal(a, b)
    c = PCM.drift(state, HOUR, params, gen(35))  # same seed: same read noise
    assert torch.equal(a, c)


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])
def test_pcm_read_noise_scale(scale):
    g = 10.0
    params = PCMParams(drift_scale=0.0, prog_noise_scale=0.0, read_noise_scale=scale)
    state = PCM.program(full(g), params, gen(36))
    g_t = PCM.drift(state, DAY, params, gen(37))
    std = ((g_t.double() - g) / g).std().item()
    expected = scale * q_s(g) * sigma_read(DAY)
    if scale == 0:
        assert std == 0
    else:
        assert rel(std, expected) < 0.03


def test_pcm_read_noise_uses_programmed_conductance_and_clamps_at_zero():
    params = PCMParams(drift_scale=0.0, prog_noise_scale=0.0)
    state = PCM.program(full(0.1), params, gen(38))  # Q_s capped at 0.2: sigma ~ 1.1 at 1 year
    g_t = PCM.drift(state, YEAR, params, gen(39))
    assert g_t.min().item() >= 0
    assert (g_t == 0).any()


def test_pcm_q_s_function_matches_reference():
    g = torch.tensor([0.0, 1e-3, 0.1, 1.0, 5.0, 25.0, 30.0], dtype=torch.float64)
    q = aimc.devices.pcm.read_noise_q(g, PCMParams())
    torch.testing.assert_close(q, torch.tensor([q_s(v) for v in g.tolist()], dtype=torch.float64))
    assert q[0].item() == 0.2 and math.isclose(q[5].item(), 0.0088, rel_tol=1e-12)


# ==============================================================================================
# pcm_custom_drift


@pytest.mark.parametrize("drift_scale", [1.0, 0.5])
def test_custom_drift_constant_table(drift_scale):
    params = PCMCustomDriftParams(
        g_points=(0.0, 25.0), nu_mean=(0.06, 0.06), nu_std=(0.0, 0.0), drift_scale=drift_scale
    )
    target = torch.linspace(0, 25, 1001)
    nu = CUSTOM.program(target, params, gen(40))["nu"]
    torch.testing.assert_close(nu, torch.full_like(nu, 0.06 * drift_scale), rtol=1e-6, atol=0)


def test_custom_drift_linear_interpolation_and_end_clamps():
    params = PCMCustomDriftParams(
        g_points=(0.0, 10.0, 25.0), nu_mean=(0.1, 0.06, 0.04), nu_std=(0.0, 0.0, 0.0)
    )
    target = torch.tensor([0.0, 2.5, 5.0, 10.0, 17.5, 25.0, 30.0])
    nu = CUSTOM.program(target, params, gen(41))["nu"]
    expected = torch.tensor([0.1, 0.09, 0.08, 0.06, 0.05, 0.04, 0.04])
    torch.testing.assert_close(nu, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "g_points, g_max",
    [((5.0, 20.0), 25.0), ((0.0, 20.0), 25.0), ((1e-3, 25.0), 25.0), ((0.0, 25.0), 40.0)],
)
def test_custom_drift_table_must_cover_the_conductance_range(g_points, g_max):
    # AIHWKIT's CustomDriftPCMLikeNoiseModel refuses a table narrower than 0 .. g_max
    # ("g_converter producing conductances ... outside the range of the custom drift model")
    with pytest.raises(ValueError) as err:
        PCMCustomDriftParams(
            g_points=g_points, nu_mean=(0.08, 0.05), nu_std=(0.0, 0.0), g_max=g_max
        )
    msg = str(err.value)
    assert msg.startswith("device.params.g_points: got") and f"g_max = {g_max:g}" in msg
    # covering it is enough, and wider is allowed
    PCMCustomDriftParams(
        g_points=(0.0, g_max), nu_mean=(0.08, 0.05), nu_std=(0.0, 0.0), g_max=g_max
    )
    PCMCustomDriftParams(g_points=(0.0, 2 * g_max), nu_mean=(0.1, 0.1), nu_std=(0, 0), g_max=g_max)


def test_custom_drift_targets_beyond_the_table_take_its_end_values():
    # only a direct call of program() can pass targets outside 0 .. g_max
    params = PCMCustomDriftParams(
        g_points=(0.0, 20.0), nu_mean=(0.08, 0.05), nu_std=(0.0, 0.0), g_max=20.0
    )
    nu = CUSTOM.program(torch.tensor([0.0, 20.0, 26.0]), params, gen(42))["nu"]
    torch.testing.assert_close(nu, torch.tensor([0.08, 0.05, 0.05]), rtol=1e-6, atol=0)


def test_custom_drift_interpolated_std():
    params = PCMCustomDriftParams(
        g_points=(0.0, 20.0), nu_mean=(0.06, 0.06), nu_std=(0.0, 0.02), g_max=20.0
    )
    nu = CUSTOM.program(full(10.0), params, gen(43))["nu"]
    mean, std = mean_std(nu)
    exp_mean, exp_std = folded_moments(0.06, 0.01)  # mu / sigma = 6: folding negligible
    assert rel(mean, exp_mean) < 0.03 and rel(std, exp_std) < 0.03


def test_custom_drift_rest_is_pcm():
    # programming noise and drift/read noise are the pcm model's
    params = PCMCustomDriftParams()
    out = CUSTOM.program(full(20.0), params, gen(44))["g"]
    assert rel(mean_std(out)[1], sigma_prog(20.0)) < 0.03
    ref = PCM.program(full(20.0), PCMParams(), gen(44))["g"]
    assert torch.equal(out, ref)  # same seed, same programming draws


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"g_points": (0.0, 10.0, 10.0)}, "g_points"),
        ({"g_points": (0.0, 20.0, 10.0)}, "g_points"),
        ({"g_points": (-1.0, 10.0, 25.0)}, "g_points"),
        ({"g_points": (0.0,), "nu_mean": (0.1,), "nu_std": (0.01,)}, "g_points"),
        ({"nu_mean": (0.1, -0.05, 0.049)}, "nu_mean"),
        ({"nu_std": (0.045, 0.01, -0.008)}, "nu_std"),
        ({"nu_mean": (0.1, float("nan"), 0.049)}, "nu_mean"),
        ({"nu_std": (0.045, True, 0.008)}, "nu_std"),
        ({"nu_mean": "0.1"}, "nu_mean"),
    ],
)
def test_custom_drift_validation(changes, field):
    with pytest.raises(ValueError, match=rf"device\.params\.{field}\b"):
        PCMCustomDriftParams(**changes)
    with pytest.raises(ValueError, match=rf"device\.params\.{field}\b"):
        DeviceConfig(model="pcm_custom_drift", params=changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"nu_mean": (0.1, 0.05)},
        {"nu_std": (0.045, 0.01, 0.008, 0.001)},
        {"g_points": (0.0, 25.0)},
    ],
)
def test_custom_drift_length_mismatch(changes):
    with pytest.raises(ValueError, match=r"device\.params\.(g_points|nu_mean|nu_std)\b"):
        PCMCustomDriftParams(**changes)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"nu_mean": (0.1, 0.05, float("inf"))}, "nu_mean"),
        ({"g_points": (0.0, 12.5, float("inf"))}, "g_points"),
    ],
)
def test_custom_drift_rejects_infinite_table_entries(changes, field):
    with pytest.raises(ValueError, match=rf"device\.params\.{field}\b"):
        PCMCustomDriftParams(**changes)


# ==============================================================================================
# gaussian


def test_gaussian_programming_std():
    params = GaussianParams(g_max=40.0, prog_std=0.02)
    out = GAUSS.program(full(20.0), params, gen(50))["g"]
    mean, std = mean_std(out)
    assert rel(std, 0.02 * 40.0) < 0.03
    assert abs(mean - 20.0) < 5 * 0.8 / math.sqrt(N)


def test_gaussian_programming_clamps_at_zero():
    out = GAUSS.program(full(0.0), GaussianParams(), gen(51))["g"]
    assert out.min().item() >= 0 and (out == 0).any()


@pytest.mark.parametrize("t", [0.0, HOUR, YEAR])
def test_gaussian_read_std(t):
    params = GaussianParams(g_max=25.0, prog_std=0.0, read_std=0.01, nu=0.0)
    state = GAUSS.program(full(15.0), params, gen(52))
    g_t = GAUSS.drift(state, t, params, gen(53))
    assert rel(mean_std(g_t - 15.0)[1], 0.01 * 25.0) < 0.03


@pytest.mark.parametrize("nu", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("t", [0.0, 1.0, HOUR, YEAR])
def test_gaussian_drift_factor_exact(nu, t):
    params = GaussianParams(read_std=0.0, nu=nu, t0=20.0)
    state = GAUSS.program(torch.linspace(0, 25, 101), params, gen(54))
    g_t = GAUSS.drift(state, t, params, gen(55))
    factor = ((t + 20.0) / 20.0) ** (-nu)
    torch.testing.assert_close(g_t, state["g"] * factor, rtol=1e-6, atol=1e-7)
    if t == 0:
        assert torch.equal(g_t, state["g"])


# ==============================================================================================
# weight <-> conductance pairs


def _tiles(seed: int, b: int = 3, n_out: int = 2, cols: int = 5, ci: int = 7) -> torch.Tensor:
    return torch.randn(b, n_out * cols, ci, generator=gen(seed))


@pytest.mark.parametrize("g_max", [25.0, 1.0, 100.0])
@pytest.mark.parametrize("n_out", [1, 2, 5])
def test_to_conductances_round_trip_and_ranges(g_max, n_out):
    w = _tiles(60, n_out=n_out)
    g_pos, g_neg, scale = aimc.devices.to_conductances(w, n_out, g_max)
    assert g_pos.shape == g_neg.shape == w.shape
    assert scale.shape == (w.shape[0], n_out)
    torch.testing.assert_close(aimc.devices.from_conductances(g_pos, g_neg, scale), w)
    assert torch.all(g_pos * g_neg == 0)  # one device of each pair is zero
    for g in (g_pos, g_neg):
        assert g.min().item() >= 0 and g.max().item() <= g_max
    # per tile: scale = g_max / max|W_tile|, and the largest weight sits at g_max
    wt = w.view(w.shape[0], n_out, -1, w.shape[2])
    expected = g_max / wt.abs().amax(dim=(2, 3))
    torch.testing.assert_close(scale, expected)
    gmax_tile = torch.maximum(g_pos, g_neg).view_as(wt).amax(dim=(2, 3))
    torch.testing.assert_close(gmax_tile, torch.full_like(gmax_tile, g_max))


def test_to_conductances_signs():
    w = torch.tensor([[[0.5, -0.25, 0.0, -1.0]]])
    g_pos, g_neg, scale = aimc.devices.to_conductances(w, 1, 25.0)
    assert scale.item() == 25.0
    torch.testing.assert_close(g_pos, torch.tensor([[[12.5, 0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(g_neg, torch.tensor([[[0.0, 6.25, 0.0, 25.0]]]))


def test_to_conductances_zero_tile():
    w = _tiles(61, n_out=2)
    w[1, :5] = 0.0  # the first output tile of the second input split is all zero
    g_pos, g_neg, scale = aimc.devices.to_conductances(w, 2, 25.0)
    assert torch.isfinite(scale).all()
    assert math.isclose(scale[1, 0].item(), 25.0 / 1e-7, rel_tol=1e-6)
    assert torch.all(g_pos[1, :5] == 0) and torch.all(g_neg[1, :5] == 0)
    torch.testing.assert_close(aimc.devices.from_conductances(g_pos, g_neg, scale), w)


# ==============================================================================================
# Battery over all device models

BATTERY = [
    ("pcm", {}),
    (
        "pcm",
        {
            "g_max": 10.0,
            "prog_noise_scale": 0.5,
            "read_noise_scale": 2.0,
            "drift_scale": 1.5,
            "t0": 5.0,
            "t_read": 1e-6,
            "prog_coeff": (0.1, 1.0, -0.5),
        },
    ),
    ("pcm_custom_drift", {}),
    (
        "pcm_custom_drift",
        {
            "g_max": 30.0,
            "g_points": (0.0, 5.0, 30.0),
            "nu_mean": (0.08, 0.06, 0.05),
            "nu_std": (0.02, 0.01, 0.0),
            "drift_scale": 0.7,
        },
    ),
    ("gaussian", {}),
    ("gaussian", {"g_max": 40.0, "prog_std": 0.05, "read_std": 0.005, "nu": 0.1, "t0": 1.0}),
]
BATTERY_IDS = [f"{name}-{'custom' if p else 'default'}" for name, p in BATTERY]

# (field, bad value) that every row of a model must reject, naming device.params.<field>
BAD_COMMON = [
    ("g_max", 0.0),
    ("g_max", -25.0),
    ("g_max", float("nan")),
    ("g_max", float("inf")),
    ("g_max", True),
    ("g_max", "25"),
    ("t0", 0.0),
]
BAD = {
    "pcm": BAD_COMMON
    + [
        ("prog_noise_scale", -0.1),
        ("read_noise_scale", -1.0),
        ("drift_scale", -1e-9),
        ("t_read", 0.0),
        ("prog_coeff", (1.0, 2.0)),
        ("prog_coeff", (float("nan"), 0.0, 0.0)),
    ],
    "gaussian": BAD_COMMON + [("prog_std", -0.01), ("read_std", -1.0), ("nu", -0.05)],
}
BAD["pcm_custom_drift"] = BAD["pcm"] + [("nu_mean", (0.1, -0.1, 0.0))]
BAD_CASES = [(m, f, v) for m, rows in BAD.items() for f, v in rows]


def _params(name: str, changes: dict):
    return aimc.devices.get(name).params_class(**changes)


@pytest.mark.parametrize("name, changes", BATTERY, ids=BATTERY_IDS)
@pytest.mark.parametrize("shape", [(3, 10, 7), (17,), (0, 4)])
def test_battery_shape_dtype_device(name, changes, shape):
    model, params = aimc.devices.get(name), _params(name, changes)
    target = torch.rand(shape, generator=gen(70)) * params.g_max
    state = model.program(target, params, gen(71))
    assert "g" in state
    for key, value in state.items():
        assert value.shape == target.shape, key
        assert value.dtype == target.dtype, key
        assert value.device == target.device, key
    g_t = model.drift(state, HOUR, params, gen(72))
    assert g_t.shape == target.shape and g_t.dtype == torch.float32 and g_t.device == target.device
    # the chip stores state as float16: drift reads it and computes in float32
    half = {k: v.half() for k, v in state.items()}
    g_h = model.drift(half, HOUR, params, gen(72))
    assert g_h.shape == target.shape and g_h.dtype == torch.float32
    assert torch.isfinite(g_t).all() and (g_t >= 0).all() and (state["g"] >= 0).all()


@pytest.mark.parametrize("name, changes", BATTERY, ids=BATTERY_IDS)
def test_battery_float64_program_keeps_dtype(name, changes):
    model, params = aimc.devices.get(name), _params(name, changes)
    target = torch.rand(50, dtype=torch.float64, generator=gen(73)) * params.g_max
    for value in model.program(target, params, gen(74)).values():
        assert value.dtype == torch.float64


@pytest.mark.parametrize("name, changes", BATTERY, ids=BATTERY_IDS)
def test_battery_seeding(name, changes):
    model, params = aimc.devices.get(name), _params(name, changes)
    target = torch.rand(40, 30, generator=gen(75)) * params.g_max
    s1, s2, s3 = (model.program(target, params, gen(s)) for s in (1, 1, 2))
    assert s1.keys() == s2.keys() == s3.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["g"], s3["g"])
    d1, d2, d3 = (model.drift(s1, DAY, params, gen(s)) for s in (5, 5, 6))
    assert torch.equal(d1, d2)
    assert not torch.equal(d1, d3)
    # drift does not modify the state it reads
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("name, changes", BATTERY, ids=BATTERY_IDS)
def test_battery_params_round_trip(name, changes):
    cls = aimc.devices.get(name).params_class
    params = cls(**changes)
    d = params.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert cls.from_dict(d) == params
    cfg = AnalogConfig(device=DeviceConfig(model=name, params=changes, drift_compensation="global"))
    assert isinstance(cfg.device.params, cls) and cfg.device.params == params
    back = AnalogConfig.from_json(cfg.to_json())
    assert back == cfg
    assert type(back.device.params) is cls
    assert AnalogConfig.from_dict(cfg.to_dict()) == cfg
    # params given as the dataclass instance are kept as such
    assert DeviceConfig(model=name, params=params).params == params


@pytest.mark.parametrize("model, field, value", BAD_CASES)
def test_battery_bad_params_raise_naming_field(model, field, value):
    cls = aimc.devices.get(model).params_class
    pattern = rf"device\.params\.{field}\b"
    with pytest.raises(ValueError, match=pattern):
        cls(**{field: value})
    with pytest.raises(ValueError, match=pattern):
        DeviceConfig(model=model, params={field: value})
    cfg = AnalogConfig(device=DeviceConfig(model=model)).to_dict()
    cfg["device"]["params"][field] = value
    with pytest.raises(ValueError, match=pattern):
        AnalogConfig.from_dict(cfg)


@pytest.mark.parametrize("model", ["pcm", "pcm_custom_drift", "gaussian"])
def test_battery_unknown_param_key(model):
    with pytest.raises(ValueError, match=r"device\.params\b.*'bogus'"):
        DeviceConfig(model=model, params={"bogus": 1.0})
    with pytest.raises(ValueError, match=r"device\.params\b.*'bogus'"):
        aimc.devices.get(model).params_class.from_dict({"bogus": 1.0})


def test_gaussian_rejects_pcm_only_key():
    with pytest.raises(ValueError, match=r"device\.params\b.*'drift_scale'"):
        DeviceConfig(model="gaussian", params={"drift_scale": 1.0})


def test_params_of_another_model_rejected():
    with pytest.raises(ValueError, match=r"device\.params\b"):
        DeviceConfig(model="gaussian", params=PCMParams())
    with pytest.raises(ValueError, match=r"device\.params\b"):
        DeviceConfig(model="pcm_custom_drift", params=PCMParams())


def test_params_subclass_of_another_model_rejected_or_round_trips():
    try:
        cfg = AnalogConfig(device=DeviceConfig(model="pcm", params=PCMCustomDriftParams()))
    except ValueError as err:
        assert "device.params" in str(err)
        return
    assert AnalogConfig.from_json(cfg.to_json()) == cfg


def test_registry():
    assert {"pcm", "pcm_custom_drift", "gaussian"} <= set(aimc.devices.DEVICE_MODELS)
    for name in ("pcm", "pcm_custom_drift", "gaussian"):
        model = aimc.devices.get(name)
        assert model.name == name
        assert aimc.config.DEVICE_PARAMS[name] is model.params_class
    with pytest.raises(ValueError, match=r"device\.model"):
        aimc.devices.get("no_such_device")


def test_default_params_match_reference():
    p = PCMParams()
    assert (p.g_max, p.t0, p.t_read, p.prog_coeff) == (25.0, T0, T_READ, C_PROG)
    assert (p.prog_noise_scale, p.read_noise_scale, p.drift_scale) == (1.0, 1.0, 1.0)
