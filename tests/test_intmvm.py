"""The MVM in 8-bit integers (:mod:`aimc._intmvm`): the tile matrix as three int8 limbs, the
DAC's whole-number levels packed into int8, three integer GEMMs and their combination.

It replaces the float32 GEMM by a product within float32 rounding of the exact one, so the
checks here are against float64 arithmetic: each helper pass exactly (limbs, packing, marks of
levels of 128), the combined product within the limbs' resolution, and on a layer-sized
product closer to the exact one than the float32 GEMM; whole analog forwards with and without
it (``AIMC_INT_MVM=0``) give the same outputs except where an ADC rounding sits within float32
rounding of a tie. Tests that need the kernel skip where it does not run (no VNNI, no C++
compiler).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_as_avx2_host
from hypothesis import given, settings
from hypothesis import strategies as st

import aimc
from aimc import _intmvm, mvm, presets
from aimc.config import AnalogConfig, DeviceConfig, IOConfig, NoiseManagement, WeightModifier
from aimc.nn import AnalogLinear

_NONE = NoiseManagement.NONE


def _require_kernel() -> None:
    if not _intmvm.INT_MVM.usable():
        reason = _intmvm.INT_MVM.failed or "no VNNI on this CPU"
        pytest.skip(f"the int8 MVM does not run here: {reason}")


def _reference(xq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return xq.double() @ w.double().transpose(1, 2)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 40),
    ci=st.integers(1, 90),
    o=st.integers(1, 70),
    top=st.sampled_from([63, 127, 128]),
    beta=st.sampled_from([0.0, 1.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_product_is_within_the_limbs_resolution(b, n, ci, o, top, beta, seed):
    """Any shape (tails of the vector width), levels up to 63, 127 or 128 (the +128 of a DAC
    with 128 steps each side: packed as 127 and corrected), with and without accumulation onto
    ``z``: within ``max|w| 2^-24`` per unit of level of the float64 product (each weight's
    limbs resolve it to that), plus a few float32 roundings of the result."""
    _require_kernel()
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(b, o, ci, generator=gen) * torch.rand(b, o, 1, generator=gen)
    xq = torch.randint(-top, top + 1, (b, n, ci), generator=gen).float()
    if top == 128:
        xq[0, 0] = 128.0  # a whole vector of +128: several per row
    z0 = torch.randn(b, n, o, generator=gen)
    limbs = _intmvm.cached_limbs(w)
    assert limbs is not None
    z = _int_product(z0, xq, limbs, beta)
    exact = _reference(xq, w) + beta * z0.double()
    err = (z.double() - exact).abs()
    max_w = w.abs().amax(-1).double().unsqueeze(1)  # (b, 1, o)
    resolution = xq.abs().sum(-1, keepdim=True).double() * max_w * 2.0**-23.9
    assert bool((err <= resolution + (exact.abs() + beta * z0.abs()) * 2.0**-21).all())


def _int_product(z0, xq, limbs, beta):
    b, n, ci = xq.shape
    z = z0.clone()
    k8 = torch.empty(b, n, ci, dtype=torch.int8)
    hit = torch.empty(b * n, dtype=torch.int32)
    y = torch.empty(3, n, z0.shape[2], dtype=torch.int32)
    return _intmvm.int_bmm_(z, xq, limbs, beta, k8, hit, y)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_output_tiles_take_blocks_of_their_tiles_limbs(beta):
    """Bound management's rounds multiply by one matrix per (input tile, output tile): the
    tiles' cached limbs serve them as blocks of columns (batch ``b`` of ``B * to`` takes block
    ``b % to`` of tile ``b // to``), within the same resolution of the float64 product."""
    _require_kernel()
    gen = torch.Generator().manual_seed(5)
    b, to, cols, ci, n = 2, 3, 20, 45, 33
    w = torch.randn(b, to * cols, ci, generator=gen)
    xq = torch.randint(-128, 129, (b * to, n, ci), generator=gen).float()
    xq[1, 4] = 128.0  # several +128 beside a -128: mended from the block's limbs
    xq[1, 4, 0] = -128.0
    xq[4, 2] = xq[4, 2].clamp(-127, 127)  # one +128 beside a -128, in a block at column 20
    xq[4, 2, 7], xq[4, 2, 8] = 128.0, -128.0
    xq[5, 3] = xq[5, 3].clamp(-127, 127)  # +128 alone: packed negated
    xq[5, 3, 11] = 128.0
    z0 = torch.randn(b * to, n, cols, generator=gen)
    limbs = _intmvm.cached_limbs(w)
    z = _int_product(z0, xq, limbs, beta)
    w_sub = w.view(b * to, cols, ci)
    exact = _reference(xq, w_sub) + beta * z0.double()
    max_w = w_sub.abs().amax(-1).double().unsqueeze(1)
    resolution = xq.abs().sum(-1, keepdim=True).double() * max_w * 2.0**-23.9
    assert bool(((z.double() - exact).abs() <= resolution + exact.abs() * 2.0**-21).all())
    with pytest.raises(ValueError, match="limbs of 2 tiles x 60 columns for 6 matrices of 7"):
        _int_product(torch.zeros(b * to, n, 7), xq, limbs, 0.0)


