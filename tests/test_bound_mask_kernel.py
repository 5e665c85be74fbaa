"""The output-bound mask kernel of the input gradient (:mod:`aimc._boundmask`).

It replaces the tensor code of ``aimc.nn.base._mask_bound_`` (a mask over every tile output,
its index lists and one sparse product per input tile) with one pass over the ADC's integer
levels: checked against float64 arithmetic, against the tensor code in training steps whose
tile outputs do reach the bound (``AIMC_MASK_NATIVE=0``), and its fallback. Skipped where the
kernel cannot be built (no C++ compiler); a kernel that builds but fails its self-check fails
the suite.
"""

from __future__ import annotations

import pytest
import torch

import aimc
from aimc import _boundmask, mvm, presets
from aimc.nn import base


def _require_kernel() -> None:
    if not _boundmask.BOUND_MASK.usable():
        why = _boundmask.BOUND_MASK.failed
        pytest.skip(f"the output-bound mask kernel does not run here: {why}")


@pytest.mark.parametrize("case", range(len(_boundmask._cases())))
def test_kernel_is_float64_arithmetic_to_float32_rounding(case):
    """Each self-check case (int8 and int16 levels; groups; input and output tiles; padded
    outputs; thresholds masking nothing, everything, or at random), and the kernel changes
    the gradient where something is masked."""
    _require_kernel()
    args = _boundmask._cases()[case]
    gx = args[0]
    out = gx.clone()
    _boundmask.BOUND_MASK.subtract_masked(out, *args[1:])
    ref, bound = _boundmask.subtract_masked_reference(*args)
    tol = bound * (args[1].shape[-1] + 2) * 2.0**-23
    assert bool(((out.double() - ref).abs() <= tol).all())
    masked = not torch.equal(ref, gx.double())
    assert masked == (not torch.equal(out, gx))


def test_bad_buffers_are_refused():
    _require_kernel()
    gx, grad, levels, below, w, tiles, sizes, out_map = _boundmask._cases()[0]
    kernel = _boundmask.BOUND_MASK
    with pytest.raises(ValueError, match="levels as torch.int32; allowed: int8, int16"):
        kernel.subtract_masked(gx, grad, levels.int(), below, w, tiles, sizes, out_map)
    with pytest.raises(ValueError, match="do not fit a gradient"):
        kernel.subtract_masked(gx, grad, levels, below, w, tiles, [sizes[0] + 1], out_map)
    with pytest.raises(ValueError, match="expected contiguous int32 CPU"):
        kernel.subtract_masked(gx, grad, levels, below.long(), w, tiles, sizes, out_map)


def _saturating(cfg):
    # uneven splits: 301 inputs -> 101 + 100 + 100, 71 outputs -> 36 + 35 (one padded column)
    return cfg.replace(mapping=cfg.mapping.replace(max_input_size=128, max_output_size=40))


def _step(cfg) -> dict[str, torch.Tensor]:
    """Every parameter's gradient and the input's of one training step of ``Linear(301, 71) ->
    GELU -> Linear(71, 9)`` whose tile outputs partly reach the ADC's bound: positive inputs and
    some rows of positive weights sum coherently."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(301, 71), torch.nn.GELU(), torch.nn.Linear(71, 9))
    with torch.no_grad():
        model[0].weight[:30].abs_().mul_(20)  # (pcm_inference has no weight scaling)
        model[2].weight[:4].abs_()
    aimc.convert(model, cfg, seed=1)
    model.train()
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 301, generator=gen).abs() + 0.2).requires_grad_(True)
    model(x).square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    grads["x"] = x.grad.clone()
    return grads


def _masked_fraction(monkeypatch) -> list[float]:
    seen: list[float] = []
    real = mvm.TileOutputs.bound_mask

    def spy(self, unit, bound):
        m = real(self, unit, bound)
        seen.append(0.0 if m is None else float(m.float().mean()))
        return m

    monkeypatch.setattr(mvm.TileOutputs, "bound_mask", spy)
    return seen


@pytest.mark.parametrize("preset", ["standard_hwa", "pcm_inference", "pcm_weights_only"])
def test_training_step_gradients_are_the_tensor_codes(monkeypatch, preset):
    """Every parameter's gradient and the input's of a training step through two layers whose
    tile outputs reach the bound (uneven input and output splits), with the kernel and with the
    tensor code. ``standard_hwa`` has learned output scales and input
    ranges (``_ScaledAnalogMVM``); ``pcm_inference`` neither (``_AnalogMVM``), nor
    ``pcm_weights_only`` (perfect IO: float tile outputs, AIHWKIT's mask all the same)."""
    _require_kernel()
    cfg = _saturating(getattr(presets, preset)())
    grads = []
    seen = _masked_fraction(monkeypatch)
    calls: list[str] = []
    for name, kind in (("subtract_masked", "levels"), ("subtract_bits", "bits")):
        real = getattr(_boundmask.BOUND_MASK, name)

        def counted(*args, _real=real, _kind=kind, **kwargs):
            calls.append(_kind)
            return _real(*args, **kwargs)

        monkeypatch.setattr(_boundmask.BOUND_MASK, name, counted)
    for env in ("1", "0"):
        monkeypatch.setenv("AIMC_MASK_NATIVE", env)
        grads.append(_step(cfg))
        if env == "1":
            # both layers' input gradients: from the levels kept for the output scales'
            # gradient (standard_hwa), from the bits of the mask alone (pcm_inference)
            kind = "levels" if preset == "standard_hwa" else "bits"
            assert calls == [kind, kind]
    # the tensor code's masks (second run; with perfect IO the first run's float outputs are
    # compared by it too): some outputs at the bound in each layer, not all
    assert len(seen) == (4 if preset == "pcm_weights_only" else 2), seen
    assert all(0.0 < f < 1.0 for f in seen[-2:]), seen
    for k in grads[0]:
        # float rounding: the kernel subtracts the masked terms one by one, the tensor code sums
        # them first, both from grad @ W, whose masked rows here are 20x the others (seen: up
        # to 1.5e-5 of the largest entry; a wrong mask is off by O(1) of it)
        atol = 1e-4 * float(grads[1][k].abs().max()) + 1e-9
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=atol, msg=k)


