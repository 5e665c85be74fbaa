"""Randomized, deterministic differential tests of the HWA *training* path against AIHWKIT 1.2.0
(2026-12-07).

``tests/test_conformance_hwa_training.py`` compares aimc's training forward and
backward with AIHWKIT's for a handful of hand-picked layers; this file draws 200 layers at
random from a fixed seed (the same ones every run, ``SEED``) and compares, value for value,
an AIHWKIT ``AnalogLinear`` (``InferenceRPUConfig``, every knob set explicitly through
``conformance.cases_periphery._rpu``) with an aimc ``AnalogLinear`` of the same weights:

* the training-mode forward ``y``;
* after ``(y * grad_y).sum().backward()``: the gradients of the input, the bias, the weights
  (aimc's against AIHWKIT's tile-weight gradient times ``m_AIHWKIT / m_aimc`` per column, the
  factor that makes an SGD step move the effective weights alike: aimc's weight is AIHWKIT's
  tile weight times that ratio), every tile's learned output scales and the learned range;
* after an SGD step (AIHWKIT: ``AnalogSGD``, whose step runs every tile's
  ``post_update_step``: clip, then remap; aimc: ``torch.optim.SGD`` and ``aimc.post_step``):
  the effective weights (stored weights times all output scales), the learned output scales,
  the bias, the input range and, once a remap has normalised both, the stored weights, the
  mapping scales and their product with the learned ones (AIHWKIT's ``get_scales()``); then
  the next step's forward and backward, and a last forward after the last step.

**Deterministic configurations only**: output, weight and input noise are 0 on both sides and
there is no weight modifier, so a single draw of each simulator is comparable value for value.
The DAC and ADC (resolutions of 30 to 256 steps or off, ADC bounds 3 to 20 or off), noise
management (none, abs-max with and without a cap, constant 0.5 / 1 / 2), bound management (none,
iterative) and perfect IO are drawn.

The space (``draw_config``): 3 to 40 inputs, 1 to 16 outputs, 1 to 4 input tiles of at least 2
rows (uneven splits, e.g. 25 inputs at 7 per tile = 7 + 6 + 6 + 6 in AIHWKIT's split; tiles of
one row are left to ``test_adc_level_at_an_exact_half_step``), output splits, batch sizes 1, 2,
5 and 16; bias none / digital / an analog bias row (where the layer fits one tile); weight
scaling off / per tile / per column with omega 1 or 0.5; learned output scales none / per tile /
per column, starting at 1 or at random values; HWA clipping none / fixed (1, 0.5, 0.1) /
layer-gaussian (1.5, 2.5 sigma) and remapping none / layerwise / columnwise; the learned input
range (none; a fixed value; initialised from the first batch), with its decay, relative
gradient or not, gradient scale and min-inside fraction; the output-bound mask ``aihwkit``
(AIHWKIT's ``handle_output_bound``), ``none`` (AIHWKIT's tiles with ``handle_output_bound``
off) and ``saturated`` where AIHWKIT has a counterpart (its rule where the tile's units are the
ADC's -- no noise management scale, no bound management -- and no mask with perfect IO);
0 to 2 SGD steps at lr 0.05 or 0.2 on every parameter.

**Known, documented difference avoided** (docs/conformance.md, "Differences from AIHWKIT"):
AIHWKIT learns one input range per *tile* (per tile module: input *and* output tiles), aimc one
per layer. A learned range is therefore either on a layer of one tile (then everything is
compared, initialisation from data included), or, on several tiles, set explicitly to the same
value on every tile and past its initialisation from data (``input_range_update_idx`` /
``input_range_batches`` at 10,000), every tile fed inputs of the same distribution (i.i.d.), and
the range left out of both optimizers (AIHWKIT's per-tile ranges would move apart). Its gradient
is compared there as the sum of AIHWKIT's per-tile gradients (the gradient of one range shared
by all tiles) when the outputs are not split, with the range's decay 0 on both sides (AIHWKIT's
decay term is per tile); with an output split each tile module's range gradient takes only its
outputs' share of the input gradient through a clamp, which does not add up: not compared.

**Tolerance**: float32 rounding. Both sides compute the same float32 products in another
order (aimc's tiles, batched matmuls and fused kernels; AIHWKIT's C++ GEMV per tile), so values
agree to a few ulp of the largest magnitude involved: ``rtol = 1e-4`` plus ``atol = 1e-5`` times
the largest |value| of the compared tensor (for the output scales' gradient, a sum over the
batch that may cancel, times the sum of its terms' magnitudes). A quantized value (a DAC or ADC
level, a bound-management round, the output-bound mask) decided differently by that rounding
would be off by a whole step (1/256 to 1/15 of the bound), far outside the tolerance; the
draws are continuous, so such a tie has a probability of ~1e-6 per value (none was seen in
several thousand configurations with the findings below steered clear of: ``main --avoid``).

**Findings** (the named tests after the random one, each a minimal reproduction; letters as in
:func:`known_causes`, which every failing random configuration lists). Fixed on 2026-12-07, the
tests pin AIHWKIT's behaviour: A the weight gradient lacked the learned output scale; B a
negative mapping scale zeroed the weight gradient; C1 the first clip acted on the unnormalised
weight instead of AIHWKIT's set_weights-normalised tile weights; G the exact-layer shortcut
skipped the output-bound mask; H (edge) a layer-gaussian clip of a one-weight tile zeroed it.
Not followed yet (strict xfails, docs/conformance.md, and steered clear of in the random space:
:data:`AVOID`): C2-C3 AIHWKIT's weight scaling stays a fixed mapping scale from ``set_weights``
until a remap (tile weights normalised once), aimc's is recomputed every forward (a layerwise
remap of column-wise scaled weights, the forward after a step without remap, a remap with
omega != 1 differ); E a learned range replaces noise management, where AIHWKIT applies it to
``x / r``; I an ADC level at an exact half step (float32 order of operations: tiles of one row,
or weights of exactly +-clip after a fixed clip). ``python
tests/test_conformance_training_random.py --n 300 --avoid ""`` runs the space without steering
clear of any (``--avoid C,E,I`` is the test's).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch

import aimc

pytest.importorskip("aihwkit.simulator.rpu_base")

from conformance.cases_periphery import IO_BASE, MAPPING_BASE, _aimc, _rpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("at_most_two_threads")

RTOL = 1e-4
ATOL_REL = 1e-5

# -- the random space ------------------------------------------------------------------------------


def _max_input_size(rng: random.Random, k: int) -> int:
    """``max_input_size`` giving 1 to 4 input tiles of at least 2 rows each (uneven where the
    parts do not divide ``k``; a 1-row tile makes exact ADC ties common, see
    ``test_adc_level_at_an_exact_half_step``)."""
    p = rng.choice([p for p in (1, 1, 2, 2, 3, 4) if k >= 2 * p])
    if p == 1:
        return rng.choice([0, k, k + 3])
    return math.ceil(k / p)


def draw_config(rng: random.Random) -> dict[str, Any]:
    """One random deterministic training configuration (a plain dict; :func:`build` makes the
    two layers of it)."""
    k = rng.choice([3, 7, 12, 13, 16, 25, 40])
    o = rng.choice([1, 2, 5, 9, 16])
    max_in = _max_input_size(rng, k)
    max_out = rng.choice([0, 0, o, math.ceil(o / 2), max(1, o // 3)])
    n_in = 1 if max_in == 0 else math.ceil(k / max_in)
    n_out = 1 if max_out == 0 else math.ceil(o / max_out)
    # AIHWKIT's rule (RPUConfig.get_default_tile_module_class; aimc's analog_bias()): one tile
    # module, which may hold an analog bias row, only without any split or when both fit
    single_tile = (max_in == 0 and max_out == 0) or (max_in >= k and max_out >= o)
    c: dict[str, Any] = {"k": k, "o": o, "n": rng.choice([1, 2, 5, 16])}
    c["seed"] = rng.randrange(1 << 30)
    c["max_input_size"], c["max_output_size"] = max_in, max_out
    c["n_in"], c["n_out"] = n_in, n_out
    c["bias"] = rng.random() < 0.6
    c["digital_bias"] = not (c["bias"] and single_tile and rng.random() < 0.3)
    # (aimc refuses a learned range with an analog bias row: a ValueError, not compared)
    learn = rng.random() < 0.6 and c["digital_bias"]
    c["w_std"] = rng.choice([0.1, 0.3, 1.0])
    c["x_scale"] = rng.choice([0.3, 1.0, 3.0])

    # periphery: no noise anywhere; converters, bounds, noise and bound management drawn
    perfect = rng.random() < 0.3
    io: dict[str, Any] = {"is_perfect": perfect, "out_noise": 0.0}
    if not perfect:
        nm = rng.choice(["none", "abs_max", "constant"])
        io["noise_management"] = nm
        io["nm_thres"] = {
            "abs_max": rng.choice([0.0, 0.0, 2.0]),
            "constant": rng.choice([1.0, 0.5, 2.0]),
        }.get(nm, 0.0)
        io["bound_management"] = rng.choice(["none", "iterative"])
        io["inp_res"] = rng.choice([1 / 126, 1 / 254, 254.0, 256.0, 1 / 30, 0.0])
        io["out_res"] = rng.choice([1 / 510, 1 / 254, 254.0, 256.0, 1 / 60, 0.0])
        io["out_bound"] = rng.choice([10.0, 12.0, 3.0, 20.0, 0.0])
        io["inp_bound"] = 1.0  # (AIHWKIT refuses another bound with noise management)
    c["io"] = io

    mapping: dict[str, Any] = {
        "max_input_size": max_in,
        "max_output_size": max_out,
        "digital_bias": c["digital_bias"],
        "weight_scaling_omega": rng.choice([0.0, 1.0, 1.0, 0.5]),
        "weight_scaling_columnwise": rng.random() < 0.6,
        "learn_out_scaling": rng.random() < 0.7,
        "out_scaling_columnwise": rng.random() < 0.6,
    }
    c["mapping"] = mapping

    hwa: dict[str, Any] = {}
    clip = rng.choice(["none", "none", "fixed", "layer_gaussian"])
    hwa["clip"] = clip
    if clip == "fixed":
        hwa["clip_value"] = rng.choice([1.0, 0.5, 0.1])
    if clip == "layer_gaussian":
        hwa["clip_sigma"] = rng.choice([1.5, 2.5])
    remap = "none"  # (aimc: a remap needs learned output scales, columnwise ones per column)
    if mapping["learn_out_scaling"]:
        choices = ["none", "layerwise"]
        if mapping["out_scaling_columnwise"]:
            choices.append("columnwise")
        remap = rng.choice(choices)
    hwa["remap"] = remap
    hwa["learn_input_range"] = learn
    c["range"] = None
    c["range_init"] = False
    if learn:
        hwa["input_range_gradient_relative"] = rng.random() < 0.8
        hwa["input_range_gradient_scale"] = rng.choice([1.0, 1.0, 0.5])
        hwa["input_range_min_inside"] = rng.choice([0.95, 0.95, 0.5])
        if n_in == 1 and n_out == 1:  # one tile: everything as AIHWKIT, from data included
            hwa["input_range_decay"] = rng.choice([0.001, 0.001, 0.0, 0.05])
            c["range_init"] = rng.random() < 0.5
        else:  # several tiles: the documented per-tile difference avoided (module docstring)
            hwa["input_range_decay"] = 0.0
        if not c["range_init"]:
            c["range"] = rng.choice([0.5, 1.0, 2.0, 3.0]) * c["x_scale"]
    # the output-bound mask: AIHWKIT's rule mostly; the opt-outs where AIHWKIT has a counterpart
    # ('none': tiles with handle_output_bound off; 'saturated': AIHWKIT's rule where the tile's
    # units are the ADC's -- no noise management scale, no bound management -- and no mask with
    # perfect IO)
    modes = ["aihwkit", "aihwkit", "none"]
    nm_unit = io.get("noise_management") == "none" or (
        io.get("noise_management") == "constant" and io.get("nm_thres") == 1.0
    )
    if perfect or (io.get("bound_management") == "none" and nm_unit):
        modes.append("saturated")
    hwa["output_bound_mask"] = rng.choice(modes)
    c["hwa"] = hwa
    c["random_alpha"] = mapping["learn_out_scaling"] and rng.random() < 0.35
    c["steps"] = rng.choice([0, 1, 1, 2])
    c["lr"] = rng.choice([0.05, 0.2])
    _avoid(c)
    return c


def draw_configs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [draw_config(rng) for _ in range(n)]


def known_causes(c: dict[str, Any]) -> list[str]:
    """The differences this review found (the named tests below the random one) that *can* show
    in configuration ``c`` (necessary conditions only: whether one does depends on the values;
    letters as in the report)."""
    m, h, io = c["mapping"], c["hwa"], c["io"]
    perfect = io["is_perfect"]
    steps = c["steps"]
    omega = m["weight_scaling_omega"]
    out = []
    if m["learn_out_scaling"] and (c["random_alpha"] or (steps and h["remap"] == "none")):
        out.append("A: weight gradient without the learned output scale")
    if m["learn_out_scaling"] and h["remap"] != "none" and steps:
        out.append("B: weight gradient 0 under a negative mapping scale")
    if h["clip"] != "none" and omega > 0 and steps:
        out.append("C1: clip of the unnormalised weights before the first remap")
    if h["remap"] == "layerwise" and omega > 0 and m["weight_scaling_columnwise"] and steps:
        out.append("C2: layerwise remap loses the columnwise weight scaling")
    ws_seen = not perfect or h["output_bound_mask"] == "aihwkit"
    if omega > 0 and steps and ws_seen and (h["remap"] == "none" or omega != 1):
        out.append("C3: tile normalisation recomputed every forward")
    nm = io.get("noise_management")
    if (
        h["learn_input_range"]
        and not perfect
        and (nm == "abs_max" or (nm == "constant" and io.get("nm_thres") not in (0.0, 1.0)))
    ):
        out.append("E: learned range drops noise management")
    if (
        perfect
        and not m["learn_out_scaling"]
        and not h["learn_input_range"]
        and (h["output_bound_mask"] == "aihwkit")
    ):
        out.append("G: exact layer without the output-bound mask")
    quantized = not perfect and io["inp_res"] != 0 and io["out_res"] != 0 and io["out_bound"] > 0
    if quantized and h["clip"] == "fixed" and h["remap"] != "none" and steps:
        # the clipped weights are all +-1 after the remap: sums of DAC levels times +-1 fall on
        # exact half ADC steps
        out.append("I: ADC level at an exact half step (weights of exactly +-1)")
    return out


#: root causes to steer clear of, by the letters of :func:`known_causes`: the differences not
#: followed yet (C2-C3, I: docs/conformance.md, each pinned by its strict xfail below);
#: ``main(--avoid ...)`` explores with another set (``--avoid ""``: none)
AVOID: set[str] = {"C", "I"}


def _avoid(c: dict[str, Any]) -> None:
    m, h, io = c["mapping"], c["hwa"], c["io"]
    if "B" in AVOID:
        c["lr"] = 0.01  # (fewer output scales pushed through 0; not all)
    if "C" in AVOID:  # (C2-C3: one root cause; C1 is followed since 2026-12-07)
        m["weight_scaling_omega"] = 0.0
    if "E" in AVOID and h["learn_input_range"] and not io["is_perfect"]:
        io["noise_management"] = "none"
    if "I" in AVOID and h["clip"] == "fixed":  # (clipped weights at exactly +-clip_value)
        h["clip"] = "layer_gaussian"
        h["clip_sigma"] = 2.5
    if "G" in AVOID and io["is_perfect"] and h["output_bound_mask"] == "aihwkit":
        h["output_bound_mask"] = "none"
    if "A" in AVOID:
        c["random_alpha"] = False
        if m["learn_out_scaling"] and h["remap"] == "none":
            c["steps"] = 0


def describe(c: dict[str, Any]) -> str:
    io = c["io"]
    if io["is_perfect"]:
        p = "perfect"
    else:
        p = (
            f"nm={io['noise_management']}({io['nm_thres']}) bm={io['bound_management']} "
            f"inp_res={io['inp_res']:.4g} out_res={io['out_res']:.4g} out_bound={io['out_bound']}"
        )
    m = c["mapping"]
    h = c["hwa"]
    r = "no range"
    if h["learn_input_range"]:
        r = "range=" + ("init" if c["range_init"] else f"{c['range']:.3g}")
        r += (
            f" decay={h['input_range_decay']} rel={h['input_range_gradient_relative']}"
            f" scale={h['input_range_gradient_scale']} inside={h['input_range_min_inside']}"
        )
    return (
        f"{c['o']}x{c['k']} n={c['n']} tiles(in {m['max_input_size']}, out "
        f"{m['max_output_size']}) bias={c['bias']}{'' if c['digital_bias'] else '(analog)'} "
        f"x*{c['x_scale']} w*{c['w_std']} | {p} | omega={m['weight_scaling_omega']}"
        f"{'/col' if m['weight_scaling_columnwise'] else ''} learn_out={m['learn_out_scaling']}"
        f"{'/col' if m['out_scaling_columnwise'] else ''} "
        f"alpha={'rand' if c['random_alpha'] else 1}"
        f" | clip={h['clip']}{h.get('clip_value', h.get('clip_sigma', ''))} remap={h['remap']} "
        f"{r} mask={h['output_bound_mask']} | steps={c['steps']} lr={c['lr']}"
    )


# -- building the two layers -----------------------------------------------------------------------


def build(c: dict[str, Any]):
    """(AIHWKIT layer, aimc layer) with the same weights, bias and (learned) scales."""
    from aihwkit.nn import AnalogLinear as RpuLinear
    from aihwkit.simulator.parameters.enums import WeightClipType, WeightRemapType
    from aihwkit.simulator.parameters.inference import WeightClipParameter, WeightRemapParameter

    g = torch.Generator().manual_seed(c["seed"])
    k, o = c["k"], c["o"]
    w = torch.randn(o, k, generator=g) * c["w_std"]
    b = torch.randn(o, generator=g) * 0.3 if c["bias"] else None

    io = {**IO_BASE, **c["io"]}
    io["inp_noise"] = 0.0
    io["w_noise"] = 0.0
    io["w_noise_type"] = "none"
    mapping = {**MAPPING_BASE, **c["mapping"]}
    h = c["hwa"]
    hd = aimc.HWAConfig(**h)  # aimc's values, its defaults where c leaves a knob out

    # AIHWKIT
    rpu = _rpu(io, mapping)
    clip_types = {
        "none": WeightClipType.NONE,
        "fixed": WeightClipType.FIXED_VALUE,
        "layer_gaussian": WeightClipType.LAYER_GAUSSIAN,
    }
    rpu.clip = WeightClipParameter(type=clip_types[hd.clip.value])
    if hd.clip.value == "fixed":
        rpu.clip.fixed_value = hd.clip_value
    if hd.clip.value == "layer_gaussian":
        rpu.clip.sigma = hd.clip_sigma
        rpu.clip.fixed_value = -1.0  # no cap (aimc has none)
    remap_types = {
        "none": WeightRemapType.NONE,
        "layerwise": WeightRemapType.LAYERWISE_SYMMETRIC,
        "columnwise": WeightRemapType.CHANNELWISE_SYMMETRIC,
    }
    rpu.remap = WeightRemapParameter(type=remap_types[hd.remap.value], remapped_wmax=1.0)
    ir = rpu.pre_post.input_range
    ir.enable = hd.learn_input_range
    if ir.enable:
        ir.learn_input_range = True
        ir.init_value = 3.0  # (aimc's initial range)
        ir.init_from_data = hd.input_range_init_batches
        ir.init_std_alpha = hd.input_range_init_std
        ir.decay = hd.input_range_decay
        ir.input_min_percentage = hd.input_range_min_inside
        ir.gradient_relative = hd.input_range_gradient_relative
        ir.gradient_scale = hd.input_range_gradient_scale
        ir.manage_output_clipping = False
    ref = RpuLinear(k, o, bias=b is not None, rpu_config=rpu)
    ref.set_weights(w, b)
    mask = hd.output_bound_mask.value
    if mask == "none" or (mask == "saturated" and c["io"]["is_perfect"]):
        for tile in ref.analog_tiles():
            tile.handle_output_bound = False

    # aimc
    cfg = _aimc(io, mapping).replace(hwa=hd)
    lin = torch.nn.Linear(k, o, bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    ours = aimc.nn.AnalogLinear.from_digital(lin, cfg, seed=0)

    # the learned range: a fixed value (past the initialisation) or initialised from data
    if hd.learn_input_range and not c["range_init"]:
        for tile in ref.analog_tiles():
            tile.input_range.data[:] = c["range"]
            tile.input_range_update_idx.data[:] = 10_000
        with torch.no_grad():
            ours.input_range.fill_(c["range"])
            ours.input_range_batches.fill_(10_000)

    # random learned output scales, the same per tile on both sides
    if c["random_alpha"]:
        with torch.no_grad():
            for i, j, _, cols, tile in ref_tiles(ref):
                a = 0.5 + torch.rand(tile.out_scaling_alpha.shape, generator=g)
                tile.out_scaling_alpha.data.copy_(a)
                if c["mapping"]["out_scaling_columnwise"]:
                    ours.out_scale[0, i, cols] = a
                else:
                    ours.out_scale[0, i, j] = a[0]
    return ref, ours


def ref_tiles(ref):
    """``(i, j, input slice, output slice, tile)`` of every AIHWKIT tile module of ``ref``."""
    mod = ref.analog_module
    if not hasattr(mod, "array"):
        return [(0, 0, slice(0, mod.in_size), slice(0, mod.out_size), mod)]
    out = []
    r0 = 0
    for i, (rows, row_tiles) in enumerate(zip(mod.in_sizes, mod.array, strict=True)):
        c0 = 0
        for j, (cols, tile) in enumerate(zip(mod.out_sizes, row_tiles, strict=True)):
            out.append((i, j, slice(r0, r0 + rows), slice(c0, c0 + cols), tile))
            c0 += cols
        r0 += rows
    return out


def ref_bias(ref):
    mod = ref.analog_module
    if getattr(mod, "bias", None) is not None and isinstance(mod.bias, torch.nn.Parameter):
        return mod.bias
    return None


def _ones(n):
    return torch.ones(n)


def ref_scales(tile, o_t: int):
    """AIHWKIT tile's (mapping, learned, total) scales per tile column ``(o_t,)``."""
    m = tile.get_mapping_scales()
    m = _ones(o_t) if m is None else m.detach().flatten().expand(o_t) * 1.0
    a = tile.out_scaling_alpha
    a = _ones(o_t) if a is None else a.detach().flatten().expand(o_t) * 1.0
    return m, a, m * a


