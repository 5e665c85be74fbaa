"""``aimc finetune-squad --teacher`` (distillation) and ``--lora`` (analog LoRA): the loss, the
options and their errors, resume and DDP equivalence, and evaluation of base + adapter by
``squad-drift`` on chips the adapter was not trained on.

Same tiny random BERT and training data as ``test_finetune_squad.py`` (its ``assets``)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DEV, SHARED_MODEL, official_layout, save_tiny_bert
from safetensors.torch import load_file
from test_finetune_squad import _finetune_args, _launch, _spec, _torchrun, _weights

from aimc.experiments.distill import distill_loss
from aimc.experiments.finetune_squad import latest_checkpoint, run
from aimc.experiments.squad_drift import load_qa_model

pytest.importorskip("peft")

LORA = "r=4,alpha=8,targets=query,value"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Any]:
    """As in ``test_finetune_squad.py``: tiny QA and bare models, 24 dev questions to train on."""
    from aimc.squad.data import load_squad

    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    root = tmp_path_factory.mktemp("distill_lora_assets")
    train = root / "train.json"
    train.write_text(json.dumps(official_layout([e.__dict__ for e in load_squad(SHARED_DEV)[:24]])))
    return {
        "root": root,
        "model": save_tiny_bert(root / "tiny-qa", dropout=False),
        "bare": save_tiny_bert(root / "tiny-bare", qa=False, dropout=False),
        "train": train,
    }


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


def _adapter(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "adapter" / "adapter_model.safetensors"))


# -- the distillation loss ---------------------------------------------------------------------


def test_distill_loss_known_values():
    mask = torch.ones(1, 2, dtype=torch.long)
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_teacher = (3/4, 1/4) at T = 1
    # KL(teacher || student) = 3/4 ln(3/2) + 1/4 ln(1/2); the reverse direction would be 0.1438
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = distill_loss(student, student, teacher, teacher, mask, 1.0)
    assert float(got) == pytest.approx(want, rel=1e-6) and want == pytest.approx(0.130812, 1e-5)
    # T = 2: p_teacher = softmax(ln(3)/2, 0) = (sqrt3, 1)/(1 + sqrt3), scaled by T^2 = 4
    p = [math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]
    want2 = 4 * sum(q * math.log(q / 0.5) for q in p)
    assert float(distill_loss(student, student, teacher, teacher, mask, 2.0)) == pytest.approx(
        want2, rel=1e-6
    )
    # start and end are averaged; windows are averaged
    end_same = distill_loss(student, teacher, teacher, teacher, mask, 1.0)
    assert float(end_same) == pytest.approx(want / 2, rel=1e-6)
    two = distill_loss(
        torch.cat([student, teacher]),
        torch.cat([student, teacher]),
        torch.cat([teacher, teacher]),
        torch.cat([teacher, teacher]),
        torch.ones(2, 2, dtype=torch.long),
        1.0,
    )
    assert float(two) == pytest.approx(want / 2, rel=1e-6)


def test_distill_loss_ignores_padding_and_is_zero_for_the_teacher_itself():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, generator=gen), torch.randn(2, 7, generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    base = distill_loss(s, t, t, s, mask, 3.0)
    pad = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    big = torch.full((2, 3), 9.0)
    padded = distill_loss(
        torch.cat([s, big], 1), torch.cat([t, -big], 1), torch.cat([t, big], 1),
        torch.cat([s, big], 1), pad, 3.0,
    )  # fmt: skip
    torch.testing.assert_close(base, padded)
    assert float(distill_loss(s, t, s, t, mask, 0.5)) == pytest.approx(0.0, abs=1e-6)
    assert float(base) > 0


# -- distillation runs -------------------------------------------------------------------------


def test_distill_resumes_to_the_same_weights_and_changes_training(assets):
    teacher = save_tiny_bert(assets["root"] / "teacher", dropout=False, seed=1)
    spec = _spec(assets, preset="pcm_weights_only", hwa_noise=0.05, max_steps=5)
    spec_kd = _spec(
        assets, preset="pcm_weights_only", hwa_noise=0.05, max_steps=5, teacher=str(teacher),
        distill_alpha=0.7, distill_temperature=3.0,
    )  # fmt: skip
    full, cut, plain = (assets["root"] / n for n in ("kd_full", "kd_cut", "kd_plain"))
    before = _weights(teacher)
    run(spec_kd, full, save_every=2, progress=False)
    run(spec_kd, cut, save_every=2, keep=5, progress=False)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    shutil.rmtree(cut / "model")
    assert latest_checkpoint(cut).name == "step-0000003"
    run(spec_kd, cut, save_every=2, resume=True, progress=False)
    a, b = _weights(full / "model"), _weights(cut / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((full / "run_config.json").read_text())
    text = json.dumps(cfg)
    assert str(teacher) in text and '"distill_alpha": 0.7' in text
    with pytest.raises(ValueError, match="different"):  # another temperature: not a resume
        run(replace_spec(spec_kd, distill_temperature=2.0), cut, resume=True, progress=False)
    run(spec, plain, progress=False)  # the same run without the teacher ends elsewhere
    c = _weights(plain / "model")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    after = _weights(teacher)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher is not trained


def replace_spec(spec, **kw):
    from dataclasses import replace

    return replace(spec, **kw)


def test_teacher_self_is_the_frozen_digital_starting_model(assets, monkeypatch):
    """``--teacher self`` loads the starting model again (digital, eval, no gradients) and the
    teacher is never converted: the student's analog layers are the only analog layers."""
    import aimc.experiments.finetune_squad as fs

    seen = {}
    real = fs.teacher_logits

    def spy(teacher, batch):
        seen["teacher"] = teacher
        return real(teacher, batch)

    monkeypatch.setattr(fs, "teacher_logits", spy)
    out = assets["root"] / "kd_self"
    run(_spec(assets, preset="standard_hwa", teacher="self", max_steps=2), out, progress=False)
    teacher = seen["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    import aimc

    assert aimc.analog_layers(teacher) == []
    start = _weights(assets["model"])
    for k, v in teacher.state_dict().items():
        if k in start:
            assert torch.equal(v, start[k]), k


# -- analog LoRA runs --------------------------------------------------------------------------


def test_lora_trains_only_the_adapter_and_resumes(assets):
    spec = _spec(assets, preset="pcm_weights_only", hwa_noise=0.05, max_steps=5, lora=LORA)
    full, cut = assets["root"] / "lora_full", assets["root"] / "lora_cut"
    run(spec, full, save_every=2, progress=False)
    run(spec, cut, save_every=2, keep=5, progress=False)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    shutil.rmtree(cut / "model")
    run(spec, cut, save_every=2, resume=True, progress=False)
    a, b = _adapter(full / "model"), _adapter(cut / "model")
    assert len(a) == 8 and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # B moved from zero
    start, base = _weights(assets["model"]), _weights(full / "model")
    assert base.keys() == start.keys() and all(torch.equal(base[k], start[k]) for k in start)
    meta = json.loads((full / "model" / "aimc_finetune.json").read_text())
    assert meta["lora"] == "r=4,alpha=8,dropout=0,targets=query,value"
    trainable, total = meta["trainable_parameters"]
    assert trainable == 2 * 2 * (4 * 32 + 32 * 4)
    assert total == sum(v.numel() for v in start.values()) + trainable
    assert len(meta["learned_input_ranges"]) == 0  # pcm_weights_only: no learned ranges
    config = json.loads((full / "model" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["query", "value"]


def test_squad_drift_evaluates_base_plus_adapter_on_new_chips(assets):
    """The exported dir (base + adapter/) is loaded by squad-drift with the adapter attached;
    each chip programs the base with its own seed and the adapter stays digital and fixed."""
    from aimc.experiments.squad_drift import SweepSpec
    from aimc.experiments.squad_drift import run as drift_run
    from aimc.experiments.sweep import SweepModel, Unit
    from aimc.lora import is_peft_model

    out = assets["root"] / "lora_eval"
    spec = _spec(assets, preset="bert_squad:0.035", max_steps=3, lora=LORA)
    final = run(spec, out, progress=False)
    model, _ = load_qa_model(str(final), torch.device("cpu"))
    assert is_peft_model(model)
    adapters = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    state = SweepModel(model, seed=0)
    ids = torch.randint(1000, 2000, (2, 20), generator=torch.Generator().manual_seed(0))
    logits = []
    for chip in (0, 1):
        state.prepare(Unit("bert_squad:0.035", chip, 3600.0))
        analog = [n for n, _ in __import__("aimc").analog_layers(model)]
        assert len(analog) == 13 and not any("lora_" in n for n in analog)
        with torch.no_grad():
            logits.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).start_logits)
        now = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert all(torch.equal(adapters[k], now[k]) for k in adapters)
    assert not torch.allclose(logits[0], logits[1])
    sweep = SweepSpec(
        model=str(final), data=str(assets["train"]), configs=["digital", "bert_squad:0.035"],
        times=[0.0, 3600.0], chips=2, max_questions=4, max_length=128, stride=32,
    )  # fmt: skip
    rows = drift_run(sweep, assets["root"] / "lora_drift", progress=False)
    assert len(rows) == 5 and all(0 <= r["f1"] <= 100 for r in rows)


# -- bad options -------------------------------------------------------------------------------


def _odd_teachers(root: Path) -> dict[str, Path]:
    """A QA model with a different vocabulary, and one whose QA head has 3 outputs."""
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    other = root / "other-vocab"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(other))
    cfg = BertConfig(vocab_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertForQuestionAnswering(cfg).save_pretrained(str(other))
    three = root / "three-outputs"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    cfg3 = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_labels=3,
    )  # fmt: skip
    BertForQuestionAnswering(cfg3).save_pretrained(str(three))
    tok.save_pretrained(str(three))
    return {"vocab": other, "three": three}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distill_alpha": 1.5}, r"--distill-alpha: got 1.5; allowed: a number in \[0, 1\]"),
        ({"distill_alpha": -0.1}, "--distill-alpha: got -0.1"),
        ({"distill_alpha": float("nan")}, "--distill-alpha: got nan"),
        ({"distill_temperature": 0.0}, "--distill-temperature: got 0.0; allowed: a number > 0"),
        ({"distill_temperature": -2}, "--distill-temperature: got -2"),
        ({"teacher": " "}, "--teacher: got ' '"),
        ({"teacher": "bare"}, "has no trained question-answering head"),
        ({"teacher": "vocab"}, "has a different tokenizer than --model"),
        ({"teacher": "three"}, "has a QA head with 3 outputs; allowed: 2"),
        ({"teacher": "missing"}, "--teacher: .* cannot load a HuggingFace model"),
        ({"teacher": "self", "model": "bare"}, "--teacher self: .* has no trained QA head"),
        ({"teacher": "self", "max_length": 1024, "stride": 32}, "at most 512 positions"),
        ({"lora": "r=0"}, "--lora: r='0' is not an integer >= 1"),
        ({"lora": "rank=4"}, "--lora: unknown key 'rank'"),
        ({"lora": "", "preset": "digital"}, "--lora: got '' with --preset digital"),
        ({"lora": "targets=nope"}, "--lora: targets='nope' matches no analog layer"),
        ({"lora": "", "model": "bare"}, "--lora: .* has no trained QA head"),
    ],
)
def test_bad_distill_and_lora_options_name_the_option(assets, change, message):
    root = assets["root"]
    if "odd" not in assets:
        assets["odd"] = _odd_teachers(root)
    paths = {"bare": assets["bare"], "missing": root / "nope", **assets["odd"]}
    change = {k: str(paths[v]) if v in paths else v for k, v in change.items()}
    preset = {} if "preset" in change else {"preset": "pcm_weights_only"}
    with pytest.raises(ValueError, match=message):
        run(_spec(assets, **preset, **change), root / "never_kd", progress=False)
    assert not (root / "never_kd" / "run_config.json").exists()


