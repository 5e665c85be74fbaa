"""``gaussian``: state-independent programming and read noise, one fixed drift exponent.

A deliberately simple model for studies (and the template for a new device model): programming
adds ``prog_std * g_max * xi``, every read adds ``read_std * g_max * xi``, and conductances drift
as ``(t / t0)^-nu`` with the same ``nu`` for every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import DeviceParams
from ..random import normal_
from .base import DeviceModel, State, register


@dataclass
class GaussianParams(DeviceParams):
    """Parameters of the Gaussian device model."""

    g_max: float = 25.0
    """Conductance of the largest weight (µS)."""
    prog_std: float = 0.02
    """Programming-noise std as a fraction of g_max."""
    read_std: float = 0.01
    """Read-noise std as a fraction of g_max (fresh at every drift call)."""
    nu: float = 0.05
    """Drift exponent of every device."""
    t0: float = 20.0
    """Reference time after programming (s)."""

    def _validate(self) -> None:
        self._check_positive("g_max", "t0")
        self._check_non_negative("prog_std", "read_std", "nu")


def program(g_target: Tensor, params: GaussianParams, gen: torch.Generator) -> State:
    xi = normal_(torch.empty_like(g_target), gen)
    return {"g": (g_target + params.prog_std * params.g_max * xi).clamp_min(0)}


def drift(state: State, t_inference: float, params: GaussianParams, gen: torch.Generator) -> Tensor:
    g = state["g"].float()
    t = t_inference + params.t0
    if t > params.t0:
        g = g * (t / params.t0) ** (-params.nu)
    xi = normal_(torch.empty_like(g), gen)
    return (g + params.read_std * params.g_max * xi).clamp_min(0)


MODEL = register(DeviceModel("gaussian", GaussianParams, program, drift))