@pytest.mark.parametrize("top", [63, 128])
def test_on_a_layer_sized_product_it_is_closer_to_exact_than_float32(top):
    """2,048 vectors of 384 levels through a 384 x 384 tile (the MiniLM query layer's shape):
    the int8 product's error against float64 is smaller than the float32 GEMM's, in the root
    mean square and at the maximum (measured about half and a third)."""
    _require_kernel()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 384, 384, generator=gen) * 0.05
    xq = torch.randint(-top, top + 1, (1, 2048, 384), generator=gen).float()
    limbs = _intmvm.cached_limbs(w)
    exact = _reference(xq, w)
    got = _int_product(torch.zeros(1, 2048, 384), xq, limbs, 0.0).double() - exact
    f32 = torch.bmm(xq, w.transpose(1, 2)).double() - exact
    assert float(got.pow(2).mean()) < float(f32.pow(2).mean())
    assert float(got.abs().max()) < float(f32.abs().max())


def test_limbs_are_cached_and_follow_in_place_changes():
    _require_kernel()
    w = torch.randn(2, 8, 16)
    first = _intmvm.cached_limbs(w)
    assert _intmvm.cached_limbs(w) is first
    w.mul_(2.0)  # the version counter moves: the limbs are rebuilt
    second = _intmvm.cached_limbs(w)
    assert second is not first
    assert torch.allclose(second[1], first[1] * 2)


def test_non_finite_weights_keep_the_float32_gemm():
    """A NaN or an infinity in a tile matrix: no limbs, so the forward keeps the float32 GEMM
    and its NaN / infinity semantics."""
    _require_kernel()
    for bad in (math.nan, math.inf):
        w = torch.randn(1, 4, 8)
        w[0, 2, 3] = bad
        assert _intmvm.cached_limbs(w) is None


def test_pack_negates_or_marks_levels_of_128():
    """A row with +128 and no -128 is packed negated (every level exact, mark -3); beside a
    -128, +128 is packed as 127 and marked (its input, or -2 for several) for the combination
    to add the missing step back."""
    _require_kernel()
    xq = torch.zeros(6, 37)
    xq[0, :] = -128.0
    xq[1, 5] = xq[1, 6] = 128.0  # alone: negated
    xq[1, 7] = -127.0
    xq[2, 3] = xq[2, 30] = 128.0
    xq[2, 31] = -128.0
    xq[3, 36] = 128.0  # in the tail past the last full vector
    xq[3, 0] = -128.0
    xq[4, 36] = 128.0  # alone, in the tail
    xq[5, 9] = -128.0
    xq[5, 10] = 128.0
    k8 = torch.empty(6, 37, dtype=torch.int8)
    hit = torch.empty(6, dtype=torch.int32)
    _intmvm.INT_MVM.pack(xq, k8, hit)
    assert hit.tolist() == [-1, -3, -2, 36, -3, 10]
    negated = torch.tensor([False, True, False, False, True, False]).unsqueeze(1)
    assert torch.equal(k8, torch.where(negated, -xq, xq).clamp(max=127).to(torch.int8))


@pytest.mark.parametrize(
    ("io", "expected"),
    [
        (presets.pcm_inference().io, True),  # 63 steps each side
        (presets.bert_squad(0.0175).io, True),  # 128 steps each side
        (presets.standard_hwa().io, True),  # 127
        (presets.ideal().io, False),  # perfect: no DAC
        (IOConfig(inp_res=1 / 254, inp_noise=0.01), False),  # input noise: not whole numbers
        (IOConfig(inp_res=1 / 510), False),  # 9 bits: 255 steps each side
        (IOConfig(inp_res=0.0), False),  # no quantization
        (IOConfig(inp_res=1 / 254, inp_bound=0.0, noise_management=_NONE), False),  # no clip
        (IOConfig(inp_res=1 / 254, inp_sto_round=True), True),  # stochastic: still integers
    ],
)
def test_which_dacs_give_int8_levels(io, expected):
    assert mvm._dac_levels_int8(io) is expected


def test_a_bound_that_is_not_a_whole_number_of_steps_is_not_int8():
    """The clip sits at ``1 / (2 res)`` steps (AIHWKIT's step is ``res * 2 * bound``): 127.5
    for 255 steps, where a clipped level is not a whole number."""
    assert mvm._dac_levels_int8(IOConfig(inp_res=1 / 254, inp_bound=1.3, noise_management=_NONE))
    assert not mvm._dac_levels_int8(IOConfig(inp_res=1 / 255))


