"""Importing aimc leaves PyTorch's CPU allocator as it is; huge pages are an opt-in
(``THP_MEM_ALLOC_ENABLE=1``) that :func:`aimc.huge_pages_active` reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _thp_available() -> bool:
    """Transparent huge pages are compiled in and not switched off (``[never]``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


PROBE = "import os, aimc; print(os.environ.get('THP_MEM_ALLOC_ENABLE'), aimc.huge_pages_active())"


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-2] + " " + out.stdout.split()[-1]


needs_thp = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and _thp_available()),
    reason="transparent huge pages are not available on this machine",
)


def test_import_leaves_the_allocator_alone():
    # 4 KiB pages unless asked: glibc reuses its heap for the 2-32 MiB tensors an eager forward
    # makes (docs/benchmarks.md#huge-pages)
    assert _run(PROBE) == "None False"


@needs_thp
def test_an_explicit_one_turns_huge_pages_on():
    assert _run(PROBE, THP_MEM_ALLOC_ENABLE="1") == "1 True"


@needs_thp
def test_the_opt_in_works_when_torch_was_imported_first():
    # PyTorch reads the variable at its first CPU allocation, not at import
    assert _run("import torch; " + PROBE, THP_MEM_ALLOC_ENABLE="1") == "1 True"


def test_an_explicit_zero_is_respected():
    assert _run(PROBE, THP_MEM_ALLOC_ENABLE="0") == "0 False"
