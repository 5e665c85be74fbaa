"""Review of analog LoRA, distillation and the SQuAD fine-tuning workflow: each test here
demonstrates one bug (it fails on the code as reviewed) and says what should happen instead.

Tiny random BERT QA models (2 layers, hidden 32) with the shared MiniLM fast tokenizer, as in
``test_finetune_squad.py`` / ``test_finetune_distill_lora.py``; no network, fixed seeds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import SHARED_DEV, SHARED_MODEL, official_layout, save_tiny_bert

import aimc
from aimc.convert import peft_base_name
from aimc.lora import LoraSpec, attach_lora, parse_lora

pytest.importorskip("peft")
pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Any]:
    """A tiny QA model dir (real tokenizer) and 12 dev questions in the official layout."""
    from aimc.squad.data import load_squad

    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    root = tmp_path_factory.mktemp("review_adaptation")
    dev = load_squad(SHARED_DEV)[:12]
    train = root / "train.json"
    train.write_text(json.dumps(official_layout([e.__dict__ for e in dev])))
    return {
        "root": root,
        "model": save_tiny_bert(root / "tiny-qa", dropout=False),
        "train": train,
        "dev": dev,
    }


def _ids() -> torch.Tensor:
    return torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))


def _set_lora_b(model: torch.nn.Module, scale: float = 1.0, seed: int = 1) -> None:
    """``B`` starts at zero: give it values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _lora_export(assets, name: str, preset=aimc.presets.pcm_weights_only) -> tuple[Path, Any]:
    """An ``aimc finetune-squad --lora``-style export (frozen base + ``adapter/``) of the tiny
    model with non-zero adapters, written by the workflow's own ``export_model``."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from aimc.experiments.checkpoints import export_model

    tok = AutoTokenizer.from_pretrained(str(assets["model"]))
    model = AutoModelForQuestionAnswering.from_pretrained(str(assets["model"]))
    aimc.convert(model, preset(), seed=1)
    model = attach_lora(model, LoraSpec(r=4, alpha=8, targets=("query", "value")), seed=2)
    _set_lora_b(model, scale=1.0)
    out = assets["root"] / name
    shutil.rmtree(out, ignore_errors=True)
    return export_model(model, tok, out, {}), model


# -- squad-drift ignores the learned input ranges of a LoRA export ---------------------------------


def test_squad_drift_uses_the_learned_input_ranges_of_a_lora_export(assets):
    """``finetune-squad --lora`` with a learned-input-range config (``standard_hwa``) records the
    ranges the adapter was trained with in ``aimc_finetune.json`` under the *base* model's layer
    names (``_exporter`` reads them after ``unload()``: ``bert.encoder...query``).
    ``squad-drift`` loads the export as a ``PeftModel``, whose analog layers are named
    ``base_model.model.bert...query.base_layer``; ``_range_setter`` looks those names up in the
    record, finds none, and silently *calibrates* fresh ranges instead — the adapter is
    evaluated with input ranges it was never trained with (the non-LoRA path uses the record).

    Measured (ranges recorded as 0.5 + 0.1 i): every layer gets the calibrated max-abs range
    instead (e.g. 3.67 where 0.5 was trained, on the real run ``finetune-squad --preset
    standard_hwa --lora``: learned 3.0001 vs evaluated 3.672). Should: each analog layer's
    range equals the recorded one (match names with ``aimc.convert.peft_base_name``).
    Fix: ``aimc/experiments/squad_drift.py::_range_setter`` (or record both names)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from aimc.experiments.checkpoints import export_model
    from aimc.experiments.squad_drift import _range_setter, load_qa_model
    from aimc.squad.features import make_features

    tok = AutoTokenizer.from_pretrained(str(assets["model"]))
    model = AutoModelForQuestionAnswering.from_pretrained(str(assets["model"]))
    aimc.convert(model, aimc.presets.standard_hwa(), seed=1)
    model = attach_lora(model, LoraSpec(r=4, alpha=8), seed=2)
    with torch.no_grad():  # the ranges training learned (distinct per layer)
        for i, (_, layer) in enumerate(aimc.analog_layers(model)):
            layer.input_range.fill_(0.5 + 0.1 * i)
            layer.input_range_batches.fill_(layer.analog_config.hwa.input_range_init_batches)
    final = assets["root"] / "lora_ranges"
    shutil.rmtree(final, ignore_errors=True)
    export_model(model, tok, final, {})
    recorded = json.loads((final / "aimc_finetune.json").read_text())["learned_input_ranges"]
    assert len(recorded) == 13

    evaluated, _ = load_qa_model(str(final), torch.device("cpu"))
    aimc.convert(evaluated, aimc.presets.standard_hwa(), seed=0)
    feats = make_features(assets["dev"][:4], tok, 128, 32)
    _range_setter(str(final), feats, 4, torch.device("cpu"))(evaluated, "standard_hwa")
    got = {
        peft_base_name(n): float(layer.input_range.detach())
        for n, layer in aimc.analog_layers(evaluated)
    }
    assert got.keys() == recorded.keys()
    wrong = {n: (recorded[n], got[n]) for n in got if abs(got[n] - recorded[n]) > 1e-6}
    assert not wrong, f"{len(wrong)}/13 layers not at their learned range, e.g. {wrong}"


