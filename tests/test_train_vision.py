"""IDX loading, LeNet-5, and the train-vision command (tiny data, CPU, seconds)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_idx

from aimc.experiments.train_vision import VisionSpec, run
from aimc.vision import LeNet5, load_idx_split, read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_idx(path: Path, data: torch.Tensor, code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, code, data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape)
    payload = header + data.numpy().astype(">u1" if code == 0x08 else ">i4").tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """40 train / 20 test images of two easy classes (bright top half vs bright bottom half)."""
    return write_tiny_idx(tmp_path_factory.mktemp("idx"), 40, 20)


def test_read_idx_roundtrip_and_int32(tmp_path):
    data = torch.arange(24, dtype=torch.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a.gz", data, code=0x0C)
    assert torch.equal(read_idx(tmp_path / "a.gz"), data)
    _write_idx(tmp_path / "b", data.abs().to(torch.uint8), compress=False)
    assert torch.equal(read_idx(tmp_path / "b"), data.abs().to(torch.uint8))


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        read_idx(tmp_path / "missing.gz")
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", torch.zeros(2, 3, dtype=torch.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="expected 6"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_idx_split(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_idx_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_idx_split(tmp_path, "validation")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_shared_idx_files(name):
    x, y = load_idx_split(SHARED / name, "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert torch.equal(y.bincount(), y.bincount()[0].repeat(10)) or name == "mnist"
    assert LeNet5()(x[:4]).shape == (4, 10)


def _spec(data: Path, **kw) -> VisionSpec:
    base = dict(
        data=str(data),
        epochs=2,
        batch_size=8,
        lr=0.05,
        chips=2,
        times=[0.0, 86400.0],
        configs=["digital", "pcm_inference"],
    )
    return VisionSpec(**(base | kw))


def test_end_to_end_hwa_training_and_sweep(tiny_data, tmp_path):
    rows = run(
        _spec(tiny_data, train_config="standard_hwa", hwa_noise=0.05),
        tmp_path / "r",
        progress=False,
    )
    out = tmp_path / "r"
    for name in (
        "run_config.json",
        "results.jsonl",
        "summary.md",
        "plot.png",
        "plot.svg",
        "checkpoint.pt",
        "model.pt",
        "train_log.jsonl",
        "train_summary.json",
    ):
        assert (out / name).exists(), name
    assert [r["config"] for r in rows] == ["digital"] + ["pcm_inference"] * 4
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in rows)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]


def test_training_resume_is_bit_identical(tiny_data, tmp_path):
    spec = _spec(
        tiny_data, train_config="pcm_inference", hwa_noise=0.05, epochs=3, chips=1, times=[0.0]
    )
    full = run(spec, tmp_path / "full", progress=False)
    part = _spec(
        tiny_data, train_config="pcm_inference", hwa_noise=0.05, epochs=3, chips=1, times=[0.0]
    )
    part.epochs = 1  # an interrupted run: only the first epoch
    run(part, tmp_path / "cut", progress=False)
    (tmp_path / "cut" / "run_config.json").unlink()  # resume the longer run in the same dir
    for name in ("results.jsonl", "summary.md", "model.pt"):
        (tmp_path / "cut" / name).unlink()
    resumed = run(spec, tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "model.pt")
    b = torch.load(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in full]


def test_refuses_existing_run_without_resume(tiny_data, tmp_path):
    run(_spec(tiny_data, epochs=1, chips=1, times=[0.0]), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        run(_spec(tiny_data, epochs=1, chips=1, times=[0.0]), tmp_path / "r", progress=False)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"train_config": "bogus"}, "--configs"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"hwa_noise": -1.0}, "--hwa-noise"),
        ({"times": [-1.0]}, "--times"),
        ({"chips": 0}, "--chips"),
        ({"max_train": 0}, "--max-train"),
        (
            {"train_config": "pcm_inference", "hwa_output_bound_mask": "adc"},
            r"--hwa-output-bound-mask: hwa\.output_bound_mask: got 'adc'; allowed",
        ),
        ({"hwa_output_bound_mask": "none"}, "--hwa-output-bound-mask: got 'none' with"),
    ],
)
def test_bad_inputs(tiny_data, tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        run(_spec(tiny_data, **changes), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        run(_spec(tmp_path / "nope"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_hwa_options_build_the_training_config(tiny_data):
    cfg = _spec(
        tiny_data, train_config="pcm_inference", hwa_noise=0.1, hwa_clip_sigma=3.0
    ).training_config()
    assert cfg.hwa.modifier.value == "add_normal" and cfg.hwa.modifier_std == 0.1
    assert cfg.hwa.clip.value == "layer_gaussian" and cfg.hwa.clip_sigma == 3.0
    assert _spec(tiny_data).training_config() is None
    assert cfg.hwa.output_bound_mask.value == "aihwkit"  # the preset's own
    sat = _spec(tiny_data, train_config="standard_hwa", hwa_output_bound_mask="saturated")
    assert sat.training_config().hwa.output_bound_mask.value == "saturated"
    with pytest.raises(ValueError, match="--hwa-clip-sigma"):
        _spec(tiny_data, hwa_clip_sigma=-1.0).validate()


def test_cli_passes_every_option(tiny_data, tmp_path, monkeypatch):
    """Regression: --hwa-clip-sigma was parsed but not passed on."""
    import aimc.experiments.train_vision as tv
    from aimc.cli import main

    seen = {}
    monkeypatch.setattr(tv, "run", lambda spec, out, **kw: seen.update(spec=spec, out=out, **kw))
    main(
        [
            "train-vision",
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "o"),
            "--train-config",
            "pcm_inference",
            "--hwa-noise",
            "0.1",
            "--hwa-clip-sigma",
            "2.5",
            "--hwa-output-bound-mask",
            "saturated",
            "--epochs",
            "2",
            "--lr",
            "0.02",
            "--times",
            "0,60",
            "--chips",
            "3",
            "--resume",
            "--no-progress",
        ]
    )
    spec = seen["spec"]
    assert (spec.hwa_noise, spec.hwa_clip_sigma, spec.epochs, spec.lr) == (0.1, 2.5, 2, 0.02)
    assert spec.hwa_output_bound_mask == "saturated"
    assert spec.times == [0.0, 60.0] and spec.chips == 3
    assert seen["resume"] is True and seen["progress"] is False
