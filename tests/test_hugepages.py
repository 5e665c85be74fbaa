"""Importing aimc asks PyTorch's CPU allocator for huge pages, unless told not to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aimc._hugepages import _thp_available

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


@needs_thp
def test_import_turns_huge_pages_on():
    assert _run(PROBE) == "1 True"


@needs_thp
def test_import_after_torch_still_works_before_any_tensor():
    assert _run("import torch; " + PROBE) == "1 True"


def test_an_explicit_zero_is_respected():
    assert _run(PROBE, THP_MEM_ALLOC_ENABLE="0") == "0 False"


def test_a_tensor_made_before_the_import_keeps_the_allocator_as_it_was():
    # PyTorch latched the variable at its first allocation, before aimc set it
    assert _run("import torch; torch.zeros(1); " + PROBE).endswith("False")