def test_cli_lora_and_teacher_options(assets, tmp_path):
    from aimc.cli import main

    base = ["finetune-squad", "--train", str(assets["train"]), "--out", str(tmp_path / "x")]
    for bad in (["--lora", "r=x"], ["--distill-alpha", "2"], ["--teacher", "self", "--lora"]):
        with pytest.raises(SystemExit) as exc:
            main([*base, "--model", str(assets["bare"]), *bad])
        assert exc.value.code == 2


# -- torchrun / DDP ----------------------------------------------------------------------------


def _ddp_pair(assets, name: str, extra: list[str]) -> tuple[Path, Path]:
    args = [*_finetune_args(assets, "pcm_weights_only", "0.05"), *extra]
    ddp_out, one_out = assets["root"] / f"{name}_ddp", assets["root"] / f"{name}_one"
    _launch(_torchrun(), args, ddp_out)
    _launch([sys.executable, "-m", "aimc"], args, one_out)
    meta = json.loads((ddp_out / "model" / "aimc_finetune.json").read_text())
    assert meta["ddp_max_weight_diff_across_ranks"] == 0.0
    log = [json.loads(x) for x in (ddp_out / "train_log.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (one_out / "train_log.jsonl").read_text().splitlines()]
    for r, s in zip(log, one, strict=True):
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-4)
    return ddp_out, one_out


@pytest.mark.slow
def test_ddp_distill_two_ranks_match_one_process(assets):
    from test_finetune_squad import ZERO_GRADIENT

    ddp_out, one_out = _ddp_pair(assets, "kd", ["--teacher", "self", "--distill-alpha", "0.6"])
    a, b = _weights(ddp_out / "model"), _weights(one_out / "model")
    start = _weights(assets["model"])
    for k in a:
        if k.endswith(ZERO_GRADIENT):
            continue
        moved = (b[k] - start[k]).abs().max()
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-3 * float(moved))


@pytest.mark.slow
def test_ddp_lora_two_ranks_match_one_process(assets):
    ddp_out, one_out = _ddp_pair(assets, "lora", ["--lora", LORA])
    a, b = _adapter(ddp_out / "model"), _adapter(one_out / "model")
    assert len(a) == 8
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert _weights(ddp_out / "model").keys() == _weights(assets["model"]).keys()
