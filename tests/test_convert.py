"""``aimc.convert`` / ``aimc.to_digital`` on tiny HuggingFace models and a small CNN."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import aimc
from aimc import presets
from aimc.nn import AnalogConv1D, AnalogConv1d, AnalogConv2d, AnalogLinear
from aimc.random import derive_seed

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

# Perfect periphery with learned output scales (start at 1): exact, but through the tiled path.
TILED = aimc.AnalogConfig(
    io=aimc.IOConfig(is_perfect=True),
    mapping=aimc.MappingConfig(
        max_input_size=7, max_output_size=5, weight_scaling_omega=1.0, learn_out_scaling=True
    ),
)
IDEAL_MODES = {"exact": presets.ideal, "tiled": lambda: TILED}


# ---------------------------------------------------------------------------------------------
# models


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _bert_names() -> set[str]:
    per_layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    names = {f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in per_layer}
    return names | {"qa_outputs"}  # BertForQuestionAnswering has no pooler


def _distilbert_names() -> set[str]:
    per_layer = [
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
    ]
    return {f"transformer.layer.{i}.{s}" for i in range(2) for s in per_layer}


def _gpt2_names() -> set[str]:
    per_layer = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    return {f"transformer.h.{i}.{s}" for i in range(2) for s in per_layer} | {"lm_head"}


RESNET_NAMES = {
    "conv1",
    "layer1.conv1",
    "layer1.conv2",
    "layer2.conv1",
    "layer2.conv2",
    "layer2.downsample.0",
    "fc",
}


def build(name: str) -> tuple[nn.Module, tuple, set[str]]:
    """(model in eval mode, example input args, expected converted names)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    if name == "bert_qa":
        cfg = transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
        return transformers.BertForQuestionAnswering(cfg).eval(), (ids,), _bert_names()
    if name == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32
        )
        return transformers.DistilBertModel(cfg).eval(), (ids,), _distilbert_names()
    if name == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=100,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(cfg).eval(), (ids,), _gpt2_names()
    model = TinyResNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return model, (x,), RESNET_NAMES


MODELS = ["bert_qa", "distilbert", "gpt2", "resnet"]


def output(model: nn.Module, args: tuple) -> torch.Tensor:
    with torch.no_grad():
        out = model(*args)
    if isinstance(out, torch.Tensor):
        return out
    if "start_logits" in out:
        return torch.cat([out["start_logits"], out["end_logits"]], dim=-1)
    return out["logits"] if "logits" in out else out["last_hidden_state"]


def convertible(model: nn.Module) -> dict[str, type]:
    return {
        n: type(m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D))
    }


def analog_names(model: nn.Module) -> set[str]:
    return {n for n, _ in aimc.analog_layers(model)}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------
# whole models


@pytest.mark.parametrize("mode", list(IDEAL_MODES))
@pytest.mark.parametrize("name", MODELS)
def test_ideal_convert_matches_digital_and_roundtrips(name, mode):
    model, args, expected = build(name)
    digital_types = convertible(model)
    assert set(digital_types) == expected
    params_before = {n: id(p) for n, p in model.named_parameters()}
    ref = output(model, args)

    out_model = aimc.convert(model, IDEAL_MODES[mode](), seed=4)
    assert out_model is model
    assert analog_names(model) == expected
    for n, layer in aimc.analog_layers(model):
        analog_cls = {
            nn.Linear: AnalogLinear,
            Conv1D: AnalogConv1D,
            nn.Conv2d: AnalogConv2d,
        }[digital_types[n]]
        assert type(layer) is analog_cls
        assert layer.is_exact() == (mode == "exact")
        assert layer.training is False  # the module's mode is kept
    after = {n: id(p) for n, p in model.named_parameters() if not n.endswith("out_scale")}
    assert after == params_before  # the same Parameter objects: nothing copied
    y = output(model, args)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)

    assert aimc.to_digital(model) is model
    assert aimc.analog_layers(model) == []
    assert convertible(model) == digital_types  # the exact original classes
    assert {n: id(p) for n, p in model.named_parameters()} == params_before
    assert torch.equal(output(model, args), ref)


