"""Edge cases of predicted saturation (``aimc.mvm._predicted_variance``), from a review of the
first version (2026-12-07, a helper's adversarial tests; each kept as a regression test).

It found: the outputs equal the unpredicted forward's to float rounding, not bit for bit (an
ADC level apart on a rounding tie; the last bits with the ADC's quantization off): the claim
and ``tests/test_predict_saturation.py``'s comparison say so now; the bfloat16 variance rounds
up to ~0.7 % above its exact value, past the bound's float32 slack (a pair marked saturated
that was not): its own slack since; non-contiguous tile matrices raised in the bound's
``view``; and, shared with the int8 limbs' cache, a write in place to inference-mode tile
matrices is not seen (a strict xfail below). The rest is coverage that held: convolutions, an
analog bias row, a lean chip, input noise with stochastic rounding, ``max_bm_factor`` 1, no
noise management, float64 modules with non-finite rows, reprogramming and drifting, a compiled
model.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_predict_saturation import _both, _inputs, _layer, _Spy, assert_same_to_rounding

import aimc
import aimc.mvm as mvm
from aimc import _bracket, presets
from aimc.config import DeviceConfig
from aimc.functional import TileLayout

# --------------------------------------------------------------------------------------------
# helpers (with _layer, _inputs, _Spy and _both of tests/test_predict_saturation.py)


def _binary_layer(n_in: int, n_out: int, **io) -> torch.nn.Module:
    """A ``bert_squad`` IO layer without device model (exact tiles) whose weights are all +-1:
    with column-wise weight scaling every ``|W|`` of a tile is its maximum, so the ``pcm_read``
    variance reaches the bound ``_predicted_variance`` uses (up to rounding)."""
    cfg = presets.bert_squad(io.pop("w_noise", 0.0175))
    cfg = cfg.replace(io=cfg.io.replace(**io), device=DeviceConfig())
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    signs = torch.randint(0, 2, lin.weight.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lin.weight.copy_(signs.float() * 2 - 1)
    return aimc.convert(torch.nn.Sequential(lin), cfg, seed=0).eval()


# ============================================================================================
# found by the review (fixed, or pinned)
# ============================================================================================


def test_default_layer_at_most_one_adc_level_apart(monkeypatch):
    # The default bert_squad config, nn.Linear(1024, 1024), 127 standard-normal tokens (the
    # float32 GEMM path, < INT_MIN_VECTORS), prediction switched on by the layer's own hint at
    # the default threshold (these layers saturate 64-71 % of their pairs). The review found one
    # output of 16 forwards (input seed 10, AMD Zen 5) one ADC level apart: the unpredicted pass
    # writes the noise and lets the GEMM accumulate onto it (baddbmm, beta 1), the predicted one
    # adds the noise to the finished signal (addcmul) and sums the gathered variance GEMM over
    # fewer rows: other roundings of the same sums.
    def fresh() -> torch.nn.Module:
        cfg = presets.bert_squad()
        torch.manual_seed(0)
        m = aimc.convert(torch.nn.Sequential(torch.nn.Linear(1024, 1024)), cfg, seed=0).eval()
        aimc.program(m, seed=0)
        aimc.drift(m, 3600.0, seed=0)
        return m

    spy = _Spy(monkeypatch)
    for seed in range(16):
        model = fresh()
        x = torch.randn(127, 1024, generator=torch.Generator().manual_seed(seed))
        monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
        with torch.inference_mode():
            model(x)  # no history yet: the share saturated remembered
            aimc.manual_seed(model, 1)
            full = model(x)
            aimc.manual_seed(model, 1)
            monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.4)  # the default
            calls = spy.calls
            predicted = model(x)
            assert spy.calls == calls + 1, "the layer's hint did not switch prediction on"
        assert_same_to_rounding(full, predicted)
    assert spy.decided > 0


UNQUANTIZED = {
    # out_res = 0 (no ADC quantization) still passes _may_predict (the limit is out_bound):
    # every last-bit difference of z (see the test above) reaches the outputs
    "float32 GEMM, 2 input tiles": dict(n_in=512, n_out=384, tokens=100, out_bound=40.0),
    "int8 MVM": dict(n_in=512, n_out=384, tokens=300),
    "output tiles split": dict(n_in=384, n_out=384, tokens=200, max_out=128),
    "uneven input split": dict(n_in=300, n_out=256, tokens=160, max_in=128),
    "analog bias row, one tile": dict(
        n_in=200, n_out=128, tokens=200, max_in=512, digital_bias=False
    ),
}


@pytest.mark.parametrize("case", list(UNQUANTIZED), ids=list(UNQUANTIZED))
def test_unquantized_adc_outputs_to_the_last_bits(case, monkeypatch):
    # The same roundings with out_res = 0: the ADC does not round the differences away, and
    # 1-2 ulp differences are in 1-40 % of the outputs (bit for bit they were not).
    # (The "float32 GEMM" case decides no pair: out_bound 40 saturates nothing, so it shows
    # the "nearly all" branch, z.addcmul_ at mvm.py:778; the others decide some.)
    kw = dict(UNQUANTIZED[case])
    tokens, n_in, n_out = kw.pop("tokens"), kw.pop("n_in"), kw.pop("n_out")
    model = _layer(n_in, n_out, out_res=0.0, **kw)
    x = _inputs((tokens, n_in), 1)
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch, warm=True)
    assert spy.calls == 1
    assert_same_to_rounding(full, predicted)


def _bf16_worst_out_noise(io, ci: int) -> float:
    """The out_noise in [0.5, 1.5] whose pcm_read variance (+-1 weights, every level 128), as
    the unpredicted bfloat16 path computes it (the offset filled in bfloat16, the GEMM's output
    rounded to bfloat16), is rounded up the most against the exact value."""
    in_unit, out_unit = mvm.units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    x2 = torch.full((1, 1, ci), 16384.0, dtype=torch.bfloat16)
    w2 = torch.ones(1, ci, 1, dtype=torch.bfloat16)
    best, arg = 0.0, 0.0
    for on in torch.linspace(0.5, 1.5, 401).tolist():
        offset = (on / out_unit) ** 2
        var = torch.empty(1, 1, 1, dtype=torch.bfloat16).fill_(offset)
        var = mvm._bmm_(var, x2, w2, beta=1.0, alpha=gain)
        ratio = float(var.float()) / (offset + gain * ci * 16384)
        if ratio > best:
            best, arg = ratio, on
    return arg


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16"])
def test_a_pair_decided_at_the_bound_saturates(bf16):
    # Every |W| of the tile at its max (+-1 weights) and every level 128: the variance reaches
    # the bound the decision uses, up to rounding. A pair decided by a hair (its margin just
    # over the limit) must saturate under the variance the unpredicted pass computes. With
    # io.w_noise_bf16 that variance is bfloat16 (the offset filled in bfloat16, the GEMM's
    # output rounded to it): up to ~0.4-0.7 % above the exact variance (~0.2-0.35 % on sigma),
    # past the float32 slack of 0.1 %: the review found a pair "surely saturated" that the full
    # computation did not saturate; bfloat16 has its own slack since. (A bound 20 % too small
    # passes every layer test, whose |W| are mostly below the tile's max: this one fails.)
    dtype = torch.bfloat16 if bf16 else torch.float32
    io = presets.bert_squad().io.replace(w_noise_bf16=bf16)
    ci = 64
    if bf16:
        io = io.replace(out_noise=_bf16_worst_out_noise(io, ci))
    in_unit, out_unit = mvm.units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    offset = (io.out_noise / out_unit) ** 2
    x2 = torch.full((1, 1, ci), 16384.0, dtype=dtype)  # every level 128
    w = torch.ones(1, 1, ci)
    tw = mvm.TileWeights(None, w, None, w.to(dtype))
    slack = mvm._STD_SLACK_BF16 if bf16 else mvm._STD_SLACK
    s_max = math.sqrt(offset + gain * ci * 16384) * (1 + slack)
    limit = mvm._saturation_limit(io)
    zeta = torch.tensor([[[-3.0]]])
    z = torch.tensor([[[limit + 1.5 * mvm._LIMIT_MARGIN + 3.0 * s_max]]])  # just decided
    signal = z.clone()
    sure = mvm._predicted_variance(z, zeta, x2, tw, io, 1)
    assert sure is not None and bool(sure.all())
    # the unpredicted pass: the same variance MVM, noise drawn scaled, the signal added
    var = torch.empty(1, 1, 1, dtype=dtype).fill_(offset)
    var = mvm._bmm_(var, x2, tw.w_abs.transpose(1, 2), beta=1.0, alpha=gain).float()
    y = (zeta * var.sqrt() + signal).round()
    assert bool((y.abs() > limit).all()), (
        f"decided saturated, but the full computation gives level {float(y)} (limit {limit}): "
        f"sigma {float(var.sqrt()):.5f} > s_max {s_max:.5f}"
    )


def test_bf16_variance_end_to_end(monkeypatch):
    # The same as a layer forward: +-1 weights (no device model), w_noise_bf16, all inputs +-1
    # (every level 128), out_noise chosen as above. With the float32 slack input seed 29 (2048
    # tokens) decided one pair more than a wider slack (334 against 333) and 97 outputs
    # differed by up to ~17 (the extra bound-management round shifts every later draw).
    warnings.simplefilter("ignore", RuntimeWarning)  # (bf16 emulation warning, other hosts)
    io = presets.bert_squad().io.replace(w_noise_bf16=True)
    out_noise = _bf16_worst_out_noise(io, 64)
    spy = _Spy(monkeypatch)
    for seed in range(26, 34):
        model = _binary_layer(64, 1, w_noise_bf16=True, out_noise=out_noise)
        g = torch.Generator().manual_seed(seed)
        x = (torch.randint(0, 2, (2048, 64), generator=g) * 2 - 1).float()
        full, predicted = _both(model, x, monkeypatch, warm=True)
        assert_same_to_rounding(full, predicted)
    assert spy.decided > 0


def test_non_contiguous_tile_matrices(monkeypatch):
    # analog_mvm on tile matrices that are not contiguous (a transposed view; w_abs None, so
    # |W| of it): the predicted forward raised in _tile_abs_max's view (the review's finding).
    # (The layers always build contiguous tiles: reachable only through analog_mvm itself.)
    io = presets.bert_squad().io
    lo = TileLayout.build(1, 128, 256, presets.bert_squad().mapping)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(lo.batch, lo.rows, lo.padded_out, generator=gen).transpose(1, 2) * 0.05
    x = torch.rand(1, 100, 256, generator=gen) * 2 - 1
    tw = mvm.TileWeights(lo, w, None, None)
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    full = mvm.analog_mvm(x, tw, io, torch.Generator().manual_seed(1))
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
    predicted = mvm.analog_mvm(x, tw, io, torch.Generator().manual_seed(1))
    assert spy.calls == 1
    assert_same_to_rounding(full, predicted)


def _in_place_case() -> tuple[torch.nn.Module, torch.Tensor]:
    """A ``bert_squad(0.05)`` layer without device model (its tiles are the cached digital
    weights') and inputs of growing density (some vectors saturate, some do not), for the
    in-place writes to cached tiles below."""
    cfg = presets.bert_squad(0.05)
    cfg = cfg.replace(device=DeviceConfig(), mapping=cfg.mapping.replace(max_input_size=256))
    torch.manual_seed(0)
    model = aimc.convert(torch.nn.Sequential(torch.nn.Linear(512, 256)), cfg, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(100, 512, generator=g) * 2 - 1
    x = x * (torch.rand(100, 512, generator=g) < torch.linspace(0.01, 0.3, 100).unsqueeze(1))
    return model, x


@pytest.mark.xfail(
    strict=True,
    reason="tile caches (int8 limbs, max|W|) do not see in-place writes to inference tensors",
)
def test_stale_abs_max_after_in_place_write_to_inference_tiles(monkeypatch):
    # A known limitation, pinned. Tiles built inside torch.inference_mode are inference
    # tensors, whose version counter _tile_abs_max reads as 0: an in-place write to the cached
    # |W| keeps the old max|W|, s_max is too small, and pairs are decided saturated that are not
    # (4 pairs decided against 1; 1196 outputs differ). The same write to normal tensors (below)
    # bumps the version and is seen. The int8 limbs' cache (_intmvm.cached_limbs) has the same
    # blind spot for tw.w; aimc itself never writes into cached tiles.
    model, x = _in_place_case()
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
    # (the bracketed bfloat16 variance keeps |W| in bfloat16 with the same blind spot, pinned
    # in tests/test_bf16_bracket.py: off here, so that this pins max|W|'s)
    monkeypatch.setenv(_bracket.ENV, "0")
    with torch.inference_mode():
        model(x)  # builds the tiles (inference tensors) and caches max|W| on w_abs
        tw = model[0]._tile_cache[1]
        assert tw.w_abs.is_inference() and hasattr(tw.w_abs, "_aimc_abs_max")
        tw.w_abs.mul_(16)  # the cached tile matrices' |W| written in place
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch)
    assert spy.decided > 0
    assert_same_to_rounding(full, predicted)


# ============================================================================================
# coverage that held
# ============================================================================================

PASSING = {
    "conv2d": dict(
        module=lambda: torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1)),
        shape=(4, 16, 12, 12),
    ),
    "analog bias row, one tile (8-bit ADC)": dict(
        n=(200, 128), shape=(200, 200), max_in=512, digital_bias=False
    ),
    "lean chip": dict(n=(512, 256), shape=(200, 512), storage="lean"),
    "input noise and stochastic rounding": dict(
        n=(512, 256), shape=(200, 512), inp_noise=0.01, inp_sto_round=True
    ),
    "max_bm_factor 1 (one round allowed)": dict(n=(512, 256), shape=(200, 512), max_bm_factor=1.0),
    "no noise management, no DAC bound or steps": dict(
        n=(512, 256),
        shape=(200, 512),
        noise_management=aimc.NoiseManagement.NONE,
        inp_bound=0.0,
        inp_res=0.0,
    ),
}


@pytest.mark.parametrize("case", list(PASSING), ids=list(PASSING))
def test_layer_variants(case, monkeypatch):
    kw = dict(PASSING[case])
    shape = kw.pop("shape")
    module = kw.pop("module", None)
    n_in, n_out = kw.pop("n", (0, 0))
    model = _layer(n_in, n_out, module=None if module is None else module(), **kw)
    x = _inputs(shape, 1)
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch, warm=True)
    assert spy.calls == 1 and spy.decided > 0
    assert_same_to_rounding(full, predicted)


def test_float64_module_and_non_finite_rows(monkeypatch):
    # A float64 module; NaN, +-inf, huge, subnormal and all-zero rows, with input noise
    # (the all-zero vector is then multiplied unscaled)
    model = _layer(512, 256, inp_noise=0.02).double()
    x = _inputs((200, 512), 8).double()
    x[3] = 0
    x[4, 5] = math.nan
    x[6, 400] = math.inf
    x[7] *= 1e30
    x[8] = 1e-40
    x[9, :256] = 0
    x[10, 3] = -math.inf
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch, warm=True)
    assert spy.decided > 0
    assert_same_to_rounding(full, predicted)


def test_reprogram_and_drift_under_inference_mode(monkeypatch):
    # program/drift drop the chip cache; the new tiles carry neither hint nor max|W|
    model = _layer(512, 256)
    x = _inputs((200, 512), 1)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
    with torch.inference_mode():
        model(x)
        model(x)
        aimc.program(model, seed=5)
        aimc.drift(model, 1e6, seed=3)
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch)
    assert spy.decided > 0
    assert_same_to_rounding(full, predicted)


def test_in_place_write_to_normal_tiles_is_seen(monkeypatch):
    # The counterpart of the stale-cache xfail, with tiles built under no_grad
    # (normal tensors): the write bumps w_abs._version and _tile_abs_max recomputes
    model, x = _in_place_case()
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
    with torch.no_grad():
        model(x)
        tw = model[0]._tile_cache[1]
        assert not tw.w_abs.is_inference() and hasattr(tw.w_abs, "_aimc_abs_max")
        tw.w_abs.mul_(16)
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch, ctx=torch.no_grad)
    assert spy.decided > 0
    assert_same_to_rounding(full, predicted)


def test_compiled_model_predicts_inside_the_eager_op(monkeypatch):
    # aimc.compile runs an int8-ready layer's forward as the eager custom op
    # (_opaque_mvm, a fresh torch.Generator per call), where prediction is active
    model = _layer(512, 256)
    compiled = aimc.compile(model)
    x = _inputs((300, 512), 1)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    with torch.inference_mode():
        compiled(x)
    rng = {n: b.clone() for n, b in model.named_buffers() if "rng" in n}
    assert rng
    spy = _Spy(monkeypatch)
    with torch.inference_mode():
        full = compiled(x)
        for n, b in model.named_buffers():
            if n in rng:
                b.copy_(rng[n])
        monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
        predicted = compiled(x)
    assert spy.calls == 1 and spy.decided > 0
    assert_same_to_rounding(full, predicted)
