"""Statistics of each noise term and the management schemes against their closed forms.

Every check uses a fixed seed; tolerances are stated next to each assertion. With n independent
Gaussian samples the relative standard error of a measured std is about 1/sqrt(2n); all checks
use n >= 20,000 and a 3 % tolerance (> 4 standard errors).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import aimc
from aimc import AnalogConfig, IOConfig, MappingConfig
from aimc.nn import AnalogLinear

QUIET = dict(inp_res=0.0, out_res=0.0, out_noise=0.0, bound_management="none")


def layer(
    weight: torch.Tensor, seed: int = 0, mapping: MappingConfig | None = None, **io
) -> AnalogLinear:
    out, inp = weight.shape
    # per-tile weight scaling (omega 1) unless a test says otherwise: the closed forms below
    # divide by the tile scale c = max|W| (AIHWKIT's default, omega 0, has c = 1)
    mapping = mapping or MappingConfig(weight_scaling_omega=1.0)
    cfg = AnalogConfig(io=IOConfig(**io), mapping=mapping)
    lin = AnalogLinear(inp, out, bias=False, config=cfg, seed=seed)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def rel_close(measured: float, expected: float, tol: float = 0.03) -> bool:
    return abs(measured - expected) <= tol * expected


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("omega", [1.0, 0.0])
def test_output_noise_std(gen, omega):
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.rand(400, 32, generator=gen) - 0.5
    mapping = MappingConfig(weight_scaling_omega=omega)
    lin = layer(w, mapping=mapping, **{**QUIET, "out_noise": 0.06}, noise_management="abs_max")
    with torch.no_grad():
        err = lin(x) - x @ w.T
    # y = s * c * (W/c x/s + sigma xi): noise std = sigma * s * c per vector (c = 1: no scaling)
    s = x.abs().amax(dim=1, keepdim=True)
    c = w.abs().max() if omega else 1.0
    normalised = err / (s * c)
    assert rel_close(float(normalised.std()), 0.06)
    assert abs(float(normalised.mean())) < 0.003


def test_additive_constant_weight_noise(gen):
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.rand(400, 32, generator=gen) - 0.5
    lin = layer(
        w, **QUIET, noise_management="abs_max", w_noise_type="additive_constant", w_noise=0.05
    )
    with torch.no_grad():
        err = lin(x) - x @ w.T
    s = x.abs().amax(dim=1, keepdim=True)
    c = w.abs().max()
    x_dac = x / s
    expected = 0.05 * x_dac.norm(dim=1, keepdim=True)  # w_noise * ||x'||_2
    z = err / (s * c * expected)
    assert rel_close(float(z.std()), 1.0)


def test_pcm_read_weight_noise(gen):
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.rand(400, 32, generator=gen) - 0.5
    lin = layer(w, **QUIET, noise_management="abs_max", w_noise_type="pcm_read", w_noise=0.0175)
    with torch.no_grad():
        err = lin(x) - x @ w.T
    s = x.abs().amax(dim=1, keepdim=True)
    c = w.abs().max()
    w_tile, x_dac = w / c, x / s
    expected = 0.0175 * torch.sqrt(x_dac.square() @ w_tile.abs().T)  # (N, out)
    z = err / (s * c * expected)
    assert rel_close(float(z.std()), 1.0)


def test_pcm_read_and_output_noise_add_in_quadrature(gen):
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.rand(400, 32, generator=gen) - 0.5
    lin = layer(
        w,
        **{**QUIET, "out_noise": 0.04},
        noise_management="abs_max",
        w_noise_type="pcm_read",
        w_noise=0.07,
    )
    with torch.no_grad():
        err = lin(x) - x @ w.T
    s = x.abs().amax(dim=1, keepdim=True)
    c = w.abs().max()
    var_w = 0.07**2 * ((x / s).square() @ (w / c).abs().T)
    z = err / (s * c * torch.sqrt(var_w + 0.04**2))
    assert rel_close(float(z.std()), 1.0)


def test_input_noise(gen):
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.rand(400, 32, generator=gen) * 0.5 - 0.25
    lin = layer(
        w,
        **QUIET,
        noise_management="none",
        inp_noise=0.02,
        mapping=MappingConfig(weight_scaling_omega=0),
    )
    with torch.no_grad():
        err = lin(x) - x @ w.T
    expected = 0.02 * w.norm(dim=1)  # y_i noise = sum_j W_ij * sigma * xi_j
    z = err / expected
    assert rel_close(float(z.std()), 1.0)


def test_dac_quantization_error_is_uniform(gen):
    """7-bit DAC, no other non-ideality: the input error is uniform in +-step/2."""
    w = torch.eye(32)
    x = torch.rand(2000, 32, generator=gen) * 2 - 1
    x[:, 0] = 1.0  # abs_max scale is exactly 1
    lin = layer(
        w,
        **{**QUIET, "inp_res": 1 / 126},
        noise_management="abs_max",
        mapping=MappingConfig(weight_scaling_omega=0),
    )
    with torch.no_grad():
        y = lin(x)
    step = 2 / 126
    levels = y / step
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    err = (y - x)[:, 1:]
    assert float(err.abs().max()) <= step / 2 + 1e-6
    assert rel_close(float(err.std()), step / math.sqrt(12))


def test_abs_max_rescales_instead_of_clipping(gen):
    w = torch.rand(16, 32, generator=gen) - 0.5
    x = (torch.rand(64, 32, generator=gen) - 0.5) * 1000  # far outside inp_bound=1
    exact = x @ w.T
    managed = layer(w, **{**QUIET, "inp_res": 1 / 126}, noise_management="abs_max")
    unmanaged = layer(w, **{**QUIET, "inp_res": 1 / 126}, noise_management="none")
    with torch.no_grad():
        e_managed = float((managed(x) - exact).norm() / exact.norm())
        e_unmanaged = float((unmanaged(x) - exact).norm() / exact.norm())
    assert e_managed < 0.02  # only DAC rounding remains
    assert e_unmanaged > 0.9  # clipped to +-1: the output is ~1000x too small


def test_constant_noise_management_divides_by_nm_thres(gen):
    w = torch.rand(16, 32, generator=gen) - 0.5
    x = (torch.rand(64, 32, generator=gen) - 0.5) * 8  # |x| <= 4
    exact = x @ w.T
    lin = layer(w, **QUIET, noise_management="constant", nm_thres=4.0)
    with torch.no_grad():
        assert torch.allclose(lin(x), exact, atol=1e-4)
    clipped = layer(w, **QUIET, noise_management="constant", nm_thres=1.0)
    with torch.no_grad():
        assert not torch.allclose(clipped(x), exact, atol=1e-2)


def test_zero_input_gives_exact_zero_output(gen):
    w = torch.rand(16, 32, generator=gen) - 0.5
    lin = layer(w, noise_management="abs_max")  # pcm_inference periphery, noisy
    x = torch.rand(8, 32, generator=gen) - 0.5
    x[3] = 0.0
    with torch.no_grad():
        y = lin(x)
    assert torch.equal(y[3], torch.zeros(16))
    assert (y[2] != 0).all()


def _saturating_case():
    w = torch.ones(4, 256)
    x = torch.ones(10, 256)  # W x = 256 >> out_bound 12 (after abs_max: x' = 1)
    return w, x


def test_iterative_bound_management_recovers_saturated_outputs():
    w, x = _saturating_case()
    exact = x @ w.T
    # quantization fine enough that BM can reach r = 32 (> 256/12)
    bm = layer(w, **{**QUIET, "bound_management": "iterative", "inp_res": 1 / 1022})
    no_bm = layer(w, **{**QUIET, "bound_management": "none", "inp_res": 1 / 1022})
    with torch.no_grad():
        y_bm, y_none = bm(x), no_bm(x)
    assert torch.allclose(y_bm, exact, rtol=5e-3)  # DAC rounding of x/r remains
    assert torch.allclose(y_none, torch.full_like(exact, 12.0))  # clipped at out_bound


def test_bound_management_stops_at_max_bm_res():
    """With a 7-bit DAC, r stops once r > max_bm_res / inp_step = 0.25 / (2/126) = 15.75, i.e.
    at r = 16 (AIHWKIT divides by its ``inp_res``, by then the step 2 * inp_bound / 126)."""
    w = torch.ones(1, 512)
    x = torch.ones(1, 512)  # W x = 512: r = 16 gives 32 > 12, still saturated
    lin = layer(w, **{**QUIET, "bound_management": "iterative", "inp_res": 1 / 126})
    with torch.no_grad():
        y = lin(x)
    assert torch.allclose(y, torch.tensor([[12.0 * 16]]))


def test_bound_management_stops_at_max_bm_factor():
    w = torch.ones(1, 512)
    x = torch.ones(1, 512)
    io = {**QUIET, "bound_management": "iterative", "inp_res": 1 / 1022, "max_bm_factor": 4}
    with torch.no_grad():
        y = layer(w, **io)(x)
    assert torch.allclose(y, torch.tensor([[12.0 * 8]]))  # r = 8 > 4 is the last round


@pytest.mark.parametrize(
    "out_res, out_bound, top_saturates",
    [(1 / 510, 12.0, True), (1 / 254, 10.0, False), (1 / 30, 10.0, False), (1 / 126, 12.0, True)],
)
def test_top_adc_level_saturates_as_in_aihwkit(out_res, out_bound, top_saturates):
    """An output that rounds to the top ADC level k = out_bound / step is "saturated" (a bound-
    management round) iff AIHWKIT's float32 ``k * res`` exceeds out_bound (12.000001 for the
    9-bit default, exactly 10.0 for an 8-bit ADC with bound 10)."""
    step = 2 * out_bound * out_res
    k = round(out_bound / step)
    w = torch.tensor([[k * step + 0.2 * step]])  # rounds to level k
    x = torch.ones(1, 1)
    io = dict(QUIET, out_res=out_res, out_bound=out_bound, bound_management="iterative")
    lin = layer(w, mapping=MappingConfig(), **io, noise_management="none")
    with torch.no_grad():
        y = float(lin(x))
    # redone at r = 2 (exact DAC): level round((k + 0.2) / 2) = (k + 1) / 2 (k is odd), times 2
    assert k % 2 == 1
    assert y == pytest.approx((k + 1) * step if top_saturates else k * step, rel=1e-6)


def test_off_values_as_in_aihwkit():
    """AIHWKIT's "off": a bound <= 0 is no bound (and no quantization), a resolution <= 0 no
    quantization, constant noise management with nm_thres 0 divides by 1."""
    w = torch.full((2, 4), 5.0)
    x = torch.full((3, 4), 0.7)
    exact = x @ w.T  # 14 > out_bound 12
    free = dict(out_noise=0.0, bound_management="none", noise_management="none")
    for io in (
        dict(out_bound=0.0, inp_res=-1.0),
        dict(out_bound=-1.0, inp_res=0.0),
        dict(out_res=-1.0, out_bound=20.0, inp_res=0.0),
        dict(inp_bound=0.0, out_bound=-5.0, inp_res=1 / 126),  # inp_bound <= 0: no DAC at all
    ):
        lin = layer(w, mapping=MappingConfig(), **free, **io)
        with torch.no_grad():
            assert torch.allclose(lin(x), exact, rtol=1e-6), io
    constant = dict(free, noise_management="constant", out_bound=0.0, inp_res=0.0)
    with torch.no_grad():
        y0 = layer(w, mapping=MappingConfig(), **constant, nm_thres=0.0)(x)
        y1 = layer(w, mapping=MappingConfig(), **constant, nm_thres=1.0)(x)
    assert torch.equal(y0, y1)


def test_bound_management_is_per_vector_and_per_tile():
    w = torch.ones(2, 64)
    x = torch.zeros(3, 64)
    x[0] = 1.0  # 64 > 12 in both input tiles: saturates
    x[1, :2] = 1.0  # 2 < 12: never saturates
    x[2, :32] = 1.0  # tile 0 saturates (32 > 12), tile 1 is zero
    lin = layer(
        w,
        **{**QUIET, "bound_management": "iterative", "inp_res": 1 / 1022},
        mapping=MappingConfig(max_input_size=32, weight_scaling_omega=0),
    )
    with torch.no_grad():
        y = lin(x)
    assert torch.allclose(y, x @ w.T, rtol=5e-3)


def test_adc_clips_at_out_bound_without_bound_management():
    w = torch.ones(3, 100)
    x = torch.ones(5, 100)
    lin = layer(w, **QUIET)
    with torch.no_grad():
        assert torch.allclose(lin(x), torch.full((5, 3), 12.0))


def test_each_tile_has_its_own_noise_management(gen):
    """A small-signal half and a huge half: per-tile abs_max keeps the small half's resolution."""
    w = torch.zeros(8, 64)
    w[:, 32:] = torch.rand(8, 32, generator=gen) - 0.5  # only the small half matters
    x = torch.rand(200, 64, generator=gen) - 0.5
    x[:, :32] *= 1000.0
    exact = x @ w.T
    io = {**QUIET, "inp_res": 1 / 126}
    tiled = layer(w, mapping=MappingConfig(max_input_size=32), **io)
    untiled = layer(w, mapping=MappingConfig(max_input_size=0), **io)
    with torch.no_grad():
        e_tiled = float((tiled(x) - exact).norm() / exact.norm())
        e_untiled = float((untiled(x) - exact).norm() / exact.norm())
    assert e_tiled < 0.02
    assert e_untiled > 0.3  # the shared DAC range rounds the small half away


