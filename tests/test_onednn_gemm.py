"""The ``pcm_read`` variance MVM through oneDNN (``aimc._onednn``): the same float32 product as
MKL's ``baddbmm`` up to float rounding, only where it applies, and MKL's GEMM where oneDNN is
switched off or fails its check. A forward either way gives the same outputs up to float
rounding (:func:`assert_same_to_rounding`: an output on an ADC rounding tie may move a level);
a wrong product (a scaled variance, a dropped offset, a lost row block) moves many outputs by
about the noise."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_predict_saturation import _inputs, _layer, assert_same_to_rounding

import aimc
import aimc.mvm as mvm
from aimc import _bracket, _onednn
from aimc._onednn import ONEDNN_GEMM, OneDnnGemm, affine_bmm

pytestmark = pytest.mark.skipif(
    not OneDnnGemm().switched_on(), reason="oneDNN's GEMM does not run here (not x86-64)"
)


@pytest.fixture(autouse=True)
def _float32_variance(monkeypatch):
    """These tests are about the float32 variance MVM through oneDNN: the bracketed bfloat16
    variance (aimc._bracket, tests/test_bf16_bracket.py), which would take its place on a CPU
    with native bfloat16 matmuls, is switched off."""
    monkeypatch.setenv(_bracket.ENV, "0")


def _operands(b: int, m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # squared levels (whole numbers up to 127^2, scaled) and |W|: terms of one sign
    x2 = torch.randint(0, 128, (b, m, k), generator=gen).float().square_() * 3e-5
    w = torch.rand(b, n, k, generator=gen)
    return x2, w


def forwards(model, x, monkeypatch, envs=("0", "1"), run=None) -> list[torch.Tensor]:
    """``run(x)`` (default ``model(x)``) in inference mode with ``AIMC_ONEDNN_GEMM`` set to each
    of ``envs`` in turn, each from the same seed (``aimc.manual_seed(model, 1)``)."""
    out = []
    for env in envs:
        monkeypatch.setenv(_onednn.ENV, env)
        aimc.manual_seed(model, 1)
        with torch.inference_mode():
            out.append((run or model)(x))
    return out


def _exact(x2: torch.Tensor, w: torch.Tensor, offset: float) -> torch.Tensor:
    return x2.double() @ w.double().transpose(1, 2) + offset


#: batches, rows, the summed dimension and columns of the products the tests draw
SIZES = dict(b=st.integers(1, 3), m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 40))


@settings(max_examples=25, deadline=None)
@given(**SIZES, block=st.sampled_from([None, 1, 7]))
def test_affine_bmm_is_the_product_to_float_rounding(b, m, k, n, block):
    """Every batch and row block (forced small: ``BLOCK_BYTES`` of a few rows) is computed,
    with the offset, within float32 rounding of the exact sums."""
    x2, w = _operands(b, m, k, n, seed=b * 1000 + m * 10 + k)
    out = torch.full((b, m, n), math.nan)
    old = (_onednn.BLOCK_BYTES, _onednn.MIN_BLOCK_ROWS)
    try:
        if block is not None:
            _onednn.BLOCK_BYTES, _onednn.MIN_BLOCK_ROWS = 4 * n * block, 1
        got = affine_bmm(out, x2, w, 0.25)
    finally:
        _onednn.BLOCK_BYTES, _onednn.MIN_BLOCK_ROWS = old
    exact = _exact(x2, w, 0.25)
    assert got.shape == (b, m, n) and got.dtype == torch.float32
    rel = ((got.double() - exact).abs() / exact).max()
    assert float(rel) <= 4 * k * 2.0**-24


def test_affine_bmm_refuses_mismatched_shapes():
    x2, w = _operands(2, 5, 6, 4, 0)
    with pytest.raises(ValueError, match=r"x \(2, 5, 6\), w \(2, 4, 7\)"):
        affine_bmm(torch.empty(2, 5, 4), x2, torch.rand(2, 4, 7), 0.0)
    with pytest.raises(ValueError, match=r"out \(2, 5, 3\)"):
        affine_bmm(torch.empty(2, 5, 3), x2, w, 0.0)


def test_applies_only_to_float32_cpu_tensors_outside_autograd(monkeypatch):
    monkeypatch.delenv(_onednn.ENV, raising=False)
    x = torch.ones(2, 3, 4)
    assert ONEDNN_GEMM.applies(x, x)
    assert not ONEDNN_GEMM.applies(x, x.double())
    assert not ONEDNN_GEMM.applies(x, x.bfloat16())
    tracked = x.clone().requires_grad_()
    assert not ONEDNN_GEMM.applies(x, tracked)
    with torch.no_grad():
        assert ONEDNN_GEMM.applies(x, tracked)
    monkeypatch.setenv(_onednn.ENV, "0")
    assert not ONEDNN_GEMM.applies(x, x)


def _variance_both_ways(monkeypatch, x2, w2, io) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for env in ("0", "1"):
        monkeypatch.setenv(_onednn.ENV, env)
        var = torch.full((x2.shape[0], x2.shape[1], w2.shape[2]), math.nan)
        out.append(mvm._variance_(var, x2.clone(), w2, io).clone())
    return out[0], out[1]


@pytest.mark.parametrize("b", [1, 3])
def test_variance_equals_mkls_to_float_rounding(monkeypatch, b):
    """``mvm._variance_`` (gain, offset, ADC steps) is MKL's up to float rounding, one input
    tile (oneDNN's result returned as is) and several (copied into the buffer); ``x2`` itself
    is left as it was."""
    io = aimc.presets.bert_squad(0.0175).io
    x2, w = _operands(b, 50, 64, 48, 3)
    kept = x2.clone()
    calls = []
    monkeypatch.setattr(mvm, "affine_bmm", lambda *a: calls.append(1) or affine_bmm(*a))
    mkl, onednn = _variance_both_ways(monkeypatch, x2, w.transpose(1, 2), io)
    assert calls == [1], "oneDNN did not run"
    assert torch.equal(x2, kept)
    in_unit, out_unit = mvm.units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    exact = _exact(x2, w, 0.0) * gain + (io.out_noise / out_unit) ** 2
    for got in (mkl, onednn):
        assert float(((got.double() - exact).abs() / exact).max()) <= 4 * 64 * 2.0**-24


def test_a_pcm_read_forward_runs_onednn_and_gives_mkls_outputs(monkeypatch):
    """A ``bert_squad`` eval forward (two input tiles, bound management's rounds) runs its
    variance MVMs through oneDNN, and its outputs are those of the forward with MKL's GEMM from
    the same seed, up to float rounding."""
    model = _layer(512, 384)
    x = _inputs((300, 512), 1)
    monkeypatch.setattr(mvm, "PREDICT_MIN_SATURATED", math.inf)
    calls = []
    monkeypatch.setattr(mvm, "affine_bmm", lambda *a: calls.append(a[1].shape) or affine_bmm(*a))
    out = forwards(model, x, monkeypatch)
    assert len(calls) >= 2, f"oneDNN ran for {calls}: the first pass and a round expected"
    assert calls[0] == (2, 300, 256)
    assert_same_to_rounding(*out)


def test_a_failed_check_warns_once_and_keeps_mkls_gemm(monkeypatch):
    """A oneDNN that gives a wrong product fails the check: warned once, never used again,
    and the variance is MKL's."""
    probe = OneDnnGemm()
    monkeypatch.setattr(_onednn, "_linear", lambda x, w, b: (x @ w.T + b) * 1.001)
    monkeypatch.delenv(_onednn.ENV, raising=False)
    x = torch.ones(1, 2, 3)
    with pytest.warns(RuntimeWarning, match="oneDNN's float32 GEMM failed its check"):
        assert not probe.applies(x)
    assert "off by" in probe.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not probe.applies(x)
    # through the library: the module-level instance, failed, leaves the variance to MKL
    monkeypatch.setattr(mvm, "ONEDNN_GEMM", probe)
    io = aimc.presets.bert_squad(0.0175).io
    x2, w = _operands(2, 20, 30, 10, 4)
    var = mvm._variance_(torch.empty(2, 20, 10), x2, w.transpose(1, 2), io)
    in_unit, out_unit = mvm.units(io)
    gain = (io.w_noise * in_unit) ** 2 / out_unit**2
    exact = _exact(x2, w, 0.0) * gain + (io.out_noise / out_unit) ** 2
    assert float(((var.double() - exact).abs() / exact).max()) <= 1e-5


def test_an_op_that_raises_fails_the_check(monkeypatch):
    probe = OneDnnGemm()

    def broken(x, w, b):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(_onednn, "_linear", broken)
    with pytest.warns(RuntimeWarning, match="RuntimeError: no oneDNN here"):
        assert not probe.applies(torch.ones(1, 1, 1))


def test_torchs_mkldnn_switch_is_respected(monkeypatch):
    monkeypatch.delenv(_onednn.ENV, raising=False)
    x = torch.ones(1, 2, 2)
    with warnings.catch_warnings():
        # flags() also sets oneDNN's TF32 switch, and torch warns that it is for Intel GPUs
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not ONEDNN_GEMM.applies(x)
    assert ONEDNN_GEMM.applies(x)


@pytest.mark.parametrize("precision", ["medium", "high"])
def test_a_lowered_float32_matmul_precision_keeps_torchs_gemm(monkeypatch, precision):
    """Where the user lets float32 matmuls run in bfloat16 or TF32, oneDNN might honour it for
    this product too: the variance then runs through ``torch.bmm``, which follows the setting."""
    monkeypatch.delenv(_onednn.ENV, raising=False)
    x = torch.ones(1, 2, 2)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        assert not ONEDNN_GEMM.applies(x)
    finally:
        torch.set_float32_matmul_precision(before)
    assert ONEDNN_GEMM.applies(x)


@settings(max_examples=25, deadline=None)
@given(**SIZES, ta=st.booleans(), tb=st.booleans())
def test_bmm_is_the_product_to_float_rounding(b, m, k, n, ta, tb):
    """``aimc._onednn.bmm`` on contiguous operands and on transposed views (the backward's
    ``grad^T @ x`` and ``grad @ W``), one batch and several: the float32 product."""
    gen = torch.Generator().manual_seed(b * 100 + m + k + n)
    a = torch.randn(b, k, m, generator=gen).transpose(1, 2) if ta else torch.randn(b, m, k)
    c = torch.randn(b, n, k, generator=gen).transpose(1, 2) if tb else torch.randn(b, k, n)
    got = _onednn.bmm(a, c)
    exact = a.double() @ c.double()
    scale = a.double().abs() @ c.double().abs()
    assert got.shape == (b, m, n) and got.dtype == torch.float32 and got.is_contiguous()
    assert float(((got.double() - exact).abs() / scale.clamp_min(1e-30)).max()) <= 4 * k * 2.0**-24


def test_bmm_refuses_mismatched_or_empty_shapes():
    with pytest.raises(ValueError, match=r"a \(2, 3, 4\), b \(2, 5, 6\)"):
        _onednn.bmm(torch.ones(2, 3, 4), torch.ones(2, 5, 6))
    with pytest.raises(ValueError, match="none of them 0"):
        _onednn.bmm(torch.ones(2, 0, 4), torch.ones(2, 4, 6))
    # batched_matmul keeps torch.bmm for empty products
    assert mvm.batched_matmul(torch.ones(2, 0, 4), torch.ones(2, 4, 6)).shape == (2, 0, 6)


def test_a_training_step_runs_onednn_and_gives_mkls_gradients(monkeypatch):
    """An HWA training step (``standard_hwa``: learned output scales, the ADC-bound mask in the
    backward, ``pcm_read`` noise) runs its backward's products through oneDNN, and its
    gradients are those of the same step with MKL's GEMMs, from the same seed, to float
    rounding."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.GELU(), torch.nn.Linear(200, 50))
    model = aimc.convert(net, aimc.presets.standard_hwa(), seed=0).train()
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    calls = []
    monkeypatch.setattr(mvm, "onednn_bmm", lambda a, b: calls.append(1) or _onednn.bmm(a, b))
    grads = []
    for env in ("0", "1"):
        monkeypatch.setenv(_onednn.ENV, env)
        model.zero_grad()
        aimc.manual_seed(model, 3)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert calls, "the backward ran no product through oneDNN"
    assert len(grads[0]) == len(grads[1]) > 0
    for g0, g1 in zip(*grads, strict=True):
        top = float(g0.abs().max())
        assert float((g0 - g1).abs().max()) <= 1e-4 * top + 1e-12


@settings(max_examples=30, deadline=None)
@given(
    **SIZES,
    beta=st.sampled_from([0.0, 1.0, 0.5]),
    alpha=st.sampled_from([1.0, 0.3]),
    tb=st.booleans(),
)
def test_bmm_in_place_is_beta_z_plus_alpha_product(b, m, k, n, beta, alpha, tb):
    """``aimc._onednn.bmm_``: ``beta z + alpha a @ b`` to float rounding; ``beta = 0`` ignores
    what ``z`` held (NaN there stays out)."""
    gen = torch.Generator().manual_seed(b + 7 * m + 11 * k + 13 * n)
    a = torch.randn(b, m, k, generator=gen)
    c = torch.randn(b, n, k, generator=gen).transpose(1, 2) if tb else torch.randn(b, k, n)
    z0 = torch.full((b, m, n), math.nan) if beta == 0.0 else torch.randn(b, m, n, generator=gen)
    got = _onednn.bmm_(z0.clone(), a, c, beta, alpha)
    kept = torch.zeros_like(z0) if beta == 0.0 else z0  # what of z the result holds
    exact = alpha * (a.double() @ c.double()) + beta * kept.double()
    scale = abs(alpha) * (a.double().abs() @ c.double().abs()) + abs(beta) * kept.double().abs()
    assert not got.isnan().any()
    assert (
        float(((got.double() - exact).abs() / scale.clamp_min(1e-30)).max())
        <= 4 * (k + 2) * 2.0**-24
    )
    with pytest.raises(ValueError, match="z has shape"):
        _onednn.bmm_(torch.empty(b, m + 1, n), a, c)


@pytest.mark.parametrize("tokens", [64, 5])
def test_a_float32_mvm_runs_onednn_from_min_rows_and_gives_mkls_outputs(monkeypatch, tokens):
    """A forward on fewer vectors than the int8 MVM takes (64: its float32 signal MVM) runs it
    through oneDNN, with the same outputs as with MKL's to rounding; below ``MIN_ROWS`` (5
    vectors) MKL's GEMM runs."""
    model = _layer(512, 384)
    x = _inputs((tokens, 512), 2)
    calls = []
    monkeypatch.setattr(mvm, "onednn_bmm_", lambda *a: calls.append(a[1].shape) or _onednn.bmm_(*a))
    out = forwards(model, x, monkeypatch)
    if tokens >= _onednn.MIN_ROWS:
        assert calls and calls[0] == (2, tokens, 256)
    else:
        assert not [s for s in calls if s[1] == tokens]
    assert_same_to_rounding(*out)