# -- squad-drift: a LoRA model does not read the same chip noise as the plain model ---------------


def test_zero_adapter_lora_model_evaluates_like_the_plain_model_on_the_same_chip():
    """docs/finetune.md promises "a seed programs the same chip with and without the adapter:
    rows with and without LoRA are compared on the same chips" (``lifecycle._chip_name`` strips
    peft's wrapper names for ``program``/``drift``). But the per-forward noise streams are
    seeded by ``aimc.manual_seed`` (called by ``SweepModel.prepare`` with the unit's read seed),
    which derives each layer's seed from its *peft* name (``base_model.model....base_layer``):
    the LoRA row reads the chip with another IO/read-noise realization than the plain row, so
    the paired comparison is not paired.

    A freshly attached adapter (``B = 0``) adds exactly 0: digitally both models agree bit for
    bit (max |diff| 0.0). Through the squad-drift unit ``bert_squad:0.035, chip 0, t = 1 h``
    the start logits differ by 0.0197 (max |logit| 0.139, 14 %); with ``manual_seed`` using
    ``peft_base_name`` the difference is 0.0. Should: identical logits. Fix:
    ``aimc/convert.py::manual_seed`` (and ``convert``'s per-layer seeds) should derive from
    ``peft_base_name`` in a peft model, as ``aimc/lifecycle.py`` does."""
    from peft import get_peft_model
    from transformers import BertConfig, BertForQuestionAnswering

    from aimc.experiments.sweep import SweepModel, Unit

    def tiny():
        cfg = BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return BertForQuestionAnswering(cfg).eval()

    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    plain, wrapped = tiny(), get_peft_model(tiny(), LoraSpec(r=4, alpha=8).peft_config())
    with torch.no_grad():
        digital = [m(input_ids=ids).start_logits for m in (plain, wrapped)]
    assert torch.equal(digital[0], digital[1])  # B = 0: the same function
    outs = []
    for m in (plain, wrapped):
        SweepModel(m, seed=0).prepare(Unit("bert_squad:0.035", 0, 3600.0))
        with torch.no_grad():
            outs.append(m(input_ids=ids, attention_mask=torch.ones_like(ids)).start_logits)
    diff = float((outs[0] - outs[1]).abs().max())
    assert diff == 0.0, f"max |diff| {diff:.4g} of max |logit| {float(outs[0].abs().max()):.4g}"


# -- finetune-squad: --max-length beyond the student's positions ----------------------------------