def test_noise_is_fresh_each_call_and_present_in_eval(gen):
    w = torch.rand(16, 32, generator=gen) - 0.5
    x = torch.rand(4, 32, generator=gen) - 0.5
    lin = layer(w).eval()
    with torch.no_grad():
        a, b = lin(x), lin(x)
    assert not torch.equal(a, b)


def test_pcm_inference_error_magnitude_matches_reference_periphery(gen):
    """End-to-end sanity of the default periphery on a 512x512 tile with Gaussian inputs."""
    w = (torch.rand(512, 512, generator=gen) - 0.5) * 0.1
    x = torch.randn(256, 512, generator=gen)
    lin = layer(w, **IOConfig().to_dict())
    with torch.no_grad():
        err = float((lin(x) - x @ w.T).norm() / (x @ w.T).norm())
    # output noise 0.06 per tile output against |W x'| ~ 0.3-1 for these scales: a few percent
    assert 0.01 < err < 0.2
    assert aimc.presets.pcm_inference().io == IOConfig()


@pytest.mark.parametrize("omega", [0.0, 1.0])
def test_forward_never_modifies_the_digital_weight(gen, omega):
    """Regression: without weight scaling the tile layout can alias the weight's storage."""
    w = torch.rand(16, 32, generator=gen) - 0.5
    lin = layer(w, mapping=MappingConfig(weight_scaling_omega=omega, max_input_size=0))
    x = torch.rand(8, 32, generator=gen) - 0.5
    with torch.no_grad():
        first = lin(x)
        for _ in range(3):
            lin(x)
    assert torch.equal(lin.weight.detach(), w)
    lin.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(lin(x), first)


