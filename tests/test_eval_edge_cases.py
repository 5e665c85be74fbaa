"""Eval forward edge cases: subnormal input vectors, IO config fields changed in place after a
forward, a NaN vector under the int8 MVM with bound management, autocast, parameters made under
``inference_mode``, a float64 default dtype; and two value-for-value checks the suite lacked
(saturating bound management against AIHWKIT, the int8 forward on one and two threads). Each of
the first six failed before its fix (2026-12-06 review).
"""

from __future__ import annotations

import pytest
import torch
from conftest import outputs_on_one_and_two_threads
from torch import nn

import aimc
from aimc import presets
from aimc.nn import AnalogLinear


def _digital_io(preset: str) -> aimc.AnalogConfig:
    """``preset`` without its device model: the eval forward runs on the digital weights."""
    cfg = presets.pcm_inference() if preset == "pcm_inference" else presets.bert_squad(0.0175)
    return cfg.replace(device=aimc.DeviceConfig())


# -- 1. a finite input vector whose abs-max is tiny gives NaN outputs --------------------------


@pytest.mark.parametrize("dac_kernel", ["1", "0"])
@pytest.mark.parametrize("preset", ["pcm_inference", "bert_squad"])
def test_a_tiny_finite_input_vector_does_not_give_nan(monkeypatch, preset, dac_kernel):
    """Abs-max noise management divides each vector by ``s = max|x|``, computed as a product
    with ``1 / s``. For a vector of subnormal values (``s < 2**-128``, e.g. an activation that
    underflowed) ``1 / s`` overflows to inf, and every zero of the vector becomes
    ``0 * inf = NaN``: the whole output vector is NaN, for a finite input. The digital twin
    gives finite outputs, AIHWKIT 1.2.0 gives the all-zero vector's output (it flushes the
    subnormals); the NaN then spreads through the rest of a model (LayerNorm, attention)."""
    monkeypatch.setenv("AIMC_DAC_NATIVE", dac_kernel)
    torch.manual_seed(0)
    digital = nn.Linear(16, 4)
    layer = AnalogLinear.from_digital(digital, _digital_io(preset), seed=0).eval()
    x = torch.zeros(3, 16)
    x[0, 3] = 1e-40  # one subnormal value, the rest zeros
    x[1] = torch.randn(16) * 1e-39  # every value subnormal (some of them zero)
    x[1, 0] = 0.0
    x[2] = torch.randn(16)  # an ordinary vector
    with torch.no_grad():
        y, ref = layer(x), digital(x)
    assert torch.isfinite(ref).all()
    assert torch.isfinite(y).all(), y
    # the tiny vectors are (to float32) all-zero vectors: their output is the digital bias
    torch.testing.assert_close(y[:2], ref[:2])


# -- 2. a config field changed in place after a forward: stale tile cache ----------------------


def test_changing_the_adc_resolution_after_a_forward_is_not_ignored_half_way():
    """``IOConfig`` is mutable by design (``IOConfig.__setattr__`` keeps ``_key`` current, and
    ``tests/test_config.py`` checks it follows every field change). The layer caches its tile
    matrices with the DAC/ADC gain ``inp_step / out_step`` folded in, keyed only on the
    weight's pointer and version: after ``io.out_res`` changes, the next forward quantizes
    with the new ADC step but multiplies by the old gain — outputs several times too large,
    neither the old nor the new config's numbers."""
    torch.manual_seed(0)
    digital = nn.Linear(32, 8)
    cfg = presets.pcm_inference().replace(device=aimc.DeviceConfig())
    layer = AnalogLinear.from_digital(digital, cfg, seed=0).eval()
    x = torch.randn(6, 32)
    with torch.no_grad():
        layer(x)  # fills the tile cache
        layer.analog_config.io.out_res = 1 / 62  # a 6-bit ADC instead of 9 bits
        layer.analog_config.io.out_noise = 0.0
        layer.manual_seed(1)
        y = layer(x)
        fresh = AnalogLinear.from_digital(digital, layer.analog_config, seed=0).eval()
        fresh.manual_seed(1)
        want = fresh(x)
    torch.testing.assert_close(y, want)


