"""The differential harness: one layer, the same weights, inputs and protocol, through aimc and
through IBM AIHWKIT 1.2.0; statistics over draws, compared with a per-case tolerance.

A *draw* is one chip (programming seed) and one forward (fresh IO and read noise). AIHWKIT's C++
IO noise is clock-seeded, so only statistics can agree, never single draws: for each simulator we
collect, per draw, the relative output error ``||y - y_d|| / ||y_d||``, the mean signed error
(bias) and the std of the element-wise error, and, where drift compensation is on, the mean
compensation factor α over tiles; then compare the means over draws (and the spread of the
relative error over draws).

Tolerance (per case, :class:`Tolerance`): two means agree when they differ by at most
``max(rel * |reference|, k * SE, floor)`` with ``SE = sqrt(sd_a²/n + sd_b²/n)`` — "within 3 % or
3 standard errors, whichever is larger". Spreads over draws (sd of the relative error) agree when
their ratio is within ``spread`` (sd estimates from n draws have a relative error of about
``1/sqrt(2(n-1))``); a spread miss is judged again on three times the draws (:func:`run_case`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import aimc

DAY = 86400.0
YEAR = 365 * DAY


@dataclass(frozen=True)
class Tolerance:
    """How close aimc's statistics must be to AIHWKIT's (see the module docstring)."""

    rel: float = 0.03  #: relative tolerance of a mean
    k: float = 3.0  #: number of standard errors
    #: floor of the bias comparison in units of AIHWKIT's element-wise error std: AIHWKIT's CPU
    #: simulator draws its Gaussians from a fixed list of 32,768 numbers per tile, so one layer
    #: instance has a noise mean offset of ~0.5 % of the noise std that 3 standard errors of
    #: the draws alone would flag (see cases_periphery.py)
    floor: float = 0.03
    #: allowed ratio of the spreads over draws (1/spread .. spread): with 10 draws an sd
    #: estimate is uncertain by ~24 %, so a ratio of two is uncertain by ~33 %; for equal true
    #: spreads 3x is exceeded with probability 0.3 % (F distribution, 9 and 9 degrees of
    #: freedom), too often for ~110 checks a run, hence the confirmation in :func:`run_case`
    spread: float = 3.0


@dataclass
class Case:
    """One conformance case: configs of both simulators and the protocol."""

    name: str
    aimc_config: Callable[[], aimc.AnalogConfig]
    rpu_config: Callable[[], Any]
    #: "io": eval forward of the exact weights (aimc without device model, AIHWKIT unprogrammed);
    #: "program": programmed, not drifted; "drift": programmed, drifted to ``t``;
    #: "train": training-mode forward (HWA weight modifiers)
    protocol: str = "io"
    t: float = 0.0
    in_features: int = 256
    out_features: int = 128
    rows: int = 128
    bias: bool = True
    w_std: float = 0.05
    x_scale: float = 1.0  #: inputs ~ U[-x_scale, x_scale]
    draws: int = 10
    tol: Tolerance = field(default_factory=Tolerance)
    note: str = ""


@dataclass
class Stats:
    """Per-draw statistics of one simulator on one case."""

    rel_error: list[float] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)
    err_std: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    #: the per-draw statistics, in the order of the fields
    KEYS = ("rel_error", "bias", "err_std", "alpha")

    def add(self, y: Tensor, y_ref: Tensor, alpha: float | None) -> None:
        d = (y.double() - y_ref.double()).flatten()
        self.rel_error.append(float(d.norm() / y_ref.double().norm()))
        self.bias.append(float(d.mean()))
        self.err_std.append(float(d.std()))
        if alpha is not None:
            self.alpha.append(alpha)

    def extend(self, other: Stats) -> None:
        """Append ``other``'s draws to these."""
        for key in self.KEYS:
            getattr(self, key).extend(getattr(other, key))

    def summary(self) -> dict[str, float]:
        out = {}
        for key in self.KEYS:
            vals = getattr(self, key)
            if vals:
                out[key] = statistics.fmean(vals)
                out[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return out


def problem(case: Case, seed: int = 0) -> tuple[Tensor, Tensor | None, Tensor]:
    """The case's weights ``W ~ N(0, w_std²)``, bias and inputs ``X ~ U[-s, s]`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(case.out_features, case.in_features, generator=g) * case.w_std
    b = torch.randn(case.out_features, generator=g) * case.w_std if case.bias else None
    x = (torch.rand(case.rows, case.in_features, generator=g) * 2 - 1) * case.x_scale
    return w, b, x


def _digital(w: Tensor, b: Tensor | None) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    return layer


# -- aimc ----------------------------------------------------------------------------------------


def run_aimc(
    case: Case, w: Tensor, b: Tensor | None, x: Tensor, draws: range | None = None
) -> Stats:
    """aimc's per-draw statistics; ``draws`` (default ``range(case.draws)``) numbers the seeds."""
    stats = Stats()
    digital = _digital(w, b)
    with torch.no_grad():
        y_ref = digital(x)
    cfg = case.aimc_config()
    if case.protocol == "io":
        cfg = cfg.replace(device=aimc.DeviceConfig())
    layer = aimc.nn.AnalogLinear.from_digital(_digital(w, b), cfg, seed=0)
    layer.train(case.protocol == "train")
    for i in range(case.draws) if draws is None else draws:
        alpha = None
        if case.protocol in ("program", "drift"):
            layer.program_chip(1000 + i)
            if case.protocol == "drift":
                layer.drift_chip(case.t, 2000 + i)
                a = layer.compensation_factor()
                alpha = None if a is None else float(a.mean())
        layer.manual_seed(3000 + i)
        with torch.no_grad():
            stats.add(layer(x), y_ref, alpha)
    return stats


# -- AIHWKIT -------------------------------------------------------------------------------------


def run_aihwkit(
    case: Case, w: Tensor, b: Tensor | None, x: Tensor, draws: range | None = None
) -> Stats:
    """AIHWKIT's per-draw statistics; ``draws`` numbers the torch seeds (its IO noise is
    clock-seeded whatever they are)."""
    from aihwkit.nn import AnalogLinear

    stats = Stats()
    with torch.no_grad():
        y_ref = _digital(w, b)(x)
    rpu = case.rpu_config()
    layer = AnalogLinear(case.in_features, case.out_features, bias=b is not None, rpu_config=rpu)
    layer.set_weights(w.clone(), None if b is None else b.clone())
    layer.train(case.protocol == "train")
    for i in range(case.draws) if draws is None else draws:
        torch.manual_seed(1000 + i)  # programming noise, drift exponents, 1/f read noise
        alpha = None
        if case.protocol in ("program", "drift"):
            layer.program_analog_weights()
            if case.protocol == "drift":
                layer.drift_analog_weights(case.t)
                if rpu.drift_compensation is not None:
                    alpha = statistics.fmean(
                        float(t.alpha.float().mean()) for t in layer.analog_tiles()
                    )
        if case.protocol == "train":
            for tile in layer.analog_tiles():
                tile.post_update_step()  # a fresh weight-modifier draw, as after each batch
        with torch.no_grad():
            stats.add(layer(x), y_ref, alpha)
    return stats


# -- comparison ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The comparison of one statistic."""

    stat: str
    aimc: float
    aihwkit: float
    allowed: float
    ok: bool

    @property
    def deviation(self) -> float:
        """Relative deviation of aimc from AIHWKIT (signed)."""
        return (self.aimc - self.aihwkit) / abs(self.aihwkit) if self.aihwkit else math.nan


def compare(case: Case, a: Stats, b: Stats) -> list[Verdict]:
    """The verdicts of every statistic both simulators report (over as many draws as ``a``)."""
    sa, sb = a.summary(), b.summary()
    n = len(a.rel_error)
    tol = case.tol
    out = []
    for key in ("rel_error", "err_std", "bias", "alpha"):
        if key not in sa or key not in sb:
            continue
        se = math.sqrt((sa[key + "_sd"] ** 2 + sb[key + "_sd"] ** 2) / n)
        floor = tol.floor * sb.get("err_std", 0.0) if key == "bias" else 0.0
        allowed = max(tol.rel * abs(sb[key]), tol.k * se, floor)
        out.append(Verdict(key, sa[key], sb[key], allowed, abs(sa[key] - sb[key]) <= allowed))
    sd_a, sd_b = sa["rel_error_sd"], sb["rel_error_sd"]
    if n > 2 and min(sd_a, sd_b) > 1e-6 * sb["rel_error"]:
        ratio = sd_a / sd_b
        ok = 1 / tol.spread <= ratio <= tol.spread
        out.append(Verdict("rel_error_spread", sd_a, sd_b, tol.spread, ok))
    return out


#: a spread miss is judged again on this many times the case's draws (both simulators, the
#: first draws included)
CONFIRM_FACTOR = 3


def run_case(case: Case, seed: int = 0) -> dict[str, Any]:
    """Both simulators on ``case``; the summaries and the verdicts.

    The means are judged once. The spread over draws is judged twice when the first judgement
    fails: AIHWKIT's IO noise is clock-seeded, so its sd over 10 draws is a fresh random number
    every run, below a third of its true value with probability 0.06 % (χ², 9 degrees of
    freedom) — rare per check, not over ~110 checks a run. It happened once in CI
    (standard_hwa, drift 1 year: AIHWKIT 0.00046 against aimc's 0.00140; 60 runs here gave
    0.00078 to 0.00182, median 0.00138, as the χ² law has it). A spread miss is therefore
    judged again, with the same factor, over ``CONFIRM_FACTOR`` times the draws of both
    simulators, the first ones included (for equal true spreads a 3x ratio over 30 draws has
    probability 7e-8); a real difference in spread fails both judgements.
    """
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    w, b, x = problem(case, seed)
    a, r = run_aimc(case, w, b, x), run_aihwkit(case, w, b, x)
    verdicts = compare(case, a, r)
    confirmed = False
    if any(v.stat == "rel_error_spread" and not v.ok for v in verdicts):
        more = range(case.draws, CONFIRM_FACTOR * case.draws)
        a2, r2 = run_aimc(case, w, b, x, more), run_aihwkit(case, w, b, x, more)
        a.extend(a2)
        r.extend(r2)
        spread = [v for v in compare(case, a, r) if v.stat == "rel_error_spread"]
        verdicts = [v for v in verdicts if v.stat != "rel_error_spread"] + spread
        confirmed = True
    return {
        "case": case.name,
        "aimc": a.summary(),
        "aihwkit": r.summary(),
        "verdicts": verdicts,
        "ok": all(v.ok for v in verdicts),
        "spread_confirmed": confirmed,
        "spread_draws": len(a.rel_error),
    }


def describe(result: dict[str, Any]) -> str:
    """A readable table of one case's verdicts (the assertion message)."""
    lines = [f"case {result['case']}:"]
    if result.get("spread_confirmed"):
        n = result["spread_draws"]
        lines.append(f"  (rel_error_spread judged again over {n} draws after a first miss)")
    for v in result["verdicts"]:
        flag = "ok " if v.ok else "BAD"
        lines.append(
            f"  {flag} {v.stat:<17} aimc {v.aimc:.5g}  AIHWKIT {v.aihwkit:.5g}  "
            f"deviation {100 * v.deviation:+.2f} %  allowed ±{v.allowed:.3g}"
        )
    return "\n".join(lines)
