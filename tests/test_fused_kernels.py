"""The fused kernels of the eager CPU forward (:mod:`aimc._native`): the DAC kernel (noise
management, the DAC and the squares of ``pcm_read`` weight noise in one pass over the inputs)
and the ADC kernel (the ADC's rounding, the saturation test's extremes and the digital
periphery in one pass over the tile outputs).

They replace tensor code value for value, so every check here is an equality: each kernel's
output against :func:`aimc._native.dac_reference` / :func:`aimc._native.adc_reference` (the
tensor code), and whole analog forwards with the kernels against the same forwards with them
switched off (``AIMC_DAC_NATIVE=0``, ``AIMC_ADC_NATIVE=0``), on the same seeds. Tests that need
a kernel skip where it cannot be built (no C++ compiler); a kernel that builds but fails its
self-check fails the suite.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aimc
from aimc import _native, _rangeclip, _scalegrad, _tiles, mvm
from aimc._native import nan_equal
from aimc.config import IOConfig
from aimc.nn import AnalogConv2d, AnalogLinear


def _require_kernel() -> None:
    for k in (mvm._DAC, mvm._ADC):
        if not k.usable():
            pytest.skip(f"the fused kernels do not run here: {k.failed}")


def _run_kernel(x: torch.Tensor, tiles: int, *args) -> tuple[torch.Tensor, ...]:
    g, n, k = x.shape
    amax = torch.full((g, n, tiles), 7.0)
    xq = torch.full((g, tiles, n, k // tiles), 7.0)
    x2 = torch.full_like(xq, 7.0)
    mvm._DAC.levels(x, xq, x2, amax, tiles, *args)
    return amax, xq, x2


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    g=st.integers(1, 2),
    n=st.integers(1, 9),
    tiles=st.integers(1, 3),
    rows=st.integers(1, 70),
    bits=st.sampled_from([0, 3, 7, 8]),
    thres=st.sampled_from([0.0, 0.5, 3.0]),
    bound=st.sampled_from([0.0, 1.0]),
    fixed=st.booleans(),
    specials=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_the_tensor_code(
    g, n, tiles, rows, bits, thres, bound, fixed, specials, seed
):
    """Any shape (row lengths off the vector width: the tails), DAC resolution (none, odd and
    even step counts), abs-max cap or a fixed scale, clip or none, with zeros, NaN and
    infinities in some rows."""
    _require_kernel()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(g, n, tiles * rows, generator=gen) * torch.rand(g, n, 1, generator=gen) * 4
    x.view(-1)[torch.randint(x.numel(), (specials,), generator=gen)] = torch.tensor(
        [0.0, math.nan, math.inf, -math.inf, -0.0]
    )[:specials]
    if n > 1:
        x[0, 1] = 0.0  # a whole vector of zeros: divided by 1
    step = 2.0 / (2**bits - 2) if bits else 0.0
    clip = 1.0 / step * bound if step else bound
    args = (tiles, thres, step, clip, bits > 0, fixed)
    got = _run_kernel(x, *args)
    for name, a, b in zip(
        ("amax", "levels", "squares"), got, _native.dac_reference(x, *args), strict=True
    ):
        assert nan_equal(a, b), name


def test_kernel_rounds_half_steps_to_even():
    """Inputs at exact half steps (abs-max 1, 8 steps): rounded to even, as ``round_`` does,
    and as AIHWKIT's ``rint`` does."""
    _require_kernel()
    x = torch.tensor([[[1.0, 0.0625, 0.1875, -0.3125, 0.4375]]])
    _, xq, _ = _run_kernel(x, 1, 0.0, 0.125, 8.0, True)  # x / 0.125: 8, 0.5, 1.5, -2.5, 3.5
    assert xq.flatten().tolist() == [8.0, 0.0, 2.0, -2.0, 4.0]


def test_kernel_does_not_depend_on_the_thread_count():
    _require_kernel()
    x = torch.randn(1, 999, 2 * 384, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_kernel(x, 2, 0.0, 2.0 / 254, 127.0, True)
        torch.set_num_threads(3)
        three = _run_kernel(x, 2, 0.0, 2.0 / 254, 127.0, True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three, strict=True))