def test_changing_the_dac_resolution_of_a_programmed_chip_is_not_ignored_half_way():
    """The same through a programmed chip: its cached eval tiles carry the gain of the IO
    config at the time they were read (``ChipMixin._finish_tiles``), and the chip's cache key
    holds only its buffers. After the DAC goes from 7 to 8 bits the outputs come out scaled by
    the ratio of the two DAC steps (relative error to the digital layer 0.27 -> 1.04); a chip
    programmed alike under the new config gives the expected numbers."""
    torch.manual_seed(0)
    digital = nn.Linear(32, 8)
    layer = AnalogLinear.from_digital(digital, presets.pcm_inference(), seed=0)
    aimc.program(layer, seed=0)
    layer.eval()
    x = torch.randn(64, 32)
    with torch.no_grad():
        layer(x)  # reads the chip
        layer.analog_config.io.inp_res = 1 / 254
        layer.manual_seed(1)
        y = layer(x)
        fresh = AnalogLinear.from_digital(digital, layer.analog_config, seed=0)
        aimc.program(fresh, seed=0)  # the same chip: programming does not read the IO config
        fresh.eval()
        fresh.manual_seed(1)
        want = fresh(x)
    torch.testing.assert_close(y, want)


# -- 3. the int8 MVM lets a NaN input vector into bound management ------------------------------


def test_a_nan_input_vector_does_not_change_the_int8_forward_of_the_others(monkeypatch):
    """``aimc._intmvm`` packs a NaN level as 0, so the int8 MVM's output of a tile whose input
    holds a NaN is finite where the float32 GEMM's is NaN. With iterative bound management
    (here ``noise_management='none'``, a valid AIHWKIT setting, so the NaN vector's levels are
    not all NaN) that finite output saturates and the NaN vector is gathered into the rounds,
    which changes the noise every other redone vector gets: on the same seeds the int8 forward
    and the float32 forward (``AIMC_INT_MVM=0``) then differ in almost every row, where
    without the NaN they are equal (the module documents them as the same numbers but for
    ADC rounding ties). The NaN vector's rounds are wasted work as well."""
    from aimc._intmvm import INT_MVM

    if not INT_MVM.ready():
        pytest.skip("the int8 MVM does not run on this CPU")
    cfg = presets.pcm_inference().replace(device=aimc.DeviceConfig())
    cfg = cfg.replace(io=cfg.io.replace(noise_management="none"))
    layer = AnalogLinear(256, 64, config=cfg, seed=3)
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    layer.eval()
    x = torch.rand(256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[3, 1] = float("nan")

    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("AIMC_INT_MVM", flag)
        layer.manual_seed(5)
        with torch.no_grad():
            outs.append(layer(x))
    limbs = getattr(layer.active_tiles().w, "_aimc_limbs", None)
    assert limbs is not None and limbs[1] is not None  # the int8 MVM did run
    int8, f32 = outs
    assert int8[3].isnan().all() and f32[3].isnan().all()
    rest = torch.ones(256, dtype=torch.bool)
    rest[3] = False
    assert torch.isfinite(int8[rest]).all()
    differ = (int8[rest] != f32[rest]).any(dim=1).float().mean()
    assert float(differ) < 0.02, f"{float(differ):.0%} of the finite rows differ"


# -- 4. autocast: the dtype check is skipped altogether ----------------------------------------


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(24).reshape(3, 8) % 5,  # int64
        torch.ones(3, 8, dtype=torch.bool),
        torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).double(),
    ],
    ids=["int64", "bool", "float64"],
)
def test_under_autocast_a_dtype_the_digital_layer_refuses_is_refused(x):
    """``check_common`` skips the dtype check whenever autocast is on, but autocast casts only
    float32/float16/bfloat16 inputs: for an int64, bool or float64 input the digital
    ``nn.Linear`` raises, while the analog layer computes on ``x.float()`` and casts the result
    back to the input's dtype — integer-truncated outputs for an int64 input, ``True`` for a
    bool one (a plausible value from a wrong input)."""
    torch.manual_seed(0)
    digital = nn.Linear(8, 4)
    layer = AnalogLinear.from_digital(digital, presets.pcm_inference(), seed=0)
    layer.analog_name = "fc"
    aimc.program(layer, seed=0)
    layer.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        with pytest.raises(RuntimeError):
            digital(x)
        with pytest.raises(RuntimeError, match="'fc'"):
            layer(x)


def test_under_autocast_the_output_has_the_digital_layers_dtype():
    """Where the digital twin succeeds the analog output must have its dtype (the rule of
    ``tests/test_input_checks.py``). Under ``torch.autocast('cpu', bfloat16)`` ``nn.Linear`` of a
    float32 input returns bfloat16 (so does an ``ideal()`` analog layer, which runs
    ``F.linear``), but a non-ideal analog layer returns float32: ``analog_matmul`` casts back to
    the input's dtype, not to the autocast dtype."""
    torch.manual_seed(0)
    digital = nn.Linear(8, 4)
    layer = AnalogLinear.from_digital(digital, presets.pcm_inference(), seed=0)
    aimc.program(layer, seed=0)
    layer.eval()
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert digital(x).dtype == torch.bfloat16
        assert layer(x).dtype == torch.bfloat16