def ours_scales(ours, i: int, j: int, cols: slice, o_t: int):
    """aimc's (mapping, learned, total) scales of tile (i, j) per tile column ``(o_t,)``."""
    if ours.out_scale is None:
        return _ones(o_t), _ones(o_t), _ones(o_t)
    col = ours.analog_config.mapping.out_scaling_columnwise

    def pick(t):
        t = t.detach().float()
        return t[0, i, cols].clone() if col else t[0, i, j].expand(o_t).clone()

    m, a = pick(ours.mapping_scale), pick(ours.out_scale)
    return m, a, m * a


def ours_scale_grad(ours, i: int, j: int, cols: slice):
    g = ours.out_scale.grad
    if ours.analog_config.mapping.out_scaling_columnwise:
        return g[0, i, cols]
    return g[0, i, j].view(1)


# -- comparisons -----------------------------------------------------------------------------------


def close(got, want, what: str, problems: list[str], scale: float | None = None) -> None:
    got = got.detach().double()
    want = want.detach().double()
    if got.shape != want.shape:
        problems.append(f"{what}: shapes aimc {tuple(got.shape)} vs AIHWKIT {tuple(want.shape)}")
        return
    if want.numel() == 0:
        return
    ref_scale = float(want.abs().max()) if scale is None else scale
    tol = RTOL * want.abs() + ATOL_REL * max(ref_scale, 1e-6)
    diff = (got - want).abs()
    bad = ~(diff <= tol)
    if bool(bad.any()):
        idx = int(bad.flatten().nonzero()[0])
        problems.append(
            f"{what}: {int(bad.sum())}/{bad.numel()} off, max |diff| {float(diff.max()):.4g} "
            f"(largest |value| {ref_scale:.4g}); first at flat index {idx}: aimc "
            f"{float(got.flatten()[idx]):.6g}, AIHWKIT {float(want.flatten()[idx]):.6g}"
        )


