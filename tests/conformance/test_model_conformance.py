"""Model-level conformance (issue 12): a small HuggingFace BERT (random init, 2 layers, hidden
128, no download) converted by aimc and by AIHWKIT 1.2.0 with the BERT-on-SQuAD configs,
programmed and drifted to 1 h and 1 year on a few chips. The statistic is the relative error of
the final hidden state, ``||h - h_digital|| / ||h_digital||`` per chip; the means over chips must
agree within 5 % or 3 standard errors (the single-layer tables check the pieces more tightly;
this checks that conversion, every layer and the drift lifecycle compose the same way).

The chips are seeded as in the harness: aimc ``program(seed=1000 + i)``, AIHWKIT
``torch.manual_seed(1000 + i)``; AIHWKIT's IO noise is clock-seeded, so its numbers vary a
little from run to run.
"""

from __future__ import annotations

import copy
import math
import os
import statistics

import pytest
import torch

import aimc
from aimc import presets
from aimc.experiments.sweep import resolve_config

from .cases_presets import bert_squad_rpu, ideal_bert_squad_rpu

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

HOUR, YEAR = 3600.0, 365 * 86400.0
TIMES = (HOUR, YEAR)
CHIPS = 4


def _bert() -> tuple[torch.nn.Module, torch.Tensor]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)  # the module initialisation uses torch's default generator
    config = transformers.BertConfig(
        vocab_size=500,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    return model, ids


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).double().norm() / ref.double().norm())


@torch.no_grad()
def aimc_errors(model, ids, config, chips=CHIPS, times=TIMES) -> dict[float, list[float]]:
    """Per chip and drift time, the relative error of aimc's converted ``model``."""
    ref = model(input_ids=ids).last_hidden_state
    analog = aimc.convert(copy.deepcopy(model), config).eval()
    out: dict[float, list[float]] = {t: [] for t in times}
    for i in range(chips):
        aimc.program(analog, seed=1000 + i)
        for t in times:
            aimc.drift(analog, t, seed=2000 + i)
            aimc.manual_seed(analog, 3000 + i)
            out[t].append(_rel(analog(input_ids=ids).last_hidden_state, ref))
    return out


@torch.no_grad()
def aihwkit_errors(model, ids, rpu_config, chips=CHIPS, times=TIMES) -> dict[float, list[float]]:
    """The same with AIHWKIT's ``convert_to_analog`` (and ``remap_analog_weights``, as its
    example 24 does after converting)."""
    from aihwkit.nn.conversion import convert_to_analog

    ref = model(input_ids=ids).last_hidden_state
    analog = convert_to_analog(copy.deepcopy(model), rpu_config)
    analog.remap_analog_weights()
    analog.eval()
    out: dict[float, list[float]] = {t: [] for t in times}
    for i in range(chips):
        torch.manual_seed(1000 + i)
        analog.program_analog_weights()
        for t in times:
            analog.drift_analog_weights(t)
            out[t].append(_rel(analog(input_ids=ids).last_hidden_state, ref))
    return out


def test_bert_squad_model_error_agrees():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, ids = _bert()
    a = aimc_errors(model, ids, presets.bert_squad(0.0175))
    b = aihwkit_errors(model, ids, bert_squad_rpu(0.0175))
    lines, ok = [], True
    for t in TIMES:
        ma, mb = statistics.fmean(a[t]), statistics.fmean(b[t])
        se = math.sqrt((statistics.variance(a[t]) + statistics.variance(b[t])) / CHIPS)
        allowed = max(0.05 * mb, 3 * se)
        good = abs(ma - mb) <= allowed
        ok &= good
        lines.append(
            f"{'ok ' if good else 'BAD'} t={t:g} s: aimc {ma:.5f}  AIHWKIT {mb:.5f}  "
            f"deviation {100 * (ma - mb) / mb:+.2f} %  allowed ±{allowed:.2g}"
        )
    assert ok, "BERT 2x128, final hidden state relative error:\n" + "\n".join(lines)


def test_ideal_is_digital_at_every_time():
    """The sweep's ``ideal`` and AIHWKIT's ``create_ideal_rpu_config`` both stay the digital
    model after programming and drift (aimc: up to its float16 chip storage)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, ids = _bert()
    a = aimc_errors(model, ids, resolve_config("ideal"), chips=1)
    b = aihwkit_errors(model, ids, ideal_bert_squad_rpu(), chips=1)
    for t in TIMES:
        assert a[t][0] < 1e-3 and b[t][0] < 1e-5, (t, a[t], b[t])