def test_kernel_refuses_wrong_buffers():
    _require_kernel()
    x = torch.zeros(1, 4, 8)
    amax, xq = torch.empty(1, 4, 2), torch.empty(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"expected contiguous float32 CPU \(1, 2, 4, 4\)"):
        mvm._DAC.levels(x, torch.empty(1, 4, 2, 4), None, amax, 2, 0.0, 0.1, 1.0, True)
    with pytest.raises(ValueError, match="contiguous: False"):
        mvm._DAC.levels(
            torch.zeros(1, 8, 4).transpose(1, 2), xq, None, amax, 2, 0.0, 0.1, 1.0, True
        )
    with pytest.raises(ValueError, match="torch.float64"):
        mvm._DAC.levels(x.double(), xq, None, amax, 2, 0.0, 0.1, 1.0, True)
    with pytest.raises(ValueError, match="9 inputs do not split into 2 tiles"):
        mvm._DAC.levels(torch.zeros(1, 4, 9), xq, None, amax, 2, 0.0, 0.1, 1.0, True)


def _chip(digital: torch.nn.Module, cfg: aimc.AnalogConfig) -> torch.nn.Module:
    """``digital`` converted with ``cfg``, programmed and drifted to 1 h (eval forwards of PCM
    layers need a programmed chip)."""
    layer = (AnalogConv2d if isinstance(digital, torch.nn.Conv2d) else AnalogLinear).from_digital(
        digital, cfg
    )
    aimc.program(layer, seed=0)
    aimc.drift(layer, 3600.0, seed=0)
    return layer


def _spy_adc_kept(monkeypatch) -> list[bool]:
    """From now on, for every forward that tried the ADC kernel: whether its output was kept
    (True) or handed back to the tensor code."""
    kept: list[bool] = []
    real_finish = mvm._fused_finish

    def spy_finish(*args, **kwargs):
        y = real_finish(*args, **kwargs)
        kept.append(y is not None)
        return y

    monkeypatch.setattr(mvm, "_fused_finish", spy_finish)
    return kept


def _forward_pair(
    monkeypatch, layer: torch.nn.Module, x: torch.Tensor, train: bool = False, which: str = "DAC"
):
    """``layer(x)`` with the fused kernels and with the tensor code, from the same seed; and how
    many times the kernel ``which`` ran in the first (the ADC kernel: how many times its output
    was kept, not handed back to the tensor code)."""
    calls = []
    if which == "DAC":
        real = mvm._DAC.levels

        def spy(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(mvm._DAC, "levels", spy)
    else:
        calls = _spy_adc_kept(monkeypatch)
    outs = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_DAC_NATIVE", env)
        monkeypatch.setenv("AIMC_ADC_NATIVE", env)
        aimc.manual_seed(layer, 5)
        layer.train(train)
        with torch.set_grad_enabled(train):
            outs.append(layer(x).detach())
        if env == "1":
            ran = sum(calls)
    return outs[0], outs[1], ran


PRESETS = {
    "pcm_inference": aimc.presets.pcm_inference(),
    "bert_squad": aimc.presets.bert_squad(0.0175),
    "standard_hwa": aimc.presets.standard_hwa(),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(768, 300), (100, 70), (1030, 64)])
def test_forward_is_the_same_with_the_kernel(monkeypatch, preset, shape):
    """Programmed and drifted layers of each preset (uneven input tiles, saturating inputs that
    start bound management, a zero vector, NaN and infinity): the same outputs, bit for bit,
    with and without the kernel, which ran once per forward."""
    _require_kernel()
    n_in, n_out = shape
    torch.manual_seed(0)
    layer = _chip(torch.nn.Linear(n_in, n_out), PRESETS[preset])
    x = torch.randn(3, 17, n_in)
    x[0, 0] = 0.0
    x[1, 1, 3] = math.nan
    x[2, 2, 5] = math.inf
    x[2, 3] = 1.0  # all-equal inputs: large sums, the ADC saturates
    got, ref, ran = _forward_pair(monkeypatch, layer, x)
    assert ran == 1
    assert nan_equal(got, ref)