@pytest.mark.parametrize("name", MODELS)
def test_pcm_inference_close_to_digital(name):
    model, args, expected = build(name)
    ref = output(model, args)
    # with weight scaling: AIHWKIT's default (omega 0) puts the output noise next to the raw
    # weights, and these small randomly initialised weights (std 0.02) drown in it
    cfg = presets.pcm_inference()
    aimc.convert(model, cfg.replace(mapping=cfg.mapping.replace(weight_scaling_omega=1.0)))
    assert analog_names(model) == expected
    aimc.program(model, seed=0)  # eval mode runs on the programmed PCM chip
    y = output(model, args)
    assert y.shape == ref.shape
    assert torch.isfinite(y).all()
    assert not torch.equal(y, ref)
    assert 0 < rel_err(y, ref) < 0.5


@pytest.mark.parametrize("mode", list(IDEAL_MODES))
def test_gpt2_tied_lm_head_stays_tied(mode):
    model, args, _ = build("gpt2")
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    aimc.convert(model, IDEAL_MODES[mode]())
    assert isinstance(model.lm_head, AnalogLinear)
    assert isinstance(model.transformer.h[0].attn.c_attn, AnalogConv1D)
    assert model.lm_head.weight is wte and model.transformer.wte.weight is wte
    with torch.no_grad():
        wte.mul_(0.5)  # the tie is live: the analog head sees the embedding update
    ref_model, _, _ = build("gpt2")
    with torch.no_grad():
        ref_model.transformer.wte.weight.mul_(0.5)
    torch.testing.assert_close(output(model, args), output(ref_model, args), atol=1e-5, rtol=1e-5)
    aimc.to_digital(model)
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.transformer.wte.weight