def _forward_each_way(monkeypatch, layer, x, flags):
    """The eval-mode ``layer``'s outputs on ``x`` with ``AIMC_INT_MVM`` set to each of
    ``flags`` in turn, reseeded alike, and whether its tiles had limbs after each."""
    outs, built = [], []
    for flag in flags:
        monkeypatch.setenv("AIMC_INT_MVM", flag)
        layer.manual_seed(11)
        with torch.no_grad():
            outs.append(layer(x))
        limbs = getattr(layer.active_tiles().w, "_aimc_limbs", None)
        built.append(limbs is not None and limbs[1] is not None)
    return outs, built


@pytest.mark.parametrize("preset", ["pcm_inference", "bert_squad"])
def test_forward_equals_the_float32_forward_but_for_ties(monkeypatch, preset):
    """A programmed, drifted layer (trained-like weights, inputs that hit the DAC's largest
    level): the int8 MVM's forward against the float32 one on the same seeds. The outputs are
    ADC levels, so a product that moves by float32 rounding changes one only where it sat on a
    rounding tie (or the saturation test's edge): almost none do, and those by one step of
    the ADC."""
    _require_kernel()
    cfg = presets.pcm_inference() if preset == "pcm_inference" else presets.bert_squad(0.0175)
    torch.manual_seed(0)
    layer = AnalogLinear(384, 256, config=cfg, seed=3)
    aimc.program(layer, seed=0)
    aimc.drift(layer, 3600.0, seed=0)
    layer.eval()
    outs, built = _forward_each_way(monkeypatch, layer, torch.randn(512, 384), ("1", "0"))
    assert built[0]  # the int8 MVM did run
    assert float((outs[0] != outs[1]).float().mean()) < 1e-3


@pytest.mark.parametrize("max_out", [0, 384])
def test_bound_management_rounds_run_in_int8_and_agree_but_for_ties(monkeypatch, max_out):
    """A ``bert_squad`` layer whose outputs saturate the ADC often (``nn.Linear``-like weights,
    normal inputs): bound management's rounds on at least :data:`aimc.mvm.INT_MIN_VECTORS`
    vectors per (input tile, output tile) run their MVM in int8 too, on the first pass's limbs
    (with and without a split of the outputs: blocks of the tiles' limbs), and the outputs are
    the float32 forward's on the same seeds but for ADC rounding ties."""
    _require_kernel()
    cfg = presets.bert_squad(0.0175)
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_output_size=max_out))
    layer = AnalogLinear(768, 768, config=cfg, seed=3)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        layer.weight.uniform_(-(768**-0.5), 768**-0.5, generator=gen)
    aimc.program(layer, seed=0)
    aimc.drift(layer, 3600.0, seed=0)
    layer.eval()
    x = torch.randn(1024, 768, generator=torch.Generator().manual_seed(1))
    calls = []
    original = mvm.int_bmm_

    def spy(z, xq, *args):
        calls.append((tuple(z.shape), xq.shape[1]))
        return original(z, xq, *args)

    monkeypatch.setattr(mvm, "int_bmm_", spy)
    outs, built = _forward_each_way(monkeypatch, layer, x, ("1", "0"))
    assert built[0]
    lo = layer.active_tiles().layout
    first = (lo.batch, 1024, lo.padded_out)
    rounds = [c for c in calls if c[0] != first]
    assert calls[0][0] == first and rounds  # the first pass, then rounds in int8
    assert all(shape == (lo.batch * lo.n_out, k, lo.cols) and k >= 128 for shape, k in rounds)
    assert lo.n_out == (1 if max_out == 0 else 2)
    assert float((outs[0] != outs[1]).float().mean()) < 1e-3


def test_switched_off_it_builds_no_limbs(monkeypatch):
    """``AIMC_INT_MVM=0`` runs the float32 GEMM (no limbs built)."""
    _require_kernel()
    cfg = AnalogConfig(io=presets.pcm_inference().io)  # no device model: the digital weights
    layer = AnalogLinear(64, 32, config=cfg, seed=1)
    layer.eval()
    outs, built = _forward_each_way(monkeypatch, layer, torch.randn(128, 64), ("0", "1"))
    assert built == [False, True]
    assert float((outs[0] != outs[1]).float().mean()) < 0.01


@pytest.mark.parametrize(
    ("fixed", "n", "expected"),
    [
        (True, mvm.INT_MIN_VECTORS - 1, False),  # too few vectors: the float32 GEMM is faster
        (True, mvm.INT_MIN_VECTORS, True),
        (False, mvm.INT_MIN_VECTORS, False),  # new matrices each forward: limbs would not pay
        (False, mvm.INT_MIN_VECTORS_FRESH, True),
    ],
)
def test_when_the_int8_mvm_runs(fixed, n, expected):
    _require_kernel()
    io = presets.pcm_inference().io
    tw = mvm.TileWeights(None, torch.randn(1, 8, 16), None, fixed=fixed)
    got = mvm._int_limbs(torch.empty(1, n, 16), tw, io, n)
    assert (got is not None) is expected