def test_learned_output_scales_training_forward_is_the_same(monkeypatch):
    """``bert_squad``'s training forward (learned output scales, the compact tile outputs)."""
    _require_kernel()
    torch.manual_seed(1)
    layer = AnalogLinear.from_digital(torch.nn.Linear(600, 40), PRESETS["bert_squad"])
    x = torch.randn(8, 600, requires_grad=True)
    got, ref, ran = _forward_pair(monkeypatch, layer, x, train=True)
    assert ran >= 1
    assert torch.equal(got, ref)


def test_conv_forward_is_the_same(monkeypatch):
    _require_kernel()
    torch.manual_seed(2)
    conv = _chip(torch.nn.Conv2d(3, 8, 3), PRESETS["pcm_inference"])
    got, ref, ran = _forward_pair(monkeypatch, conv, torch.randn(2, 3, 9, 9))
    assert ran == 1
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "io",
    [IOConfig(inp_sto_round=True), IOConfig(inp_noise=0.01)],
    ids=["sto_round", "inp_noise"],
)
def test_kernel_is_not_used_where_the_dac_draws(monkeypatch, io):
    """Stochastic rounding and input noise draw from the layer's generator: tensor code."""
    _require_kernel()
    torch.manual_seed(3)
    cfg = aimc.presets.pcm_inference().replace(io=io)
    layer = _chip(torch.nn.Linear(64, 16), cfg)
    got, ref, ran = _forward_pair(monkeypatch, layer, torch.randn(5, 64))
    assert ran == 0
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "nm",
    [
        {"nm_thres": 0.5},  # abs-max capped at nm_thres (AIHWKIT)
        {"noise_management": "constant", "nm_thres": 2.0},
        {"noise_management": "constant", "nm_thres": 0.0},  # 1
        {"noise_management": "none"},
    ],
    ids=["capped_abs_max", "constant", "constant_0", "none"],
)
def test_other_noise_managements_use_the_kernel(monkeypatch, nm):
    _require_kernel()
    torch.manual_seed(4)
    cfg = aimc.presets.pcm_inference()
    cfg = cfg.replace(io=cfg.io.replace(**nm))
    layer = _chip(torch.nn.Linear(64, 16), cfg)
    got, ref, ran = _forward_pair(monkeypatch, layer, torch.randn(5, 64) * 3)
    assert ran == 1
    assert torch.equal(got, ref)


@pytest.mark.parametrize("train", [False, True])
def test_learned_input_range_uses_the_kernel(monkeypatch, train):
    """``analog_foundation`` (a static input range per layer; its training forward too)."""
    _require_kernel()
    torch.manual_seed(6)
    layer = _chip(torch.nn.Linear(600, 32), aimc.presets.analog_foundation(0.0175))
    with torch.no_grad():
        layer.input_range.fill_(1.5)
    layer.input_range_batches.fill_(10**6)  # no data estimate: the range stays 1.5
    got, ref, ran = _forward_pair(monkeypatch, layer, torch.randn(7, 600), train=train)
    assert ran >= 1
    assert torch.equal(got, ref)


def test_build_failure_warns_once_and_keeps_the_values(monkeypatch):
    from torch._inductor import codecache

    def broken(*args, **kwargs):
        raise RuntimeError("CppCompileError: something the compiler said")

    torch.manual_seed(5)
    layer = _chip(torch.nn.Linear(64, 16), PRESETS["pcm_inference"])
    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", broken)
    monkeypatch.setattr(mvm, "_DAC", _native.NativeDacKernel())
    x = torch.randn(5, 64)
    with pytest.warns(RuntimeWarning, match="fused DAC kernel could not be built.*CppCompile"):
        aimc.manual_seed(layer, 1)
        got = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aimc.manual_seed(layer, 1)
        again = layer(x)
    monkeypatch.setenv("AIMC_DAC_NATIVE", "0")
    aimc.manual_seed(layer, 1)
    assert torch.equal(got, again) and torch.equal(got, layer(x))


