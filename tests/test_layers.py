"""Analog layers (``aimc.nn``): exactness of the ideal config, dtypes, gradients, randomness,
checkpoints and non-finite inputs."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import outputs_on_one_and_two_threads
from torch import nn

import aimc
from aimc import presets
from aimc.nn import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear

# A perfect periphery, but a learned output scale (initialised to 1) so that ``is_exact()`` is
# False and the forward runs through im2col + the tiled MVM. Small tiles force several input and
# output tiles, including a padded last tile.
TILED = aimc.AnalogConfig(
    io=aimc.IOConfig(is_perfect=True),
    mapping=aimc.MappingConfig(
        max_input_size=7, max_output_size=5, weight_scaling_omega=1.0, learn_out_scaling=True
    ),
)
# The same with column-wise weight / output scaling and the bias as an analog input row.
TILED_COLUMNWISE = TILED.replace(
    mapping=TILED.mapping.replace(
        weight_scaling_columnwise=True, out_scaling_columnwise=True, digital_bias=False
    )
)
IDEAL_MODES = {
    "exact": presets.ideal,
    "tiled": lambda: TILED,
    "tiled_columnwise": lambda: TILED_COLUMNWISE,
}

CONV = {1: (nn.Conv1d, AnalogConv1d), 2: (nn.Conv2d, AnalogConv2d), 3: (nn.Conv3d, AnalogConv3d)}
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 5)}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def assert_ideal_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.shape == ref.shape
    assert y.dtype == ref.dtype
    scale = ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(y, ref, atol=1e-5 * scale.item(), rtol=1e-5)


def pcm(**io_changes) -> aimc.AnalogConfig:
    cfg = presets.pcm_inference()
    return cfg.replace(io=cfg.io.replace(**io_changes)) if io_changes else cfg


def twin_linear(cfg, in_f=16, out_f=8, bias=True, seed=0):
    d = nn.Linear(in_f, out_f, bias=bias)
    a = AnalogLinear(in_f, out_f, bias=bias, config=cfg, seed=seed)
    with torch.no_grad():
        a.weight.copy_(d.weight)
        if bias:
            a.bias.copy_(d.bias)
    return d, a


# ---------------------------------------------------------------------------------------------
# ideal() == digital


@pytest.mark.parametrize("mode", list(IDEAL_MODES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)], ids=["unbatched", "2d", "3d"])
def test_ideal_linear_matches_digital(mode, bias, lead):
    torch.manual_seed(0)
    d = nn.Linear(17, 11, bias=bias)
    a = AnalogLinear.from_digital(d, IDEAL_MODES[mode](), seed=1)
    assert a.weight is d.weight and a.bias is d.bias
    assert a.is_exact() == (mode == "exact")
    if mode != "exact":
        lo = a.tile_layout()
        assert lo.n_in > 1 and lo.n_out > 1
    x = torch.randn(*lead, 17)
    with torch.no_grad():
        assert_ideal_close(a(x), d(x))
    # with autograd on (the training branch of the output scaling)
    assert_ideal_close(a(x).detach(), d(x).detach())


CONV_OPTIONS = {
    "default": {},
    "stride2": {"stride": 2},
    "pad_int": {"padding": 1},
    "pad_tuple": {"padding": "tuple"},
    "same": {"padding": "same"},
    "same_even_kernel": {"padding": "same", "kernel_size": 2},
    "same_dilated": {"padding": "same", "dilation": 2},
    "valid": {"padding": "valid"},
    "reflect": {"padding": 1, "padding_mode": "reflect"},
    "replicate": {"padding": 2, "padding_mode": "replicate"},
    "circular": {"padding": "tuple", "padding_mode": "circular"},
    "dilation": {"dilation": 2},
    "groups2": {"groups": 2},
    "depthwise": {"groups": 4, "out_channels": 8},
    "no_bias": {"bias": False},
    "combo": {"stride": 2, "padding": 1, "dilation": 2, "groups": 2, "bias": False},
}


def make_conv(ndim: int, option: str) -> nn.Module:
    kw = dict(CONV_OPTIONS[option])
    out_channels = kw.pop("out_channels", 6)
    kernel_size = kw.pop("kernel_size", 3)
    if kw.get("padding") == "tuple":  # different padding per spatial dimension
        kw["padding"] = tuple([2, 1, 0][:ndim])
    return CONV[ndim][0](4, out_channels, kernel_size, **kw)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("mode", list(IDEAL_MODES))
@pytest.mark.parametrize("option", list(CONV_OPTIONS))
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_ideal_conv_matches_digital(ndim, option, mode):
    torch.manual_seed(ndim)
    d = make_conv(ndim, option)
    a = CONV[ndim][1].from_digital(d, IDEAL_MODES[mode](), seed=3)
    assert type(a) is CONV[ndim][1]
    assert a.weight is d.weight and a.bias is d.bias
    assert a.is_exact() == (mode == "exact")
    x = torch.randn(2, 4, *SPATIAL[ndim])
    with torch.no_grad():
        assert_ideal_close(a(x), d(x))
        assert_ideal_close(a(x[1]), d(x[1]))  # unbatched input


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_conv_constructor_matches_from_digital(ndim):
    torch.manual_seed(0)
    a = CONV[ndim][1](4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", config=TILED)
    d = CONV[ndim][0](4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
    with torch.no_grad():
        d.weight.copy_(a.weight)
        d.bias.copy_(a.bias)
    x = torch.randn(2, 4, *SPATIAL[ndim])
    with torch.no_grad():
        assert_ideal_close(a(x), d(x))


def test_tile_cache_follows_weight_updates():
    torch.manual_seed(0)
    d = nn.Linear(12, 9)
    a = AnalogLinear.from_digital(d, TILED)
    x = torch.randn(4, 12)
    with torch.no_grad():
        a(x)
        d.weight.mul_(-2.0)  # in-place update of the shared Parameter
        d.bias.add_(1.0)
        assert_ideal_close(a(x), d(x))


# ---------------------------------------------------------------------------------------------
# low-precision dtypes


def _pair(kind: str, cfg):
    torch.manual_seed(0)
    if kind == "linear":
        d = nn.Linear(32, 16)
        x = torch.randn(64, 32)
        return d, AnalogLinear.from_digital(nn.Linear(32, 16), cfg, seed=5), x
    d = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(4, 4, 6, 6)
    return d, AnalogConv2d.from_digital(nn.Conv2d(4, 8, 3, padding=1), cfg, seed=5), x


# (standard_hwa clips inputs beyond +-1: constant noise management; bert_squad has out scales)
@pytest.mark.parametrize("preset", ["pcm_inference", "bert_squad"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_and_weights(dtype, kind, preset):
    d, a, x = _pair(kind, getattr(presets, preset)())
    a.load_state_dict(d.state_dict(), strict=False)  # same weights (out_scale stays 1)
    with torch.no_grad():
        ref = d(x)
        y32 = a(x)
        err32 = rel_err(y32, ref)
        assert 0 < err32 < 0.4  # pcm_inference: no weight scaling (AIHWKIT), noisy
        # low-precision input, float32 weights: refused, as by the digital layer
        with pytest.raises(RuntimeError, match="type"):
            d(x.to(dtype))
        with pytest.raises(RuntimeError, match=f"input dtype {dtype} does not match"):
            a(x.to(dtype))
        # low-precision weights (module.half() / .bfloat16()) and input
        a.to(dtype)
        assert a.weight.dtype == dtype
        y_lp = a(x.to(dtype))
        assert y_lp.dtype == dtype
        assert torch.isfinite(y_lp).all()
        assert rel_err(y_lp, ref) < 0.4
        assert abs(rel_err(y_lp, ref) - err32) < 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_backward(dtype):
    torch.manual_seed(0)
    a = AnalogLinear(16, 8, config=presets.pcm_inference()).to(dtype)
    x = torch.randn(5, 16, dtype=dtype, requires_grad=True)
    a(x).float().square().sum().backward()
    for g, like in ((x.grad, x), (a.weight.grad, a.weight), (a.bias.grad, a.bias)):
        assert g is not None and g.dtype == like.dtype and g.shape == like.shape
        assert torch.isfinite(g).all() and g.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# gradients


GRAD_CONFIGS = {
    "pcm_inference": presets.pcm_inference,
    "pcm_tiled_analog_bias": lambda: presets.pcm_inference().replace(
        mapping=aimc.MappingConfig(max_input_size=7, max_output_size=5, digital_bias=False)
    ),
    "bert_squad": presets.bert_squad,  # learned out scales start at 1: same gradient
}


def _digital_and_analog(kind: str, cfg):
    torch.manual_seed(0)
    if kind == "linear":
        d = nn.Linear(16, 8)
        a = AnalogLinear.from_digital(nn.Linear(16, 8), cfg, seed=2)
        x = torch.randn(2, 5, 16)
    else:
        d = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        a = AnalogConv2d.from_digital(
            nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), cfg, seed=2
        )
        x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        a.weight.copy_(d.weight)
        a.bias.copy_(d.bias)
    return d, a, x


@pytest.mark.parametrize("cfg_name", list(GRAD_CONFIGS))
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_backward_is_exact_digital_gradient(kind, cfg_name):
    d, a, x = _digital_and_analog(kind, GRAD_CONFIGS[cfg_name]())
    xa = x.clone().requires_grad_()
    xd = x.clone().requires_grad_()
    ya, yd = a(xa), d(xd)
    assert not torch.equal(ya, yd)  # the forward is noisy ...
    upstream = torch.randn_like(yd)
    ya.backward(upstream)
    yd.backward(upstream)
    # ... the backward is the digital one (straight-through)
    for ga, gd in ((xa.grad, xd.grad), (a.weight.grad, d.weight.grad), (a.bias.grad, d.bias.grad)):
        assert ga is not None and torch.isfinite(ga).all() and ga.abs().sum() > 0
        torch.testing.assert_close(ga, gd, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_out_scale_gets_gradient(kind):
    _, a, x = _digital_and_analog(kind, presets.standard_hwa())
    assert isinstance(a.out_scale, nn.Parameter)
    # column-wise, one per (group, input tile, output column)
    lo = a.tile_layout()
    assert a.out_scale.shape == (lo.groups, lo.n_in, a.weight.shape[0] // lo.groups)
    assert any(p is a.out_scale for p in a.parameters())
    a(x).square().sum().backward()
    g = a.out_scale.grad
    assert g is not None and torch.isfinite(g).all() and (g != 0).all()


def test_out_scale_gradient_value():
    """d loss / d scale_j = sum_n grad_nj * (analog MVM output)_nj (bias is digital)."""
    torch.manual_seed(0)
    a = AnalogLinear(16, 8, config=presets.standard_hwa(), seed=4)
    x = torch.randn(6, 16)
    up = torch.randn(6, 8)
    a(x).backward(up)
    a.manual_seed(4)
    with torch.no_grad():
        mvm = a(x) - a.bias  # out_scale == 1: the same noise draw again
    torch.testing.assert_close(a.out_scale.grad.view(8), (up * mvm).sum(0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["pcm_inference", "standard_hwa"])
def test_sgd_reduces_loss(preset):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 3) + 0.5
    layer = AnalogLinear(8, 3, config=getattr(presets, preset)(), seed=1)
    # standard_hwa: AIHWKIT's weight gradient is divided by the learned input range (about 3
    # here, 3 std of x), so the same effective step needs 3x the learning rate
    opt = torch.optim.SGD(layer.parameters(), lr=0.05 if preset == "pcm_inference" else 0.15)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (layer(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.3 * losses[0]


# ---------------------------------------------------------------------------------------------
# randomness


def _noisy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.Flatten())
    return aimc.convert(model, presets.pcm_inference(), seed=seed)


def test_same_seed_same_output_fresh_layers():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    outs = []
    for _ in range(2):
        torch.manual_seed(1)  # same weights
        layer = AnalogLinear(16, 8, config=presets.pcm_inference(), seed=7)
        outs.append((layer(x), layer(x)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[0][1])  # consecutive calls: fresh noise


def test_different_seeds_differ():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    ys = []
    for seed in (0, 1):
        torch.manual_seed(1)
        ys.append(AnalogLinear(16, 8, config=presets.pcm_inference(), seed=seed)(x))
    assert not torch.equal(ys[0], ys[1])


def test_layer_manual_seed_restarts_stream():
    torch.manual_seed(0)
    layer = AnalogConv2d(3, 4, 3, config=presets.pcm_inference(), seed=3)
    x = torch.randn(2, 3, 6, 6)
    first, second = layer(x), layer(x)
    assert not torch.equal(first, second)
    layer.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert torch.equal(layer(x), second)


def test_model_manual_seed_reproduces_convert_seed():
    x = torch.randn(3, 1, 16)
    model = _noisy_model(seed=11)
    first, second = model(x), model(x)
    assert not torch.equal(first, second)
    aimc.manual_seed(model, 11)
    assert torch.equal(model(x), first)
    assert torch.equal(model(x), second)
    aimc.manual_seed(model, 12)
    assert not torch.equal(model(x), first)
    # a separately built model with the same seed gives the same stream
    assert torch.equal(_noisy_model(seed=11)(x), first)


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
def test_noise_active_in_eval_mode(ctx):
    torch.manual_seed(0)
    d, a = twin_linear(presets.pcm_inference())
    a.eval()
    a.program_chip(seed=0)
    x = torch.randn(8, 16)
    guard = torch.no_grad() if ctx == "no_grad" else torch.inference_mode()
    with guard:
        y1, y2, ref = a(x), a(x), d(x)
    assert not torch.equal(y1, y2)
    assert not torch.equal(y1, ref)
    assert rel_err(y1, ref) < 0.5  # pcm_inference: no weight scaling (AIHWKIT), noisy


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("preset", ["pcm_inference", "bert_squad"])
def test_eval_forward_without_autograd_skips_the_function(ctx, preset, monkeypatch):
    """Without autograd the eval forward runs the MVM directly (no autograd.Function and its
    call overhead, ~55 us of a 1-token forward) and draws what the forward with autograd draws.
    (Layers with learned output scales, ``bert_squad``, took that path before; pcm_inference's
    did not, and fails this test without the direct path.)"""
    import aimc.nn.base as base

    torch.manual_seed(0)
    _, a = twin_linear(getattr(presets, preset)())
    a.eval()
    a.program_chip(seed=0)
    x = torch.randn(8, 16)
    a.manual_seed(5)
    with_grad = a(x)
    assert with_grad.grad_fn is not None  # the parameters need gradients: a node was recorded

    def no_function(*args):
        raise AssertionError("_AnalogMVM.apply called without autograd")

    monkeypatch.setattr(base._AnalogMVM, "apply", no_function)
    a.manual_seed(5)
    guard = torch.no_grad() if ctx == "no_grad" else torch.inference_mode()
    with guard:
        without = a(x)
    assert torch.equal(without, with_grad.detach())


def test_random_stream_independent_of_thread_count():
    """Large noise tensors are filled in parallel chunks; the draws must not depend on threads."""
    torch.manual_seed(0)
    layer = AnalogLinear(64, 512, config=presets.pcm_inference(), seed=9)
    rows = 2 * aimc.random.CHUNK // 512 + 88  # output noise buffer larger than two chunks
    x = torch.randn(rows, 64)
    assert x.shape[0] * 512 > 2 * aimc.random.CHUNK
    outs = outputs_on_one_and_two_threads(layer, x, 9)
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------
# checkpoints


def _model(cfg, seed, init_seed):
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return aimc.convert(model, cfg, seed=seed)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only=True by default: the extra state must be plain data


@pytest.mark.parametrize("preset", ["pcm_inference", "standard_hwa", "bert_squad"])
def test_state_dict_roundtrip(preset):
    cfg = getattr(presets, preset)()
    src = _model(cfg, seed=3, init_seed=0)
    with torch.no_grad():
        for _, layer in aimc.analog_layers(src):
            if layer.out_scale is not None:
                layer.out_scale.uniform_(0.5, 1.5)
    x = torch.randn(5, 8)
    state = _roundtrip(src.state_dict())
    assert state["0._extra_state"] == {"config": cfg.to_dict(), "seed": src[0].seed}
    with torch.no_grad():
        y_src = src(x)  # first call after conversion

    dst = _model(getattr(presets, preset)(), seed=99, init_seed=1)  # other weights and seeds
    with torch.no_grad():
        dst(x)  # fills the tile cache with the old weights: loading must invalidate it
    dst.load_state_dict(state)
    assert [layer.seed for _, layer in aimc.analog_layers(dst)] == [
        layer.seed for _, layer in aimc.analog_layers(src)
    ]
    with torch.no_grad():
        assert torch.equal(dst(x), y_src)  # loading restarts the checkpoint's streams
        aimc.manual_seed(src, 5)
        aimc.manual_seed(dst, 5)
        assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("io", "out_noise", 0.1),
        ("io", "is_perfect", True),
        ("io", "noise_management", "constant"),
        ("mapping", "max_input_size", 4),
        ("mapping", "digital_bias", False),
    ],
)
def test_load_state_dict_config_mismatch(section, field, value):
    src = _model(presets.pcm_inference(), seed=0, init_seed=0)
    base = presets.pcm_inference()
    other = base.replace(**{section: getattr(base, section).replace(**{field: value})})
    dst = _model(other, seed=0, init_seed=0)
    with pytest.raises(ValueError, match=rf"{section}\.{field}"):
        dst.load_state_dict(_roundtrip(src.state_dict()))


# ---------------------------------------------------------------------------------------------
# non-finite inputs (tested behaviour: the bad vector's outputs are NaN, the others are finite)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("tiles", [0, 7], ids=["one_tile", "tiled"])
@pytest.mark.parametrize("nm", ["abs_max", "none", "constant"])
def test_non_finite_input_row(nm, tiles, bad):
    cfg = pcm(noise_management=nm)
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=tiles, max_output_size=tiles))
    torch.manual_seed(0)
    layer = AnalogLinear(16, 8, config=cfg)
    x = torch.randn(4, 16)
    x[1, 3] = bad
    with torch.no_grad():
        y = layer(x)
    assert torch.isnan(y[1]).all()
    assert torch.isfinite(y[[0, 2, 3]]).all()


def test_non_finite_row_with_bound_management():
    """A NaN vector next to vectors that saturate the ADC (iterative bound management)."""
    torch.manual_seed(0)
    layer = AnalogLinear(64, 4, config=presets.pcm_inference())
    x = layer.weight.detach().sign().clone() * 5.0  # each row aligned with one weight row
    x[2, 0] = float("nan")
    with torch.no_grad():
        y = layer(x)
        ref = nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.isnan(y[2]).all()
    good = [0, 1, 3]
    assert ref[good].abs().max() > 12.0  # would saturate the ADC (bound 12) without BM
    assert torch.isfinite(y[good]).all()
    assert rel_err(y[good], ref[good]) < 0.1


def test_load_digital_state_dict():
    """A digital checkpoint has no ``_extra_state``: strict loading fails, non-strict loads."""
    torch.manual_seed(0)
    digital = nn.Sequential(nn.Linear(8, 4))
    model = aimc.convert(nn.Sequential(nn.Linear(8, 4)), TILED)
    x = torch.randn(3, 8)
    with torch.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="_extra_state"):
        model.load_state_dict(digital.state_dict())
    result = model.load_state_dict(digital.state_dict(), strict=False)
    missing = {"0.out_scale", "0.mapping_scale", "0.set_scale", "0._extra_state"}
    assert set(result.missing_keys) == missing
    with torch.no_grad():
        assert_ideal_close(model(x), digital(x))


# ---------------------------------------------------------------------------------------------
# empty batches


def _empty_case(kind: str, cfg_name: str):
    return pytest.param(kind, cfg_name)


EMPTY_CONFIGS = {
    "ideal": presets.ideal,
    "tiled": lambda: TILED,
    "pcm_inference": presets.pcm_inference,
    "standard_hwa": presets.standard_hwa,
}


@pytest.mark.parametrize(
    "kind,cfg_name",
    [_empty_case(k, c) for k in ("linear", "conv2d") for c in EMPTY_CONFIGS],
)
def test_empty_batch(kind, cfg_name):
    """A batch of size 0 gives an empty output of the digital module's shape."""
    torch.manual_seed(0)
    cfg = EMPTY_CONFIGS[cfg_name]()
    if kind == "linear":
        d = nn.Linear(16, 8)
        x = torch.randn(0, 16)
        a = AnalogLinear.from_digital(d, cfg)
    else:
        d = nn.Conv2d(4, 6, 3, padding=1)
        x = torch.randn(0, 4, 5, 5)
        a = AnalogConv2d.from_digital(d, cfg)
    with torch.no_grad():
        y = a(x)
    assert y.shape == d(x).shape
