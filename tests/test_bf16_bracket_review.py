"""A review's probes of the bracketed bfloat16 variance (``aimc._bracket``): adversarial
operands for the bound, odd kernel shapes and refused buffers, the ``|W|`` cache, and layer
forwards in configurations the first tests leave out, each against the float32 variance
(``AIMC_BF16_BRACKET=0``) from the same seed. The three bugs it found are fixed; their tests
stay as regression tests (comments "Found by the review")."""

from __future__ import annotations

import math
import os

import pytest
import torch
from test_bf16_bracket import _bf16_host, _buffers, _noisy, _Spy  # noqa: F401 - (_bf16_host: autouse)
from test_predict_saturation import _inputs, _layer, assert_same_to_rounding

import aimc
import aimc.mvm as mvm
from aimc import _bracket, presets
from aimc._bracket import BRACKET, abs_bf16, bracket_eps
from aimc.config import AnalogConfig, BoundManagement, DeviceConfig, IOConfig, MappingConfig

pytestmark = pytest.mark.skipif(
    not BRACKET.ready(), reason=f"the bracket kernel cannot be built here ({BRACKET.failed})"
)


def _both(model, x, monkeypatch, *, ctx=torch.inference_mode, seed=1, run=None):
    """The forward with the float32 variance, then with the bracket, from the same seed;
    asserts the bracket ran in the second only."""
    spy = _Spy(monkeypatch)
    out = []
    for env in ("0", "1"):
        monkeypatch.setenv(_bracket.ENV, env)
        before = spy.calls
        aimc.manual_seed(model, seed)
        with ctx():
            out.append(model(x) if run is None else run(model, x))
        assert (spy.calls > before) == (env == "1"), f"env {env}: {spy.calls - before} calls"
    return out[0], out[1], spy


# --------------------------------------------------------------------------------------------
# the kernel against float64


def _kernel_levels(z, zeta, x2, w, offset, gain, vb=None):
    """The kernel's output (from the bfloat16 product of this machine, or ``vb``) and the
    float64 levels, with the outputs within float32 rounding of a tie."""
    if vb is None:
        vb = torch.bmm(x2.bfloat16(), w.bfloat16().transpose(1, 2))
    out = z.clone()
    found = _noisy(out, zeta, vb, x2, w, offset, gain)
    var = torch.bmm(x2.double(), w.double().transpose(1, 2)) * gain + offset
    y = z.double() + var.sqrt() * zeta.double()
    tie = ((y - y.floor()) - 0.5).abs() < 1e-5 * (1 + y.abs())
    return out, y, tie, found


def _assert_levels(out, y, tie):
    want = y.round()
    got = out.double().round()
    finite = want.isfinite()
    assert torch.equal(want.isnan(), got.isnan())
    assert torch.equal(want[~finite & ~want.isnan()], got[~finite & ~want.isnan()])
    bad = (got != want) & ~tie & finite
    assert not bool(bad.any()), f"{int(bad.sum())} of {bad.numel()} outputs at another level"


def _signals(sigma, zeta, g, span: int, width: float):
    """Signals ``z`` whose exact outputs ``z + sigma * zeta`` lie within ``width / 2`` of a
    rounding boundary (a half level in ``[-span, span)``), drawn in ``zeta``'s shape."""
    shape = zeta.shape
    target = torch.randint(-span, span, shape, generator=g).double() + 0.5
    target += (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * width
    return (target - sigma * zeta.double()).float()


# (b, n, o, k): o not a multiple of the vector width, k below it, between, and empty
ODD_SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 15, 7),
    (2, 5, 17, 16),
    (1, 9, 33, 63),
    (1, 4, 16, 65),
    (3, 2, 31, 130),
    (1, 8, 47, 257),
    (1, 6, 5, 0),
]


@pytest.mark.parametrize("b, n, o, k", ODD_SHAPES)
def test_odd_shapes_against_float64(b, n, o, k):
    g = torch.Generator().manual_seed(b * 100 + n * 10 + o + k)
    x2 = torch.randint(-128, 129, (b, n, k), generator=g).float().square()
    w = torch.rand(b, o, k, generator=g)
    zeta = torch.randn(b, n, o, generator=g)
    sigma = (torch.bmm(x2.double(), w.double().transpose(1, 2)) * 1e-4 + 0.2).sqrt()
    # half the outputs within a few bracket widths of a rounding boundary
    z = _signals(sigma, zeta, g, 50, 0.02)
    out, y, tie, found = _kernel_levels(z, zeta, x2, w, 0.2, 1e-4)
    _assert_levels(out, y, tie)
    assert 0 <= found <= out.numel()
    if k == 0:  # no terms: the variance is the offset, decided everywhere
        assert found == 0
        torch.testing.assert_close(out, (z.double() + math.sqrt(0.2) * zeta.double()).float())