def compare_state(ref, ours, c, problems: list[str], tag: str, remapped: bool) -> None:
    """Effective weights, scales, range (and stored weights once remapped)."""
    w_a = ours.weight.detach()
    for i, j, rows, cols, tile in ref_tiles(ref):
        o_t = cols.stop - cols.start
        wt, bt = tile.get_weights(apply_weight_scaling=False)
        m_r, a_r, s_r = ref_scales(tile, o_t)
        m_o, a_o, s_o = ours_scales(ours, i, j, cols, o_t)
        where = f"{tag} tile ({i},{j})"
        close(a_o, a_r, f"{where} learned output scale", problems)
        if not c["digital_bias"]:
            wt = wt[:, : rows.stop - rows.start]
        eff_r = wt * s_r.view(-1, 1)
        eff_o = w_a[cols, rows] * s_o.view(-1, 1)
        close(eff_o, eff_r, f"{where} effective weights", problems)
        if remapped:
            close(w_a[cols, rows], wt, f"{where} stored weights (after remap)", problems)
            close(m_o, m_r, f"{where} mapping scale (after remap)", problems)
            close(s_o, s_r, f"{where} output scale, mapping x learned (after remap)", problems)
    if not c["digital_bias"] and c["bias"]:  # the analog bias row of the one tile
        (_, _, _, _, tile) = ref_tiles(ref)[0]
        _, b_eff = tile.get_weights(apply_weight_scaling=True)
        _, _, s_o = ours_scales(ours, 0, 0, slice(0, c["o"]), c["o"])
        close(ours.bias.detach() * s_o, b_eff, f"{tag} analog bias (effective)", problems)
    elif c["bias"]:
        close(ours.bias.detach(), ref_bias(ref).detach(), f"{tag} bias", problems)
    if c["hwa"]["learn_input_range"]:
        for *_, tile in ref_tiles(ref):  # (all equal: one tile, or not stepped)
            close(
                ours.input_range.detach().flatten(),
                tile.input_range.detach().flatten(),
                f"{tag} input range",
                problems,
            )


