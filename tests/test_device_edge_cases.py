"""Device physics and chip state edge cases: programmed chips (full and lean), their
checkpoints and copies, the PCM parameters, compiled reads of a chip, and the pulsed arrays /
optimizers of in-situ training.

Each test failed before its fix (2026-12-06 review), because of the bug its docstring names.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from test_pulsed_update import IDEAL as PULSED_IDEAL
from test_pulsed_update import gen
from torch import nn

import aimc
from aimc import presets
from aimc.nn import AnalogLinear
from aimc.pulsed import AnalogSGD, PulsedArray, PulsedConfig, TikiTakaConfig, UpdateConfig
from aimc.pulsed.compounds import TikiTakaArrays

HOUR = 3600.0

#: a pulsed device without any spread or noise and with wide bounds (test_pulsed_update's) and a
#: fine step: the ``expected`` update is then exactly the SGD step ``-lr delta^T x`` (as long as
#: no pulse probability is clipped at 1)
IDEAL = {**PULSED_IDEAL, "dw_min": 1e-4}


def pcm_model(weight_seed: int = 0, cfg: aimc.AnalogConfig | None = None) -> nn.Module:
    """Linear(20, 10) with weights (and bias) from ``weight_seed``, converted, in eval mode."""
    g = gen(weight_seed)
    m = nn.Sequential(nn.Linear(20, 10))
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(10, 20, generator=g) * 0.2)
        m[0].bias.copy_(torch.randn(10, generator=g) * 0.1)
    return aimc.convert(m, cfg or presets.pcm_inference(), seed=1).eval()


X = torch.randn(5, 20, generator=gen(3))


def eval_out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    aimc.manual_seed(model, 9)
    with torch.no_grad():
        return model(x)


# ==============================================================================================
# Lean chips: the weights they are regenerated from must be the programmed ones


def test_lean_chip_refuses_weights_loaded_without_a_chip():
    """``load_state_dict`` of weights alone (``strict=False``) into a model programmed with
    ``storage='lean'`` changes the weights the chip is regenerated from, but
    ``ChipMixin._load_from_state_dict`` resets ``_lean_key`` even when the state dict carries no
    chip: the change is never detected. The chip is then silently regenerated from the new
    weights with the old per-tile baseline and compensation factors — after the next drift the
    outputs are ~10x too small (alpha = old baseline / new readout) instead of the error an
    in-place change of the weights gives (``test_lean_chip.py::
    test_lean_chip_refuses_changed_weights``)."""
    m = pcm_model()
    aimc.program(m, seed=1, storage="lean")
    aimc.drift(m, HOUR, seed=2)
    new = {k: v * 10 for k, v in m.state_dict().items() if k.endswith(("weight", "bias"))}
    m.load_state_dict(new, strict=False)  # weights only: no chip in the dict
    with pytest.raises(RuntimeError, match="weights changed"):
        aimc.drift(m, HOUR, seed=2)
        eval_out(m)


def test_lean_chip_loaded_from_a_checkpoint_refuses_later_weight_changes():
    """A lean chip loaded from a checkpoint is keyed to its weights lazily, at its first read
    (``_lean_key = None`` in ``_load_from_state_dict``): weights changed between the load and
    the first forward (a fine-tuning step, an in-place edit, a cast) are taken as the
    programmed ones, and the chip is silently regenerated from them with the checkpoint's
    stale baseline and compensation factors. The same change on the model that was programmed
    in this process is an error."""
    m = pcm_model()
    aimc.program(m, seed=1, storage="lean")
    aimc.drift(m, HOUR, seed=2)
    fresh = pcm_model(weight_seed=5)
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        fresh[0].weight.mul_(10)  # changed after loading, before any read
    with pytest.raises(RuntimeError, match="weights changed"):
        eval_out(fresh)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copy_of_a_lean_chip_reads_the_same_chip(how):
    """A deep copy (or a whole-model ``torch.save`` / ``torch.load``) of a model programmed with
    ``storage='lean'`` has the same weights, seeds and per-tile numbers, but its forward raises
    "its weights changed (or moved/cast) since it was programmed": ``_lean_key`` holds the
    weights' ``data_ptr``, which every copy changes. (A full chip copies fine; a lean
    ``state_dict`` reloads fine.)"""
    m = pcm_model()
    aimc.program(m, seed=1, storage="lean")
    aimc.drift(m, HOUR, seed=2)
    want = eval_out(m)
    if how == "deepcopy":
        twin = copy.deepcopy(m)
    else:
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    assert torch.equal(eval_out(twin), want)


def test_a_programmed_model_survives_a_meta_round_trip():
    """``model.to("meta")`` then ``model.to_empty(device="cpu")`` and ``load_state_dict`` (the
    meta-device flow DESIGN.md says must just work) crashes for a programmed model with torch's
    "Cannot copy out of meta tensor; no data!": ``ChipMixin._apply`` moves the chip buffers
    with ``b.to(fn(b).device)``, i.e. it copies the meta chip's (absent) values instead of
    taking ``to_empty``'s empty tensors."""
    m = pcm_model()
    aimc.program(m, seed=1)
    aimc.drift(m, HOUR, seed=2)
    want = eval_out(m)
    state = copy.deepcopy(m.state_dict())
    m.to("meta")
    m.to_empty(device="cpu")
    m.load_state_dict(state)
    assert torch.equal(eval_out(m), want)