def test_kernel_that_computes_wrongly_is_not_used(monkeypatch):
    """A kernel that builds but computes wrongly (a compiler or CPU quirk) fails its
    self-check: one warning, and the tensor code runs."""
    from torch._inductor import codecache

    def built_wrong(*args, **kwargs):
        def kernel(x, xq, x2, amax, g, n, ti, rows, thres, step, bound, flags):
            pass  # writes nothing: the check's buffers keep their 7.0

        return kernel

    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", built_wrong)
    k = _native.NativeDacKernel()
    with pytest.warns(RuntimeWarning, match="self-check failed: amax differ"):
        assert not k.usable()
    assert k._fn is None


@pytest.mark.parametrize(
    ("kernel", "env"),
    [
        (_native.NativeDacKernel, "AIMC_DAC_NATIVE"),
        (_native.NativeDacKernel, "AIMC_FUSED_KERNELS"),
        (_native.NativeAdcKernel, "AIMC_ADC_NATIVE"),
        (_native.NativeAdcKernel, "AIMC_FUSED_KERNELS"),
        (_scalegrad.NativeScaleGradKernel, "AIMC_GRAD_NATIVE"),
        (_scalegrad.NativeScaleGradKernel, "AIMC_FUSED_KERNELS"),
        (_tiles.NativeTileKernel, "AIMC_TILES_NATIVE"),
        (_tiles.NativeTileKernel, "AIMC_FUSED_KERNELS"),
        (_rangeclip.NativeClipKernel, "AIMC_CLIP_NATIVE"),
        (_rangeclip.NativeClipKernel, "AIMC_FUSED_KERNELS"),
    ],
)
def test_switched_off_by_the_environment(monkeypatch, kernel, env):
    monkeypatch.setenv(env, "0")
    assert not kernel().usable()


@pytest.mark.parametrize(
    "kernel",
    [
        _native.NativeDacKernel,
        _native.NativeAdcKernel,
        _scalegrad.NativeScaleGradKernel,
        _tiles.NativeTileKernel,
        _rangeclip.NativeClipKernel,
    ],
)
def test_kernel_passes_its_self_check_where_it_builds(kernel):
    """A kernel that builds but fails its self-check would only cost speed in use (the tensor
    code runs); here it fails the suite, so that it is seen. No C++ compiler: skipped."""
    k = kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k.usable()
    if k.failed is not None and "self-check" not in k.failed:
        pytest.skip(f"the kernel does not build here: {k.failed}")
    assert k.failed is None


def _adc_args(seed: int, g: int, ti: int, n: int, to: int, cols: int, cs: bool, bias: bool):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(g * ti, n, to * cols, generator=gen) * 50
    f = torch.rand(g * ti, n, to, generator=gen) * 0.2
    c = torch.rand(g * ti, to * cols, generator=gen) + 0.5 if cs else None
    b = torch.randn(g, to * cols, generator=gen) if bias else None
    return z, f, c, b


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    g=st.integers(1, 2),
    ti=st.integers(1, 3),
    n=st.integers(1, 7),
    to=st.integers(1, 3),
    cols=st.integers(1, 40),
    cs=st.booleans(),
    bias=st.booleans(),
    round_=st.booleans(),
    nan=st.booleans(),
    clip=st.sampled_from(
        [
            (math.inf, None),
            (30.0, torch.int8),
            (20.5, torch.float32),
            (127.0, torch.int8),
            (200.0, torch.int16),
            (math.inf, torch.float32),
        ]
    ),
    seed=st.integers(0, 2**16),
)
def test_adc_kernel_equals_the_tensor_code(g, ti, n, to, cols, cs, bias, round_, nan, clip, seed):
    """Any tile counts, row widths off the vector width, with and without column scales, bias,
    rounding and the clip, the levels kept in each type, a NaN: the same outputs, extremes and
    levels as the tensor code; ``z`` untouched. (NaN levels are never kept as integers: the
    forward hands a NaN back to the tensor code.)"""
    _require_kernel()
    bound, dtype = clip
    z, f, c, b = _adc_args(seed, g, ti, n, to, cols, cs, bias)
    if nan:
        z[-1, -1, -1] = math.nan
    before = z.clone()
    y = torch.full((g, n, to * cols), 7.0)
    levels = None if dtype is None else torch.full(z.shape, 7, dtype=dtype)
    lo, hi = mvm._ADC.finish(z, y, f, c, b, ti, round_, bound, levels)
    ref, ref_lo, ref_hi, ref_levels = _native.adc_reference(z, f, c, b, ti, round_, bound, dtype)
    assert nan_equal(z, before)
    assert nan_equal(y, ref)
    assert nan_equal(torch.tensor([lo, hi]), torch.tensor([ref_lo, ref_hi]))
    if levels is not None and not (nan and dtype != torch.float32):
        assert levels.dtype == dtype and nan_equal(levels.float(), ref_levels.float())


