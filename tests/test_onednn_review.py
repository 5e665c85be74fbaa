"""Review of the oneDNN float32 GEMMs (``aimc._onednn``: the ``pcm_read`` variance MVM and the
analog layers' backward products) and of bound management reading its rows from a
``(G, n_in, N, rows)`` view of the layer's inputs: cases the change's own tests leave out.

Every A/B here runs the same model from the same seed with ``AIMC_ONEDNN_GEMM=1`` and ``=0``
(MKL's GEMM), and checks that oneDNN actually ran on the ``=1`` side."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_onednn_gemm import _float32_variance, forwards, pytestmark  # noqa: F401 - (autouse)
from test_predict_saturation import _inputs, _layer, assert_same_to_rounding

import aimc
import aimc.mvm as mvm
from aimc import _onednn, presets
from aimc._onednn import OneDnnGemm


class _Spy:
    """Counts the oneDNN products of the variance MVM and of ``batched_matmul``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        affine, bmm = mvm.affine_bmm, mvm.onednn_bmm
        monkeypatch.setattr(mvm, "affine_bmm", lambda *a: self._count() or affine(*a))
        monkeypatch.setattr(mvm, "onednn_bmm", lambda *a: self._count() or bmm(*a))

    def _count(self) -> None:
        self.calls += 1


def _forward_ab(model, x, monkeypatch, ctx=torch.inference_mode):
    spy, out = _Spy(monkeypatch), []
    for env in ("0", "1"):
        monkeypatch.setenv(_onednn.ENV, env)
        before = spy.calls
        aimc.manual_seed(model, 1)
        with ctx():
            out.append(model(x))
        assert (spy.calls > before) == (env == "1"), f"oneDNN ran {spy.calls - before}x, env {env}"
    return out


def _conv(make, *args, **kw) -> torch.nn.Module:
    torch.manual_seed(0)  # (_layer seeds after the module is made)
    return _layer(0, 0, module=torch.nn.Sequential(make(*args, groups=kw.pop("groups", 1))), **kw)


CASES = {
    "grouped conv2d, 3 input tiles": lambda: (
        _conv(torch.nn.Conv2d, 64, 32, 3, groups=2, max_in=128),
        _inputs((2, 64, 8, 8), 2),
    ),
    "conv1d, output tiles split": lambda: (
        _conv(torch.nn.Conv1d, 64, 40, 5, max_in=128, max_out=16),
        _inputs((3, 64, 30), 2),
    ),
    "uneven split, transposed inputs": lambda: (
        _layer(300, 200, max_in=128, max_out=64),
        _inputs((300, 120), 1).T,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("ctx", [torch.inference_mode, torch.no_grad], ids=["inference", "nograd"])
def test_conv_and_tiled_forwards_equal_mkls(case, ctx, monkeypatch):
    model, x = CASES[case]()
    assert_same_to_rounding(*_forward_ab(model, x, monkeypatch, ctx))


def test_non_finite_inputs_and_one_thread(monkeypatch):
    """NaN / inf inputs make the same vectors NaN both ways (with the saturation prediction
    and bound management's rounds), also on one thread."""
    model = _layer(512, 256)
    x = _inputs((160, 512), 3)
    x[5, 7], x[9, 300], x[11] = math.nan, -math.inf, x[11] * 1e30
    threads = torch.get_num_threads()
    try:
        for n in {1, threads}:
            torch.set_num_threads(n)
            mkl, onednn = _forward_ab(model, x, monkeypatch)
            assert bool(onednn[5].isnan().all()) and bool(onednn[9].isnan().all())
            assert not bool(onednn[11].isnan().any())
            assert_same_to_rounding(mkl, onednn)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bound_management_view_is_bit_identical_to_the_copy(case, monkeypatch):
    """The rounds' rows gathered from the ``(G, n_in, N, rows)`` view give the outputs of
    the former tile-transposed copy ``(B, N, rows)``, bit for bit."""
    model, x = CASES[case]()
    original, dims = mvm._bound_management, []

    def as_copy(z, sat, x_t, *rest):
        dims.append(x_t.dim())
        if x_t.dim() == 4:
            x_t = x_t.reshape(-1, *x_t.shape[2:]).clone()
        return original(z, sat, x_t, *rest)

    out = []
    for fn in (original, as_copy):
        monkeypatch.setattr(mvm, "_bound_management", fn)
        aimc.manual_seed(model, 1)
        with torch.inference_mode():
            out.append(model(x))
    assert dims == [4], "no bound-management rounds: the test compares nothing"
    assert torch.equal(out[0].isnan(), out[1].isnan())
    assert torch.equal(out[0].nan_to_num(), out[1].nan_to_num())


def _grads_ab(net, cfg, x, loss, monkeypatch, create_graph=False):
    torch.manual_seed(0)
    model = aimc.convert(net, cfg, seed=0).train()
    spy, grads = _Spy(monkeypatch), []
    for env in ("0", "1"):
        monkeypatch.setenv(_onednn.ENV, env)
        model.zero_grad()
        xi = x.clone().requires_grad_()
        aimc.manual_seed(model, 3)
        if create_graph:  # a gradient penalty: the input's gradient, differentiated again
            (gx,) = torch.autograd.grad(loss(model(xi)), xi, create_graph=True)
            gx.square().sum().backward()
        else:
            loss(model(xi)).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None] + [xi.grad])
    assert spy.calls > 0, "the backward ran no product through oneDNN"
    assert len(grads[0]) == len(grads[1]) > 1
    for g0, g1 in zip(*grads, strict=True):
        assert torch.equal(g0.isnan(), g1.isnan())
        g0, g1 = g0.nan_to_num(), g1.nan_to_num()
        assert float((g0 - g1).abs().max()) <= 1e-5 * float(g0.abs().max()) + 1e-12


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.GELU(), torch.nn.Linear(200, 50))