def test_the_mask_changes_the_input_gradient(monkeypatch):
    """The same step without the mask (``_mask_bound_`` a no-op) gives another first-layer
    gradient: the test above compares two masks, not two no-ops."""
    _require_kernel()
    cfg = _saturating(presets.standard_hwa())
    with_mask = _step(cfg)
    monkeypatch.setattr(base, "_mask_bound_", lambda *a, **k: None)
    without = _step(cfg)
    assert not torch.allclose(with_mask["x"], without["x"], rtol=1e-4, atol=1e-6)


def test_a_kernel_that_computes_wrongly_warns_and_the_tensor_code_runs(monkeypatch):
    from torch._inductor import codecache

    def built_wrong(*args, **kwargs):
        return lambda *a: None  # subtracts nothing

    monkeypatch.setattr(codecache.CppPythonBindingsCodeCache, "load_pybinding", built_wrong)
    monkeypatch.setattr(base, "BOUND_MASK", _boundmask.NativeBoundMaskKernel())
    with pytest.warns(RuntimeWarning, match="output-bound mask kernel could not be built.*self"):
        assert not base.BOUND_MASK.usable()
    cfg = _saturating(presets.standard_hwa())
    got = _step(cfg)
    monkeypatch.setenv("AIMC_MASK_NATIVE", "0")
    want = _step(cfg)
    for k in got:
        assert torch.equal(got[k], want[k]), k


def test_a_saturating_layer_keeps_the_documented_gradient():
    """An ``AnalogLinear`` on one input tile under the kernel keeps AIHWKIT's rule, written out:
    the input gradient is ``grad @ W`` over the outputs whose tile output, in AIHWKIT's units
    (the ADC's output with abs-max noise management's scale applied back: here, noise, input
    quantization and bound management off, the layer's own output), stays below ``0.999 *
    out_bound``."""
    _require_kernel()
    cfg = aimc.AnalogConfig()
    io = cfg.io.replace(
        inp_res=-1,
        out_res=1 / 254,
        out_noise=0.0,
        w_noise=0.0,
        bound_management="none",
        out_bound=10.0,
    )
    cfg = cfg.replace(io=io, mapping=cfg.mapping.replace(weight_scaling_omega=0.0))
    layer = aimc.nn.AnalogLinear(64, 32, bias=False, config=cfg, seed=0).train()
    with torch.no_grad():
        layer.weight.mul_(10.0)  # outputs of std ~6: some past 10
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 64, generator=gen).requires_grad_(True)
    grad = torch.randn(16, 32, generator=gen)
    y = layer(x)
    y.backward(grad)
    keep = y.detach().abs() < 0.999 * 10.0
    assert 0 < int((~keep).sum()) < keep.numel() // 2
    torch.testing.assert_close(x.grad, (grad * keep) @ layer.weight.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["aihwkit", "saturated", "none"])
