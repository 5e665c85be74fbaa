"""``benchmarks/gpu_check.py`` stays runnable: its smoke mode, CPU against CPU with other seeds."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DEV, SHARED_MODEL, tiny_squad_assets

import aimc

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check.py")
report = _load("report.py")


def test_smoke_on_cpu_passes_and_renders(tmp_path):
    threads = torch.get_num_threads()
    args = ["--device", "cpu", "--smoke", "--threads", "1", "--out", str(tmp_path)]
    if (SHARED_MODEL / "tokenizer.json").exists() and SHARED_DEV.exists():
        assets = tiny_squad_assets(tmp_path / "squad", n_questions=4)
        args += ["--model", str(assets["model"]), "--data", str(assets["data"])]
    else:  # the SQuAD point needs the shared tokenizer and dev set
        args += ["--only", "agreement,deterministic,speed"]
    try:
        assert gpu_check.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "gpu_check_cpu_smoke.json").read_text())
    assert result["ok"] and not result["errors"]
    kinds = {c["kind"] for c in result["checks"]}
    assert kinds == {"z", "ks", "det"}
    cases = {c["case"] for c in result["checks"]}
    assert any("standard_hwa training" in c for c in cases)
    assert any(c.startswith("noise-free bert_squad") for c in cases)
    assert any(c.startswith("counter stream") for c in cases)
    assert any(c.startswith("sine and cosine") for c in cases)
    assert {r["config"] for r in result["speed"]} == set(gpu_check.EVAL_CONFIGS)
    # the table the report will render once a GPU run is committed
    (tmp_path / "gpu_check_cuda.json").write_text(json.dumps(result))
    table = report.gpu_check(report.Inputs(tmp_path, ROOT / "docs"))
    assert "checks agree" in table and "`pcm_inference`" in table


def test_a_wrong_distribution_fails():
    ref = [0.100 + 0.001 * k for k in range(8)]
    assert gpu_check.welch("x", ref, [v + 0.0001 for v in ref])["ok"]
    assert not gpu_check.welch("x", ref, [v * 1.2 for v in ref])["ok"]
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, generator=gen), torch.randn(4000, generator=gen)
    assert gpu_check.ks_2samp("e", a, b)["ok"]
    assert not gpu_check.ks_2samp("e", a, b + 0.3)["ok"]


def test_unknown_section_is_an_error(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--only", "speed,nope"])
    assert "unknown section" in capsys.readouterr().err


def test_compiled_forward_with_noise_agrees_across_devices():
    """The stream section's ``--compile`` part (the smoke test runs the rest of the section): a
    chip from the CPU, compiled on the "device" (the CPU again here), gives the same noisy
    outputs, and its two calls differ."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sizes = gpu_check.SIZES["smoke"]
        cases = gpu_check.compiled_forward(torch.device("cpu"), sizes, fresh=False)
    finally:
        torch.set_num_threads(threads)
    assert [case for case, _ in cases] == [
        f"compiled {name}, chip from the CPU, 96×80, 64 tokens" for name in sizes["stream_configs"]
    ]
    for _, forward in cases:
        assert [c["name"] for c in forward] == [
            "outputs, call 1",
            "outputs, call 2",
            "calls 1 and 2 differ (fresh noise)",
        ]
        assert all(c["ok"] for c in forward)
        assert forward[0]["bitwise"] and forward[2]["rel_l2"] > 0.01


def test_stream_checks_fail_on_a_wrong_stream():
    key = torch.tensor(-1, dtype=torch.int64)
    bits, z, u = gpu_check._draws(key, 1000)
    assert gpu_check.exact("w", bits, bits.clone())["ok"]
    assert not gpu_check.exact("w", bits, bits ^ 1)["ok"]  # one bit of every word
    assert not gpu_check.exact("u", u, u[:-1])["ok"]  # another shape
    assert not gpu_check.closeness("z", z, z * (1 + 1e-5), 1e-6)["ok"]
    # a sine off by one 24-bit angle step fails; float rounding passes
    k = torch.arange(0, 1 << 24, 65537, dtype=torch.int32)
    theta = k.double() * (2 * math.pi / (1 << 24))
    sin = aimc.random._cos_sin_turns(k)[1]
    assert gpu_check.within("sin", theta.sin(), sin, 2.5e-7)["ok"]
    assert not gpu_check.within("sin", theta.sin(), aimc.random._cos_sin_turns(k + 1)[1], 2.5e-7)[
        "ok"
    ]
    r = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    assert gpu_check.relative("r", r, r.float(), 5e-7)["ok"]
    assert not gpu_check.relative("r", r, r * (1 + 1e-6), 5e-7)["ok"]
    assert not gpu_check.relative("r", r, r + 1e-30, 5e-7)["ok"]  # the exact zero is not
    assert not gpu_check.differs("d", z, z.clone(), 0.01)["ok"]
    assert gpu_check.differs("d", z, torch.randn(1000), 0.01)["ok"]
