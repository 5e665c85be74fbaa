"""The conformance suite: every case of the tables through aimc and AIHWKIT 1.2.0 (issue 12).

Each case compares statistics over draws with its documented tolerance (``harness.Tolerance``);
a failure prints the table of both simulators' numbers."""

from __future__ import annotations

import pytest

from .cases_hwa import HWA_CASES
from .cases_pcm import PCM_CASES
from .cases_periphery import PERIPHERY_CASES
from .cases_presets import PRESET_CASES
from .harness import describe, run_case

CASES = [*PRESET_CASES, *HWA_CASES, *PERIPHERY_CASES, *PCM_CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case):
    result = run_case(case)
    assert result["ok"], describe(result)
