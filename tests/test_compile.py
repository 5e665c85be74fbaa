"""torch.compile of analog models: no graph breaks, the same algorithm, the same statistics.
(With the float32 MVM throughout: see :func:`_float32_mvm`.)

The compiled forward draws its IO noise from each layer's counter stream instead of a
``torch.Generator``; run eagerly with the same stream, analog_mvm gives the compiled numbers
(to float rounding), and its bound management (the gathered rounds as one custom op under
``torch.cond``) keeps exactly what the eager rounds keep (checked noise-free, where both are
deterministic) and draws, at every pair it redoes, what a round over every pair would draw.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from collections.abc import Callable
from typing import Any

import pytest
import torch
from scipy import stats
from torch._inductor.compile_fx import compile_fx

import aimc
import aimc.random
from aimc.config import AnalogConfig, IOConfig, MappingConfig
from aimc.mvm import (
    _bm_allowed,
    _bm_rounds,
    _bound_management,
    _dac_,
    _mvm_adc,
    analog_mvm,
    units,
)
from aimc.random import (
    CounterStream,
    KeyedStream,
    RowStream,
    counter_bits,
    counter_normal,
    counter_rows,
    counter_uniform,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _float32_mvm(monkeypatch):
    """These tests are about the graph inductor compiles, which a layer whose MVM runs in int8
    (``aimc._intmvm``, on a CPU with VNNI) replaces by the eager forward as one op: they run
    with the float32 MVM everywhere, as on a CPU without VNNI (``tests/test_intmvm.py`` has
    the int8 layers' graphs)."""
    monkeypatch.setenv("AIMC_INT_MVM", "0")


def small_tiles(cfg: AnalogConfig) -> AnalogConfig:
    """``cfg`` with 16 x 16 tiles, so that a small layer spans several tiles."""
    return cfg.replace(mapping=cfg.mapping.replace(max_input_size=16, max_output_size=16))


def model(cfg: AnalogConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    aimc.convert(m, cfg, seed=seed).eval()
    if any(layer.has_device() for _, layer in aimc.analog_layers(m)):
        aimc.program(m, seed=seed)
        aimc.drift(m, 3600.0, seed=seed)
    return m


# -- the counter stream ------------------------------------------------------------------------
def test_counter_stream_draws_are_standard_normal_and_uniform():
    key = torch.tensor(12345, dtype=torch.int64)
    z = counter_normal(key, (400_000,)).double()
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert float(z.abs().max()) <= 5.9  # 24-bit u1: the tail of torch's CPU normal_
    u = counter_uniform(key, (400_000,)).double()
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # pairs of one word and neighbouring words are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1])) < 0.01


def test_box_muller_angles_are_float_accurate_on_every_24_bit_angle():
    """The pair's cosine and sine, reduced in integer quarter turns, against float64 on all 2**24
    angles; the sine at ``k`` is the cosine a quarter turn back, bit for bit (the row draws rely
    on it), eagerly and compiled."""
    k = torch.arange(0, 1 << 24, dtype=torch.int32)
    theta = k.double() * (2 * math.pi / 2**24)
    for fn in (aimc.random._cos_sin_turns, torch.compile(aimc.random._cos_sin_turns, dynamic=True)):
        cos, sin = fn(k)
        assert float((cos.double() - theta.cos()).abs().max()) < 1.5e-7
        assert float((sin.double() - theta.sin()).abs().max()) < 1.5e-7
        assert torch.equal(fn(k - (1 << 22))[0], sin)


def test_box_muller_radius_is_accurate_and_never_nan_near_u1_one(monkeypatch):
    """``r = sqrt(-2 ln u1)`` on every 24-bit field: within 1.3e-7 of float64 at the float32
    ``u1`` (zero where ``u1`` rounds to 1); and with a logarithm too high by 2**-22 (the error
    of a GPU's fast one), still finite and non-negative near ``u1 = 1``, not NaN."""
    k1 = torch.arange(0, 1 << 24, dtype=torch.int64)
    u1 = (k1.to(torch.int32).float() + 0.5) * 2.0**-24
    exact = torch.sqrt(-2 * torch.log(u1.double()))
    for fn in (aimc.random._polar, torch.compile(aimc.random._polar, dynamic=False)):
        r = fn(k1 << 40)[0].double()
        nz = exact > 0
        assert float(((r[nz] - exact[nz]).abs() / exact[nz]).max()) < 1.3e-7
        assert int((~nz).sum()) == 1 and float(r[~nz].abs().max()) == 0.0
    log = torch.log
    monkeypatch.setattr(torch, "log", lambda u: log(u) + 2.0**-22)
    top = k1[-64:] << 40
    r = aimc.random._polar(top)[0]
    assert bool(torch.isfinite(r).all()) and float(r.min()) >= 0.0


def test_counter_stream_is_a_pure_function_of_its_state():
    a = CounterStream(CounterStream.initial_state(7))
    b = CounterStream(CounterStream.initial_state(7))
    assert torch.equal(a.normal((5, 3)), b.normal((5, 3)))
    other = CounterStream(CounterStream.initial_state(1007))
    assert not torch.equal(a.normal((5, 3)), other.normal((5, 3)))
    first, second = b.normal((100,)), b.normal((100,))  # the state advances per draw
    assert not torch.equal(first, second)
    assert int(b.state) == 7 + 3


def test_counter_draws_compile_to_the_same_numbers():
    """Also for lengths that are not multiples of 16 (torch 2.13's CPU inductor miscompiles int64
    vector tails; the draws pad their words to avoid them)."""
    key = torch.tensor(-4242, dtype=torch.int64)
    assert torch.equal(counter_bits(key, 1024), torch.compile(counter_bits)(key, 1024))
    normal = torch.compile(counter_normal, fullgraph=True, dynamic=False)
    uniform = torch.compile(counter_uniform, fullgraph=True, dynamic=False)
    for n in (1, 7, 24, 40, 1001):
        assert torch.allclose(normal(key, (n,)), counter_normal(key, (n,)), atol=1e-5), n
        assert torch.equal(uniform(key, (n,)), counter_uniform(key, (n,))), n


def test_keyed_draws_of_a_compiled_graph_are_the_eager_draws():
    """A compiled graph's draws (on an AVX2 CPU the noise kernel as an op, sizes below its
    128-value minimum included; elsewhere tensor operations) are the keyed stream's eager
    draws: uniforms bit for bit, normals to float rounding."""

    def draws(key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = KeyedStream(key)
        return s.normal((n,)), s.uniform((n, 1))

    compiled = torch.compile(draws, fullgraph=True, dynamic=False)
    key = torch.tensor(-31337, dtype=torch.int64)
    for n in (1, 100, 127, 128, 5000, 70_001):
        (normal, uniform), (c_normal, c_uniform) = draws(key, n), compiled(key, n)
        assert torch.allclose(c_normal, normal, rtol=0, atol=2e-6), n
        assert torch.equal(c_uniform, uniform), n


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("total_rows, width", [(300, 384), (37, 13), (5, 1), (64, 512)])
def test_counter_rows_are_the_rows_of_the_whole_draw(kernel, total_rows, width, monkeypatch):
    """Rows of both halves of the draw (cosines and sines of the Box-Muller pairs), repeated and
    unordered rows, widths that are not multiples of the kernel's 64-value padding."""
    if not kernel:  # the eager tensor operations (no compiled kernel)
        monkeypatch.setenv("AIMC_RNG_KERNEL", "0")
    key = torch.tensor(-987654321, dtype=torch.int64)
    numel = total_rows * width
    rows = torch.cat(
        [
            torch.randperm(total_rows, generator=torch.Generator().manual_seed(1)),
            torch.tensor([total_rows - 1, 0, total_rows - 1]),
        ]
    )
    normal = counter_normal(key, (numel,)).view(total_rows, width)
    got = counter_rows(key, numel, rows, width, "normal")
    assert got.shape == (rows.numel(), width)
    assert torch.allclose(got, normal[rows], rtol=0, atol=2e-6)
    uniform = counter_uniform(key, (numel,)).view(total_rows, width)
    assert torch.equal(counter_rows(key, numel, rows, width, "uniform"), uniform[rows])
    assert counter_rows(key, numel, rows[:0], width).shape == (0, width)


def test_row_stream_follows_the_keyed_stream():
    """Draw ``j`` of a RowStream: rows ``rows`` of the keyed stream's draw ``j`` over every row;
    the leading dimensions of a draw hold the selected rows, row-major."""
    key = torch.tensor(77, dtype=torch.int64)
    rows = torch.tensor([4, 0, 9, 4, 1, 2])
    s, full = RowStream(key, rows, 10), KeyedStream(key)
    assert torch.equal(s.uniform((6, 5)), full.uniform((10, 5))[rows])  # draw 1
    got = s.normal((3, 2, 7))  # draw 2
    assert torch.allclose(got, full.normal((10, 7))[rows].view(3, 2, 7), atol=2e-6)
    with pytest.raises(ValueError, match=r"RowStream: a draw of shape \(4, 6\); allowed: 6 rows"):
        s.normal((4, 6))


# -- the compiled forward ----------------------------------------------------------------------
CONFIGS = {
    "pcm_inference": small_tiles(aimc.presets.pcm_inference()),
    "bert_squad": small_tiles(aimc.presets.bert_squad(0.0175)),
}


#: Inputs of the compiled-model tests: one batch shape (and ordinary tensors, not inference
#: tensors: dynamo tells them apart), so that each model compiles once.
X = torch.randn(800, 40, generator=torch.Generator().manual_seed(2))
X4 = X * 4

_compiled: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
#: the code of the FX graphs that inductor compiled for each model of :func:`compiled_model`
_graphs: dict[str, list[str]] = {}


def recording(graphs: list[str], backend: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A dynamo backend that appends each traced graph's code to ``graphs`` and hands the graph
    to ``backend`` (default: run it as traced, no inductor).

    The tests read the traced graphs this way, not with ``torch._dynamo.explain``, which resets
    dynamo: every compiled model and kernel of the session then compiled again (about two
    minutes of this file's run)."""

    def backend_(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graphs.append(gm.code)
        return gm.forward if backend is None else backend(gm, example_inputs)

    return backend_


def compiled_model(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The programmed test model of ``CONFIGS[name]`` (seed 0) and its ``aimc.compile``
    (``fullgraph=True``: a graph break raises), built once per session and shared by the tests
    below (compiling takes most of a minute); a test that draws from it reseeds it first where
    it compares numbers. The code of its graphs is in ``_graphs[name]``."""
    if name not in _compiled:
        m = model(CONFIGS[name])
        graphs = _graphs.setdefault(name, [])
        c = aimc.compile(m, fullgraph=True, backend=recording(graphs, compile_fx))
        _compiled[name] = (m, c)
    return _compiled[name]


@pytest.mark.parametrize("name", ["pcm_inference", "bert_squad"])
def test_analog_model_compiles_without_graph_breaks(name):
    m, c = compiled_model(name)
    with torch.inference_mode():
        y = c(X4)  # compiles with fullgraph=True: a graph break would raise
    assert y.shape == (800, 8) and bool(torch.isfinite(y).all())
    code = "".join(_graphs[name])
    # one graph; small tile outputs: compiled through, the noise drawn in the graph (Box-Muller's
    # logarithm; on an AVX2 CPU the noise kernel as an op) and bound management under
    # torch.cond, not the eager op of large layers
    assert len(_graphs[name]) == 1
    if aimc.random._AVX2_CPU:
        assert "ops.aimc.counter_draw.default(" in code and "torch.log(" not in code
    else:
        assert "torch.log(" in code and "counter_draw" not in code
    assert "torch.ops.higher_order.cond(" in code
    assert "eager_mvm" not in code


def test_a_model_without_a_device_model_compiles_without_graph_breaks():
    """The periphery on the digital weights (no device model, as AIHWKIT's unprogrammed
    ``InferenceRPUConfig``) compiles with ``fullgraph=True`` too (it stopped at the weight
    tiles' storage check, which dynamo cannot trace); without noise it equals the eager forward,
    bound management included (ADC bound 0.5: 5-6 % of the first pass saturates)."""
    m = model(small_tiles(AnalogConfig(io=IOConfig(out_noise=0.0, out_bound=0.5))))
    assert not any(layer.has_device() for _, layer in aimc.analog_layers(m))
    graphs: list[str] = []
    c = aimc.compile(m, fullgraph=True, backend=recording(graphs))
    with torch.inference_mode():
        y, ref = c(X4), m(X4)
    assert len(graphs) == 1
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_large_compiled_forwards_run_the_eager_forward_as_one_op(monkeypatch):
    """A compiled forward whose tile outputs reach ``EAGER_MIN_BYTES`` (here: every forward)
    runs the eager forward as one custom op: no graph break, reproducible from the seeds, fresh
    noise at every call, the eager statistics (bound management included: ``X4`` saturates)."""
    import aimc.mvm

    monkeypatch.setattr(aimc.mvm, "EAGER_MIN_BYTES", 0)
    m = model(CONFIGS["bert_squad"])
    graphs: list[str] = []
    c = aimc.compile(m, fullgraph=True, backend=recording(graphs, compile_fx))
    digital = aimc.to_digital(model(CONFIGS["bert_squad"]))
    with torch.inference_mode():
        aimc.manual_seed(m, 0)
        first, second = c(X4), c(X4)
        aimc.manual_seed(m, 0)
        again = c(X4)
        ref = digital(X)
        eager = (m(X) - ref).flatten()
        compiled = (c(X) - ref).flatten()
    assert len(graphs) == 1 and "".join(graphs).count("ops.aimc.eager_mvm.default(") == 2
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert stats.ttest_ind(eager, compiled, equal_var=False).pvalue > 1e-3
    assert stats.levene(eager, compiled).pvalue > 1e-3
    assert float(eager.std()) > 0


def test_the_eager_op_takes_tile_outputs_of_at_least_eager_min_bytes(monkeypatch):
    """The limit counts the first pass's tile outputs, ``G * ti * N * O_pad`` float32 values:
    at exactly the first layer's size that layer takes the op (the second, smaller, does not),
    one byte above it neither does."""
    import aimc.mvm

    m, _ = compiled_model("pcm_inference")
    lo = m[0].active_tiles().layout
    first = lo.batch * X4.shape[0] * lo.padded_out * 4
    lo2 = m[2].active_tiles().layout
    assert lo2.batch * X4.shape[0] * lo2.padded_out * 4 < first
    for limit, expected in ((first, 1), (first + 1, 0)):
        monkeypatch.setattr(aimc.mvm, "EAGER_MIN_BYTES", limit)
        graphs: list[str] = []  # traced only (the limit is a guarded global: traced afresh)
        with torch.inference_mode():
            torch.compile(m, fullgraph=True, backend=recording(graphs))(X4)
        assert len(graphs) == 1, limit
        assert graphs[0].count("ops.aimc.eager_mvm.default(") == expected, limit


def test_the_eager_op_is_the_eager_forward_seeded_with_the_key():
    import aimc.mvm

    cfg = CONFIGS["bert_squad"]
    layer = model(cfg)[0]
    tw, io = layer.active_tiles(), cfg.io
    lo = tw.layout
    x = (X4[:64] * 2).unsqueeze(0)  # saturates: bound-management rounds
    key = torch.tensor(-1234567890123, dtype=torch.int64)
    sizes = list(dataclasses.astuple(lo))
    bias = layer.bias.detach().unsqueeze(0)
    with torch.inference_mode():
        got = aimc.mvm._opaque_mvm(x, tw.w, tw.w_abs, tw.scale, bias, None, key, sizes, io._key)
        want = analog_mvm(x, tw, io, torch.Generator().manual_seed(int(key)), bias)
    assert torch.equal(got, want)


def _saturating_case(cfg: AnalogConfig, n_in: int = 48, n_out: int = 20, tokens: int = 64):
    gen = torch.Generator().manual_seed(3)
    layer = aimc.nn.AnalogLinear(n_in, n_out, config=cfg, seed=0)
    with torch.no_grad():
        layer.weight.uniform_(-1, 1, generator=gen)
    x = torch.randn(1, tokens, n_in, generator=gen) * 3
    return layer, x


@pytest.mark.parametrize(
    "preset, shape",
    [("bert_squad", (48, 20, 64)), ("bert_squad", (45, 19, 37)), ("pcm_inference", (33, 7, 5))],
)
def test_compiled_mvm_equals_eager_mvm_with_the_same_stream(preset, shape):
    """Bound management active (most outputs saturate at first): the compiled graph and an eager
    call with the same counter stream agree to float rounding (odd shapes too)."""
    base = (
        aimc.presets.bert_squad(0.0175) if preset == "bert_squad" else aimc.presets.pcm_inference()
    )
    cfg = small_tiles(base).replace(device=aimc.DeviceConfig())
    layer, x = _saturating_case(cfg, *shape)
    tw, io = layer.tile_weights(), cfg.io

    def run(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return analog_mvm(x, tw, io, CounterStream(state))

    s1, s2 = CounterStream.initial_state(5), CounterStream.initial_state(5)
    eager = run(x, s1)
    torch._dynamo.config.specialize_float = True
    compiled = torch.compile(run, fullgraph=True, dynamic=False)(x, s2)
    assert torch.equal(s1, s2) and int(s1) == 6  # one fork per forward
    step = eager.abs().max() / 100
    close = (eager - compiled).abs() <= 1e-5 * eager.abs().max()
    assert float(close.float().mean()) > 0.99  # a rounding tie may flip one ADC step
    assert float((eager - compiled).abs().max()) < step


def test_compiled_pcm_read_splits_uneven_tile_batches_like_eager(monkeypatch):
    """Three input tiles on two threads: the compiled forward runs both MVMs, the signal's and
    the ``pcm_read`` variance's, as one ``mm`` per tile (a ``bmm`` would leave a thread idle
    for a third of the work, as eager avoids too) and still equals the eager call on the same
    stream."""
    import aimc.mvm as mvm

    monkeypatch.setattr(mvm, "_LOOP_MIN_MACS", 0)  # the test's small products split too
    cfg = small_tiles(aimc.presets.bert_squad(0.0175)).replace(device=aimc.DeviceConfig())
    layer, x = _saturating_case(cfg, 48, 16, 64)  # 3 input tiles, 1 output tile
    tw, io = layer.tile_weights(), cfg.io

    def run(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return analog_mvm(x, tw, io, CounterStream(state))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eager = run(x, CounterStream.initial_state(5))
        graphs: list[str] = []
        torch._dynamo.config.specialize_float = True
        fn = torch.compile(
            run, fullgraph=True, dynamic=False, backend=recording(graphs, compile_fx)
        )
        compiled = fn(x, CounterStream.initial_state(5))
    finally:
        torch.set_num_threads(threads)
    code = "".join(graphs)
    assert code.count("torch.mm(") == 6 and "bmm" not in code and " @ " not in code
    close = (eager - compiled).abs() <= 1e-5 * eager.abs().max()
    assert float(close.float().mean()) > 0.99  # a rounding tie may flip one ADC step
    assert float((eager - compiled).abs().max()) < eager.abs().max() / 100


def test_keyed_bound_management_keeps_what_the_eager_rounds_keep():
    """Without noise both algorithms are deterministic: the same outputs, bit for bit."""
    io = IOConfig(out_noise=0.0, inp_res=1 / 254, out_res=1 / 254, out_bound=4.0)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(max_input_size=16, max_output_size=8))
    layer, x = _saturating_case(cfg)
    tw = layer.tile_weights()
    gather = analog_mvm(x, tw, io, torch.Generator().manual_seed(0))
    keyed = analog_mvm(x, tw, io, CounterStream(CounterStream.initial_state(0)))
    unmanaged = analog_mvm(
        x, tw, io.replace(bound_management="none"), torch.Generator().manual_seed(0)
    )
    assert not torch.equal(gather, unmanaged)  # bound management did something
    assert torch.equal(gather, keyed)


def test_keyed_bound_management_runs_the_later_rounds():
    """Positive weights and inputs: every first-pass output saturates and some still do at
    ``r = 2``, so bound management needs a second round; the generator's rounds and the tensor
    stream's agree, with the rounds cut after one and not."""
    io = IOConfig(out_noise=0.0, inp_res=1 / 254, out_res=1 / 254, out_bound=4.0)
    cfg = AnalogConfig(io=io, mapping=MappingConfig(max_input_size=16, max_output_size=8))
    layer, x = _saturating_case(cfg)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.0, generator=torch.Generator().manual_seed(4))
    x = x.abs() + 1.0
    tw = layer.tile_weights()
    results = {}
    # eager torch.cond traces its branches with dynamo: keep the configs' floats constants
    torch._dynamo.config.specialize_float = True
    # r may never double / double once / double until nothing saturates (two rounds)
    for factor in (0.5, 1.0, 100.0):
        cut = io.replace(max_bm_factor=factor)
        gather = analog_mvm(x, tw, cut, torch.Generator().manual_seed(0))
        keyed = analog_mvm(x, tw, cut, CounterStream(CounterStream.initial_state(0)))
        assert torch.equal(gather, keyed), factor
        results[factor] = gather
    assert not torch.equal(results[1.0], results[100.0])  # the second round changed outputs
    unmanaged = analog_mvm(
        x, tw, io.replace(bound_management="none"), torch.Generator().manual_seed(0)
    )
    assert torch.equal(results[0.5], unmanaged)  # no round allowed: the first pass


def _rounds_over_every_pair(z, sat, x_t, s_div, w_sub, io, keys):
    """Reference: bound management recomputing every (input tile, vector, output tile) in each
    round with that round's ``KeyedStream`` and keeping the redone pairs (how the compiled
    forward worked before its rounds were gathered)."""
    nb, n, n_out = sat.shape
    rows, cols = w_sub.w.shape[2], w_sub.w.shape[1]
    in_unit = units(io)[0]
    r = torch.ones(sat.shape)
    for k in range(_bm_rounds(io)):
        redo = sat & _bm_allowed(r, io)
        if not redo.any():
            break
        g = KeyedStream(keys[k])
        r = torch.where(redo, r * 2, r)
        div = (s_div.unsqueeze(1) * r.transpose(1, 2).unsqueeze(-1)).mul(in_unit)
        xq = _dac_(
            (x_t.unsqueeze(1) * div.reciprocal()).reshape(nb * n_out, n, rows), io, in_unit, g
        )
        zs = torch.empty(nb * n_out, n, cols)
        sat_new = _mvm_adc(xq, w_sub, io, g, zs, 1)
        if sat_new is None:  # nothing saturated (eager calls say so with None)
            sat_new = torch.zeros(nb * n_out, n, 1, dtype=torch.bool)
        zs = zs.view(nb, n_out, n, cols).transpose(1, 2)
        z = torch.where(redo.unsqueeze(-1), zs, z.view(nb, n, n_out, cols)).reshape(z.shape)
        sat = redo & sat_new.view(nb, n_out, n).transpose(1, 2)
    return z, r


@pytest.mark.parametrize(
    "io",
    [
        aimc.presets.bert_squad(0.0175).io,  # pcm_read weight noise and output noise
        IOConfig(inp_sto_round=True, inp_noise=0.05, out_noise=0.1, out_bound=3.0),  # DAC draws
    ],
    ids=["bert_squad", "dac_noise"],
)
def test_gathered_rounds_draw_what_rounds_over_every_pair_draw(io):
    """With noise: the gathered rounds of a tensor-stream forward (only the redone pairs, their
    draws from ``RowStream``) equal rounds that recompute every pair, to float rounding."""
    gen = torch.Generator().manual_seed(6)
    nb, n, n_out, rows, cols = 3, 50, 2, 16, 8
    # mostly positive weights and inputs: many pairs still saturate at r = 2, some at r = 4
    w = torch.rand(nb * n_out, cols, rows, generator=gen) * 1.2 - 0.2
    w_sub = aimc.mvm.TileWeights(None, w, None, w.abs())
    x_t = torch.rand(nb, n, rows, generator=gen) * 1.5 - 0.1
    s_div = x_t.abs().amax(dim=-1, keepdim=True)
    z = torch.randn(nb, n, n_out * cols, generator=gen) * 200
    sat = torch.rand(nb, n, n_out, generator=gen) < 0.6
    keys = torch.stack(
        [KeyedStream(torch.tensor(11)).next_key() + i for i in range(_bm_rounds(io))]
    )
    want_z, want_r = _rounds_over_every_pair(z.clone(), sat, x_t, s_div, w_sub, io, keys)
    got_z = z.clone()
    got_r = _bound_management(got_z, sat, x_t, s_div, w_sub, io, keys)
    assert torch.equal(got_r, want_r) and bool((got_r > 2).any())  # several rounds ran
    step = 1.0  # outputs are in ADC steps: a rounding tie may flip one step
    assert float((got_z - want_z).abs().max()) <= step
    assert float((got_z == want_z).float().mean()) > 0.99


@pytest.mark.parametrize("name", ["pcm_inference", "bert_squad"])
def test_compiled_model_has_the_eager_statistics(name):
    """Output error (against the noise-free digital model) of the eager and compiled forwards
    of one programmed chip: the same mean and spread (each over 6,400 outputs)."""
    m, c = compiled_model(name)
    digital = aimc.to_digital(model(CONFIGS[name]))
    with torch.inference_mode():
        ref = digital(X)
        eager = (m(X) - ref).flatten()
        compiled = (c(X) - ref).flatten()
    assert stats.ttest_ind(eager, compiled, equal_var=False).pvalue > 1e-3
    assert stats.levene(eager, compiled).pvalue > 1e-3
    assert float(eager.std()) > 0  # noisy at all


def test_compiled_model_is_reproducible_from_its_seeds():
    """The compiled forward is a function of the chip's and the streams' seeds: reseeding gives
    the same numbers, the same chip programmed again from its seeds too (it equals a model built
    afresh from them, buffer for buffer), another seed other numbers."""
    m, c = compiled_model("pcm_inference")

    def chip(seed: int) -> None:
        aimc.program(m, seed=seed)
        aimc.drift(m, 3600.0, seed=seed)
        aimc.manual_seed(m, seed)

    with torch.inference_mode():
        aimc.manual_seed(m, 0)
        first = c(X)
        # reseeding and reprogramming (here under inference mode) do not compile again
        with torch._dynamo.config.patch(error_on_recompile=True):
            second = c(X)
            aimc.manual_seed(m, 0)
            again = c(X)
            chip(5)
            other = c(X)
            chip(0)
            state = copy.deepcopy(m.state_dict())
            rebuilt = c(X)
    assert not torch.equal(first, second)  # fresh noise every call
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(first, rebuilt)
    fresh = model(CONFIGS["pcm_inference"], seed=0)
    aimc.manual_seed(fresh, 0)
    fresh_state = fresh.state_dict()
    assert state.keys() == fresh_state.keys()
    for key, value in state.items():
        same = torch.equal if isinstance(value, torch.Tensor) else operator.eq
        assert same(value, fresh_state[key]), key


def test_compiled_model_follows_a_new_drift():
    """Drifting again after compiling: the compiled model reads the new chip (perfect IO, so
    the eager and compiled outputs are deterministic and equal)."""
    cfg = aimc.presets.pcm_weights_only()
    m = model(cfg)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    c = aimc.compile(m)
    with torch.inference_mode():
        assert torch.allclose(c(x), m(x), atol=1e-6)
        before = c(x)
        aimc.drift(m, 3.0e7, seed=9)
        after = c(x)
        assert torch.allclose(after, m(x), atol=1e-6)
    assert not torch.allclose(before, after)


def test_many_configs_in_one_process_stay_compiled():
    """Each config is a graph of its own, and dynamo counts all of a function's graphs against
    its recompile limit (dead models' too): past it, a model runs eagerly without an error.
    ``aimc.compile`` raises the limit; here from 1, where the second config would hit it
    (the tests make a hit an error: conftest)."""
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    with torch._dynamo.config.patch(recompile_limit=1):
        for i in range(3):  # no noise, no bound management: quick to compile
            io = IOConfig(out_noise=0.0, bound_management="none", out_res=1 / (250 + i))
            m = model(aimc.presets.pcm_weights_only().replace(io=io))
            with torch.inference_mode():
                assert torch.allclose(aimc.compile(m)(x), m(x), atol=1e-5), i
            assert torch._dynamo.config.recompile_limit == aimc.compiled.RECOMPILE_LIMIT


@pytest.mark.parametrize("large", [False, True], ids=["compiled-through", "eager-op"])
def test_compile_layers_compiles_one_graph_per_layer_shape(large, monkeypatch):
    """``compile_layers``: each analog layer compiled on its own, in place; layers of one shape
    and config share a graph (three layers, two shapes: two graphs), the rest stays eager, and
    the outputs are the eager ones (no noise: deterministic up to float rounding, which may
    move an ADC rounding). Sizes above 256, which Python does not intern: each layer's sizes
    are int objects of their own, so a guard on an int's identity would compile every layer
    anew (the large layers' eager op once did: ``dataclasses.astuple`` deep-copies)."""
    if large:  # every layer runs the eager forward as one op inside its graph
        monkeypatch.setattr(aimc.mvm, "EAGER_MIN_BYTES", 0)
    io = IOConfig(out_noise=0.0, bound_management="none")  # quick to compile
    torch.manual_seed(0)
    n = 300
    m = torch.nn.Sequential(
        torch.nn.Linear(n, n), torch.nn.ReLU(), torch.nn.Linear(n, n), torch.nn.Linear(n, 8)
    )
    aimc.convert(m, aimc.presets.pcm_weights_only().replace(io=io), seed=0).eval()
    aimc.program(m, seed=0)
    with torch.inference_mode():  # every layer's input an inference tensor (dynamo guards on it)
        x = torch.randn(50, n, generator=torch.Generator().manual_seed(1))
        want = m(x)
    graphs: list[str] = []
    assert aimc.compile_layers(m, fullgraph=True, backend=recording(graphs, compile_fx)) is m
    with torch.inference_mode():
        got = m(x)
    assert len(graphs) == 2 and all("relu" not in g for g in graphs)
    assert all(("eager_mvm" in g) == large for g in graphs)
    close = (got - want).abs() <= 1e-5 * want.abs().max()
    assert float(close.float().mean()) > 0.99
    m.train()
    with pytest.raises(ValueError, match="training mode"):
        aimc.compile_layers(m)


def test_compile_layers_raises_the_recompile_limit_per_distinct_layer(monkeypatch):
    """All analog layers of a class share dynamo's recompile limit: each ``compile_layers`` call
    adds two graphs per distinct layer (shape, config) to it, so that config after config
    compiled in one process stays compiled (nothing is compiled here: no forward runs)."""
    monkeypatch.setattr(aimc.compiled, "_layer_graphs", 0)
    # dynamo's own patch: pytest's monkeypatch would hide the setting when it undoes
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        for i, cfg in enumerate((aimc.presets.pcm_inference(), aimc.presets.bert_squad(0.02))):
            m = torch.nn.Sequential(torch.nn.Linear(12, 12), torch.nn.Linear(12, 12))
            m.append(torch.nn.Linear(12, 4))
            aimc.convert(m, cfg, seed=0).eval()
            aimc.program(m, seed=0)
            aimc.compile_layers(m)  # two distinct layers: 12 -> 12 (twice) and 12 -> 4
            limit = aimc.compiled.RECOMPILE_LIMIT + 4 * (i + 1)
            assert torch._dynamo.config.recompile_limit == limit
            assert torch._dynamo.config.accumulated_recompile_limit >= 4 * limit


def test_compile_refuses_lean_chips_and_training_mode():
    m = torch.nn.Sequential(torch.nn.Linear(8, 4))
    aimc.convert(m, aimc.presets.pcm_inference()).eval()
    aimc.program(m, seed=0, storage="lean")
    with pytest.raises(RuntimeError, match="lean chip"):
        aimc.prepare_compile(m)
    m.train()
    with pytest.raises(ValueError, match="training mode"):
        aimc.compile(m)


def test_tile_weights_of_a_compiled_layer_without_device_follow_weight_changes():
    """No device model: the compiled forward lays out the tiles from the current weights (no
    cache that an in-place weight update could leave stale)."""
    cfg = aimc.presets.ideal().replace(mapping=MappingConfig(max_input_size=16, max_output_size=8))
    m = model(cfg)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    c = aimc.compile(m)
    with torch.inference_mode():
        c(x)
        m[0].weight.mul_(2.0)
        assert torch.allclose(c(x), m(x), atol=1e-5)


@pytest.mark.parametrize("name", ["bert_squad", "standard_hwa"])
def test_compiled_model_trains_with_eager_analog_layers(name):
    """``torch.compile`` of a model in training mode: the analog MVM (an autograd node) runs
    eagerly, so outputs and straight-through gradients equal the eager model's, draw for draw
    (the same seeds, the same generators)."""
    preset = getattr(aimc.presets, name)
    cfg = small_tiles(preset(0.0175) if name == "bert_squad" else preset())
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
        models.append(aimc.convert(m, cfg, seed=3).train())
    eager, compiled = models[0], torch.compile(models[1])
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(5)) * 4
    for step in range(2):  # the second step reuses the compiled graphs
        y_e, y_c = eager(x), compiled(x)
        assert torch.allclose(y_e, y_c, rtol=0, atol=1e-5), step
        y_e.square().sum().backward()
        y_c.square().sum().backward()
        for (n, p_e), p_c in zip(eager.named_parameters(), models[1].parameters(), strict=True):
            assert p_e.grad is not None and torch.allclose(p_e.grad, p_c.grad, atol=1e-4), n