@pytest.mark.parametrize("k", [2048, 4096, 16384])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_the_bound_holds_for_long_rows_rounding_one_way(k, direction):
    # every x'^2 and |W| just past (or short of) a bfloat16 midpoint, and varied so that the
    # float32 partial sums round too
    u = 2.0**-8
    g = torch.Generator().manual_seed(k)
    levels = torch.randint(1, 129, (1, 8, k), generator=g).float()
    x2 = levels.square() * (1 + u * (1 + direction * 1e-3))
    w = (1 + u * (1 + direction * 1e-3)) * torch.exp2(-torch.randint(0, 6, (1, 24, k), generator=g))
    w = w.float()
    exact = torch.bmm(x2.double(), w.double().transpose(1, 2))
    vb = torch.empty(1, 8, 24, dtype=torch.bfloat16)
    torch.bmm(x2.bfloat16(), w.bfloat16().transpose(1, 2), out=vb)
    rel = float(((vb.double() - exact) / exact).abs().max())
    assert rel <= bracket_eps(k)


def test_levels_for_long_rows_rounding_one_way_near_boundaries():
    # the adversarial operands above, with signals that put the outputs within the bracket's
    # width of a rounding boundary: the float32 look must catch every one the bound leaves open
    u = 2.0**-8
    g = torch.Generator().manual_seed(7)
    b, n, o, k = 1, 16, 40, 4096
    x2 = torch.randint(1, 129, (b, n, k), generator=g).float().square() * (1 + u * 1.001)
    w = ((1 + u * 1.001) * torch.exp2(-torch.randint(0, 6, (b, o, k), generator=g))).float()
    zeta = torch.randn(b, n, o, generator=g)
    gain, offset = 1e-6, 0.05
    sigma = (torch.bmm(x2.double(), w.double().transpose(1, 2)) * gain + offset).sqrt()
    eps = bracket_eps(k)
    target = torch.randint(-100, 100, (b, n, o), generator=g).double() + 0.5
    frac = torch.rand(b, n, o, generator=g, dtype=torch.float64) - 0.5
    target += frac * eps * sigma * zeta.double().abs()
    z = (target - sigma * zeta.double()).float()
    out, y, tie, found = _kernel_levels(z, zeta, x2, w, offset, gain)
    _assert_levels(out, y, tie)
    assert found > out.numel() // 4


def test_denormal_weights_with_whole_levels_are_covered_by_the_slack():
    # |W| denormal (flushed by the bfloat16 instructions) against levels up to 128^2: each
    # flushed product is below the slack's 2**-126 * 2**14, which a huge gain makes matter
    g = torch.Generator().manual_seed(13)
    b, n, o, k = 1, 12, 20, 256
    x2 = torch.randint(0, 129, (b, n, k), generator=g).float().square()
    w = torch.rand(b, o, k, generator=g) * 1e-39
    assert bool((w < torch.finfo(torch.float32).tiny).all())
    gain = 1e33
    zeta = torch.randn(b, n, o, generator=g)
    z = torch.randint(-20, 20, (b, n, o), generator=g).float() + 0.45
    out, y, tie, found = _kernel_levels(z, zeta, x2, w, 0.0, gain)
    assert bool((y.round() != z.double().round()).any())  # the noise changes levels
    _assert_levels(out, y, tie)
    assert found > 0


def test_wide_dynamic_range_of_weights_against_float64():
    # |W| from 1e-30 to 1e3 (all normal float32) and levels from 0 to 128: the bound is relative
    g = torch.Generator().manual_seed(11)
    b, n, o, k = 1, 16, 40, 300
    x2 = torch.randint(0, 129, (b, n, k), generator=g).float().square()
    w = torch.pow(10.0, torch.rand(b, o, k, generator=g) * 33 - 30).float()
    w[:, ::7] = 0.0  # all-zero rows
    zeta = torch.randn(b, n, o, generator=g)
    sigma = (torch.bmm(x2.double(), w.double().transpose(1, 2)) * 1e-7 + 0.3).sqrt()
    z = _signals(sigma, zeta, g, 100, 0.05)
    out, y, tie, _ = _kernel_levels(z, zeta, x2, w, 0.3, 1e-7)
    _assert_levels(out, y, tie)


