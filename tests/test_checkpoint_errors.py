"""Loading a layer checkpoint written by another aimc version or with another config: refused
with the layer and the differing fields named (issue 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc import presets


def _model(config: aimc.AnalogConfig) -> nn.Module:
    torch.manual_seed(0)
    return aimc.convert(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)), config)


def _extra_key(state: dict) -> str:
    return next(k for k in state if k.startswith("2.") and k.endswith("_extra_state"))


def test_other_config_is_refused_with_the_differing_fields():
    state = _model(presets.bert_squad(0.035)).state_dict()
    target = _model(presets.bert_squad(0.07))
    with pytest.raises(ValueError) as info:
        target.load_state_dict(state)
    msg = str(info.value)
    assert "AnalogLinear '0'" in msg and "io.w_noise: model=0.07, checkpoint=0.035" in msg


def test_newer_config_version_is_refused():
    state = _model(presets.pcm_inference()).state_dict()
    key = _extra_key(state)
    state[key] = dict(state[key], config=dict(state[key]["config"], version=99))
    with pytest.raises(ValueError) as info:
        _model(presets.pcm_inference()).load_state_dict(state)
    msg = str(info.value)
    assert "AnalogLinear '2'" in msg and "config.version" in msg and "99" in msg


@pytest.mark.parametrize("bad", [None, 3, {"config": {}}, {"seed": 1}, {"config": "x", "seed": 0}])
def test_foreign_extra_state_is_refused(bad):
    state = _model(presets.pcm_inference()).state_dict()
    state[_extra_key(state)] = bad
    with pytest.raises(ValueError, match="checkpoint of AnalogLinear '2'"):
        _model(presets.pcm_inference()).load_state_dict(state)


def test_programmed_chip_round_trips_bit_exactly():
    src = _model(presets.pcm_inference()).eval()
    aimc.drift(aimc.program(src, seed=1), 3600.0, seed=2)
    dst = _model(presets.pcm_inference()).eval()
    dst.load_state_dict(src.state_dict())
    x = torch.randn(5, 8)
    aimc.manual_seed(src, 3)
    aimc.manual_seed(dst, 3)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