# -- 5. parameters that are inference tensors ---------------------------------------------------


def test_a_model_built_under_inference_mode_runs_like_its_digital_twin():
    """A model created (or loaded) inside ``torch.inference_mode()`` has inference-tensor
    parameters. The digital layer runs on them; the analog layer's tile cache reads
    ``weight._version`` (``AnalogLayerMixin.tile_weights``), which inference tensors do not
    have: "RuntimeError: Inference tensors do not track version counter" from the first
    forward (the chip's cache key already guards this with ``is_inference()``)."""
    cfg = presets.pcm_inference().replace(device=aimc.DeviceConfig())
    with torch.inference_mode():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4))
        x = torch.randn(3, 8)
        ref = model(x)
        aimc.convert(model, cfg, seed=0)
        model.eval()
        y = model(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()


# -- 6. torch.set_default_dtype(torch.float64) -------------------------------------------------


def test_a_model_under_a_float64_default_dtype_runs_like_its_digital_twin():
    """With ``torch.set_default_dtype(torch.float64)`` (common in scientific code) a float64
    ``nn.Linear`` runs; its analog twin, programmed, crashes in the eval forward with an
    internal "Bad in-place call: input tensor dtype float and output tensor dtype double"
    (``mvm._bmm_``), naming no layer: buffers made without a dtype (``torch.empty(...)`` in
    ``ChipMixin._read_pass`` and ``_programmer``, ``functional.tile_weights``,
    ``mvm._bound_management``'s ``zs``) come out float64 and meet the float32 DAC levels.

    (The kernels are built first, in float32: their self-checks also make tensors of the
    default dtype, fail under float64 and switch the kernel off for the rest of the process
    with a misleading "could not be built" warning — checked here not to happen.)"""
    import warnings

    for cfg in (_digital_io("bert_squad"), presets.bert_squad(0.0175)):
        warm = AnalogLinear(64, 512, config=cfg, seed=0)
        if warm.has_device():
            aimc.program(warm, seed=0)
        with torch.no_grad():  # the tile, int8, DAC, ADC and noise kernels
            warm.eval()(torch.randn(256, 64))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(0)
            digital = nn.Linear(64, 16)
            assert digital.weight.dtype == torch.float64
            layer = AnalogLinear.from_digital(digital, presets.pcm_inference(), seed=0)
            aimc.program(layer, seed=0)
            layer.eval()
            x = torch.randn(8, 64)
            with torch.no_grad():
                ref = digital(x)
                y = layer(x)
    finally:
        torch.set_default_dtype(before)
    assert not [w for w in caught if "could not be built" in str(w.message)]
    assert y.shape == ref.shape and y.dtype == ref.dtype and torch.isfinite(y).all()


def test_a_process_with_a_float64_default_dtype_builds_every_kernel(tmp_path):
    """A fresh process that sets ``torch.set_default_dtype(torch.float64)`` before anything
    else: the kernels' self-checks (made of default-dtype tensors before) pass, so none is
    switched off with a "could not be built" warning, and float64 models train, program,
    drift and run in eval mode with float64 outputs."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "f64.py"
    script.write_text(
        """
import warnings, torch
torch.set_default_dtype(torch.float64)
import aimc
from aimc import _bracket, _intmvm, _rangeclip, _scalegrad, _tiles, mvm
from torch import nn
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name in ["pcm_inference", "bert_squad", "standard_hwa"]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(600, 64), nn.GELU(), nn.Linear(64, 8))
        cfg = getattr(aimc.presets, name)()
        aimc.convert(m, cfg, seed=0)
        x = torch.randn(1100, 600)
        y = m.train()(x)
        y.square().mean().backward()
        aimc.post_step(m)
        if cfg.device.model != "none":
            aimc.program(m, seed=0)
            aimc.drift(m, 3600.0, seed=0)
        with torch.no_grad():
            z = m.eval()(x * 5)
        assert y.dtype == z.dtype == torch.float64 and torch.isfinite(z).all(), name
bad = [str(w.message) for w in caught if "could not be built" in str(w.message)]
assert not bad, bad
kernels = [mvm._DAC, mvm._ADC, _intmvm.INT_MVM, _tiles.TILES, _rangeclip.CLIP,
           _scalegrad.SCALE_GRAD, _bracket.BRACKET]
