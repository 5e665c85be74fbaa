"""Analog LoRA (aimc.lora): peft's LoRA beside analog layers; convert skips peft's adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc.lora import LoraSpec, attach_lora, load_adapter, parameter_counts, parse_lora
from aimc.nn.base import AnalogLayerMixin

pytest.importorskip("peft")
pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


def _tiny_qa(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForQuestionAnswering(config).eval()


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _nonzero_adapters(model: nn.Module, seed: int = 1) -> None:
    """``B`` starts at zero (the adapter adds nothing): give it values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _analog_lora_model(preset=aimc.presets.pcm_weights_only) -> nn.Module:
    model = aimc.convert(_tiny_qa(), preset(), seed=5)
    model = attach_lora(model, LoraSpec(r=4, alpha=8, targets=("query", "value")), seed=2)
    _nonzero_adapters(model)
    return model


# -- parsing ---------------------------------------------------------------------------------


def test_parse_lora_values_defaults_and_canonical_text():
    assert parse_lora("") == LoraSpec()
    spec = parse_lora("r=4, alpha=8,targets=query,key,value,dropout=0.1")
    assert spec == LoraSpec(r=4, alpha=8.0, targets=("query", "key", "value"), dropout=0.1)
    assert spec.text() == "r=4,alpha=8,dropout=0.1,targets=query,key,value"
    assert parse_lora(spec.text()) == spec
    assert parse_lora("targets=dense") == LoraSpec(targets=("dense",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rank=8", "unknown key 'rank'"),
        ("r=0", "r='0' is not an integer >= 1"),
        ("r=2.5", "r='2.5' is not an integer >= 1"),
        ("alpha=-1", "alpha='-1' is not a number > 0"),
        ("alpha=nan", "alpha='nan' is not a number > 0"),
        ("dropout=1", r"dropout='1' is not a number in \[0, 1\)"),
        ("r=8,r=4", "key 'r' given twice"),
        ("query", "'query' is not key=value"),
        ("r=8,query", "'query' is not key=value"),
        ("targets=", "targets has bad layer name"),
        ("targets=a b", "targets has bad layer name"),
        ("targets=query,query", "targets has duplicates"),
    ],
)
def test_parse_lora_errors_name_the_option(text, message):
    with pytest.raises(ValueError, match="^--lora: .*" + message + ".*allowed: r=<int>"):
        parse_lora(text)


# -- attach, targets, conversion ---------------------------------------------------------------


def test_attach_lora_wraps_analog_layers_and_trains_only_the_adapters():
    model = _analog_lora_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B x query, value x 2 layers
    n_train, n_total = parameter_counts(model)
    assert n_train == 2 * 2 * (4 * 32 + 32 * 4)
    assert n_total == parameter_counts(_tiny_qa())[0] + n_train
    wrapped = [m for n, m in model.named_modules() if n.endswith(("query", "value"))]
    assert len(wrapped) == 4
    for m in wrapped:
        assert isinstance(m.base_layer, aimc.nn.AnalogLinear)
        for a in (m.lora_A["default"], m.lora_B["default"]):
            assert type(a) is nn.Linear  # digital
    # y = analog(x) + B A x * alpha / r, with the analog part exactly the base layer's
    layer = wrapped[0]
    model.train()  # the training forward: digital weights through the analog periphery
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    aimc.manual_seed(model, 7)
    y = layer(x)
    aimc.manual_seed(model, 7)
    base = layer.base_layer(x)
    lora = layer.lora_B["default"](layer.lora_A["default"](x)) * (8 / 4)
    torch.testing.assert_close(y, base + lora)


def test_convert_after_attach_leaves_the_adapters_digital():
    from peft import get_peft_model

    model = get_peft_model(_tiny_qa(), LoraSpec(r=4, targets=("query",)).peft_config())
    names_before = {n for n, _ in model.named_modules()}
    aimc.convert(model, aimc.presets.pcm_weights_only(), seed=1)
    analog = [n for n, _ in aimc.analog_layers(model)]
    assert len(analog) == 13  # 6 Linear x 2 blocks + qa_outputs: the adapters are not counted
    assert not any("lora_" in n for n in analog)
    assert sum(n.endswith("query.base_layer") for n in analog) == 2
    assert {n for n, _ in model.named_modules()} == names_before
    with pytest.raises(ValueError, match="matched no convertible module"):
        aimc.convert(_peft_digital(), targets="lora_A")


