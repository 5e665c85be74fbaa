"""The conformance harness's two-stage spread judgement, with stand-in simulators (no AIHWKIT):
a reference that is once too calm passes on the pooled draws, a real difference in spread fails
both stages, and the means are judged on the first draws only."""

from __future__ import annotations

import random
import statistics

import pytest
from conformance import harness
from conformance.harness import Case, Stats

CASE = Case("stand-in", aimc_config=lambda: None, rpu_config=lambda: None, draws=10)


def _stats(draws: range, sd: float, seed: int) -> Stats:
    """Draws whose relative errors have exactly the sample sd ``sd``."""
    rng = random.Random(seed)
    z = [rng.gauss(0.0, 1.0) for _ in draws]
    m, s_z = statistics.fmean(z), statistics.stdev(z)
    s = Stats()
    for v in z:
        s.rel_error.append(0.2 + sd * (v - m) / s_z)
        s.bias.append(rng.gauss(0.0, 1e-4))
        s.err_std.append(0.15 + sd * (v - m) / s_z)
    return s


def _fake(monkeypatch, aimc_sd: float, reference_sds: list[float]) -> list[range]:
    """Stand-ins: aimc's spread is ``aimc_sd``, the reference's k-th call's ``reference_sds[k]``."""
    calls: list[range] = []

    def run_aimc(case, w, b, x, draws=None):
        draws = range(case.draws) if draws is None else draws
        calls.append(draws)
        return _stats(draws, aimc_sd, seed=draws.start)

    def run_aihwkit(case, w, b, x, draws=None):
        draws = range(case.draws) if draws is None else draws
        sd = reference_sds[min(len(calls) // 2, len(reference_sds) - 1)]
        return _stats(draws, sd, seed=1000 + draws.start)

    monkeypatch.setattr(harness, "run_aimc", run_aimc)
    monkeypatch.setattr(harness, "run_aihwkit", run_aihwkit)
    monkeypatch.setattr(harness, "problem", lambda case, seed=0: (None, None, None))
    return calls


def test_agreeing_spreads_are_judged_once(monkeypatch):
    calls = _fake(monkeypatch, 1e-3, [1e-3])
    result = harness.run_case(CASE)
    assert result["ok"] and not result["spread_confirmed"]
    assert calls == [range(10)]


def test_a_reference_outlier_is_judged_again_on_pooled_draws(monkeypatch):
    # the reference's first ten draws are 4x too calm (as AIHWKIT's clock-seeded noise was
    # once in CI), its next twenty are like aimc's: the pooled spread agrees
    calls = _fake(monkeypatch, 1e-3, [2.5e-4, 1e-3])
    result = harness.run_case(CASE)
    assert calls == [range(10), range(10, 30)]
    assert result["spread_confirmed"] and result["spread_draws"] == 30
    assert result["ok"], harness.describe(result)
    assert "judged again over 30 draws" in harness.describe(result)


@pytest.mark.parametrize("ratio", [4.0, 0.25])
def test_a_real_spread_difference_fails_both_stages(monkeypatch, ratio):
    _fake(monkeypatch, 1e-3 * ratio, [1e-3])
    result = harness.run_case(CASE)
    assert result["spread_confirmed"] and not result["ok"]
    spread = [v for v in result["verdicts"] if v.stat == "rel_error_spread"]
    assert len(spread) == 1 and not spread[0].ok