def compare_grads(ref, ours, c, problems: list[str], tag: str, x, grad_y) -> None:
    k_total = 0
    range_sum = torch.zeros(1, dtype=torch.float64)
    gw_a = ours.weight.grad
    for i, j, rows, cols, tile in ref_tiles(ref):
        o_t = cols.stop - cols.start
        where = f"{tag} tile ({i},{j})"
        g_t = tile.shared_weights.grad
        m_r, _, _ = ref_scales(tile, o_t)
        m_o, _, _ = ours_scales(ours, i, j, cols, o_t)
        nk = rows.stop - rows.start
        # the same effective SGD update: aimc's weight is AIHWKIT's tile weight times
        # m_AIHWKIT / m_aimc per column, so its gradient must be AIHWKIT's times that ratio
        want = g_t[:, :nk] * (m_r / m_o).view(-1, 1)
        close(gw_a[cols, rows], want, f"{where} weight gradient (x m_ref/m_ours)", problems)
        if c["bias"] and not c["digital_bias"]:  # the analog bias row: the tile's last input
            want_b = g_t[:, nk] * (m_r / m_o)
            close(
                ours.bias.grad, want_b, f"{where} analog bias gradient (x m_ref/m_ours)", problems
            )
        if tile.out_scaling_alpha is not None:
            # a sum over the batch of grad_y * z (z the tile's output): rounding relative to
            # the sum of its terms' magnitudes, not to the (possibly cancelling) sum
            wt, _ = tile.get_weights(apply_weight_scaling=True)
            z_mag = x[:, rows].abs() @ wt[:, :nk].abs().T  # (N, o_t), |z| up to rounding
            terms = float((grad_y[:, cols].abs() * z_mag).sum(0).max())
            close(
                ours_scale_grad(ours, i, j, cols),
                tile.out_scaling_alpha.grad.flatten(),
                f"{where} learned output scale gradient",
                problems,
                scale=max(terms, float(tile.out_scaling_alpha.grad.abs().max())),
            )
        if tile.input_range is not None:
            range_sum += tile.input_range.grad.double().flatten()
        k_total += nk
    if c["bias"] and c["digital_bias"]:
        close(ours.bias.grad, ref_bias(ref).grad, f"{tag} bias gradient", problems)
    # one range per tile module in AIHWKIT: with several input tiles (and no output split) the
    # range's gradient is linear in the input gradient's entries, so one range shared by the
    # tiles has the sum of theirs; with an output split every tile module's gradient takes only
    # its outputs' share of the input gradient through the range's clamp(min/max, 0), which is
    # not additive: the documented per-tile difference, not compared
    if c["hwa"]["learn_input_range"] and c["n_out"] == 1:
        close(
            ours.input_range.grad.flatten(),
            range_sum,
            f"{tag} input range gradient "
            f"({'sum over input tiles' if c['n_in'] > 1 else 'one tile'})",
            problems,
        )