def test_stochastic_rounding_dac_is_unbiased():
    """inp_sto_round: x = 0.3 with a DAC step of 0.5 gives 0 or 0.5, 0.5 with probability 0.6."""
    lin = layer(
        torch.ones(1, 1),
        **{**QUIET, "inp_res": 1 / 4, "inp_sto_round": True},
        noise_management="none",
        mapping=MappingConfig(weight_scaling_omega=0),
    )
    with torch.no_grad():
        y = lin(torch.full((50_000, 1), 0.3))
    assert set(y.unique().tolist()) == {0.0, 0.5}
    assert abs(float(y.mean()) - 0.3) < 0.005  # std error 0.5*sqrt(0.24/5e4) = 0.0011


@pytest.mark.filterwarnings("ignore:aimc. io.w_noise_bf16=True on a CPU without")
def test_pcm_read_variance_in_bf16_matches_float32():
    """``w_noise_bf16``: the same noise draws, the noise std within bfloat16's rounding."""
    base = IOConfig(
        inp_res=0,
        out_res=0,
        out_noise=0.0,
        out_bound=1e6,
        bound_management="none",
        w_noise_type="pcm_read",
        w_noise=0.05,
    )
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(3))
    outs = {}
    for name, io in {
        "exact": base.replace(w_noise=0.0),
        "fp32": base,
        "bf16": base.replace(w_noise_bf16=True),
    }.items():
        lin = AnalogLinear(300, 40, config=AnalogConfig(io=io), seed=0)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(40, 300, generator=torch.Generator().manual_seed(4)))
            lin.bias.zero_()
            outs[name] = lin(x)
    noise_fp32 = outs["fp32"] - outs["exact"]
    noise_bf16 = outs["bf16"] - outs["exact"]
    assert noise_fp32.abs().mean() > 1e-2  # the noise is there
    ratio = noise_bf16 / noise_fp32
    big = noise_fp32.abs() > 1e-3  # avoid dividing float32 rounding by tiny draws
    assert (ratio[big] - 1).abs().max() < 0.01
    assert not torch.equal(noise_bf16, noise_fp32)  # it did run in bfloat16