def test_eval_tiles_are_fixed_and_training_ones_are_not():
    """A chip's tiles (full or lean: lean and full chips compute the same numbers) and the
    digital weights' in eval mode are fixed; a training forward's are not."""
    cfg = presets.pcm_inference()
    full = AnalogLinear(32, 16, config=cfg, seed=1)
    lean = AnalogLinear(32, 16, config=cfg, seed=1)
    aimc.program(full, seed=0)
    aimc.program(lean, seed=0, storage="lean")
    full.eval()
    lean.eval()
    assert full.active_tiles().fixed and lean.active_tiles().fixed
    digital = DeviceConfig()  # no device model: the forwards run on the digital weights
    hwa = AnalogLinear(32, 16, config=presets.standard_hwa().replace(device=digital), seed=1)
    hwa.eval()
    assert hwa.active_tiles().fixed
    hwa.train()  # the weights change at every step
    assert not hwa.active_tiles().fixed
    assert hwa.tile_weights().fixed  # the cache itself is still the eval forward's
    modifier = cfg.hwa.replace(modifier=WeightModifier.ADD_NORMAL, modifier_std=0.02)
    noisy = AnalogLinear(32, 16, config=cfg.replace(device=digital, hwa=modifier), seed=1)
    noisy.train()
    assert not noisy.active_tiles().fixed  # a weight modifier: new matrices each forward


def test_compiled_layers_with_an_int8_mvm_run_the_eager_forward_as_one_op(monkeypatch):
    """Inductor's graph would run the float32 GEMM: a layer whose eval forward takes the int8
    MVM runs the eager forward as one op inside the graph (no graph break), reproducible from
    the seeds; ``AIMC_INT_MVM=0`` when the graph is compiled keeps it compiled through."""
    _require_kernel()
    torch._dynamo.reset()
    cfg = presets.pcm_inference()
    x = torch.randn(mvm.INT_MIN_VECTORS, 40, generator=torch.Generator().manual_seed(0))
    codes = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("AIMC_INT_MVM", flag)
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
        aimc.convert(m, cfg, seed=0).eval()
        aimc.program(m, seed=0)
        graphs: list[str] = []

        def backend(gm, example_inputs, graphs=graphs):
            graphs.append(gm.code)
            return gm.forward

        c = aimc.compile(m, fullgraph=True, backend=backend)
        with torch.inference_mode():
            aimc.manual_seed(m, 3)
            first = c(x)
            aimc.manual_seed(m, 3)
            again = c(x)
        assert torch.equal(first, again)
        codes[flag] = "".join(graphs)
    assert codes["1"].count("eager_mvm.default(") == 2
    assert "eager_mvm" not in codes["0"]


def test_the_kernel_tests_pass_as_an_avx2_host_runs_them():
    """The kernel is written with PyTorch's vector class for any width: on a host with VNNI
    and AVX-512, its tests again in a process with ``ATEN_CPU_CAPABILITY=avx2`` (8-wide
    vectors and their own float-to-double loads, as a CPU with VNNI but only 256-bit vectors
    builds it)."""
    _require_kernel()
    run_as_avx2_host(["test_intmvm.py"], "resolution or closer or pack or equals")


@pytest.mark.parametrize("preset", ["pcm_inference", "bert_squad"])
def test_a_non_finite_input_vector_gives_nan_outputs_through_the_int8_mvm(preset):
    """As through the float32 MVM: a NaN or an infinity in an input vector makes that vector's
    outputs NaN (its packed levels are whatever they are; the forward's finite mask decides),
    and the other vectors stay finite."""
    _require_kernel()
    cfg = presets.pcm_inference() if preset == "pcm_inference" else presets.bert_squad(0.0175)
    layer = AnalogLinear(64, 32, config=cfg, seed=0)
    aimc.program(layer, seed=0)
    layer.eval()
    x = torch.randn(mvm.INT_MIN_VECTORS, 64, generator=torch.Generator().manual_seed(1))
    x[3, 5], x[7, 1] = math.nan, -math.inf
    with torch.no_grad():
        y = layer(x)
    limbs = getattr(layer.active_tiles().w, "_aimc_limbs", None)
    assert limbs is not None and limbs[1] is not None  # the int8 MVM ran
    assert bool(y[3].isnan().all()) and bool(y[7].isnan().all())
    rest = torch.ones(x.shape[0], dtype=torch.bool)
    rest[[3, 7]] = False
    assert bool(y[rest].isfinite().all())