def test_optimizer_built_before_conversion_keeps_working():
    model, args, _ = build("resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    aimc.convert(model, presets.pcm_inference())
    aimc.program(model, seed=0)
    w = model.fc.weight.detach().clone()
    output(model, args)
    model.train()
    model(*args).square().mean().backward()
    opt.step()
    assert not torch.equal(model.fc.weight, w)


# ---------------------------------------------------------------------------------------------
# selecting modules


@pytest.fixture
def bert():
    return build("bert_qa")[0]


L0 = "bert.encoder.layer.0."
L1 = "bert.encoder.layer.1."


@pytest.mark.parametrize(
    "targets,expected",
    [
        (f"{L0}attention.self.query", {f"{L0}attention.self.query"}),
        ("qa_outputs", {"qa_outputs"}),
        ("query", {f"{L0}attention.self.query", f"{L1}attention.self.query"}),
        ("self.key", {f"{L0}attention.self.key", f"{L1}attention.self.key"}),
        (
            "output.dense",  # a dotted suffix of both attention.output.dense and output.dense
            {f"{p}{s}" for p in (L0, L1) for s in ("attention.output.dense", "output.dense")},
        ),
        (["query", "qa_outputs"], {f"{L0}attention.self.query", f"{L1}attention.self.query"}
         | {"qa_outputs"}),
        (r"re:.*layer\.1\..*", {n for n in _bert_names() if n.startswith(L1)}),
        (re.compile(r".*\.(query|key)"), {f"{p}attention.self.{s}" for p in (L0, L1)
                                           for s in ("query", "key")}),
        ([re.compile("qa_outputs"), r"re:.*0\.intermediate\.dense"],
         {"qa_outputs", f"{L0}intermediate.dense"}),
    ],
    ids=["exact", "exact_top", "suffix", "dotted_suffix", "suffix_multi", "list", "re_str",
         "re_compiled", "re_mixed"],
)  # fmt: skip
def test_targets(bert, targets, expected):
    aimc.convert(bert, presets.pcm_inference(), targets=targets)
    assert analog_names(bert) == expected
    assert set(convertible(bert)) == _bert_names()  # the others are left digital
    for n, m in bert.named_modules():
        if n in _bert_names() and n not in expected:
            assert type(m) is nn.Linear


@pytest.mark.parametrize(
    "exclude,expected",
    [
        ("qa_outputs", _bert_names() - {"qa_outputs"}),
        (["query", "key"], {n for n in _bert_names() if not n.endswith(("query", "key"))}),
        (r"re:.*layer\.0\..*", {n for n in _bert_names() if not n.startswith(L0)}),
        (re.compile(r".*dense"), {n for n in _bert_names() if not n.endswith("dense")}),
    ],
    ids=["exact", "suffixes", "re_str", "re_compiled"],
)
def test_exclude(bert, exclude, expected):
    aimc.convert(bert, exclude=exclude)
    assert analog_names(bert) == expected


def test_targets_and_exclude_combined(bert):
    aimc.convert(bert, targets=r"re:.*layer\.1\..*", exclude=["intermediate.dense", "value"])
    assert analog_names(bert) == {
        f"{L1}{s}" for s in ("attention.self.query", "attention.self.key", "attention.output.dense")
    } | {f"{L1}output.dense"}


def test_filter_fn(bert):
    calls = []

    def wide(module, name):
        calls.append((type(module), name))
        return module.out_features > 32

    aimc.convert(bert, targets=r"re:.*layer.*", filter_fn=wide)
    assert analog_names(bert) == {f"{L0}intermediate.dense", f"{L1}intermediate.dense"}
    # called with (module, qualified name) for the targeted candidates only
    assert {n for _, n in calls} == _bert_names() - {"qa_outputs"}
    assert {t for t, _ in calls} == {nn.Linear}


def test_overrides_first_match_wins(bert):
    base = presets.pcm_inference()
    cfg_a = presets.bert_squad(w_noise=0.035)
    cfg_b = presets.pcm_weights_only()
    cfg_c = presets.standard_hwa()
    aimc.convert(
        bert,
        base,
        overrides={
            "intermediate.dense": cfg_a,
            r"re:.*layer\.0\..*": cfg_b,  # would also match layer.0's intermediate.dense
            re.compile("qa_outputs"): cfg_c,
        },
    )
    assert analog_names(bert) == _bert_names()
    for n, layer in aimc.analog_layers(bert):
        if n.endswith("intermediate.dense"):
            want = cfg_a
        elif n.startswith(L0):
            want = cfg_b
        elif n == "qa_outputs":
            want = cfg_c
        else:
            want = base
        assert layer.analog_config == want, n
    assert bert.qa_outputs.out_scale is not None  # the override's mapping is in effect
    assert bert.bert.encoder.layer[1].output.dense.out_scale is None


@pytest.mark.parametrize("key", ["targets", "exclude", "overrides"])
@pytest.mark.parametrize(
    "pattern",
    ["no_such_layer", "uery", "re:query", re.compile("dense"), "bert.encoder.layer.0"],
    ids=["unknown", "partial_word", "re_not_full", "compiled_not_full", "container"],
)
def test_pattern_matching_nothing_raises(bert, key, pattern):
    kwargs = {key: {pattern: presets.ideal()} if key == "overrides" else [pattern]}
    if key != "targets":
        kwargs["targets"] = "query"
    with pytest.raises(ValueError, match=re.escape(repr(pattern))):
        aimc.convert(bert, **kwargs)
    assert analog_names(bert) == set()  # nothing was converted


def test_only_the_unmatched_pattern_is_named(bert):
    with pytest.raises(ValueError, match="targets") as info:
        aimc.convert(bert, targets=["query", "quary"])
    assert "'quary'" in str(info.value) and "'query'" not in str(info.value)


def test_bad_pattern_type_raises(bert):
    with pytest.raises(ValueError, match="pattern"):
        aimc.convert(bert, targets=[3])
    with pytest.raises(ValueError, match="targets"):
        aimc.convert(bert, targets=3)


def test_convert_twice_leaves_analog_layers_alone(bert):
    aimc.convert(bert, presets.pcm_inference(), targets="query", seed=1)
    first = dict(aimc.analog_layers(bert))
    seeds = {n: m.seed for n, m in first.items()}
    aimc.convert(bert, presets.ideal(), seed=2)
    layers = dict(aimc.analog_layers(bert))
    assert set(layers) == _bert_names()
    for n, m in first.items():
        assert layers[n] is m
        assert m.seed == seeds[n]
        assert m.analog_config == presets.pcm_inference()
    for n in _bert_names() - set(first):
        assert layers[n].analog_config == presets.ideal()
    # a third time: nothing left to convert, nothing changes
    aimc.convert(bert, presets.standard_hwa())
    assert dict(aimc.analog_layers(bert)) == layers


def test_root_module_cannot_be_converted():
    for root in (nn.Linear(4, 3), nn.Conv2d(2, 2, 1), Conv1D(3, 4)):
        with pytest.raises(ValueError, match="root"):
            aimc.convert(root)
        assert not isinstance(root, aimc.nn.AnalogLayerMixin)
    with pytest.raises(ValueError, match="root"):
        aimc.to_digital(AnalogLinear(4, 3))


class WithMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_is_skipped():
    torch.manual_seed(0)
    model = WithMHA().eval()
    x = torch.randn(2, 5, 8)
    ref = output(model, (x,))
    out_proj_type = type(model.attn.out_proj)
    aimc.convert(model, TILED)
    assert analog_names(model) == {"fc"}
    assert type(model.attn.out_proj) is out_proj_type
    torch.testing.assert_close(output(model, (x,)), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out_proj"):
        aimc.convert(WithMHA(), targets="out_proj")
    with pytest.raises(ValueError, match="out_proj"):
        aimc.convert(WithMHA(), targets="attn.out_proj")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"config": presets.ideal}, "config"),  # the function, not its result
        ({"config": presets.ideal().to_dict()}, "config"),
        ({"config": presets.ideal().io}, "config"),
        ({"overrides": {"query": presets.ideal().to_dict()}}, "overrides"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
    ],
    ids=["function", "dict", "subconfig", "override_dict", "neg_seed", "float_seed", "bool_seed"],
)
def test_bad_arguments_raise(bert, kwargs, match):
    with pytest.raises(ValueError, match=match):
        aimc.convert(bert, **kwargs)
    assert analog_names(bert) == set()