def test_finetune_refuses_max_length_beyond_the_models_positions(assets):
    """``--max-length`` is checked against the teacher's positions (``load_teacher``) and, in
    ``squad-drift``, against the model's, but ``finetune-squad`` never checks it against the
    *student's* own ``max_position_embeddings``. A model with 64 positions and
    ``--max-length 128`` writes ``run_config.json`` and ``tensorboard/`` into ``--out`` and then
    crashes in the first forward with ``RuntimeError: The size of tensor a (128) must match the
    size of tensor b (64)`` — not the documented "status 2 and a message naming the option".
    Should: ``ValueError`` naming ``--max-length`` before anything is written. Fix:
    ``aimc/experiments/finetune_squad.py::run`` (check ``max_positions(model.config)`` after
    ``load_model``)."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from aimc.experiments.finetune_squad import FinetuneSpec, run

    short = assets["root"] / "short-positions"
    tok = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertForQuestionAnswering(cfg).save_pretrained(str(short))
    tok.save_pretrained(str(short))
    out = assets["root"] / "never_positions"
    spec = FinetuneSpec(
        model=str(short), train=str(assets["train"]), max_length=128, stride=32, max_steps=1,
        batch_size=2,
    )  # fmt: skip
    try:
        with pytest.raises(ValueError, match="--max-length"):
            run(spec, out, progress=False)
        assert not (out / "run_config.json").exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- a LoRA export used as --teacher / --model loses its adapter ----------------------------------


def test_teacher_from_a_lora_export_is_base_plus_adapter(assets):
    """A ``finetune-squad --lora`` export (``model/`` = frozen base + ``adapter/``) means base +
    adapter: ``squad-drift --model`` attaches ``adapter/`` (``load_qa_model``). Given as
    ``--teacher`` (docs: "an earlier ... fine-tune"), ``load_teacher`` loads only the base with
    ``AutoModelForQuestionAnswering.from_pretrained`` and silently drops the adapter: the student
    is distilled from the untuned base.

    Measured on the tiny model with a non-zero adapter: the teacher's start logits differ from
    the export's (``load_qa_model``) by 0.0111 (max |logit| 0.137) and equal the bare base's
    bit for bit. Should: the
    teacher computes what the directory evaluates to (attach ``adapter/``), or an error naming
    ``--teacher``. Fix: ``aimc/experiments/distill.py::load_teacher`` (same for ``--model`` in
    ``finetune_squad.load_model``, see the next test)."""
    from transformers import AutoTokenizer

    from aimc.experiments.distill import load_teacher
    from aimc.experiments.squad_drift import load_qa_model

    final, _ = _lora_export(assets, "lora_teacher")
    tok = AutoTokenizer.from_pretrained(str(final))
    spec = SimpleNamespace(model=str(assets["model"]), teacher=str(final), max_length=128)
    try:
        teacher = load_teacher(spec, torch.device("cpu"), tok)
    except ValueError as err:  # refusing it is fine too, if it names --teacher
        assert "--teacher" in str(err)
        return
    want, _ = load_qa_model(str(final), torch.device("cpu"))
    with torch.no_grad():
        got_t, want_t = teacher(input_ids=_ids()).start_logits, want(input_ids=_ids()).start_logits
    diff = float((got_t - want_t).abs().max())
    assert diff < 1e-6, f"teacher differs from the export's base+adapter by {diff:.4g}"


def test_finetune_model_from_a_lora_export_keeps_the_adapter(assets):
    """``finetune-squad --model <a LoRA export>`` (e.g. continuing from ``runs/.../lora/model``):
    ``load_model`` reads only the base weights and silently drops ``adapter/``, so the run
    continues from (and its export is) the untuned base, while ``squad-drift`` evaluates the
    same directory as base + adapter. Measured: the loaded model's start logits differ from
    ``load_qa_model``'s by 0.0111 (max |logit| 0.137). Should: the adapter is attached, or an
    error naming ``--model``. Fix: ``aimc/experiments/finetune_squad.py::load_model``."""
    from aimc.experiments.finetune_squad import load_model
    from aimc.experiments.squad_drift import load_qa_model

    final, _ = _lora_export(assets, "lora_as_model")
    try:
        model, _, _ = load_model(str(final), torch.device("cpu"), seed=0)
    except ValueError as err:
        assert "--model" in str(err)
        return
    want, _ = load_qa_model(str(final), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        got_t, want_t = model(input_ids=_ids()).start_logits, want(input_ids=_ids()).start_logits
    diff = float((got_t - want_t).abs().max())
    assert diff < 1e-6, f"--model differs from the export's base+adapter by {diff:.4g}"


# -- the canonical --lora text is lossy -----------------------------------------------------------


def test_lora_canonical_text_keeps_the_trained_values():
    """``LoraSpec.text()`` formats ``alpha`` and ``dropout`` with ``:g`` (6 significant digits);
    that text is what ``aimc_finetune.json`` records as ``lora`` and what ``run_config.json``
    compares on ``--resume``. Measured: ``parse_lora("alpha=1234567,dropout=0.1234567")`` gives
    ``alpha=1.23457e+06,dropout=0.123457``, parsed back alpha 1234570, dropout 0.123457: the
    record is not what was trained. Should: ``parse_lora(spec.text()) == spec`` (e.g. ``repr``
    of the floats). Fix: ``aimc/lora.py::LoraSpec.text``."""
    spec = parse_lora("alpha=1234567,dropout=0.1234567")
    back = parse_lora(spec.text())
    assert back == spec, (
        f"{spec.text()!r} parses back to alpha={back.alpha}, dropout={back.dropout}"
    )


def test_resume_refuses_another_lora_dropout(assets):
    """``run`` puts ``LoraSpec.text()`` (lossy, see above) into ``determines`` *in place of* the
    raw ``--lora`` text, so two different adapters' settings compare equal: a run started
    with ``--lora r=4,dropout=0.1234567`` is resumed with ``dropout=0.1234571`` (a different
    dropout probability, so different numbers) and no "different" error is raised — the docs
    promise the options are checked on ``--resume``. Should: ``ValueError`` (the run_config
    differs). Fix: ``aimc/lora.py::LoraSpec.text`` (lossless) or compare the parsed spec."""
    from aimc.experiments.finetune_squad import FinetuneSpec, run

    base = FinetuneSpec(
        model=str(assets["model"]), train=str(assets["train"]), max_length=128, stride=32,
        max_steps=1, batch_size=4, preset="pcm_weights_only", hwa_noise=0.05, seed=3,
    )  # fmt: skip
    out = assets["root"] / "lora_lossy"
    shutil.rmtree(out, ignore_errors=True)
    run(replace(base, lora="r=4,dropout=0.1234567"), out, progress=False)
    with pytest.raises(ValueError, match="different"):
        run(replace(base, lora="r=4,dropout=0.1234571"), out, resume=True, progress=False)
