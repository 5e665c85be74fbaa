"""Predicted saturation (``aimc.mvm._predicted_variance``): an eager ``pcm_read`` forward with
iterative bound management leaves the variance MVM out for the tiles whose output surely
saturates in the first pass. The outputs must be those of the full computation: the same
draws, the same decisions, the same values up to float rounding (the signal and the noise are
added, and the gathered variance MVM summed, in another order: an output sitting on an ADC
rounding tie may move by one level, as between the compiled and the eager forward). A wrong
decision would redo a whole (tile, vector) pair with other draws: many outputs apart by about
the noise, far outside :func:`assert_same_to_rounding`. Edge cases (a review's):
``tests/test_predict_saturation_edge_cases.py``."""

from __future__ import annotations

import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aimc
import aimc.mvm as mvm
from aimc import _bracket, presets


def _layer(
    n_in: int,
    n_out: int,
    *,
    max_in: int = 256,
    max_out: int = 0,
    digital_bias: bool = True,
    module: torch.nn.Module | None = None,
    storage: str = "full",
    **io,
) -> torch.nn.Module:
    """A programmed, drifted ``bert_squad`` layer (``w_noise`` among ``io``; 0.0175 unless
    given) with ``nn.Linear``'s initialisation, or ``module`` converted: under uniform inputs
    (:func:`_inputs`) its column-normalised tiles saturate the ADC often."""
    cfg = presets.bert_squad(io.pop("w_noise", 0.0175))
    cfg = cfg.replace(
        io=cfg.io.replace(**io),
        mapping=cfg.mapping.replace(
            max_input_size=max_in, max_output_size=max_out, digital_bias=digital_bias
        ),
    )
    torch.manual_seed(0)
    mod = module if module is not None else torch.nn.Sequential(torch.nn.Linear(n_in, n_out))
    model = aimc.convert(mod, cfg, seed=0).eval()
    aimc.program(model, seed=0, storage=storage)
    aimc.drift(model, 3600.0, seed=0)
    return model


