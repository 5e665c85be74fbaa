"""``benchmarks/bm_work_squad.py``: its counts of bound management's first passes and rounds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import aimc
import aimc.mvm as mvm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports bench_linear
_spec = importlib.util.spec_from_file_location(
    "bm_work_squad", ROOT / "benchmarks" / "bm_work_squad.py"
)
bm_work = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bm_work)


def _model() -> torch.nn.Module:
    cfg = aimc.presets.bert_squad(0.0175)
    cfg = cfg.replace(mapping=cfg.mapping.replace(max_input_size=64, max_output_size=8))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    with torch.no_grad():  # positive weights: positive inputs add up and saturate the ADC
        m[0].weight.abs_()
    aimc.convert(m, cfg, seed=0).eval()
    aimc.program(m, seed=0)
    return m


def test_counts_pairs_saturation_and_recomputed_outputs():
    m = _model()
    x = torch.rand(64, 128, generator=torch.Generator().manual_seed(1))
    seen = []
    original = mvm._bound_management

    def spy(z, sat, *args):  # the first-pass saturation, as bound management receives it
        seen.append(int(sat.sum()))
        return original(z, sat, *args)

    mvm._bound_management = spy
    try:
        with bm_work.counting(m) as counts, torch.inference_mode():
            m(x)
    finally:
        mvm._bound_management = original
    assert set(counts) == {"0", "2"}  # per layer kind (the Sequential's indices here)
    first = counts["0"]
    # 128 inputs -> 2 input tiles, 24 outputs -> 3 output tiles of 8, 64 vectors
    assert first["pairs"] == 2 * 64 * 3 and first["first_outputs"] == 2 * 64 * 24
    assert sum(c["saturated"] for c in counts.values()) == sum(seen) > 0
    # every saturated pair is redone at least once: a round recomputes a whole tile column
    assert counts["0"]["round_outputs"] >= counts["0"]["saturated"] * 8
    # the hooks and the wrapped functions are gone afterwards
    assert mvm._bound_management is original and mvm._mvm_adc.__name__ == "_mvm_adc"
    assert all(not layer._forward_pre_hooks for _, layer in aimc.analog_layers(m))


def test_layer_kinds_drop_the_encoder_index():
    assert bm_work.layer_kind("bert.encoder.layer.11.output.dense") == "output.dense"
    assert bm_work.layer_kind("qa_outputs") == "qa_outputs"