def _peft_digital() -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(_tiny_qa(), LoraSpec(r=4, targets=("query",)).peft_config())


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (("nope",), "targets='nope' matches no analog layer \\(none\\)"),
        (("attention",), "targets='attention' matches no analog layer \\(it matches"),
        (("query", "value"), "targets='value' matches no analog layer \\(it matches"),
    ],
)
def test_attach_lora_target_errors(targets, message):
    model = aimc.convert(_tiny_qa(), aimc.presets.pcm_weights_only(), exclude="value")
    with pytest.raises(ValueError, match="^--lora: " + message):
        attach_lora(model, LoraSpec(targets=targets))
    with pytest.raises(ValueError, match="--lora: targets=query: the model has no analog layer"):
        attach_lora(_tiny_qa(), LoraSpec(targets=("query",)))


# -- save / load, new chips --------------------------------------------------------------------


def test_adapter_save_load_round_trip(tmp_path):
    model = _analog_lora_model()
    model.save_pretrained(tmp_path / "adapter")
    other = aimc.convert(_tiny_qa(), aimc.presets.pcm_weights_only(), seed=5)
    loaded = load_adapter(other, tmp_path / "adapter")
    assert not any(p.requires_grad for p in loaded.parameters())
    ours = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and len(ours) == 8
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for mode in ("train", "eval"):
        outs = []
        for m in (model, loaded):
            getattr(m, mode)()
            aimc.manual_seed(m, 11)  # same HWA noise draw (train) / same chip reads (eval)
            if mode == "eval":
                aimc.program(m, seed=3)
            with torch.no_grad():
                outs.append(m(**_inputs()).start_logits)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def _adapter_residuals(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` once; per LoRA layer, (output - its analog base's output, the adapter
    computed digitally on the same input)."""
    from peft.tuners.lora import Linear as LoraLinear

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, LoraLinear):
            store: dict[str, torch.Tensor] = {}

            def base_hook(mod, args, out, store=store):
                store["base"] = out

            def hook(mod, args, out, store=store):
                x = args[0]
                ad = mod.lora_B["default"](mod.lora_A["default"](x)) * mod.scaling["default"]
                seen.append((out - store["base"], ad))

            hooks += [m.base_layer.register_forward_hook(base_hook), m.register_forward_hook(hook)]
    with torch.no_grad():
        model(**_inputs())
    for h in hooks:
        h.remove()
    return seen


def test_adapter_on_new_chips_differs_only_through_the_base():
    model = _analog_lora_model(aimc.presets.pcm_inference).eval()
    adapters = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    logits = []
    for chip in (1, 2):
        aimc.program(model, seed=chip)
        aimc.drift(model, 3600.0, seed=chip)
        aimc.manual_seed(model, 0)
        with torch.no_grad():
            logits.append(model(**_inputs()).start_logits)
        residuals = _adapter_residuals(model)
        assert len(residuals) == 4
        for got, want in residuals:  # the adapter's part is the digital B A x * alpha / r
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        after = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert all(torch.equal(adapters[k], after[k]) for k in adapters)  # never programmed
    assert not torch.allclose(logits[0], logits[1])  # a different chip: a different base
    programmed = [n for n, m in model.named_modules() if isinstance(m, AnalogLayerMixin)]
    assert programmed and not any("lora_" in n for n in programmed)


def test_a_seed_programs_the_same_chip_with_and_without_the_adapter():
    """Chip seeds derive from the layer names without peft's wrapper parts: the base of a
    LoRA model gets, for a given seed, the chip the plain converted model gets."""
    plain = aimc.convert(_tiny_qa(), aimc.presets.pcm_inference(), seed=5).eval()
    wrapped = _analog_lora_model(aimc.presets.pcm_inference).eval()
    for m in (plain, wrapped):
        aimc.drift(m, 3600.0, seed=3)
    plain_chips = {
        n: layer.state_dict()
        for n, layer in plain.named_modules()
        if isinstance(layer, AnalogLayerMixin)
    }
    wrapped_chips = {
        n.removeprefix("base_model.model.").replace(".base_layer", ""): layer.state_dict()
        for n, layer in wrapped.named_modules()
        if isinstance(layer, AnalogLayerMixin)
    }
    assert plain_chips.keys() == wrapped_chips.keys()
    for name, state in plain_chips.items():
        for key, value in state.items():
            if key.startswith("chip_"):
                assert torch.equal(value, wrapped_chips[name][key]), (name, key)