def run_config(c: dict[str, Any]) -> list[str]:
    from aihwkit.optim import AnalogSGD

    ref, ours = build(c)
    problems: list[str] = []
    g = torch.Generator().manual_seed(c["seed"] + 1)
    multi_range = c["hwa"]["learn_input_range"] and c["n_in"] * c["n_out"] > 1
    ref_params = [
        p
        for n, p in ref.named_parameters()
        if not n.endswith("input_range_update_idx")
        and not (multi_range and n.endswith("input_range"))
    ]
    ours_params = [
        p for n, p in ours.named_parameters() if not (multi_range and n == "input_range")
    ]
    opt_ref = AnalogSGD(ref_params, lr=c["lr"])
    opt_ours = torch.optim.SGD(ours_params, lr=c["lr"])
    ref.train()
    ours.train()
    remapped = False
    compare_state(ref, ours, c, problems, "start", remapped)
    for step in range(c["steps"] + 1):
        tag = f"step {step}"
        x = torch.randn(c["n"], c["k"], generator=g) * c["x_scale"]
        grad_y = torch.randn(c["n"], c["o"], generator=g)
        opt_ref.zero_grad()
        opt_ours.zero_grad()
        xr = x.clone().requires_grad_(True)
        xa = x.clone().requires_grad_(True)
        y_ref = ref(xr)
        y_ours = ours(xa)
        close(y_ours, y_ref, f"{tag} forward", problems)
        (y_ref * grad_y).sum().backward()
        (y_ours * grad_y).sum().backward()
        close(xa.grad, xr.grad, f"{tag} input gradient", problems)
        compare_grads(ref, ours, c, problems, tag, x, grad_y)
        if step == c["steps"]:
            break
        opt_ref.step()
        opt_ours.step()
        aimc.post_step(ours)
        remapped = remapped or c["hwa"]["remap"] != "none"
        compare_state(ref, ours, c, problems, f"after step {step + 1}", remapped)
        if problems:  # later steps would only repeat the first difference
            break
    if c["steps"] and not problems:
        # the forward of the last step's weights (training mode, no backward)
        x = torch.randn(c["n"], c["k"], generator=g) * c["x_scale"]
        with torch.no_grad():
            close(ours(x), ref(x), f"after step {c['steps']} forward", problems)
    return problems


# -- the tests -------------------------------------------------------------------------------------

SEED = 18
N_CONFIGS = 200
CONFIGS = draw_configs(N_CONFIGS, SEED)


@pytest.mark.parametrize("c", CONFIGS, ids=[f"{SEED}-{i}" for i in range(len(CONFIGS))])
def test_random_training_config(c):
    problems = run_config(c)
    causes = known_causes(c) or ["none of this review's findings can show here: a new one"]
    assert not problems, (
        describe(c)
        + "\n  "
        + "\n  ".join(problems[:8])
        + "\n  possible causes: "
        + "; ".join(causes)
    )


# -- minimal reproductions of the differences the random configurations found ----------------------
#
# Each is one layer of 4 outputs and 8 inputs on one tile (unless said otherwise), noise-free;
# AIHWKIT's values are its own (the rule it follows is asserted too, where it is short).

#: an 8-bit noise-free periphery without noise or bound management (the tile's units are the
#: ADC's): DAC and ADC 254 steps, ADC bound 10
IO_8BIT = {
    "is_perfect": False,
    "noise_management": "none",
    "nm_thres": 0.0,
    "bound_management": "none",
    "inp_res": 1 / 254,
    "out_res": 1 / 254,
    "out_bound": 10.0,
    "inp_bound": 1.0,
    "out_noise": 0.0,
}


