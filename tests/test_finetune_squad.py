"""``aimc finetune-squad`` (aimc.experiments.finetune_squad, aimc.squad.train_features).

Runs use a tiny random-init ``BertForQuestionAnswering`` (2 layers, hidden 32, no dropout, so a
data-parallel run can match a single-process one exactly) with the real fast tokenizer of the
shared MiniLM model, and 24 real dev questions as training data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, SHARED_DEV, SHARED_MODEL, official_layout, save_tiny_bert
from safetensors.torch import load_file

from aimc.experiments.finetune_squad import FinetuneSpec, latest_checkpoint, run
from aimc.experiments.squad_drift import load_qa_model
from aimc.squad.data import load_squad
from aimc.squad.metrics import normalize_answer
from aimc.squad.train_features import collate_train, make_train_features


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Any]:
    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    root = tmp_path_factory.mktemp("finetune_assets")
    model_dir = save_tiny_bert(root / "tiny-qa", dropout=False)
    bare_dir = save_tiny_bert(root / "tiny-bare", qa=False, dropout=False)
    dev = load_squad(SHARED_DEV)
    train = root / "train.json"
    train.write_text(json.dumps(official_layout([e.__dict__ for e in dev[:24]])))
    return {"root": root, "model": model_dir, "bare": bare_dir, "train": train, "dev": dev}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


def _spec(assets, **kw) -> FinetuneSpec:
    base = FinetuneSpec(
        model=str(assets["model"]),
        train=str(assets["train"]),
        max_length=128,
        stride=32,
        max_steps=4,
        batch_size=4,
        lr=1e-3,
        warmup=0.25,
        seed=3,
    )
    return replace(base, **kw)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


# -- training features -------------------------------------------------------------------------


def test_train_features_label_the_answer_tokens(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    examples = assets["dev"][:60]
    feats = make_train_features(examples, tok, max_length=128, stride=32)
    assert len(feats) > len(examples)  # long contexts give several windows
    enc = tok(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=128,
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    exact = answerable = 0
    for i, (s, e) in enumerate(zip(feats.start_positions, feats.end_positions, strict=True)):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        if s == 0:
            assert e == 0
            continue
        answerable += 1
        assert 0 < s <= e < len(feats.input_ids[i])
        seq = enc.sequence_ids(i)
        assert seq[s] == 1 and seq[e] == 1  # inside the context
        offs = enc["offset_mapping"][i]
        text = ex.context[offs[s][0] : offs[e][1]]
        assert ex.answers[0] in text or normalize_answer(ex.answers[0]) in normalize_answer(text)
        exact += normalize_answer(text) == normalize_answer(ex.answers[0])
    assert answerable >= len(examples)  # every question has at least one window with its answer
    # the span is the answer, except where a gold answer starts or ends inside a token
    # ("gold" in "golden", "8" in "20–18": 6 of 65 windows here)
    assert exact / answerable > 0.9
    assert feats.answerable() == answerable
    batch = collate_train(feats, [0, 1, 2], torch.device("cpu"))
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["start_positions"].tolist() == feats.start_positions[:3]


# -- end to end, resume ------------------------------------------------------------------------


def test_finetune_end_to_end_and_squad_drift_loads_it(assets):
    out = assets["root"] / "digital"
    final = run(_spec(assets), out, save_every=2, progress=False)
    assert final == out / "model"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    assert all(r["loss"] > 0 for r in log)
    assert log[0]["lr"] == pytest.approx(1e-3)  # warm-up of 1 step, then linear decay
    assert (out / "tensorboard" / "train").is_dir()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000001", "step-0000003"]
    model, tok = load_qa_model(str(final), torch.device("cpu"))
    assert tok.is_fast
    before = _weights(assets["model"])
    after = _weights(final)
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((final / "aimc_finetune.json").read_text())
    assert meta["step"] == 3 and meta["training_config"] is None and not meta["new_qa_head"]


def test_hwa_finetune_resumes_to_the_same_weights(assets):
    spec = _spec(assets, preset="standard_hwa", hwa_noise=0.05, max_steps=5)
    full = assets["root"] / "hwa_full"
    run(spec, full, save_every=2, progress=False)
    cut = assets["root"] / "hwa_cut"
    run(spec, cut, save_every=2, keep=5, progress=False)
    # as if killed after the checkpoint of step 4 (index 3): drop what came after it
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    shutil.rmtree(cut / "model")
    assert latest_checkpoint(cut).name == "step-0000003"
    with pytest.raises(ValueError, match="--resume"):
        run(spec, cut, save_every=2, progress=False)
    run(spec, cut, save_every=2, resume=True, progress=False)
    a, b = _weights(full / "model"), _weights(cut / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((full / "model" / "aimc_finetune.json").read_text())
    assert meta["training_config"]["hwa"]["modifier"] == "add_normal"
    assert len(meta["learned_input_ranges"]) == 13  # 6 linear layers x 2 blocks + qa_outputs
    assert all(v > 0 for v in meta["learned_input_ranges"].values())
    with pytest.raises(ValueError, match="different"):
        run(replace(spec, lr=2e-3), cut, resume=True, progress=False)


def test_chip_modifier_finetune_resumes_to_the_same_weights(assets):
    """--hwa-modifier chip: the chip drawn at each step (time, programming, read) comes from the
    step's seed, so a run resumed from a checkpoint ends with the uninterrupted run's weights;
    the modifier and its drift range are recorded in the run config."""
    spec = _spec(
        assets, preset="bert_squad", hwa_modifier="chip", hwa_drift_range=(60.0, 1e6), max_steps=3
    )
    full = assets["root"] / "chip_full"
    run(spec, full, save_every=1, progress=False)
    cut = assets["root"] / "chip_cut"
    run(spec, cut, save_every=1, keep=5, progress=False)
    shutil.rmtree(cut / "checkpoints" / "step-0000002")  # killed after the second step
    shutil.rmtree(cut / "model")
    run(spec, cut, save_every=1, resume=True, progress=False)
    a, b = _weights(full / "model"), _weights(cut / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = _weights(assets["model"])
    assert any(not torch.equal(a[k], start[k]) for k in a)
    meta = json.loads((full / "run_config.json").read_text())["determines_numbers"]
    assert meta["hwa_modifier"] == "chip" and meta["hwa_drift_range"] == [60.0, 1e6]
    hwa = meta["training_config"]["hwa"]
    assert (hwa["modifier"], hwa["modifier_t_min"], hwa["modifier_t_max"]) == ("chip", 60.0, 1e6)
    with pytest.raises(ValueError, match=r"different hwa_drift_range"):
        run(replace(spec, hwa_drift_range=(60.0, 1e7)), cut, resume=True, progress=False)


def test_new_qa_head_on_a_base_encoder(assets):
    out = assets["root"] / "bare"
    final = run(_spec(assets, model=str(assets["bare"]), max_steps=2), out, progress=False)
    meta = json.loads((final / "aimc_finetune.json").read_text())
    assert meta["new_qa_head"] is True
    load_qa_model(str(final), torch.device("cpu"))  # squad-drift accepts it: it has a QA head


# -- torchrun / DDP ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Tensors whose gradient is zero by symmetry (key biases: softmax shift invariance; the QA bias
# and the last LayerNorm bias: the cross-entropy gradient sums to zero over positions). They get
# rounding-level gradients (1e-12..1e-8) that differ with the summation order, and Adam rescales
# those to full-size steps, so they cannot be compared.
ZERO_GRADIENT = ("attention.self.key.bias", "qa_outputs.bias", "layer.1.output.LayerNorm.bias")


def test_qa_loss_ignores_padding():
    from aimc.experiments.finetune_squad import qa_loss

    gen = torch.Generator().manual_seed(0)
    s, e = torch.randn(2, 9, generator=gen), torch.randn(2, 9, generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    pos = torch.tensor([3, 5])
    short = qa_loss(s, e, mask, pos, pos)
    padded = qa_loss(
        torch.cat([s, torch.full((2, 4), 7.0)], 1),  # large logits on the padding
        torch.cat([e, torch.full((2, 4), 7.0)], 1),
        torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1),
        pos,
        pos,
    )
    torch.testing.assert_close(short, padded)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(short, (ce(s, pos) + ce(e, pos)) / 2)


def _finetune_args(assets, preset: str, hwa_noise: str, *hwa: str) -> list[str]:
    return [
        "finetune-squad",
        *("--model", str(assets["model"]), "--train", str(assets["train"])),
        *("--preset", preset, "--hwa-noise", hwa_noise, *hwa),
        *("--max-length", "128", "--stride", "32", "--max-steps", "3", "--batch-size", "4"),
        *("--lr", "1e-3", "--seed", "3", "--no-progress", "--threads", "1"),
    ]


def _launch(launcher: list[str], args: list[str], out: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [*launcher, *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _torchrun() -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
        *("--master-port", str(_free_port()), "-m", "aimc"),
    ]


@pytest.mark.parametrize(
    "modifier",
    [
        ("0.05",),
        pytest.param(
            ("0", "--hwa-modifier", "chip", "--hwa-drift-range", "3600,3.156e8"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["add_normal", "chip"],
)
def test_ddp_two_ranks_match_one_process(assets, modifier):
    """2 gloo ranks x 2 samples == 1 process x 4 samples, with an HWA weight modifier drawn
    identically on both ranks (perfect IO, no dropout: nothing else is random). The chip
    modifier draws the same chip (time, programming, read, compensation) on both ranks."""
    args = _finetune_args(assets, "pcm_weights_only", *modifier)
    name = "" if modifier == ("0.05",) else "_chip"
    ddp_out, one_out = assets["root"] / f"ddp{name}", assets["root"] / f"one{name}"
    _launch(_torchrun(), args, ddp_out)
    _launch([sys.executable, "-m", "aimc"], args, one_out)
    meta = json.loads((ddp_out / "model" / "aimc_finetune.json").read_text())
    assert meta["ddp_max_weight_diff_across_ranks"] == 0.0  # both ranks hold the same weights
    a, b = _weights(ddp_out / "model"), _weights(one_out / "model")
    start = _weights(assets["model"])
    for k in a:
        if k.endswith(ZERO_GRADIENT):
            continue
        moved = (b[k] - start[k]).abs().max()
        assert moved > 1e-4, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-3 * float(moved))
    log = [json.loads(x) for x in (ddp_out / "train_log.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (one_out / "train_log.jsonl").read_text().splitlines()]
    for r, s in zip(log, one, strict=True):
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-4)


def test_ddp_standard_hwa_keeps_the_ranks_identical(assets):
    """Full periphery (independent output noise per rank) and learned input ranges (initialised
    from each rank's own samples, then averaged): the ranks still end with the same weights."""
    out = assets["root"] / "ddp_standard_hwa"
    _launch(_torchrun(), _finetune_args(assets, "standard_hwa", "0.0"), out)
    meta = json.loads((out / "model" / "aimc_finetune.json").read_text())
    assert meta["ddp_max_weight_diff_across_ranks"] == 0.0
    assert meta["training_config"]["hwa"]["learn_input_range"] is True
    assert len(meta["learned_input_ranges"]) == 13
    assert all(v > 0 for v in meta["learned_input_ranges"].values())


# -- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "--batch-size: got 0"),
        ({"stride": 128}, "--stride: got 128 with --max-length 128"),
        ({"lr": 0.0}, "--lr: got 0.0"),
        ({"warmup": 1.0}, "--warmup: got 1.0"),
        ({"hwa_noise": -0.1}, "--hwa-noise: got -0.1"),
        ({"hwa_modifier": "gauss"}, "--hwa-modifier: got 'gauss'; allowed: one of"),
        ({"hwa_modifier": "chip", "hwa_noise": 0.1}, "--hwa-noise: got 0.1 with --hwa-modifier"),
        ({"hwa_drift_range": (10.0, 1.0)}, "--hwa-drift-range: got (10.0, 1.0"),
        ({"hwa_drift_range": (0.0, 1.0)}, "--hwa-drift-range: got"),
        ({"hwa_drift_range": (1.0, float("inf"))}, "--hwa-drift-range: got"),
        ({"hwa_drift_range": (1.0,)}, "--hwa-drift-range: got"),
        ({"grad_clip": float("nan")}, "--grad-clip: got nan"),
        ({"preset": "fancy"}, "unknown config 'fancy'"),
        ({"max_steps": 0}, "--max-steps: got 0"),
        ({"epochs": 1.5}, "--epochs: got 1.5"),
        (
            {"preset": "bert_squad", "hwa_output_bound_mask": "adc"},
            "--hwa-output-bound-mask: hwa.output_bound_mask: got 'adc'; allowed",
        ),
        ({"hwa_output_bound_mask": "none"}, "--hwa-output-bound-mask: got 'none' with the"),
    ],
)
def test_bad_spec_values_name_the_option(assets, change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(_spec(assets, **change), assets["root"] / "never", progress=False)
    assert not (assets["root"] / "never").exists()


def test_output_bound_mask_option_sets_the_training_config():
    spec = FinetuneSpec(preset="bert_squad", hwa_noise=0.02, hwa_output_bound_mask="saturated")
    cfg = spec.training_config()
    assert cfg.hwa.output_bound_mask.value == "saturated" and cfg.hwa.modifier_std == 0.02
    assert FinetuneSpec(preset="bert_squad").training_config().hwa.output_bound_mask == "aihwkit"


def test_chip_modifier_needs_a_preset_with_a_device_model(monkeypatch):
    from aimc import presets
    from aimc.experiments import finetune_squad

    monkeypatch.setattr(finetune_squad, "resolve_config", lambda name: presets.ideal())
    spec = FinetuneSpec(preset="ideal_io", hwa_modifier="chip")
    with pytest.raises(ValueError, match=r"^--hwa-modifier: got 'chip' with --preset ideal_io"):
        spec.validate()


def test_bad_run_inputs(assets, tmp_path):
    with pytest.raises(ValueError, match="--amp: mixed precision needs a CUDA"):
        run(_spec(assets), tmp_path / "a", amp=True, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device: got 'cuda' but CUDA is not available"):
            run(_spec(assets), tmp_path / "a", device="cuda", progress=False)
    with pytest.raises(ValueError, match="--device: got 'tpu7'"):
        run(_spec(assets), tmp_path / "a", device="tpu7", progress=False)
    with pytest.raises(ValueError, match="--save-every: got 0"):
        run(_spec(assets), tmp_path / "b", save_every=0, progress=False)
    with pytest.raises(ValueError, match="--batch-size: got 4096 but the data give only"):
        run(_spec(assets, batch_size=4096), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="--model: cannot load"):
        run(_spec(assets, model=str(tmp_path / "nope")), tmp_path / "d", progress=False)
    with pytest.raises(FileNotFoundError):
        run(_spec(assets, train=str(tmp_path / "nope.json")), tmp_path / "e", progress=False)
    for name in "abcde":
        assert not (tmp_path / name / "run_config.json").exists()


def test_cli_reports_bad_input_with_status_2(assets, tmp_path):
    from aimc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "finetune-squad",
                "--train",
                str(assets["train"]),
                "--lr",
                "-1",
                "--out",
                str(tmp_path),
            ]
        )
    assert exc.value.code == 2


def test_wandb_offline(assets, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    home.mkdir()
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(key, str(home))
    for key, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    args = _finetune_args(assets, "digital", "0.0")
    args[args.index("--max-steps") + 1] = "2"
    out = tmp_path / "run"
    _launch([sys.executable, "-m", "aimc"], [*args, "--wandb"], out)  # the child sees the env
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert (out / "model" / "model.safetensors").exists()