def test_no_offset_and_all_zero_inputs():
    # out_noise = 0 (offset 0) and all-zero vectors: the variance is 0, the output the signal
    g = torch.Generator().manual_seed(12)
    x2 = torch.randint(0, 129, (1, 10, 64), generator=g).float().square()
    x2[0, :4] = 0.0
    w = torch.rand(1, 20, 64, generator=g)
    z = torch.randn(1, 10, 20, generator=g) * 30
    zeta = torch.randn(1, 10, 20, generator=g)
    out, y, tie, _ = _kernel_levels(z, zeta, x2, w, 0.0, 1e-3)
    _assert_levels(out, y, tie)
    assert torch.equal(out[0, :4].round(), z[0, :4].round())


def test_an_overflowing_variance_gives_infinities_not_levels():
    # x'^2 |W| past float32's range: the float32 variance is infinite, so is every noisy output
    x2 = torch.full((1, 8, 32), 1e30)
    w = torch.full((1, 16, 32), 1e10)
    z = torch.zeros(1, 8, 16)
    zeta = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    out = z.clone()
    vb = torch.bmm(x2.bfloat16(), w.bfloat16().transpose(1, 2))
    found = _noisy(out, zeta, vb, x2, w, 0.1, 1.0)
    assert found == out.numel()  # undecidable by the bracket: all looked at in float32
    assert bool(out.isinf().all())
    assert torch.equal(out.sign(), zeta.sign())


def test_denormal_squares_with_large_weights_in_the_kernel():
    # Found by the review (fixed: the slack now comes from the operands' largest values,
    # _bracket.flush_slack): a slack of 2**-126 * 2**14 per term covered a flushed product only
    # where the other factor was at most 2**14. A denormal x'^2 (1e-39) against |W| = 1e38 is
    # a product of 0.1
    # each, flushed to 0 by the bfloat16 dot product: v_b = 0 while v = 6.4, and the kernel
    # "decides" every output at z (its noise gone) without the float32 look.
    k = 64
    x2 = torch.full((1, 8, k), 1e-39)
    w = torch.full((1, 16, k), 1e38)
    z = torch.zeros(1, 8, 16)
    zeta = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    out, y, tie, _ = _kernel_levels(z, zeta, x2, w, 0.0, 1.0)
    assert bool((y.round() != 0).any())  # the float64 levels carry the noise
    _assert_levels(out, y, tie)


def test_denormal_weights_under_large_unquantized_inputs(monkeypatch):
    # Found by the review (fixed with the kernel-level case above), the same gap at layer
    # level: no noise management, no DAC bound or quantization
    # (inp_bound = inp_res = -1, a valid config), out_noise 0; weights 1e-39 beside a 1.0
    # (column-wise scaling keeps them denormal) and inputs 1e19 on them: x'^2 = 1e38, each
    # product 0.1. The float32 variance gives a noise of about one ADC step (84 of 256 outputs
    # at +-1 level), the bracket gives every output 0.
    io = IOConfig(
        noise_management="none",
        inp_bound=-1.0,
        inp_res=-1.0,
        out_noise=0.0,
        w_noise_type="pcm_read",
        w_noise=0.0175,
        out_res=1 / 254,
        out_bound=10.0,
        bound_management="none",
    )
    mapping = MappingConfig(max_input_size=512, max_output_size=0, weight_scaling_omega=1.0)
    lin = torch.nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1e-39)
        lin.weight[:, 0] = 1.0
    model = aimc.convert(torch.nn.Sequential(lin), AnalogConfig(io=io, mapping=mapping), seed=0)
    model.eval()
    x = torch.zeros(32, 64)
    x[:, 1:] = 1e19
    full, bracketed, _ = _both(model, x, monkeypatch)
    assert bool((full != 0).any())
    assert_same_to_rounding(full, bracketed)


# --------------------------------------------------------------------------------------------
# refused buffers