def test_bf16_scratch_is_its_own_reused_slot():
    from aimc.mvm import _scratch

    like = torch.zeros(1)
    a = _scratch(2, (3, 5), like, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.shape == (3, 5)
    assert _scratch(2, (3, 5), like, torch.bfloat16).data_ptr() == a.data_ptr()  # reused
    assert _scratch(2, (3, 5), like).data_ptr() != a.data_ptr()  # the float32 slot 2 is apart
    assert _scratch(2, (7,), like, torch.bfloat16).numel() == 7  # odd sizes: half a float32
    with pytest.raises(ValueError, match=r"_scratch: dtype torch\.float16; allowed"):
        _scratch(2, (3,), like, torch.float16)


@pytest.mark.filterwarnings("ignore:aimc. io.w_noise_bf16=True on a CPU without")
def test_bf16_variance_scratch_keeps_nothing_between_calls():
    """The bfloat16 variance lives in reused buffers: a call on another shape in between (which
    writes them) does not change the next call's outputs."""
    io = IOConfig(w_noise_type="pcm_read", w_noise=0.05, w_noise_bf16=True)
    lin = AnalogLinear(300, 40, config=AnalogConfig(io=io), seed=0).eval()
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(3))
    other = 100 * torch.randn(9, 300, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        aimc.manual_seed(lin, 1)
        first = lin(x)
        lin(other)
        aimc.manual_seed(lin, 1)
        assert torch.equal(lin(x), first)


@pytest.mark.parametrize(
    ("native", "warns"), [(False, True), (True, False), (None, False)], ids=["no", "yes", "unknown"]
)
def test_bf16_variance_warns_once_without_native_bf16(monkeypatch, native, warns):
    """``w_noise_bf16`` on an x86 CPU that emulates bfloat16 matmuls (AVX2 only: measured 35-41x
    slower than float32) warns once, naming the field; a CPU with AVX512-BF16/AMX, or one torch
    cannot probe, does not."""
    import aimc.mvm as mvm

    monkeypatch.setattr(mvm, "_bf16_checked", False)
    monkeypatch.setattr(mvm, "_native_bf16_cpu", lambda: native)
    io = IOConfig(w_noise_type="pcm_read", w_noise=0.02, w_noise_bf16=True)
    lin = AnalogLinear(16, 8, config=AnalogConfig(io=io), seed=0)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.no_grad():
            lin(x)
            lin(x)
    ours = [w for w in seen if "w_noise_bf16" in str(w.message)]
    assert len(ours) == (1 if warns else 0)
    if warns:
        assert ours[0].category is RuntimeWarning
        assert "io.w_noise_bf16=False" in str(ours[0].message)


def test_bf16_variance_warning_at_prepare_compile(monkeypatch):
    """A compiled forward cannot warn from inside the graph: ``prepare_compile`` does."""
    import aimc.mvm as mvm
    from aimc.compiled import prepare_compile

    monkeypatch.setattr(mvm, "_bf16_checked", False)
    monkeypatch.setattr(mvm, "_native_bf16_cpu", lambda: False)
    io = IOConfig(w_noise_type="pcm_read", w_noise=0.02, w_noise_bf16=True)
    model = torch.nn.Sequential(AnalogLinear(16, 8, config=AnalogConfig(io=io), seed=0)).eval()
    with pytest.warns(RuntimeWarning, match=r"io\.w_noise_bf16=True on a CPU without"):
        prepare_compile(model)


def test_native_bf16_probe_answers_on_this_machine():
    """The probe gives a bool on x86 (torch 2.13 has both probes) and None elsewhere."""
    import platform

    import aimc.mvm as mvm

    got = mvm._native_bf16_cpu()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert isinstance(got, bool)
    else:
        assert got is None


def test_zero_input_vector_with_input_noise_is_noisy(gen):
    """An all-zero vector gives 0 without input noise; with it AIHWKIT runs the MVM unscaled
    (``forwardVector`` short-cuts only when inp_noise is 0): y = W (0 + inp_noise xi) + noise."""
    w = torch.rand(64, 32, generator=gen) - 0.5
    x = torch.zeros(400, 32)
    io = dict(QUIET, noise_management="abs_max", out_noise=0.06)
    with torch.no_grad():
        assert torch.equal(layer(w, mapping=MappingConfig(), **io)(x), torch.zeros(400, 64))
        y = layer(w, mapping=MappingConfig(), **io, inp_noise=0.05)(x)
    expected = (0.05**2 * w.square().sum(dim=1) + 0.06**2).sqrt()  # per output
    assert rel_close(float((y / expected).std()), 1.0)