def _inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Uniform inputs: abs-max noise management leaves most of each vector's levels large."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_same_to_rounding(full: torch.Tensor, predicted: torch.Tensor) -> None:
    """``predicted`` equals ``full`` up to float rounding: NaN where it is; elsewhere within
    1e-5 relative (plus 1e-6 of the largest output), except for at most one output in 10,000
    (at least one) that moved by an ADC level (at most 2 % of the largest output)."""
    assert full.shape == predicted.shape
    assert torch.equal(full.isnan(), predicted.isnan())
    a, b = full.nan_to_num().double(), predicted.nan_to_num().double()
    top = float(a.abs().max()) if a.numel() else 0.0
    diff = (a - b).abs()
    apart = diff > 1e-5 * a.abs() + 1e-6 * top
    allowed = max(1, a.numel() // 10_000)
    assert int(apart.sum()) <= allowed, (
        f"{int(apart.sum())} of {a.numel()} outputs apart (allowed {allowed}), by up to "
        f"{float(diff.max()):.3g} (largest output {top:.3g})"
    )
    assert (float(diff.max()) if diff.numel() else 0.0) <= 0.02 * top


class _Spy:
    """Counts the predicted first passes and the tiles they decided."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.decided = 0
        original = mvm._predicted_variance

        def spy(*args):
            sure = original(*args)
            self.calls += 1
            self.decided += 0 if sure is None else int(sure.sum())
            return sure

        monkeypatch.setattr(mvm, "_predicted_variance", spy)


def _both(
    model: torch.nn.Module, x: torch.Tensor, monkeypatch, *, ctx=torch.inference_mode, warm=False
) -> tuple[torch.Tensor, ...]:
    """The forward without and with prediction (forced on), each from the same seed
    (``aimc.manual_seed`` restarts the layers' noise generators), under ``ctx``; with ``warm``
    after a first forward without prediction (the layer's tiles and hint)."""
    if warm:
        monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
        with ctx():
            model(x)
    out = []
    for limit in (math.inf, 0.0):
        monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", limit)
        aimc.manual_seed(model, 1)
        with ctx():
            out.append(model(x))
    return tuple(out)


CASES = {
    "int8 MVM, 2 input tiles": dict(n_in=512, n_out=384, tokens=300),
    "float32 MVM (64 vectors)": dict(n_in=512, n_out=384, tokens=64),
    "output tiles split": dict(n_in=384, n_out=384, tokens=200, max_out=128),
    "uneven input split": dict(n_in=300, n_out=256, tokens=160, max_in=128),
    "no output noise": dict(n_in=256, n_out=256, tokens=160, out_noise=0.0),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_predicted_forward_equals_the_full_one(case, monkeypatch):
    kw = dict(CASES[case])
    tokens = kw.pop("tokens")
    n_in, n_out = kw.pop("n_in"), kw.pop("n_out")
    model = _layer(n_in, n_out, **kw)
    x = _inputs((tokens, n_in), 1)
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch)
    assert spy.calls == 1
    assert spy.decided > 0, "nothing predicted: the test compares nothing"
    assert_same_to_rounding(full, predicted)


def test_predicted_forward_with_bfloat16_variance(monkeypatch):
    model = _layer(512, 256, w_noise_bf16=True)
    x = _inputs((200, 512), 2)
    spy = _Spy(monkeypatch)
    with pytest.warns(RuntimeWarning) if mvm._native_bf16_cpu() is False else _nothing():
        full, predicted = _both(model, x, monkeypatch)
    assert spy.decided > 0
    assert_same_to_rounding(full, predicted)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_non_finite_inputs_are_never_predicted(monkeypatch):
    # a NaN or inf input makes its vector's outputs NaN; its tiles must not count as saturated
    # (bound management would spend the other vectors' draws on them)
    model = _layer(512, 256)
    x = _inputs((160, 512), 3)
    x[5, 7] = math.nan
    x[9, 300] = math.inf
    x[11] *= 1e30  # finite, huge: abs-max noise management scales it back
    spy = _Spy(monkeypatch)
    full, predicted = _both(model, x, monkeypatch)
    assert spy.decided > 0
    assert bool(full[5].isnan().all()) and bool(full[9].isnan().all())
    assert_same_to_rounding(full, predicted)


def test_a_layer_predicts_after_a_forward_that_saturated_often(monkeypatch):
    model = _layer(512, 256)
    x = _inputs((200, 512), 4)
    spy = _Spy(monkeypatch)
    with torch.inference_mode():
        model(x)  # the first forward has no history: no prediction, the share remembered
        assert spy.calls == 0
        model(x)
        assert spy.calls == 1
        model(x * 1e-3)  # (abs-max noise management: the same levels) still predicts
        assert spy.calls == 2


def test_a_layer_that_does_not_saturate_never_predicts(monkeypatch):
    model = _layer(512, 256)
    # inputs with one large value per tile: abs-max scaling leaves the rest small
    x = _inputs((200, 512), 5) * 0.01
    x[:, ::256] = 10.0  # one per input tile
    spy = _Spy(monkeypatch)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
    assert spy.calls == 0


def test_training_and_other_configs_do_not_predict(monkeypatch):
    x = _inputs((200, 256), 6)
    model = _layer(256, 256).train()
    others = []
    no_bm = presets.bert_squad().io.replace(bound_management=aimc.BoundManagement.NONE)
    for cfg in (presets.pcm_inference(), presets.bert_squad().replace(io=no_bm)):
        m = aimc.convert(torch.nn.Sequential(torch.nn.Linear(256, 256)), cfg, seed=0).eval()
        aimc.program(m, seed=0)
        others.append(m)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", 0.0)
    spy = _Spy(monkeypatch)
    model(x).sum().backward()  # a training forward (kept tile outputs): never
    for m in others:  # no pcm_read noise; no bound management
        with torch.inference_mode():
            m(x)
    assert spy.calls == 0
    with torch.inference_mode():  # (the spy counts)
        model.eval()(x)
    assert spy.calls == 1


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_out=st.sampled_from([1, 2, 3]),
    spread=st.floats(0.5, 3.0),
    out_noise=st.sampled_from([0.0, 0.04, 0.5]),
    w_noise=st.sampled_from([0.0175, 0.07, 0.5]),
)
def test_a_tile_predicted_to_saturate_saturates(seed, n_out, spread, out_noise, w_noise):
    # the decision alone, on signals spread around the ADC limit: every tile it marks must
    # saturate under the exact variance (float64), whatever that variance is
    g = torch.Generator().manual_seed(seed)
    io = presets.bert_squad(w_noise).io.replace(out_noise=out_noise)
    b, n, cols, ci = 2, 24, 8, 16
    limit = mvm._saturation_limit(io)
    o = n_out * cols
    z = torch.randn(b, n, o, generator=g) * spread * limit
    zeta = torch.randn(b, n, o, generator=g)
    levels = torch.randint(-128, 129, (b, n, ci), generator=g).float()
    x2 = levels * levels
    w = torch.rand(b, o, ci, generator=g) * 3 - 1.5
    tw = mvm.TileWeights(None, w, None, w.abs())
    z_before = z.clone()
    # the float32 variance's values (the bracketed bfloat16 one, tests/test_bf16_bracket.py,
    # gives values of the same ADC levels, not these values)
    with mock.patch.dict(os.environ, {_bracket.ENV: "0"}):
        sure = mvm._predicted_variance(z, zeta, x2, tw, io, n_out)
    in_unit, out_unit = mvm.units(io)
    var = (out_noise / out_unit) ** 2 + (w_noise * in_unit / out_unit) ** 2 * torch.bmm(
        x2.double(), w.abs().double().transpose(1, 2)
    )
    y = (z_before.double() + var.sqrt() * zeta.double()).round()
    saturated = (y.abs() > limit).view(b, n, n_out, cols).any(dim=3)
    if sure is not None:
        assert not bool((sure & ~saturated).any())
        undecided = ~sure.all(dim=2)
    else:
        undecided = torch.ones(b, n, dtype=torch.bool)
    # the vectors not decided got the full computation's values
    got = z.double()[undecided]
    want = z_before.double()[undecided] + var.sqrt()[undecided] * zeta.double()[undecided]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