@pytest.mark.parametrize(
    "name, bad",
    [
        ("z", lambda t: torch.zeros(1, 5, 4).transpose(1, 2)),
        ("zeta", lambda t: torch.zeros(1, 5, 4).transpose(1, 2)),
        ("vb", lambda t: torch.zeros(1, 5, 4, dtype=torch.bfloat16).transpose(1, 2)),
        ("x2", lambda t: torch.zeros(1, 3, 4).transpose(1, 2)),
        ("x2", lambda t: torch.zeros(1, 4, 6)[:, :, ::2]),
        ("w_abs", lambda t: torch.zeros(1, 5, 6)[:, :, 1:4]),
        ("zeta", lambda t: t["zeta"].double()),
        ("z", lambda t: t["z"].half()),
        ("vb", lambda t: t["vb"].half()),
        ("w_abs", lambda t: t["w_abs"].bfloat16()),
        ("w_abs", lambda t: torch.zeros(1, 6, 3)),  # o mismatch
        ("w_abs", lambda t: torch.zeros(2, 5, 3)),  # b mismatch
        ("zeta", lambda t: torch.zeros(1, 4, 6)),
        ("vb", lambda t: torch.zeros(1, 3, 5, dtype=torch.bfloat16)),
        ("z", lambda t: torch.zeros(1, 4, 5, device="meta")),
    ],
)
def test_non_contiguous_or_wrong_buffers_raise(name, bad):
    t = _buffers(3)
    t[name] = bad(t)
    with pytest.raises(ValueError, match="bracket kernel got"):
        BRACKET.noisy_(**t, offset=0.1, gain=1.0, max_x2=1.0, max_w=1.0)


def test_a_wrong_rank_raises_rather_than_reads_out_of_bounds():
    t = _buffers(3)
    t["z"] = torch.zeros(4, 5)
    with pytest.raises(ValueError):
        BRACKET.noisy_(**t, offset=0.1, gain=1.0, max_x2=1.0, max_w=1.0)


# --------------------------------------------------------------------------------------------
# the bfloat16 |W| cache


def test_abs_bf16_views_with_an_offset_or_another_shape():
    w = torch.rand(4, 6, 8)
    tail = w[2:]  # storage offset: converted on its own
    assert torch.equal(abs_bf16(tail)[0], tail.bfloat16())
    flat = w.view(-1)  # the whole storage under another shape: the kept values, reshaped
    assert torch.equal(abs_bf16(flat)[0], flat.bfloat16())
    assert torch.equal(abs_bf16(w.view(24, 8))[0], w.view(24, 8).bfloat16())
    w.add_(1.0)
    assert torch.equal(abs_bf16(w.view(24, 8))[0], w.view(24, 8).bfloat16())
    w.resize_(2, 6, 8)  # shrunk in place: another numel, converted afresh
    assert torch.equal(abs_bf16(w)[0], w.bfloat16())


def test_abs_bf16_of_a_written_view_follows_the_write():
    w = torch.rand(2, 6, 8)
    view = w.view(12, 8)
    first = abs_bf16(view)[0]
    view[3].fill_(7.0)  # a write through the view bumps the shared version counter
    assert torch.equal(abs_bf16(view)[0], view.bfloat16())
    assert torch.equal(abs_bf16(w)[0], w.bfloat16())
    assert not torch.equal(first, abs_bf16(view)[0])


def test_abs_bf16_of_a_contiguous_transpose_of_a_column_major_base():
    # Found by the review (fixed: a view is read from its base's copy only where the base is
    # contiguous; latent before, aimc's own |W| tensors being fresh contiguous tensors): the
    # base (3, 4) column-major, its transpose (4, 3) contiguous with the same
    # numel and storage offset; the kept bfloat16 copy is the base's in row-major order, and
    # ``cached.view(4, 3)`` reads it as if it were the transpose's.
    base = torch.empty_strided((3, 4), (1, 3)).copy_(torch.arange(12.0).view(3, 4))
    assert base._base is None and not base.is_contiguous()
    view = base.t()
    assert view.is_contiguous() and view.storage_offset() == 0
    assert torch.equal(abs_bf16(view)[0], view.bfloat16())


def test_tiles_replaced_by_program_and_drift_are_followed(monkeypatch):
    # the tile matrices built under inference_mode (inference tensors: no version counter),
    # then the chip programmed and drifted anew: the next forward must use the new |W|
    model = _layer(512, 256)
    x = _inputs((100, 512), 21)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    with torch.inference_mode():
        model(x)
    old = model[0]._chip_cache[1].w_abs
    assert hasattr(old, "_aimc_abs_bf16")
    for step in (lambda: aimc.drift(model, 1e6, seed=3), lambda: aimc.program(model, seed=5)):
        step()
        full, bracketed, _ = _both(model, x, monkeypatch)
        assert_same_to_rounding(full, bracketed)
    assert model[0]._chip_cache is None or model[0]._chip_cache[1].w_abs is not old