def small(**changes: Any) -> dict[str, Any]:
    """A one-tile 4 x 8 configuration (perfect IO, ``standard_hwa``'s mapping: column-wise weight
    scaling and learned column-wise output scales) with ``changes`` (dicts are merged)."""
    c: dict[str, Any] = {
        "k": 8,
        "o": 4,
        "n": 6,
        "seed": 3,
        "max_input_size": 0,
        "max_output_size": 0,
        "n_in": 1,
        "n_out": 1,
        "bias": False,
        "digital_bias": True,
        "w_std": 0.3,
        "x_scale": 1.0,
        "io": {"is_perfect": True, "out_noise": 0.0},
        "mapping": {
            "max_input_size": 0,
            "max_output_size": 0,
            "digital_bias": True,
            "weight_scaling_omega": 1.0,
            "weight_scaling_columnwise": True,
            "learn_out_scaling": True,
            "out_scaling_columnwise": True,
        },
        "hwa": {
            "clip": "none",
            "remap": "none",
            "learn_input_range": False,
            "output_bound_mask": "aihwkit",
        },
        "range": None,
        "range_init": False,
        "random_alpha": False,
        "steps": 0,
        "lr": 0.1,
    }
    for key, value in changes.items():
        c[key] = {**c[key], **value} if isinstance(value, dict) else value
    return c


def _data(n: int = 6, k: int = 8, o: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, k, generator=g), torch.randn(n, o, generator=g)


def _train_step(ref, ours, x, grad_y):
    """One training forward and backward of both layers; returns (y_ref, y_ours, gx_ref,
    gx_ours)."""
    ref.train()
    ours.train()
    xr = x.clone().requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    y_ref, y_ours = ref(xr), ours(xa)
    (y_ref * grad_y).sum().backward()
    (y_ours * grad_y).sum().backward()
    return y_ref.detach(), y_ours.detach(), xr.grad, xa.grad


def _set_alpha(ref, ours, alpha) -> None:
    tile = next(ref.analog_tiles())
    with torch.no_grad():
        tile.out_scaling_alpha.data.copy_(alpha)
        ours.out_scale.copy_(alpha.view(ours.out_scale.shape))


def test_weight_gradient_carries_the_learned_output_scale():
    # A. AIHWKIT's InferenceTile.forward multiplies the analog output by out_scaling_alpha
    # *outside* AnalogFunction, so the tile's update receives the gradient of the tile output,
    # alpha * g, and writes alpha * g x clip(x) / (r * m) into its weights' gradient. aimc's
    # Layer.weight_grad_factor gives g x clip(x) / (r * m): without alpha. Equal while alpha is
    # 1 (standard_hwa remaps after every step: alpha back to 1), not once the learned scales
    # move without a remap (learned scales without remap). Range 3, perfect IO. Fixed
    # 2026-12-07: weight_grad_factor is alpha / (r * m).
    x, grad_y = _data()
    ref, ours = build(small(hwa={"learn_input_range": True}, range=3.0))
    alpha = torch.tensor([2.0, 0.5, 1.5, 1.0])
    _set_alpha(ref, ours, alpha)
    y_ref, y_ours, _, _ = _train_step(ref, ours, x, grad_y)
    torch.testing.assert_close(y_ours, y_ref)  # the same function
    tile = next(ref.analog_tiles())
    m = tile.get_mapping_scales().view(-1, 1)  # the column maxima (set_weights, omega 1)
    g_ref = tile.shared_weights.grad
    want_rule = alpha.view(-1, 1) * (grad_y.T @ x.clamp(-3, 3)) / (3.0 * m)
    torch.testing.assert_close(g_ref, want_rule)  # AIHWKIT's rule, alpha included
    # aimc's weight is AIHWKIT's tile weight times m (mapping_scale 1 before a remap): the same
    # SGD update needs AIHWKIT's gradient times m
    ratio = (ours.weight.grad / (g_ref * m)).median(dim=1).values
    assert torch.allclose(ours.weight.grad, g_ref * m, rtol=1e-4, atol=1e-6), (
        f"aimc weight gradient / (AIHWKIT's x m) per output row: {ratio.tolist()} "
        f"(1 / alpha = {(1 / alpha).tolist()}); row 0 aimc {ours.weight.grad[0, :3].tolist()}, "
        f"AIHWKIT x m {(g_ref * m)[0, :3].tolist()}"
    )


def test_negative_mapping_scale_keeps_the_weight_gradient():
    # B. A learned output scale that SGD pushed below 0 (the random configurations reach it
    # with lr 0.01-0.2) is moved into the mapping scale by the next remap: m < 0 on both sides
    # (equal). AIHWKIT's pre_update divides the output gradient by m whatever its sign; aimc's
    # weight_grad_factor keeps 1/m only where m > 1e-12 (meant for all-zero columns at the
    # remap's floor) and so zeroed the whole column's weight gradient: that column stopped
    # learning for good (fixed 2026-12-07: the guard tests |m|). Perfect IO, column-wise remap.
    x, grad_y = _data()
    ref, ours = build(small(hwa={"remap": "columnwise"}))
    _set_alpha(ref, ours, torch.tensor([-0.5, 1.0, 1.0, 1.0]))
    tile = next(ref.analog_tiles())
    tile.post_update_step()
    aimc.post_step(ours)
    torch.testing.assert_close(ours.mapping_scale.flatten(), tile.get_mapping_scales())
    assert float(tile.get_mapping_scales()[0]) < 0
    _train_step(ref, ours, x, grad_y)
    g_ref = tile.shared_weights.grad
    torch.testing.assert_close(g_ref, grad_y.T @ x / tile.get_mapping_scales().view(-1, 1))
    assert torch.allclose(ours.weight.grad, g_ref, rtol=1e-4, atol=1e-6), (
        f"mapping scales {tile.get_mapping_scales().tolist()}; weight gradient row 0: aimc "
        f"{ours.weight.grad[0, :4].tolist()}, AIHWKIT {g_ref[0, :4].tolist()}"
    )