def test_adc_kernel_does_not_depend_on_the_thread_count():
    _require_kernel()
    z, f, c, b = _adc_args(1, 1, 2, 999, 1, 384, True, True)
    outs = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            y = torch.empty(1, 999, 384)
            ext = mvm._ADC.finish(z, y, f, c, b, 2, True)
            outs.append((y, ext))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 9),
    to=st.integers(1, 3),
    cols=st.integers(1, 40),
    round_=st.booleans(),
    nan=st.booleans(),
    clip=st.sampled_from([(127.0, 127.5), (10.0, 10.5), (30.5, 30.0), (math.inf, math.inf)]),
    scale=st.sampled_from([5.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_adc_kernel_in_place_equals_the_tensor_code(b, n, to, cols, round_, nan, clip, scale, seed):
    """The ADC in place (a saturating first pass, bound management's rounds): any tile counts
    and row widths, with and without rounding and the clip, a NaN: the same levels, per-tile
    saturation mask (a tile holding a NaN is not saturated, as ``amax`` has it) and extremes
    as the tensor code."""
    _require_kernel()
    bound, limit = clip
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, to * cols, generator=gen) * scale
    if nan:
        z[-1, -1, -1] = math.nan
    got = z.clone()
    sat = torch.zeros(b, n, to, dtype=torch.bool)
    lo, hi = mvm._ADC.adc_(got, sat, round_, bound, limit)
    ref, ref_sat, ref_lo, ref_hi = _native.adc_in_place_reference(z, to, round_, bound, limit)
    assert nan_equal(got, ref)
    assert torch.equal(sat, ref_sat)
    assert nan_equal(torch.tensor([lo, hi]), torch.tensor([ref_lo, ref_hi]))


def test_adc_kernel_in_place_refuses_wrong_buffers():
    _require_kernel()
    z = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="16 outputs do not split into 3 tiles"):
        mvm._ADC.adc_(z, torch.empty(2, 4, 3, dtype=torch.bool), True, 9.0, 9.5)
    with pytest.raises(ValueError, match=r"got \(2, 4, 2\) torch.uint8.*expected contiguous bool"):
        mvm._ADC.adc_(z, torch.empty(2, 4, 2, dtype=torch.uint8), True, 9.0, 9.5)
    with pytest.raises(ValueError, match="contiguous: False"):
        mvm._ADC.adc_(z.transpose(0, 1), torch.empty(4, 2, 1, dtype=torch.bool), True, 9.0, 9.5)