for k in kernels:
    k.ready()  # built (or refused: an ISA it is not written for), never a failed self-check
    assert not (k.failed or "").startswith("its self-check"), (type(k).__name__, k.failed)
print("ok")
"""
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# -- value-for-value checks the suite lacked ---------------------------------------------------


@pytest.mark.parametrize(
    ("io", "mapping"),
    [
        ({}, {"max_input_size": 100, "max_output_size": 40}),
        (
            {"inp_res": 1 / 254, "out_res": 1 / 254, "out_bound": 10.0},
            {"max_input_size": 0, "max_output_size": 0, "digital_bias": False},
        ),
    ],
    ids=["7-bit DAC, 9-bit ADC, 3x3 tiles", "8-bit DAC and ADC, one tile, analog bias"],
)
def test_saturating_bound_management_equals_aihwkit_value_for_value(monkeypatch, io, mapping):
    """Noise off, the converters quantizing: iterative bound management on a layer that
    saturates on most (vector, tile) pairs, split over input and output tiles (uneven splits),
    on enough vectors that the first pass and the rounds run their MVM in int8 — against
    AIHWKIT 1.2.0 output for output. (The conformance suite compares statistics only, and its
    value-for-value DAC tests turn the ADC's quantization off.)"""
    pytest.importorskip("aihwkit")
    from aihwkit.nn import AnalogLinear as RpuLinear
    from conformance.cases_periphery import IO_BASE, MAPPING_BASE, _aimc, _rpu

    from aimc import mvm

    io = {**IO_BASE, "out_noise": 0.0, **io}
    mapping = {**MAPPING_BASE, **mapping}
    g = torch.Generator().manual_seed(0)
    w = torch.randn(90, 250, generator=g)
    b = torch.randn(90, generator=g) * 0.1
    x = torch.rand(160, 250, generator=g) * 2 - 1
    x[5] = 0.0  # an all-zero vector
    x[7, :125] = 0.0  # ... and one all-zero in its first input tiles
    lin = nn.Linear(250, 90)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    ours = aimc.convert(nn.Sequential(lin), _aimc(io, mapping), seed=0).eval()
    ref = RpuLinear(250, 90, bias=True, rpu_config=_rpu(io, mapping))
    ref.set_weights(w, b)
    ref.eval()
    rounds = []
    original = mvm._bound_management

    def spy(z, sat, *args, **kwargs):
        rounds.append(int(sat.sum()))
        return original(z, sat, *args, **kwargs)

    monkeypatch.setattr(mvm, "_bound_management", spy)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert rounds and rounds[0] > 100  # bound management did run, on many pairs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_int8_forward_with_bound_management_does_not_depend_on_the_thread_count():
    """A programmed ``bert_squad`` layer of three input tiles (one GEMM per tile on two
    threads, one ``bmm`` on one), saturating often, its first pass and rounds in int8: the
    eval forward on the same seeds is the same on one and on two threads (the existing
    thread-count tests cover the kernels and an unprogrammed training forward)."""
    torch.manual_seed(0)
    layer = AnalogLinear(1030, 64, config=presets.bert_squad(0.0175), seed=3)
    with torch.no_grad():
        layer.weight.uniform_(-(1030**-0.5), 1030**-0.5)
    aimc.program(layer, seed=0)
    aimc.drift(layer, 3600.0, seed=0)
    layer.eval()
    x = torch.randn(256, 1030, generator=torch.Generator().manual_seed(1))
    outs = outputs_on_one_and_two_threads(layer, x, 9)
    assert layer.active_tiles().layout.n_in == 3
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("shape", [(0, 4), (4, 0)])
def test_a_layer_without_weights_is_refused_at_convert_naming_it(shape):
    """``nn.Linear(0, 4)`` runs digitally (the bias alone); a crossbar needs a row and a column:
    ``convert`` refuses it naming the layer and the way out (it raised ``split_sizes: n must
    be > 0``, naming nothing), before any layer is replaced."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(*shape))
    with pytest.raises(ValueError, match=r"Linear '1' weight has shape .*exclude=\['1'\]"):
        aimc.convert(model, presets.pcm_inference(), seed=0)
    assert type(model[0]) is nn.Linear  # nothing replaced
    aimc.convert(model, presets.pcm_inference(), seed=0, exclude=["1"])
    assert type(model[1]) is nn.Linear and type(model[0]) is not nn.Linear