def _small_tiles(cfg):
    return cfg.replace(mapping=cfg.mapping.replace(max_input_size=64, max_output_size=32))


def test_sum_loss_gradients_expanded_output_grad(monkeypatch):
    """``.sum()``: the output's gradient is an expanded (zero-stride) tensor of ones, read
    by oneDNN as it is."""
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    _grads_ab(_mlp(), presets.standard_hwa(), x, lambda y: y.sum(), monkeypatch)


def test_conv_gradients_with_small_tiles(monkeypatch):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, groups=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 3)
    )
    x = torch.randn(4, 8, 12, 12, generator=torch.Generator().manual_seed(2))
    cfg = _small_tiles(presets.standard_hwa())
    _grads_ab(net, cfg, x, lambda y: y.square().mean(), monkeypatch)


def test_double_backward_gradients(monkeypatch):
    x = torch.randn(32, 300, generator=torch.Generator().manual_seed(1))
    cfg = _small_tiles(presets.standard_hwa())
    _grads_ab(_mlp(), cfg, x, lambda y: y.square().sum(), monkeypatch, create_graph=True)


def test_bmm_on_expanded_strided_and_non_finite_operands():
    """``aimc._onednn.bmm`` on zero-stride (expanded), stepped and permuted operands with
    inf and NaN: ``torch.bmm``'s values to rounding, the same NaN and +-inf entries."""
    gen = torch.Generator().manual_seed(0)
    b, m, k, n = 3, 9, 13, 5
    a_full, c_full = torch.randn(b, m, k, generator=gen), torch.randn(b, k, n, generator=gen)
    a_full[0, 2, 3], a_full[1, 4, 5], c_full[2, 7, 1] = math.inf, -math.inf, math.nan
    pairs = [
        (torch.randn(1, 1, 1, generator=gen).expand(b, m, k), c_full),
        (a_full, torch.randn(b, 1, n, generator=gen).expand(b, k, n)),
        (torch.randn(b, m, 2 * k, generator=gen)[..., ::2], c_full),
        (a_full, torch.randn(n, k, b, generator=gen).permute(2, 1, 0)),
        (a_full[:1], torch.randn(1, 2 * k, n, generator=gen)[:, ::2]),
    ]
    for a, c in pairs:
        got, ref = _onednn.bmm(a, c), torch.bmm(a, c)
        for mask in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(mask(got), mask(ref))
        fin = ref.isfinite()
        scale = (a.abs() @ c.abs()).nan_to_num(posinf=0.0)[fin]
        assert bool(((got[fin] - ref[fin]).abs() <= 4 * k * 2.0**-24 * scale + 1e-30).all())


def test_compiled_forward_is_unaffected(monkeypatch):
    """A compiled eval forward (traced through: its MVMs in the graph) has no oneDNN op in its
    graph, and the switch changes none of its outputs."""
    model = _layer(128, 64, max_in=64)
    x = _inputs((32, 128), 1)
    graphs = []

    def backend(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        graphs.append(str(gm.graph))
        return compile_fx(gm, example_inputs)

    compiled = aimc.compile(model, fullgraph=True, backend=backend)
    out = forwards(model, x, monkeypatch, envs=("1", "0"), run=compiled)
    assert graphs and not any("mkldnn" in g for g in graphs)
    assert torch.equal(out[0], out[1])


def test_first_use_under_a_float64_default_dtype_keeps_onednn(monkeypatch):
    """A float32 model evaluated while ``torch.set_default_dtype(torch.float64)`` is in force
    (scientific code does this) runs float32 products: oneDNN's float32 GEMM is as good as
    ever, and must stay on, without a warning that it failed (the check drew its operands in
    the default dtype: oneDNN raised on float64 ones and stayed off for the process)."""
    model = _layer(512, 256)
    x = _inputs((100, 512), 1)
    probe = OneDnnGemm()  # a process whose first oneDNN product is this forward's
    monkeypatch.setattr(mvm, "ONEDNN_GEMM", probe)
    monkeypatch.delenv(_onednn.ENV, raising=False)
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            y = model(x)
    finally:
        torch.set_default_dtype(before)
    assert y.dtype == torch.float32
    assert probe.failed is None, probe.failed
    assert not [w for w in caught if "oneDNN" in str(w.message)]
    assert probe.applies(torch.ones(1, 2, 3))