def test_non_module_raises():
    with pytest.raises(ValueError, match="model"):
        aimc.convert([nn.Linear(2, 2)])


def test_training_mode_is_preserved():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[0].eval()
    aimc.convert(model)
    assert model[0].training is False and model[1].training is True
    aimc.to_digital(model)
    assert model[0].training is False and model[1].training is True


# ---------------------------------------------------------------------------------------------
# seeds


def test_per_layer_seeds():
    model = aimc.convert(build("bert_qa")[0], presets.pcm_inference(), seed=5)
    seeds = {n: m.seed for n, m in aimc.analog_layers(model)}
    assert len(set(seeds.values())) == len(seeds)  # all different
    assert seeds == {n: derive_seed(5, n) for n in seeds}
    again = aimc.convert(build("bert_qa")[0], presets.pcm_inference(), seed=5)
    assert {n: m.seed for n, m in aimc.analog_layers(again)} == seeds  # stable
    other = aimc.convert(build("bert_qa")[0], presets.pcm_inference(), seed=6)
    other_seeds = {n: m.seed for n, m in aimc.analog_layers(other)}
    assert all(other_seeds[n] != seeds[n] for n in seeds)
    aimc.manual_seed(other, 5)  # manual_seed uses the same derivation as convert
    assert {n: m.seed for n, m in aimc.analog_layers(other)} == seeds


def test_same_seed_same_outputs_across_builds():
    outs = []
    for _ in range(2):
        model, args, _ = build("distilbert")
        aimc.convert(model, presets.pcm_inference(), seed=3)
        aimc.program(model, seed=3)
        outs.append(output(model, args))
    assert torch.equal(outs[0], outs[1])
    model, args, _ = build("distilbert")
    aimc.convert(model, presets.pcm_inference(), seed=4)
    aimc.program(model, seed=3)  # the same chip, another IO-noise stream
    assert not torch.equal(output(model, args), outs[0])


# ---------------------------------------------------------------------------------------------
# to_digital with learned output scales


