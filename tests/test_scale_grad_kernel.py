"""The kernel of the learned output scales' gradient (:mod:`aimc._scalegrad`).

It replaces the tensor code of :meth:`aimc.mvm.TileOutputs.scale_grad` (a conversion of the
ADC's levels, a product and a matrix-vector product per input tile) with one pass, summing
in float64: so it is checked against float64 sums (within float32 rounding), against the
tensor code (both within float32 rounding of the exact sums), and in a training step's
gradients. Skipped where the kernel cannot be built (no C++ compiler); a kernel that builds
but fails its self-check fails the suite.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import mlp_train_step
from hypothesis import given, settings
from hypothesis import strategies as st

import aimc
from aimc import _scalegrad, mvm, presets
from aimc.nn import AnalogLinear


def _require_kernel() -> None:
    if not _scalegrad.SCALE_GRAD.usable():
        pytest.skip(f"the scale gradient kernel does not run here: {_scalegrad.SCALE_GRAD.failed}")


def _args(seed, g, ti, n, to, cols, dtype, factor, col_scale):
    gen = torch.Generator().manual_seed(seed)
    b, width = g * ti, to * cols
    top = 127 if dtype == torch.int8 else 300
    levels = torch.randint(-top, top + 1, (b, n, width), generator=gen).to(dtype)
    if dtype == torch.float32:
        levels = levels + torch.rand(b, n, width, generator=gen) - 0.5
    grad = torch.randn(g, n, width, generator=gen)
    f = torch.rand(b, n, to, generator=gen) * 0.02 if factor else None
    cs = torch.rand(b, width, generator=gen) + 0.5 if col_scale else None
    return levels, grad, f, cs


def _kernel(levels, grad, f, cs, ti):
    out = torch.full((levels.shape[0], levels.shape[2]), 7.0)
    _scalegrad.SCALE_GRAD.scale_grad(levels, grad, f, cs, out, ti)
    return out


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    g=st.integers(1, 2),
    ti=st.integers(1, 4),
    n=st.integers(0, 70),
    to=st.integers(1, 3),
    cols=st.integers(1, 140),
    dtype=st.sampled_from([torch.int8, torch.int16, torch.float32]),
    factor=st.booleans(),
    col_scale=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_is_within_float32_rounding_of_the_exact_sums(
    g, ti, n, to, cols, dtype, factor, col_scale, seed
):
    """Any shape (vector tails, several 64-column blocks per output tile, no vectors at all),
    each level type, with and without factors and column scales."""
    _require_kernel()
    if not factor:
        to = 1
    levels, grad, f, cs = _args(seed, g, ti, n, to, cols, dtype, factor, col_scale)
    got = _kernel(levels, grad, f, cs, ti)
    ref, bound = _scalegrad.scale_grad_reference(levels, grad, f, cs, ti)
    err = (got.double() - ref).abs()
    assert bool((err <= bound * 2.0**-22 + ref.abs() * 2.0**-22).all())


def test_a_nan_level_makes_its_columns_sum_nan():
    _require_kernel()
    levels, grad, f, cs = _args(1, 1, 2, 9, 2, 20, torch.float32, True, True)
    levels[1, 4, 33] = math.nan
    got = _kernel(levels, grad, f, cs, 2)
    assert bool(got[1, 33].isnan()) and int(got.isnan().sum()) == 1


def test_kernel_does_not_depend_on_the_thread_count():
    _require_kernel()
    args = _args(2, 2, 3, 50, 2, 100, torch.int8, True, True)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_kernel(*args, 3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_kernel_refuses_wrong_buffers():
    _require_kernel()
    levels, grad, f, cs = _args(3, 1, 2, 5, 2, 8, torch.int8, True, False)
    out = torch.empty(2, 16)
    k = _scalegrad.SCALE_GRAD
    with pytest.raises(ValueError, match="levels as torch.int32; allowed: int8, int16, float32"):
        k.scale_grad(levels.int(), grad, f, cs, out, 2)
    with pytest.raises(ValueError, match=r"got \(1, 5, 15\) torch.float32.*expected.*\(1, 5, 16\)"):
        k.scale_grad(levels, grad[..., :15], f, cs, out, 2)
    with pytest.raises(ValueError, match="contiguous: False"):
        k.scale_grad(levels, grad, f, cs, torch.empty(16, 2).t(), 2)
    with pytest.raises(ValueError, match="16 outputs do not split into 3 tiles"):
        k.scale_grad(levels, grad, torch.rand(2, 5, 3), cs, out, 2)


def _compact(columnwise: bool, split: bool):
    """A training forward's kept tile outputs (levels, factors, column scales) and its layer."""
    mapping = presets.standard_hwa().mapping.replace(
        max_input_size=24, max_output_size=16 if split else 0, weight_scaling_columnwise=columnwise
    )
    cfg = aimc.AnalogConfig(io=presets.standard_hwa().io, mapping=mapping)
    torch.manual_seed(3)  # the weights' init (whatever tests ran before: float rounding varies)
    layer = AnalogLinear(60, 40, bias=False, config=cfg, seed=3).eval()
    x = torch.randn(1, 150, 60, generator=torch.Generator().manual_seed(4)) * 2
    layer.manual_seed(7)
    return aimc.nn.base._run_mvm(layer, x, None, None, "compact")


@pytest.mark.parametrize("columnwise", [True, False])
@pytest.mark.parametrize("split", [True, False])
def test_scale_grad_is_the_tensor_codes_to_float_rounding(monkeypatch, columnwise, split):
    """``TileOutputs.scale_grad`` with the kernel and with ``AIMC_GRAD_NATIVE=0`` (the tensor
    code): both within float32 rounding of the exact sums, so close to each other."""
    _require_kernel()
    compact = _compact(columnwise, split)
    assert compact.levels.dtype == torch.int8
    assert (compact.factor is not None) and (compact.col_scale is not None) == columnwise
    grad = torch.randn(1, 150, 40, generator=torch.Generator().manual_seed(5))
    got = compact.scale_grad(grad)
    monkeypatch.setenv("AIMC_GRAD_NATIVE", "0")
    want = compact.scale_grad(grad)
    assert got.shape == want.shape == (1, 3, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_training_step_gradients_are_the_same_with_the_kernel(monkeypatch):
    """Every parameter's gradient of a ``standard_hwa`` training step (learned output scales,
    input range, weights, bias) with the kernel and without it."""
    _require_kernel()
    grads = []
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_GRAD_NATIVE", env)
        grads.append(mlp_train_step(presets.standard_hwa(), (70, 50, 9), 40)[1])
    assert any("out_scale" in k for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7, msg=k)


def test_a_kernel_that_computes_wrongly_warns_and_the_tensor_code_runs(monkeypatch):
    from torch._inductor import codecache

    def built_wrong(*args, **kwargs):
        return lambda *a: None  # writes nothing: the check's buffers keep their 7.0

    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", built_wrong)
    monkeypatch.setattr(mvm, "SCALE_GRAD", _scalegrad.NativeScaleGradKernel())
    with pytest.warns(
        RuntimeWarning, match="scales' gradient kernel could not be built.*self-check"
    ):
        assert not mvm.SCALE_GRAD.usable()
    compact = _compact(True, True)
    grad = torch.randn(1, 150, 40, generator=torch.Generator().manual_seed(5))
    got = compact.scale_grad(grad)
    monkeypatch.setenv("AIMC_GRAD_NATIVE", "0")
    assert torch.equal(got, compact.scale_grad(grad))