def test_fixed_clip_before_the_first_remap_acts_on_the_normalised_tile_weights():
    # C1. AIHWKIT's set_weights (weight scaling, omega 1 per column) stores every column
    # normalised to max |W| = 1 and its scale in the mapping scales; the first post-update step
    # clips those tile weights (fixed 1.0: nothing to clip) and remaps. aimc keeps the weight
    # unnormalised until its first remap (mapping_scale 1) and its post_step clips that: every
    # |w| > 1 was cut to 1, a different layer -- with standard_hwa's own clip and remap. No step
    # needed: the first post_step after conversion. Perfect IO, weights N(0, 1). Fixed
    # 2026-12-07: the set_scale buffer, moved into the mapping scale before the first clip.
    ref, ours = build(
        small(w_std=1.0, hwa={"clip": "fixed", "clip_value": 1.0, "remap": "columnwise"})
    )
    tile = next(ref.analog_tiles())
    before = tile.get_weights()[0].clone()
    tile.post_update_step()
    aimc.post_step(ours)
    eff_ref = tile.get_weights()[0]
    eff_ours = ours.weight.detach() * ours.effective_out_scale().view(-1, 1)
    torch.testing.assert_close(eff_ref, before)  # AIHWKIT: the layer unchanged
    assert torch.allclose(eff_ours, eff_ref, rtol=1e-5, atol=1e-6), (
        f"effective weights after the first post-step, row 0: aimc {eff_ours[0].tolist()}, "
        f"AIHWKIT {eff_ref[0].tolist()}"
    )


@pytest.mark.xfail(strict=True, reason="known difference from AIHWKIT: docs/conformance.md")
def test_layerwise_remap_keeps_the_columnwise_weight_scaling():
    # C2. Column-wise weight scaling (omega 1), learned output scales per tile, layerwise remap:
    # AIHWKIT's tile weights are column-normalised by set_weights, and its layerwise remap (the
    # tile's max, 1) keeps them so: every column max 1, one mapping scale per column. aimc's
    # remap divides its unnormalised weight by the tile max: column maxima 0.67, 0.37, 0.68, 1
    # and one scale for the tile. The same function (and aimc's forward normalises the columns
    # again), but other stored weights and scales: the next clip, layer-gaussian std and
    # weight-gradient factor 1/m act on other numbers.
    ref, ours = build(small(mapping={"out_scaling_columnwise": False}, hwa={"remap": "layerwise"}))
    tile = next(ref.analog_tiles())
    tile.post_update_step()
    aimc.post_step(ours)
    w_ref = tile.get_weights(apply_weight_scaling=False)[0]
    eff_ours = ours.weight.detach() * ours.effective_out_scale().view(-1, 1)
    torch.testing.assert_close(eff_ours, tile.get_weights()[0])  # the same function
    assert torch.allclose(ours.weight.detach(), w_ref, rtol=1e-5, atol=1e-6), (
        f"stored column maxima aimc {ours.weight.detach().abs().amax(1).tolist()}, AIHWKIT "
        f"{w_ref.abs().amax(1).tolist()}; output scales aimc "
        f"{ours.effective_out_scale().flatten().tolist()}, AIHWKIT {tile.get_scales().tolist()}"
    )


@pytest.mark.xfail(strict=True, reason="known difference from AIHWKIT: docs/conformance.md")
def test_tile_weights_after_a_step_without_remap_keep_their_mapping_scales():
    # C3. Weight scaling (omega 1 per column) without remap (bert_squad's mapping; here without
    # learned scales): AIHWKIT fixes the mapping scales at set_weights, and an SGD step moves
    # its tile weights off max |W| = 1; aimc renormalises every forward (functional.tile_weights)
    # and so quantizes another tile. 8-bit noise-free DAC and ADC: the effective weights agree
    # after the step (5e-7), the outputs of the next forward do not.
    x, grad_y = _data()
    ref, ours = build(small(io=IO_8BIT, mapping={"learn_out_scaling": False}))
    from aihwkit.optim import AnalogSGD

    opt_ref = AnalogSGD(list(ref.parameters()), lr=0.1)
    opt_ours = torch.optim.SGD(list(ours.parameters()), lr=0.1)
    y_ref, y_ours, _, _ = _train_step(ref, ours, x, grad_y)
    torch.testing.assert_close(y_ours, y_ref)  # before the step: equal
    opt_ref.step()
    opt_ours.step()
    aimc.post_step(ours)
    tile = next(ref.analog_tiles())
    torch.testing.assert_close(ours.weight.detach(), tile.get_weights()[0])
    with torch.no_grad():
        y_ref, y_ours = ref(x), ours(x)
    maxima = tile.get_weights(apply_weight_scaling=False)[0].abs().amax(1)
    assert torch.allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5), (
        f"forward after one SGD step, vector 0: aimc {y_ours[0].tolist()}, AIHWKIT "
        f"{y_ref[0].tolist()}; AIHWKIT's tile column maxima {maxima.tolist()} (aimc: 1)"
    )


@pytest.mark.xfail(strict=True, reason="known difference from AIHWKIT: docs/conformance.md")
def test_remapped_tiles_are_not_rescaled_to_omega():
    # C3 too. Weight scaling omega 0.5 and a column-wise remap: AIHWKIT's remap sets the tile
    # columns to max |W| = remapped_wmax = 1 (omega only acted in set_weights); aimc's remapped
    # weight has column maxima 1 but its forward scales the tiles to omega again (0.5). 8-bit
    # noise-free periphery: another ADC quantization.
    x, _ = _data()
    x = x * 0.5
    ref, ours = build(
        small(io=IO_8BIT, mapping={"weight_scaling_omega": 0.5}, hwa={"remap": "columnwise"})
    )
    tile = next(ref.analog_tiles())
    tile.post_update_step()
    aimc.post_step(ours)
    ref.eval()
    ours.eval()
    with torch.no_grad():
        y_ref, y_ours = ref(x), ours(x)
    assert torch.allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5), (
        f"vector 0: aimc {y_ours[0].tolist()}, AIHWKIT {y_ref[0].tolist()}"
    )


@pytest.mark.parametrize("nm,thres", [("abs_max", 0.0), ("constant", 2.0)])
def test_learned_input_range_keeps_noise_management(nm, thres):
    # E. AIHWKIT's pre_forward clips x to the learned range and divides by it; the RPUCuda tile
    # then applies its noise management to x / r as to any input (abs-max: per vector onto the
    # DAC's full range; constant: divided by nm_thres). aimc's learned range replaces noise
    # management (docs/hwa.md), which conformance.md does not list as a difference. Equal for
    # the presets (standard_hwa: constant 1.0; analog_foundation: none). Range 3, 30-step DAC.
    x, grad_y = _data()
    io = {**IO_8BIT, "noise_management": nm, "nm_thres": thres, "inp_res": 1 / 30}
    ref, ours = build(
        small(
            io=io, mapping={"learn_out_scaling": False}, hwa={"learn_input_range": True}, range=3.0
        )
    )
    y_ref, y_ours, _, _ = _train_step(ref, ours, x[:2], grad_y[:2])
    assert torch.allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5), (
        f"vector 0: aimc {y_ours[0].tolist()}, AIHWKIT {y_ref[0].tolist()} (exact "
        f"{(x[:1].clamp(-3, 3) @ ours.weight.detach().T)[0].tolist()})"
    )