def test_adc_kernel_refuses_wrong_buffers():
    _require_kernel()
    z, f, c, b = _adc_args(2, 1, 2, 4, 2, 8, True, True)
    y = torch.empty(1, 4, 16)
    with pytest.raises(ValueError, match=r"ADC kernel got \(1, 4, 15\)"):
        mvm._ADC.finish(z, torch.empty(1, 4, 15), f, c, b, 2, True)
    with pytest.raises(ValueError, match="contiguous: False"):
        mvm._ADC.finish(z, y, f, c.t().contiguous().t(), b, 2, True)
    with pytest.raises(ValueError, match="16 outputs do not split into 3 tiles"):
        mvm._ADC.finish(z, y, torch.rand(2, 4, 3), c, b, 2, True)
    with pytest.raises(ValueError, match=r"levels as torch.int8 with bound 200.0; allowed"):
        mvm._ADC.finish(z, y, f, c, b, 2, True, 200.0, torch.empty(z.shape, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"levels as torch.int16 with bound inf"):
        mvm._ADC.finish(z, y, f, c, b, 2, True, math.inf, torch.empty(z.shape, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"levels as torch.float64"):
        mvm._ADC.finish(z, y, f, c, b, 2, True, 9.0, torch.empty(z.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got \(2, 4, 8\) torch.int8.*expected contiguous int8"):
        mvm._ADC.finish(z, y, f, c, b, 2, True, 9.0, torch.empty(2, 4, 8, dtype=torch.int8))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_adc_kernel_output_is_kept_where_nothing_saturates(monkeypatch, preset):
    """Inputs that saturate nothing: the kernel's output is the layer's (no hand-back), the
    same values as the tensor code; with a saturating vector added, where bound management
    redoes it the first pass is handed back (the ADC in place, then the rounds) and the kernel
    writes the output from the final levels, and where there is none (``standard_hwa``) the
    kernel clips it itself — the same values either way."""
    _require_kernel()
    torch.manual_seed(7)
    digital = torch.nn.Linear(700, 130)
    with torch.no_grad():
        digital.weight[0] = digital.weight[0].sign() * 0.5  # one large output column
    layer = _chip(digital, PRESETS[preset])
    # one dominant input per vector: after abs-max scaling the sums stay far below the bound
    x = torch.randn(2, 9, 700) * 1e-3
    x[..., 3] = 1.0
    got, ref, kept = _forward_pair(monkeypatch, layer, x, which="ADC")
    assert kept == 1 and torch.equal(got, ref)
    x[1, 4] = digital.weight[0].detach().sign()  # output 0 sums 0.5 |W|: it saturates the ADC
    rounds = []
    real_bm = mvm._bound_management
    monkeypatch.setattr(mvm, "_bound_management", lambda *a: rounds.append(1) or real_bm(*a))
    got, ref, kept = _forward_pair(monkeypatch, layer, x, which="ADC")
    bm = PRESETS[preset].io.bound_management == aimc.config.BoundManagement.ITERATIVE
    assert kept == 1 and torch.equal(got, ref)
    assert len(rounds) == (2 if bm else 0)  # (the kernel's forward and the tensor code's)


def _train_pair(monkeypatch, layer: torch.nn.Module, x: torch.Tensor):
    """Output and every gradient of one training step with the ADC kernel and with the tensor
    code, the same seed; and how many of the first's forwards kept the kernel's output."""
    kept = _spy_adc_kept(monkeypatch)
    runs = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_ADC_NATIVE", env)
        layer.zero_grad()
        aimc.manual_seed(layer, 5)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        grads = {k: p.grad.clone() for k, p in layer.named_parameters() if p.grad is not None}
        runs.append((y.detach(), xi.grad, grads))
        if env == "1":
            n_kept = sum(kept)
    return runs[0], runs[1], n_kept


@pytest.mark.parametrize("shape", [(1030, 70), (512, 300), (100, 20)])
def test_training_forward_keeps_the_levels_with_the_kernel(monkeypatch, shape):
    """``standard_hwa``'s training forward (learned input range and output scales, the levels
    kept for the scales' gradient, outputs that clip): the kernel writes the levels and the
    output in its pass, and the output, the input gradient and every parameter gradient (the
    output scales' from the levels) are those of the tensor code, bit for bit."""
    _require_kernel()
    torch.manual_seed(8)
    n_in, n_out = shape
    layer = AnalogLinear.from_digital(torch.nn.Linear(n_in, n_out), aimc.presets.standard_hwa())
    layer.train()
    x = torch.randn(2, 23, n_in) * 3
    x[0, 1] = 0.0
    (y, gx, grads), (y0, gx0, grads0), kept = _train_pair(monkeypatch, layer, x)
    assert kept == 1
    assert torch.equal(y, y0) and torch.equal(gx, gx0)
    assert grads.keys() == grads0.keys() and len(grads) >= 3
    for k in grads:
        assert torch.equal(grads[k], grads0[k]), k
    out = layer.analog_config.io.out_bound / layer.analog_config.io.out_step
    assert out == 127.0  # 8-bit ADC: int8 levels


def test_training_forward_hands_saturation_to_bound_management(monkeypatch):
    """With iterative bound management (``bert_squad``) a saturated training forward goes back
    to the tensor code (AIHWKIT's rounds), the same values; unsaturated ones keep the kernel."""
    _require_kernel()
    torch.manual_seed(8)
    layer = _chip(torch.nn.Linear(600, 40), PRESETS["bert_squad"])
    x = torch.randn(8, 600)
    x[3] = layer.weight[0].detach().sign()  # output 0 saturates
    a, b, kept = _train_pair(monkeypatch, layer, x)
    assert kept == 0
    for got, ref in zip(a[:2], b[:2], strict=True):
        assert torch.equal(got, ref)
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    x = torch.randn(8, 600) * 1e-3
    x[:, 3] = 1.0
    a, b, kept = _train_pair(monkeypatch, layer, x)
    assert kept == 1 and torch.equal(a[0], b[0])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_adc_kernel_falls_back_to_plain_fma_rounding(monkeypatch):
    """Where PyTorch's addcmul rounds twice (a build that does not contract it), the second
    variant of the source is the one kept; here: a self-check that only the second passes."""
    from torch._inductor import codecache

    real = codecache.CppPythonBindingsCodeCache.load_pybinding
    built = []

    def load(argtypes, source, *args, **kwargs):
        built.append("#define AIMC_FMA 1" in source)
        return real(argtypes, source, *args, **kwargs)

    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", load)
    k = _native.NativeAdcKernel()
    monkeypatch.setattr(k, "self_check", lambda fn: None if len(built) == 2 else "first fails")
    if not k.usable():
        pytest.skip(f"the kernel does not build here: {k.failed}")
    assert built == [True, False]


def test_adc_kernel_build_failure_warns_once(monkeypatch):
    from torch._inductor import codecache

    def built_wrong(*args, **kwargs):
        def kernel(*a):
            pass  # writes nothing

        return kernel

    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", built_wrong)
    k = _native.NativeAdcKernel()
    with pytest.warns(RuntimeWarning, match="fused ADC kernel could not be built.*self-check"):
        assert not k.usable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not k.usable()


def test_float64_bias_given_to_analog_mvm_keeps_the_tensor_code(monkeypatch):
    """``analog_mvm`` called directly with a float64 bias (layers pass float32): the ADC kernel
    steps aside for the tensor code instead of refusing the buffers; same values either way."""
    _require_kernel()
    torch.manual_seed(9)
    layer = AnalogLinear(64, 16, config=aimc.AnalogConfig())
    tw, io = layer.active_tiles(), layer.analog_config.io
    x, bias = torch.randn(1, 5, 64), torch.randn(1, 16, dtype=torch.float64)
    outs = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_ADC_NATIVE", env)
        outs.append(mvm.analog_mvm(x, tw, io, torch.Generator().manual_seed(1), bias))
    assert torch.equal(outs[0], outs[1])


def test_an_unchecked_build_is_never_the_kernel(monkeypatch):
    """While a build is being checked, the kernel object still has no function: another thread
    asking it then gets the tensor code, never a build that may fail its check."""
    _require_kernel()
    k = _native.NativeAdcKernel()
    during = []
    real = _native._adc_mismatch

    def mismatch(probe, *case):
        during.append((probe is not k, k._fn is None))
        return real(probe, *case)

    monkeypatch.setattr(_native, "_adc_mismatch", mismatch)
    assert k.usable()
    assert during and all(a and b for a, b in during)