@pytest.mark.parametrize("native", ["1", "0"])
def test_output_bound_mask_modes(monkeypatch, mode, native):
    """``hwa.output_bound_mask`` on one input tile under abs-max noise management, noise,
    input quantization and bound management off: ``aihwkit`` leaves out the outputs whose
    tile output in the input's units (the layer's own output here) reaches ``0.999 *
    out_bound``, ``saturated`` only those the ADC clipped (``|y| / max|x|`` at the bound),
    ``none`` none. Kernel and tensor code alike."""
    if native == "1":
        _require_kernel()
    monkeypatch.setenv("AIMC_MASK_NATIVE", native)
    cfg = aimc.AnalogConfig()
    io = cfg.io.replace(
        inp_res=-1, out_res=1 / 254, out_noise=0.0, bound_management="none", out_bound=10.0
    )
    cfg = cfg.replace(
        io=io,
        mapping=cfg.mapping.replace(weight_scaling_omega=0.0),
        hwa=cfg.hwa.replace(output_bound_mask=mode),
    )
    layer = aimc.nn.AnalogLinear(64, 32, bias=False, config=cfg, seed=0).train()
    with torch.no_grad():
        layer.weight.mul_(40.0)  # tile outputs of std ~10 in the ADC's units: some clipped
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 64, generator=gen).requires_grad_(True)
    grad = torch.randn(16, 32, generator=gen)
    y = layer(x)
    y.backward(grad)
    y = y.detach()
    scale = x.detach().abs().amax(dim=1, keepdim=True)  # abs-max noise management
    keep = {
        "aihwkit": y.abs() < 0.999 * 10.0,
        "saturated": (y / scale).abs() < 0.999 * 10.0,
        "none": torch.ones_like(y, dtype=torch.bool),
    }
    # the two rules differ here: many outputs beyond 10 in input units, fewer clipped
    assert 0 < int((~keep["saturated"]).sum()) < int((~keep["aihwkit"]).sum()) < y.numel()
    want = (grad * keep[mode]) @ layer.weight.detach()
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-4)


def _saved(cfg, x_scale: float = 1.0) -> tuple[list[torch.Tensor], object]:
    """The tensors one training forward of a saturating ``AnalogLinear(301, 71)`` keeps for its
    backward, and the layer's tile layout."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(301, 71)
    with torch.no_grad():
        lin.weight[:30].abs_().mul_(20)
    layer = aimc.convert(torch.nn.Sequential(lin), cfg, seed=1)[0]
    layer.train()
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 301, generator=gen).abs() + 0.2) * x_scale
    x.requires_grad_(True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return saved, layer.tile_layout()


@pytest.mark.parametrize("preset", ["pcm_inference", "pcm_weights_only"])
def test_a_layer_without_output_scales_keeps_only_the_masks_bits(monkeypatch, preset):
    """Training without learned output scales (``_AnalogMVM``) keeps for the output-bound mask
    one bit per tile output, ``(tiles, vectors, ceil(outputs / 64))`` int64 words, not the ADC's
    levels (int16 under ``pcm_inference``, float32 tile outputs with perfect IO: 16x and 32x
    the memory, which a 12-layer BERT-base step measured as +1.2 and +2.4 GiB of peak); the
    tensor code keeps a bool mask; and nothing where no output reaches the bound."""
    _require_kernel()
    cfg = _saturating(getattr(presets, preset)())
    saved, lo = _saved(cfg)
    masks = [t for t in saved if not t.is_floating_point()]
    assert len(masks) == 1 and masks[0].dtype == torch.int64, [(t.dtype, t.shape) for t in saved]
    assert masks[0].shape == (lo.batch, 64, -(-lo.padded_out // 64))
    assert masks[0].any()
    monkeypatch.setenv("AIMC_MASK_NATIVE", "0")
    masks = [t for t in _saved(cfg)[0] if not t.is_floating_point()]
    assert len(masks) == 1 and masks[0].dtype == torch.bool
    assert masks[0].shape == (lo.batch, 64, lo.padded_out)
    monkeypatch.setenv("AIMC_MASK_NATIVE", "1")
    # inputs 1000x smaller: no output reaches the bound, nothing but the input and weight kept
    quiet = _saved(cfg, x_scale=1e-3)[0]
    assert all(t.is_floating_point() for t in quiet), [(t.dtype, t.shape) for t in quiet]


@pytest.mark.parametrize("preset", ["pcm_inference", "pcm_weights_only"])
def test_bits_kept_by_the_kernel_serve_a_backward_without_it(monkeypatch, preset):
    """A forward with the kernel keeps bits (from the ADC's levels, or from the tensor code's
    mask of float tile outputs with perfect IO); a backward where the kernel is switched off
    since unpacks them for the tensor code: the same input gradient, bit for bit, as a forward
    and backward with the tensor code alone (its bool mask)."""
    _require_kernel()
    cfg = _saturating(getattr(presets, preset)())
    got = []
    for forward, backward in (("1", "0"), ("0", "0")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(301, 71), torch.nn.GELU())
        with torch.no_grad():
            model[0].weight[:30].abs_().mul_(20)
        aimc.convert(model, cfg, seed=1).train()
        x = torch.randn(64, 301, generator=torch.Generator().manual_seed(2)).abs() + 0.2
        x.requires_grad_(True)
        monkeypatch.setenv("AIMC_MASK_NATIVE", forward)
        y = model(x)
        monkeypatch.setenv("AIMC_MASK_NATIVE", backward)
        y.square().mean().backward()
        got.append(x.grad)
    assert torch.equal(got[0], got[1])