def test_lean_chip_storage(monkeypatch):
    model = _layer(384, 256, storage="lean")
    x = _inputs((120, 384), 22)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    for seed in (1, 2):
        full, bracketed, _ = _both(model, x, monkeypatch, seed=seed)
        assert_same_to_rounding(full, bracketed)


def test_drift_compensation_readout_is_the_float32_variances(monkeypatch):
    # the readout of the drift compensation runs noisy MVMs (one-hot vectors) through the same
    # path: the compensation factors must not depend on the bracket
    spy = _Spy(monkeypatch)
    alphas = []
    for env in ("0", "1"):
        monkeypatch.setenv(_bracket.ENV, env)
        model = _layer(512, 256)
        alphas.append(model[0].compensation_factor().clone())
    assert spy.calls > 0
    torch.testing.assert_close(alphas[0], alphas[1], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# layer forwards against the float32 variance, from the same seed

FORWARDS = {
    "no DAC rounding (x'^2 not whole)": dict(n_in=512, n_out=256, tokens=100, inp_res=0.0),
    "input noise": dict(n_in=512, n_out=256, tokens=140, inp_noise=0.05),
    "stochastic DAC rounding": dict(n_in=512, n_out=256, tokens=140, inp_sto_round=True),
    "2048-row tiles": dict(n_in=2048, n_out=128, tokens=64, max_in=2048),
    "4096-row tiles, no output noise": dict(
        n_in=4096, n_out=64, tokens=40, max_in=4096, out_noise=0.0
    ),
    "no bound management": dict(
        n_in=512, n_out=256, tokens=100, bound_management=BoundManagement.NONE
    ),
    "bound management stopped at 2": dict(n_in=512, n_out=256, tokens=150, max_bm_factor=2.0),
    "odd ADC levels (limit a half level)": dict(n_in=256, n_out=128, tokens=150, out_res=1 / 255),
    "7-bit ADC, uneven split, split outputs": dict(
        n_in=333, n_out=200, tokens=90, out_res=1 / 126, max_in=128, max_out=64
    ),
    "tiny weight noise (gain near 0)": dict(n_in=256, n_out=128, tokens=100, w_noise=1e-9),
    "large weight noise": dict(n_in=256, n_out=128, tokens=100, w_noise=0.5),
    "ADC without bound management limit (no clip)": dict(
        n_in=256, n_out=128, tokens=100, out_noise=1.0
    ),
}


@pytest.mark.parametrize("name", FORWARDS)
@pytest.mark.parametrize("predict", [False, True])
def test_forwards(monkeypatch, name, predict):
    case = dict(FORWARDS[name])
    tokens = case.pop("tokens")
    model = _layer(case.pop("n_in"), case.pop("n_out"), **case)
    x = _inputs((tokens, model[0].in_features), 30)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0 if predict else math.inf)
    if predict:  # a first forward leaves the saturation hint
        with torch.inference_mode():
            model(x)
    full, bracketed, spy = _both(model, x, monkeypatch)
    assert_same_to_rounding(full, bracketed)
    assert spy.calls > 0


@pytest.mark.parametrize("tokens", [7, 8, 9, 127, 128, 129])
def test_batch_sizes_around_the_thresholds(monkeypatch, tokens):
    model = _layer(512, 256)
    x = _inputs((tokens, 512), 31)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    spy = _Spy(monkeypatch)
    out = []
    for env in ("0", "1"):
        monkeypatch.setenv(_bracket.ENV, env)
        aimc.manual_seed(model, 1)
        with torch.inference_mode():
            out.append(model(x))
    assert_same_to_rounding(*out)
    # the first pass runs on `tokens` vectors per tile: bracketed from BRACKET_MIN_VECTORS
    # (bound-management rounds may run it on their own, gathered vectors)
    if tokens >= mvm.BRACKET_MIN_VECTORS:
        assert spy.calls > 0


