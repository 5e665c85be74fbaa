"""Lean chips (``aimc.program(..., storage="lean")``): the programmed state regenerated from the
weights and seeds, bit for bit the full chip's numbers; chunked programming of large layers;
low-precision models.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import aimc
from aimc import presets
from aimc.nn import chip as chip_module

HOUR, DAY, YEAR = 3600.0, 86400.0, 365.25 * 86400.0


def with_device(cfg: aimc.AnalogConfig, **changes) -> aimc.AnalogConfig:
    return cfg.replace(device=cfg.device.replace(**changes))


CONFIGS = {
    "pcm_inference": presets.pcm_inference,
    "bert_squad": lambda: presets.bert_squad(0.035),  # pcm_read weight noise, per-tile scaling
    "per_column": lambda: with_device(presets.pcm_inference(), drift_compensation="per_column"),
    "exact_reference": lambda: with_device(
        presets.pcm_inference(), drift_compensation="exact_reference"
    ),
    "no_compensation": lambda: with_device(presets.pcm_inference(), drift_compensation="none"),
    "custom_drift": lambda: with_device(
        presets.pcm_inference(), model="pcm_custom_drift", params=None
    ),
    "gaussian": lambda: with_device(presets.pcm_inference(), model="gaussian", params=None),
    "small_tiles": lambda: presets.pcm_inference().replace(
        mapping=aimc.MappingConfig(max_input_size=48, max_output_size=40)  # uneven splits
    ),
}


def digital(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(100, 90), nn.ReLU(), nn.Conv1d(90, 30, 3, padding=1, groups=3), nn.Flatten()
    )
    return m.to(dtype)


def make(cfg: aimc.AnalogConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    return aimc.convert(digital(dtype), cfg).eval()


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for _, layer in aimc.analog_layers(m):
        layer.manual_seed(7)
    with torch.no_grad():
        return m(x)


X = torch.randn(4, 90, 100, generator=torch.Generator().manual_seed(1))


def chip_numel(m: nn.Module) -> int:
    return sum(b.numel() for k, b in m.named_buffers() if ".chip_" in "." + k)


@pytest.fixture(params=[False, True], ids=["one_chunk", "many_chunks"])
def chunked(request, monkeypatch):
    """Also with chunks of two 48x40-or-smaller tiles, so every layer spans several chunks."""
    if request.param:
        monkeypatch.setattr(chip_module, "CHUNK_WEIGHTS", 2 * 48 * 40)
    return request.param


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lean_equals_full_bit_for_bit(name, chunked):
    cfg = CONFIGS[name]()
    full, lean = make(cfg), make(cfg)
    aimc.program(full, seed=3)
    aimc.program(lean, seed=3, storage="lean")
    assert torch.equal(run(full, X), run(lean, X))  # programmed, not read
    for t in (0.0, HOUR, YEAR):
        aimc.drift(full, t, seed=4)
        aimc.drift(lean, t, seed=4)
        assert torch.equal(run(full, X), run(lean, X)), t
        for (_, a), (_, b) in zip(aimc.analog_layers(full), aimc.analog_layers(lean), strict=True):
            fa, fb = a.compensation_factor(), b.compensation_factor()
            assert (fa is None) == (fb is None)
            if fa is not None:
                assert torch.equal(fa, fb)
    # the lean chip holds no per-weight state: a few numbers per tile
    weights = sum(layer.weight.numel() for _, layer in aimc.analog_layers(lean))
    assert chip_numel(lean) < weights / 10
    assert chip_numel(full) > 2 * weights
    assert {layer.chip_storage() for _, layer in aimc.analog_layers(lean)} == {"lean"}


@pytest.mark.parametrize("storage", ["full", "lean"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_drift_of_an_unprogrammed_model_programs_and_drifts_in_one_pass(name, storage, chunked):
    """``aimc.drift`` on a model not yet programmed programs and drifts each layer in one pass
    over its tiles: the same chip, outputs and compensation as ``program`` then ``drift``."""
    cfg = CONFIGS[name]()
    two, one = make(cfg), make(cfg)
    aimc.program(two, seed=8, storage=storage)
    aimc.drift(two, DAY, seed=8)
    aimc.drift(one, DAY, seed=8, storage=storage)
    assert torch.equal(run(two, X), run(one, X))
    s_two, s_one = two.state_dict(), one.state_dict()
    assert s_two.keys() == s_one.keys()
    for key in s_two:
        if isinstance(s_two[key], torch.Tensor):
            assert torch.equal(s_two[key], s_one[key]), key
        else:
            assert s_two[key] == s_one[key], key
    # a later drift of the one-pass chip starts from the same programmed state
    aimc.drift(two, YEAR, seed=9)
    aimc.drift(one, YEAR, seed=9)
    assert torch.equal(run(two, X), run(one, X))


def test_chunked_programming_keeps_the_statistics(monkeypatch):
    """Chunks draw from their own generators: other numbers, the same distribution. The
    relative output error after a day, over 4 chips, agrees within 5 % (measured 0.2 %)."""
    cfg = presets.pcm_inference()
    x = torch.randn(64, 100, generator=torch.Generator().manual_seed(2))

    def error(chunks: bool) -> float:
        if chunks:
            monkeypatch.setattr(chip_module, "CHUNK_WEIGHTS", 32 * 32)
        else:
            monkeypatch.setattr(chip_module, "CHUNK_WEIGHTS", 1 << 22)
        errs = []
        for seed in range(4):
            torch.manual_seed(5)
            tiles = aimc.MappingConfig(max_input_size=32, max_output_size=32)
            m = aimc.convert(nn.Sequential(nn.Linear(100, 256)), cfg.replace(mapping=tiles))
            with torch.no_grad():
                ref = torch.nn.functional.linear(x, m[0].weight, m[0].bias)
            aimc.drift(m.eval(), DAY, seed=seed)
            y = run(m, x)
            errs.append(((y - ref).norm() / ref.norm()).item())
        return sum(errs) / len(errs)

    one, many = error(False), error(True)
    assert abs(many / one - 1) < 0.05, (one, many)


def test_lean_round_trip_through_state_dict(chunked):
    cfg = CONFIGS["bert_squad"]()
    a = make(cfg)
    aimc.program(a, seed=5, storage="lean")
    aimc.drift(a, DAY, seed=6)
    y = run(a, X)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make(cfg)
    b.load_state_dict(torch.load(buf))
    assert torch.equal(run(b, X), y)
    assert all(layer.chip_storage() == "lean" for _, layer in aimc.analog_layers(b))
    # a full checkpoint loaded into a lean model turns it into a full one
    c = make(cfg)
    aimc.drift(c, DAY, seed=6)
    aimc.program(b, seed=5)  # full now
    aimc.drift(b, DAY, seed=6)
    b.load_state_dict(a.state_dict())
    assert all(layer.chip_storage() == "lean" for _, layer in aimc.analog_layers(b))
    assert torch.equal(run(b, X), y)


def test_lean_chip_refuses_changed_weights():
    m = make(presets.pcm_inference())
    aimc.program(m, seed=1, storage="lean")
    run(m, X)
    with torch.no_grad():
        m[0].weight.mul_(1.01)
    with pytest.raises(RuntimeError, match=r"AnalogLinear '0'.*weights changed.*program again"):
        run(m, X)
    aimc.program(m, seed=1, storage="lean")  # reprogramming accepts the new weights
    run(m, X)


def test_full_chip_ignores_later_weight_changes():
    m = make(presets.pcm_inference())
    aimc.program(m, seed=1)
    y = run(m, X)
    with torch.no_grad():
        m[0].weight.mul_(1.01)
    assert torch.equal(run(m, X), y)


@pytest.mark.parametrize("storage", ["", "Lean", None, 1])
def test_bad_storage_is_refused(storage):
    m = make(presets.pcm_inference())
    with pytest.raises(ValueError, match=r"storage: got .*; allowed: one of 'full', 'lean'"):
        aimc.program(m, seed=1, storage=storage)
    with pytest.raises(ValueError, match=r"storage: got"):
        aimc.drift(m, 1.0, seed=1, storage=storage)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_keeps_its_dtype_and_statistics(dtype):
    """A bf16/fp16 model: outputs in its dtype; the periphery computes in float32, so the error
    against the digital float32 model equals the float32 model's up to the input rounding
    (measured: bf16 0.02 %, fp16 0.04 % relative difference of the error; tolerance 5 %)."""
    cfg = presets.bert_squad(0.0175)
    x = torch.randn(32, 90, 100, generator=torch.Generator().manual_seed(3))
    errs = {}
    with torch.no_grad():
        ref = digital()(x)
    for dt in (torch.float32, dtype):
        m = make(cfg, dt)
        aimc.program(m, seed=2, storage="lean")
        aimc.drift(m, HOUR, seed=3)
        y = run(m, x.to(dt))
        assert y.dtype == dt
        errs[dt] = ((y.float() - ref).norm() / ref.norm()).item()
    assert abs(errs[dtype] / errs[torch.float32] - 1) < 0.05, errs


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.complex64])
def test_convert_refuses_a_dtype_the_periphery_cannot_honour(dtype):
    m = nn.Sequential(nn.Linear(8, 4))
    m[0].weight = nn.Parameter(m[0].weight.detach().to(dtype), requires_grad=False)
    with pytest.raises(ValueError, match=rf"convert: Linear '0' weight has dtype {dtype}; allowed"):
        aimc.convert(m, presets.pcm_inference())
    assert isinstance(m[0], nn.Linear)  # refused before any replacement


def test_meta_model_converts_and_programming_it_is_refused():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(8, 4))
    aimc.convert(m, presets.pcm_inference())
    assert m[0].weight.is_meta
    with pytest.raises(RuntimeError, match=r"program: AnalogLinear '0' weight is on the meta"):
        aimc.program(m, seed=0, storage="lean")


def test_hf_decoder_loaded_lean_converts_in_place_and_runs_in_bf16(tmp_path):
    """A Llama decoder loaded the memory-lean way (bf16, low_cpu_mem_usage): convert shares every
    weight (no copy), a lean chip gives the full chip's logits bit for bit, in bf16."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=176,
        vocab_size=128,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for storage in ("full", "lean"):
        m = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True
        ).eval()
        before = {n: p.data_ptr() for n, p in m.named_parameters()}
        aimc.convert(m, presets.bert_squad(0.0175), exclude=["lm_head"])
        after = {n: p.data_ptr() for n, p in m.named_parameters()}
        assert all(after[n] == ptr for n, ptr in before.items())  # (+ bert_squad's out scales)
        assert len(aimc.analog_layers(m)) == 2 * 7
        aimc.program(m, seed=1, storage=storage)
        aimc.drift(m, DAY, seed=2)
        aimc.manual_seed(m, 3)
        with torch.no_grad():
            logits[storage] = m(input_ids=ids).logits
        assert logits[storage].dtype == torch.bfloat16
        assert torch.isfinite(logits[storage]).all()
    assert torch.equal(logits["full"], logits["lean"])