# ==============================================================================================
# Drift compensation over uneven tiles (passing: covers a gap)


@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("storage", ["full", "lean"])
@pytest.mark.parametrize("comp", ["global", "per_column", "exact_reference"])
def test_uniform_drift_is_compensated_exactly_on_uneven_tiles(comp, storage, chunked, monkeypatch):
    """Every device drifts with the same exponent and there is no noise: on a 13 x 17 layer
    split unevenly into 7 x 5 tiles, with tiles whose weights differ by 100x and an all-zero
    output column, every real tile's (column's) alpha is ``((t + t0) / t0)^nu`` (the all-zero
    column keeps alpha = 1, its readouts both clamped at 1e-4) and the compensated output is
    the programmed one — full and lean chips, one chunk or many."""
    from aimc.nn import chip as chip_module

    if chunked:
        monkeypatch.setattr(chip_module, "CHUNK_WEIGHTS", 35)
    nu, t, t0 = 0.06, 365.25 * 86400.0, 20.0
    cfg = aimc.AnalogConfig(
        io=aimc.IOConfig(is_perfect=True),
        mapping=aimc.MappingConfig(max_input_size=7, max_output_size=5),
        device=aimc.DeviceConfig(
            model="pcm_custom_drift",
            params={
                "g_points": (0.0, 25.0),
                "nu_mean": (nu, nu),
                "nu_std": (0.0, 0.0),
                "prog_noise_scale": 0.0,
                "read_noise_scale": 0.0,
            },
            drift_compensation=comp,
        ),
    )
    g = gen(0)
    w = torch.randn(13, 17, generator=g)
    w[:, 7:14] *= 100  # the middle input tile 100x the others
    w[3] = 0  # an all-zero output column
    x = torch.randn(8, 17, generator=g)
    layer = AnalogLinear(17, 13, bias=False, config=cfg)
    with torch.no_grad():
        layer.weight.copy_(w)
    layer.eval()
    layer.program_chip(0, storage)
    with torch.no_grad():
        y0 = layer(x)
    layer.drift_chip(t, 1)
    with torch.no_grad():
        y = layer(x)
    factor = ((t + t0) / t0) ** nu
    alpha = layer.compensation_factor()
    if comp == "per_column":
        lo = layer.tile_layout()
        real = lo.out_valid(alpha.device).clone()
        real[3] = False  # the zero column
        torch.testing.assert_close(
            alpha[:, real], torch.full_like(alpha[:, real], factor), rtol=5e-4, atol=0
        )
        torch.testing.assert_close(alpha[:, 3], torch.ones_like(alpha[:, 3]))
    else:
        torch.testing.assert_close(alpha, torch.full_like(alpha, factor), rtol=5e-4, atol=0)
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-4 * y0.abs().max().item())


# ==============================================================================================
# PCM parameters


@pytest.mark.parametrize("t_read", [25.0, 1000.0])
def test_pcm_t_read_beyond_t0_is_refused_naming_the_field(t_read):
    """``PCMParams`` accepts any positive ``t_read``; with ``t_read > t0`` (e.g. a value meant
    in ns) the 1/f read-noise term ``sqrt(ln((t + t_read) / (2 t_read)))`` has a negative
    logarithm at early read times and ``aimc.drift(model, 0)`` dies with a bare
    ``ValueError: math domain error`` from ``pcm.drift`` (AIHWKIT returns NaN there). The
    config should refuse the value naming ``device.params.t_read`` (or the drift should name
    it)."""
    with pytest.raises(ValueError, match="t_read"):
        cfg = presets.pcm_inference()
        cfg = cfg.replace(device=cfg.device.replace(params={"t_read": t_read}))
        m = pcm_model(cfg=cfg)
        aimc.program(m, seed=0)
        aimc.drift(m, 0.0, seed=1)


# ==============================================================================================
# A compiled forward reads the chip as the eager one does


def test_compiled_chip_follows_an_in_place_io_change():
    """``chip_tiles`` under ``torch.compile`` returns ``_chip_cache`` whenever it is set,
    without comparing its key (``_chip_key``, which holds the IO config since the eager fix
    of in-place IO changes). After ``io.inp_res`` is changed in place, dynamo retraces (it
    guards on the IO key) but the retraced graph takes the tiles cached before the change,
    with the old DAC/ADC gain folded in: the compiled output is off by the ratio of the DAC
    steps, while the eager forward of the same layer is right."""
    torch._dynamo.reset()
    try:
        cfg = presets.pcm_inference()
        cfg = cfg.replace(io=cfg.io.replace(out_noise=0.0))  # deterministic periphery
        m = pcm_model(cfg=cfg)
        aimc.program(m, seed=1)
        aimc.drift(m, HOUR, seed=2)
        compiled = aimc.compile(m, backend="eager")
        with torch.no_grad():
            compiled(X)  # caches the chip's tiles (7-bit DAC gain)
            m[0].analog_config.io.inp_res = 1 / 254  # an 8-bit DAC
            y = compiled(X)
            want = m(X)  # eager: rebuilds the tiles for the new gain
        assert (y - want).norm() / want.norm() < 0.05
    finally:
        torch._dynamo.reset()


