"""``benchmarks/adaptation_study.py`` keeps earlier rows of its JSON and never mixes settings."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    path = ROOT / "benchmarks" / "adaptation_study.py"
    spec = importlib.util.spec_from_file_location("bench_adaptation_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load()

SETTINGS = {
    "steps": 300,
    "batch_size": 16,
    "lr": 3e-5,
    "lora_lr": 5e-4,
    "lora": "r=8,alpha=16,targets=query,key,value,dense",
    "hwa_noise": 0.02,
    "distill_alpha": 0.5,
    "t_min": 3600.0,
    "t_max": 315360000.0,
    "config": "bert_squad:0.0175",
    "questions": 1000,
    "chips": 3,
    "times": [0.0, 31536000.0],
    "seeds": 1,
}


def _row(name: str, seed: int, f1: float) -> dict:
    cell = {"config": "bert_squad:0.0175", "t": 31536000.0, "f1": [f1], "f1_mean": f1}
    digital = {"config": "digital", "t": None, "f1": [70.0], "f1_mean": 70.0}
    return {
        "row": name,
        "seed": seed,
        "train": None,
        "eval": {"digital": digital, "bert_squad:0.0175@3.1536e+07": cell},
        "curve_1y": [],
    }


@pytest.fixture
def earlier(tmp_path, monkeypatch):
    """A committed JSON with two rows whose run directories are gone; an empty ``--out``."""
    result = tmp_path / "adaptation_study.json"
    rows = {"lora": _row("lora", 0, 60.0), "digital": _row("digital", 0, 41.0)}
    result.write_text(json.dumps({"args": SETTINGS, "rows": rows, "digital_f1": 70.0}))
    monkeypatch.setattr(study, "RESULT", result)
    extra = {"out": str(tmp_path / "runs"), "seeds": 2, "curve_questions": 300, "curve_chips": 2}
    return argparse.Namespace(**{**SETTINGS, **extra})


def test_rows_measured_earlier_are_kept_in_study_order(earlier):
    out = study.collect(earlier)
    assert list(out["rows"]) == ["digital", "lora"]
    assert out["rows"]["lora"]["eval"]["bert_squad:0.0175@3.1536e+07"]["f1_mean"] == 60.0
    assert out["digital_f1"] == 70.0


def test_a_row_found_on_disk_replaces_its_old_record(earlier):
    ev = study.eval_dir("lora", earlier, 0)
    ev.mkdir(parents=True)
    lines = [
        {"config": "digital", "t": None, "chip": None, "f1": 71.0, "exact_match": 60.0},
        {
            "config": "bert_squad:0.0175",
            "t": 31536000.0,
            "chip": 0,
            "f1": 62.0,
            "exact_match": 50.0,
        },
    ]
    (ev / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = study.collect(earlier)
    assert out["rows"]["lora"]["eval"]["bert_squad:0.0175@3.1536e+07"]["f1_mean"] == 62.0
    assert out["rows"]["digital"]["eval"]["bert_squad:0.0175@3.1536e+07"]["f1_mean"] == 41.0


@pytest.mark.parametrize(("key", "value"), [("questions", 500), ("config", "bert_squad:0.035")])
def test_rows_of_other_settings_are_not_mixed_in(earlier, key, value):
    setattr(earlier, key, value)
    with pytest.raises(SystemExit, match=f"--{key}: got .*holds rows"):
        study.collect(earlier)


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_averages_training_seeds_only_where_every_seed_has_the_cell():
    report = _load_report()
    runs = {"lora": _row("lora", 0, 60.0), "lora-seed1": _row("lora", 1, 62.0)}
    only_one = _row("lora", 1, 62.0)
    year = "bert_squad:0.0175@3.1536e+07"
    rows = report._seed_means(runs, {}, "bert_squad:0.0175", [0.0, 31536000.0], 70.0, "x")
    assert rows == [
        ["lora: mean of 2 training seeds", "—", "not run", "61.0 ± 1.4 (2 seeds)", "**87 %**"]
    ]
    del only_one["eval"][year]
    runs["lora-seed1"] = only_one
    assert report._seed_means(runs, {}, "bert_squad:0.0175", [31536000.0], 70.0, "x") == []