def _scaled_model(kind: str, columnwise: bool, digital_bias: bool):
    """A converted one-layer model whose learned output scales are not 1."""
    torch.manual_seed(0)
    layer, x = {
        "linear": (lambda: nn.Linear(10, 12), (3, 10)),
        "conv": (lambda: nn.Conv1d(12, 12, 3, padding=1), (2, 12, 5)),
        "grouped_conv": (lambda: nn.Conv1d(12, 12, 3, padding=1, groups=3), (2, 12, 5)),
        "hf_conv1d": (lambda: Conv1D(9, 12), (3, 12)),
    }[kind]
    model = nn.Sequential(layer())
    if kind == "hf_conv1d":
        with torch.no_grad():
            model[0].bias.normal_()  # HF initialises the bias to zero
    cfg = TILED.replace(
        mapping=TILED.mapping.replace(
            out_scaling_columnwise=columnwise,
            weight_scaling_columnwise=columnwise,
            digital_bias=digital_bias,
        )
    )
    aimc.convert(model, cfg)
    with torch.no_grad():
        model[0].out_scale.uniform_(0.5, 2.0)
    return model, torch.randn(*x)


@pytest.mark.parametrize("digital_bias", [True, False])
@pytest.mark.parametrize("columnwise", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv", "grouped_conv", "hf_conv1d"])
def test_to_digital_folds_learned_out_scale(kind, columnwise, digital_bias):
    """to_digital: 'the digital model computes what the noise-free analog one did'."""
    model, x = _scaled_model(kind, columnwise, digital_bias)
    analog_out = output(model, (x,))
    aimc.to_digital(model)
    assert not isinstance(model[0], aimc.nn.AnalogLayerMixin)
    torch.testing.assert_close(output(model, (x,)), analog_out, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# a module registered under two names


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.head = self.encoder  # the same module object under a second name

    def forward(self, x):
        return self.head(self.encoder(x))


def test_aliased_module_is_converted_everywhere():
    """A module registered under two names becomes one analog layer under both names."""
    torch.manual_seed(0)
    model = Aliased()
    weight = model.encoder.weight
    x = torch.randn(3, 4)
    ref = output(model, (x,))
    aimc.convert(model, TILED)
    assert isinstance(model.encoder, AnalogLinear)
    assert model.head is model.encoder
    assert model.encoder.weight is weight
    with torch.no_grad():
        model.encoder.out_scale.fill_(2.0)
    analog_out = output(model, (x,))
    assert not torch.allclose(analog_out, ref)
    aimc.to_digital(model)
    assert type(model.encoder) is nn.Linear
    assert model.head is model.encoder  # still one module, and the scale folded only once
    torch.testing.assert_close(output(model, (x,)), analog_out, atol=1e-5, rtol=1e-5)


def test_conv_classes_for_every_ndim():
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv3d(2, 2, 1))
    aimc.convert(model)
    assert [type(m) for m in model] == [AnalogConv1d, AnalogConv2d, aimc.nn.AnalogConv3d]
    aimc.to_digital(model)
    assert [type(m) for m in model] == [nn.Conv1d, nn.Conv2d, nn.Conv3d]


def test_digital_module_of_one_layer():
    torch.manual_seed(0)
    layer = AnalogConv2d(3, 4, 3, padding=1, config=TILED)
    twin = aimc.digital_module(layer)
    assert type(twin) is nn.Conv2d
    assert twin.weight is layer.weight and twin.bias is layer.bias
    assert (twin.padding, twin.kernel_size) == (layer.padding, layer.kernel_size)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "resnet"])
def test_state_dict_roundtrip_whole_model(name):
    src, args, _ = build(name)
    aimc.convert(src, presets.bert_squad(), seed=1)
    with torch.no_grad():
        for _, layer in aimc.analog_layers(src):
            layer.out_scale.uniform_(0.8, 1.2)
    aimc.program(src, seed=5)
    aimc.drift(src, 3600.0, seed=6)  # the chip one hour after programming
    state = src.state_dict()
    ref = output(src, args)

    dst = build(name)[0]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in dst.parameters():  # different weights
            p.normal_(generator=gen)
    aimc.convert(dst, presets.bert_squad(), seed=2)
    dst.load_state_dict(state)
    assert torch.equal(output(dst, args), ref)
    if name == "gpt2":
        assert dst.lm_head.weight is dst.transformer.wte.weight
    with pytest.raises(ValueError, match="io.w_noise"):
        aimc.convert(build(name)[0], presets.bert_squad(w_noise=0.07)).load_state_dict(state)