# ==============================================================================================
# Pulsed arrays and in-situ training


def test_gradient_accumulation_pairs_each_error_with_its_input():
    """``docs/insitu.md``: "Call ``loss.backward()`` once per training forward before
    ``step()``". With two micro-batches (forward, backward, forward, backward, step — gradient
    accumulation) ``_Capture.pop`` pairs the inputs in forward order with the errors reversed
    (``torch.cat(ds[::-1])``, right only when every forward precedes one single backward): the
    first batch's inputs get the second batch's errors. For an ideal device in ``expected``
    mode the pulsed step should be exactly ``-lr * weight.grad``; it points elsewhere (error
    1.5x the step itself)."""
    torch.manual_seed(0)
    model = aimc.convert(nn.Sequential(nn.Linear(4, 3, bias=False)), aimc.AnalogConfig(), seed=0)
    cfg = PulsedConfig(params=IDEAL, update=UpdateConfig(mode="expected"))
    lr = 1e-5  # small: no pulse probability is clipped at 1
    opt = AnalogSGD(model, lr=lr, config=cfg)
    w0 = model[0].weight.detach().clone()
    g = gen(1)
    opt.zero_grad()
    for i in range(2):  # two micro-batches, one backward each
        x = torch.randn(2, 4, generator=g)
        target = torch.randn(2, 3, generator=g) * (1 + 5 * i)
        ((model(x) - target) ** 2).sum().backward()
    want = -lr * model[0].weight.grad
    opt.step()
    got = model[0].weight.detach() - w0
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("lr", [float("nan"), -0.1, float("inf")])
def test_pulsed_array_update_refuses_a_bad_learning_rate(lr):
    """``PulsedArray.update`` (public, ``aimc.pulsed.PulsedArray``) tests only ``if lr > 0``: a
    NaN or negative learning rate silently updates nothing and an infinite one applies a
    saturated update, where the optimizers refuse all three (``update.check_lr``: "lr: got nan;
    allowed: a finite number >= 0")."""
    arr = PulsedArray(3, 4, PulsedConfig(), seed=0)
    arr.write(torch.full((3, 4), 0.1))
    x, d = torch.randn(2, 4, generator=gen(0)), torch.randn(2, 3, generator=gen(1))
    with pytest.raises(ValueError, match="lr"):
        arr.update(x, d, lr, gen(2))


def test_non_finite_batch_in_a_pulsed_step_names_the_layer():
    """A NaN reaching a pulsed layer (a NaN input, an overflowed loss) makes ``opt.step()`` raise
    "layer: x or delta has non-finite values": ``PulsedArray.update`` calls
    ``update.check_batch`` without the layer's name (its default ``name="layer"``), so the
    message does not say which of the model's layers got it (every other aimc error names the
    layer, docs/reliability.md)."""
    from collections import OrderedDict

    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(encoder=nn.Linear(4, 3), act=nn.ReLU(), decoder=nn.Linear(3, 2))
    )
    opt = AnalogSGD(model, lr=0.1)
    x = torch.randn(5, 4)
    x[0, 0] = float("nan")
    model(x).sum().backward()
    with pytest.raises(ValueError, match="encoder"):
        opt.step()


def test_tiki_taka_transfer_of_more_columns_than_inputs():
    """``TikiTakaConfig.columns_per_transfer`` "cycling through the inputs in order" (as
    AIHWKIT's ``n_reads_per_transfer``, which wraps around and updates with every read) accepts
    more columns than the array has inputs; each wrapped column is then read twice, but
    ``PulsedArray.apply_counts`` writes ``dev.w[:, cols] = new`` with repeated indices, so only
    one of the two transfers lands — half the transfer, silently. Either refuse the value
    naming ``columns_per_transfer`` or apply every read."""
    cfg = PulsedConfig(params=IDEAL, update=UpdateConfig(mode="expected"))
    a = torch.tensor([[0.5, -0.3], [0.2, 0.1], [-0.4, 0.6]])
    lr = 1e-3  # small: no pulse probability is clipped at 1
    try:
        tt = TikiTakaArrays(
            torch.zeros(3, 2), cfg, 0, TikiTakaConfig(columns_per_transfer=4, transfer_lr=lr)
        )
        tt.fast.write(a)
        tt.transfer(lr, gen(0))
    except ValueError as e:
        assert "columns_per_transfer" in str(e)
        return
    # columns 0, 1, 0, 1: every column of A transferred twice
    torch.testing.assert_close(tt.slow.weight(), 2 * lr * a, rtol=1e-3, atol=1e-7)
