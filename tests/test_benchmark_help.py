"""Every benchmark script answers ``--help`` with its usage and writes nothing: a script that
ignored its arguments ran the whole measurement on ``--help`` and overwrote its committed
results file (``profile_linear.py`` did)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(
    p for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")
)


def _snapshot() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}


def test_every_script_is_checked():
    assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_help_prints_usage_and_writes_nothing(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their siblings
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    before = _snapshot()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code in (0, None), out.getvalue()
    assert "usage:" in out.getvalue()
    assert _snapshot() == before