def test_exact_layer_masks_the_output_bound_gradient():
    # G. Perfect IO, no learned scales or range, no device model: aimc's AnalogLinear.forward
    # takes its is_exact() shortcut, F.linear, whose input gradient is straight-through.
    # AIHWKIT's perfect InferenceTile still zeroes the output gradient where the tile output
    # reaches 0.999 * out_bound (12 here; handle_output_bound), as OutputBoundMask.AIHWKIT's
    # docstring says aimc does "with perfect IO too". Vector 0 (x = 2): output 3 is 14.5.
    # Fixed 2026-12-07: exact_shortcut only where no mask can act on the input's gradient.
    ref, ours = build(
        small(w_std=1.0, mapping={"learn_out_scaling": False, "weight_scaling_omega": 0.0})
    )
    assert ours.is_exact()
    x = torch.full((2, 8), 2.0)
    x[1] = 0.5
    grad_y = torch.ones(2, 4)
    y_ref, _, gx_ref, gx_ours = _train_step(ref, ours, x, grad_y)
    w = ours.weight.detach()
    masked = grad_y * (y_ref.abs() < 0.999 * 12)
    torch.testing.assert_close(gx_ref, masked @ w)  # AIHWKIT's mask
    assert torch.allclose(gx_ours, gx_ref, rtol=1e-5, atol=1e-6), (
        f"outputs {y_ref[0].tolist()}; input gradient of vector 0: aimc {gx_ours[0].tolist()}, "
        f"AIHWKIT {gx_ref[0].tolist()}"
    )


def test_layer_gaussian_clip_of_a_one_weight_tile():
    # H (edge case). 3 inputs at 2 per tile (2 + 1) and 2 outputs at 1 per tile: tiles of 1 x 1.
    # AIHWKIT's layer-gaussian clip leaves a one-weight tile alone (its std is undefined); aimc's
    # _tile_std divided by max(n - 1, 1) and clipped the weight to 0 (fixed 2026-12-07).
    c = small(
        k=3,
        o=2,
        w_std=1.0,
        max_input_size=2,
        max_output_size=1,
        n_in=2,
        n_out=2,
        mapping={
            "max_input_size": 2,
            "max_output_size": 1,
            "learn_out_scaling": False,
            "weight_scaling_omega": 0.0,
        },
        hwa={"clip": "layer_gaussian", "clip_sigma": 2.5},
    )
    ref, ours = build(c)
    for tile in ref.analog_tiles():
        tile.post_update_step()
    aimc.post_step(ours)
    w_ref = ref.get_weights()[0]
    assert torch.allclose(ours.weight.detach(), w_ref), (
        f"weights after the clip: aimc {ours.weight.detach().tolist()}, AIHWKIT {w_ref.tolist()}"
    )


@pytest.mark.xfail(strict=True, reason="known difference from AIHWKIT: docs/conformance.md")
@pytest.mark.parametrize(
    "inp_res,out_res,out_bound,x",
    [(1 / 30, 1 / 60, 12.0, 0.6), (1 / 254, 1 / 254, 10.0, 35 / 127)],
    ids=["30/60 steps", "8-bit"],
)
def test_adc_level_at_an_exact_half_step(inp_res, out_res, out_bound, x):
    # I (edge case, eval forward too). One weight of 1 (a remapped column on a tile of one
    # row), no noise or bound management: the tile output is a DAC level times 1 and can fall
    # exactly half an ADC step off the grid (0.6 / 0.4 = 1.5 steps; 35/127 / (20/254) = 3.5).
    # AIHWKIT computes (level * dac_step) / adc_step in float32 (1.4999999: rounds down), aimc
    # levels times the folded gain dac_step / adc_step (1.5000001: rounds up): one ADC step
    # apart. Other half steps of the same sweeps agree; the DAC's counterpart was fixed
    # (test_dac_levels.py). In training the same ties come from weights of exactly +-1, which a
    # fixed clip followed by a remap makes of every clipped weight, on inputs at the DAC bound
    # (the random configurations with clip 0.1 and a remap: e.g. 4 weights -1, -1, 1, -1 times
    # 128, -91, 45, -88 DAC levels = 96/128 = 7.5 ADC steps of 0.1).
    from aihwkit.nn import AnalogLinear as RpuLinear

    io = {**IO_BASE, **IO_8BIT, "inp_res": inp_res, "out_res": out_res, "out_bound": out_bound}
    mapping = {**MAPPING_BASE, "max_input_size": 0, "max_output_size": 0}
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ours = aimc.nn.AnalogLinear.from_digital(lin, _aimc(io, mapping), seed=0).eval()
    ref = RpuLinear(1, 1, bias=False, rpu_config=_rpu(io, mapping))
    ref.set_weights(lin.weight.data)
    ref.eval()
    xs = torch.tensor([[x], [-x]])
    with torch.no_grad():
        y_ref, y_ours = ref(xs), ours(xs)
    assert torch.allclose(y_ours, y_ref, atol=1e-6), (
        f"x = +-{x:.6g}: aimc {y_ours.flatten().tolist()}, AIHWKIT {y_ref.flatten().tolist()}"
    )


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - exploratory runs
    import argparse
    import collections

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--show", type=int, default=40)
    ap.add_argument("--avoid", default=",".join(sorted(AVOID)))
    args = ap.parse_args(argv)
    AVOID.clear()
    AVOID.update(a for a in args.avoid.split(",") if a)
    torch.set_num_threads(2)
    bad = 0
    unexplained = 0
    kinds: collections.Counter[str] = collections.Counter()
    by_cause: collections.Counter[str] = collections.Counter()
    for i, c in enumerate(draw_configs(args.n, args.seed)):
        try:
            problems = run_config(c)
        except Exception as e:  # noqa: BLE001
            problems = [f"EXCEPTION {type(e).__name__}: {e}"]
        if problems:
            bad += 1
            causes = known_causes(c)
            unexplained += not causes
            by_cause.update(x.split(":")[0] for x in causes)
            if len(causes) == 1:
                by_cause["only " + causes[0].split(":")[0]] += 1
            for p in problems:
                kinds[p.split(":")[0].split(") ")[-1].replace("step 0 ", "")] += 1
            if bad <= args.show:
                print(
                    f"[{args.seed}-{i}] {describe(c)}\n   "
                    + "\n   ".join(problems[:6])
                    + f"\n   causes: {[x.split(':')[0] for x in causes]}"
                )
    print(f"{bad} of {args.n} disagree, {unexplained} with none of the known causes possible")
    print("  possible causes among them:", dict(sorted(by_cause.items())))
    for k_, v in kinds.most_common():
        print(f"  {v:4d} {k_}")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