def test_threads_do_not_change_the_levels(monkeypatch):
    model = _layer(512, 384)
    x = _inputs((200, 512), 32)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    threads = torch.get_num_threads()
    out = []
    try:
        for n, env in ((threads, "0"), (1, "1"), (max(2, threads), "1")):
            torch.set_num_threads(n)
            monkeypatch.setenv(_bracket.ENV, env)
            aimc.manual_seed(model, 4)
            with torch.inference_mode():
                out.append(model(x))
    finally:
        torch.set_num_threads(threads)
    assert_same_to_rounding(out[0], out[1])
    assert_same_to_rounding(out[0], out[2])


@pytest.mark.parametrize("where", ["vector", "element", "ninf", "all"])
@pytest.mark.parametrize("predict", [False, True])
def test_non_finite_inputs(monkeypatch, where, predict):
    model = _layer(512, 256)
    x = _inputs((64, 512), 33)
    if where == "vector":
        x[5] = math.nan
    elif where == "element":
        x[7, 300] = math.nan
        x[9, 10] = math.inf
    elif where == "ninf":
        x[11, 511] = -math.inf
    else:
        x[:] = math.nan
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0 if predict else math.inf)
    if predict:
        with torch.inference_mode():
            model(_inputs((64, 512), 34))
    full, bracketed, _ = _both(model, x, monkeypatch)
    assert torch.equal(full.isnan(), bracketed.isnan())
    assert bool(full.isnan().any())
    assert_same_to_rounding(full, bracketed)


def test_grouped_conv_with_uneven_split(monkeypatch):
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(24, 48, 3, padding=1, groups=4))
    model = _layer(0, 0, module=conv, max_in=40, max_out=8)
    x = _inputs((3, 24, 8, 8), 35)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    full, bracketed, _ = _both(model, x, monkeypatch)
    assert_same_to_rounding(full, bracketed)


def test_a_float64_model(monkeypatch):
    cfg = presets.bert_squad(0.0175).replace(device=DeviceConfig())
    torch.manual_seed(0)
    model = aimc.convert(torch.nn.Sequential(torch.nn.Linear(256, 128)), cfg, seed=0)
    model = model.double().eval()
    x = _inputs((64, 256), 36).double()
    full, bracketed, _ = _both(model, x, monkeypatch)
    assert full.dtype == torch.float64
    assert_same_to_rounding(full.float(), bracketed.float())


def test_a_training_step_with_hwa_noise_and_compact_tiles(monkeypatch):
    # training forwards with the learned output scales (compact tiles) and a backward
    cfg = presets.bert_squad(0.0175)
    torch.manual_seed(0)
    model = aimc.convert(torch.nn.Sequential(torch.nn.Linear(384, 192)), cfg, seed=0).train()
    x = _inputs((96, 384), 37)
    grads = []

    def run(model, x):
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        grads.append(model[0].weight.grad.clone())
        return y.detach()

    full, bracketed, _ = _both(model, x, monkeypatch, ctx=torch.enable_grad, run=run)
    assert_same_to_rounding(full, bracketed)
    torch.testing.assert_close(
        grads[0], grads[1], rtol=1e-3, atol=1e-3 * float(grads[0].abs().max())
    )


def test_a_compiled_model_gives_the_float32_variances_levels(monkeypatch):
    # an eval forward under aimc.compile whose MVM runs eagerly inside the graph (int8, >= 128
    # vectors) takes the bracket, with a torch.Generator seeded from the stream
    model = _layer(512, 256)
    x = _inputs((256, 512), 38)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    compiled = aimc.compile(model)
    with torch.inference_mode():
        compiled(x)  # compile once, under the default environment
    full, bracketed, _ = _both(compiled, x, monkeypatch)
    assert_same_to_rounding(full, bracketed)


def test_two_layers_of_other_shapes_share_the_scratch_buffers(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(512, 300), torch.nn.ReLU(), torch.nn.Linear(300, 96))
    model = _layer(0, 0, module=net)
    x = _inputs((150, 512), 40)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    full, bracketed, spy = _both(model, x, monkeypatch)
    assert spy.calls >= 2
    assert_same_to_rounding(full, bracketed)


def test_environment_switch_is_read_per_forward(monkeypatch):
    # AIMC_BF16_BRACKET read at each forward, not once: off after on runs the float32 variance
    model = _layer(256, 128)
    x = _inputs((64, 256), 39)
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    for env, expect in (("1", True), ("0", False), ("1", True)):
        monkeypatch.setenv(_bracket.ENV, env)
        before = spy.calls
        with torch.inference_mode():
            model(x)
        assert (spy.calls > before) == expect
    assert os.environ[_bracket.ENV] == "1"
