"""``benchmarks/compare_aihwkit.py`` without AIHWKIT: a clear message, status 2, nothing written."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    importlib.util.find_spec("aihwkit") is not None, reason="AIHWKIT is installed here"
)
def test_exits_clearly_without_aihwkit(tmp_path):
    out = tmp_path / "cmp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_aihwkit.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "AIHWKIT unavailable" in proc.stderr
    assert not out.exists()
