"""``pcm_custom_drift``: the PCM model with drift-exponent statistics from a user table.

The mean and std of the drift exponent ``nu`` are interpolated linearly over the target
conductance from ``(g_points, nu_mean, nu_std)``, a table that covers the pair's conductances
``0 .. g_max`` (as AIHWKIT requires; targets outside it, which only a direct call of
:func:`program` can pass, take the end values); everything else is the ``pcm`` model (AIHWKIT
``CustomDriftPCMLikeNoiseModel``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import _fail
from .base import DeviceModel, State, register
from .pcm import PCMParams, drift, program_with


@dataclass
class PCMCustomDriftParams(PCMParams):
    """PCM parameters plus the drift-exponent table (conductances in µS)."""

    g_points: tuple[float, ...] = field(default=(0.0, 12.5, 25.0))
    """Increasing target conductances of the table (µS), from 0 to at least ``g_max``."""
    nu_mean: tuple[float, ...] = field(default=(0.1, 0.05, 0.049))
    """Mean drift exponent at each ``g_points`` entry."""
    nu_std: tuple[float, ...] = field(default=(0.045, 0.01, 0.008))
    """Std of the drift exponent at each ``g_points`` entry."""

    def _validate(self) -> None:
        super()._validate()
        p = self._prefix
        for name in ("g_points", "nu_mean", "nu_std"):
            v = getattr(self, name)
            ok = (
                isinstance(v, (tuple, list))
                and len(v) >= 2
                and all(
                    isinstance(c, (int, float))
                    and not isinstance(c, bool)
                    and math.isfinite(c)
                    and c >= 0
                    for c in v
                )
            )
            if not ok:
                _fail(f"{p}.{name}", v, "a list of at least 2 finite numbers >= 0")
            setattr(self, name, tuple(float(c) for c in v))
        if not len(self.g_points) == len(self.nu_mean) == len(self.nu_std):
            _fail(f"{p}.g_points", self.g_points, "as many entries as nu_mean and nu_std")
        if any(b <= a for a, b in zip(self.g_points[:-1], self.g_points[1:], strict=True)):
            _fail(f"{p}.g_points", self.g_points, "strictly increasing values")
        # AIHWKIT 1.2.0's CustomDriftPCMLikeNoiseModel refuses a table that does not cover the
        # conductances its converter produces (0 .. g_max of the pair): drift exponents
        # extrapolated as the end values would be a silent guess
        if self.g_points[0] > 0 or self.g_points[-1] < self.g_max:
            _fail(
                f"{p}.g_points",
                self.g_points,
                f"a table from 0 to at least g_max = {self.g_max:g} µS (the target "
                "conductances of a pair range over 0 .. g_max; AIHWKIT refuses a narrower "
                "table too)",
            )


def _interp(x: Tensor, xp: tuple[float, ...], fp: tuple[float, ...]) -> Tensor:
    xs = torch.tensor(xp, dtype=x.dtype, device=x.device)
    fs = torch.tensor(fp, dtype=x.dtype, device=x.device)
    x = x.clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, x.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xs[i - 1], xs[i], fs[i - 1], fs[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def nu_table(g: Tensor, params: PCMCustomDriftParams) -> tuple[Tensor, Tensor]:
    """Interpolated mean and std of ``nu`` at target conductances ``g``."""
    g = g.abs()
    return _interp(g, params.g_points, params.nu_mean), _interp(g, params.g_points, params.nu_std)


def program(g_target: Tensor, params: PCMCustomDriftParams, gen: torch.Generator) -> State:
    return program_with(g_target, params, gen, nu_stats=nu_table)


MODEL = register(DeviceModel("pcm_custom_drift", PCMCustomDriftParams, program, drift))
