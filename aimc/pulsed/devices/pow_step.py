"""``pow_step``: steps scale with a power of the distance to the bound in the pulse's direction.

Up: ``dw_up_ij omega^gamma_ij`` with ``omega = (w_max_ij - w) / (w_max_ij - w_min_ij)``; down:
mirrored, ``omega = (w - w_min_ij) / (w_max_ij - w_min_ij)`` (REFERENCE.md §6; AIHWKIT
``PowStepDevice``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, _normal, common_d2d, register


@dataclass
class PowStepParams(PulsedDeviceParams):
    """Parameters of the power-step device (AIHWKIT ``PowStepDevice``)."""

    pow_gamma: float = 1.0
    """Exponent of the normalised distance to the bound (1 = soft bounds over the full range)."""
    pow_gamma_dtod: float = 0.1
    """Device-to-device spread of ``pow_gamma`` (relative std)."""

    def _validate(self) -> None:
        super()._validate()
        self._number("pow_gamma")
        self._number("pow_gamma_dtod")


def sample_d2d(shape: tuple[int, ...], params: PowStepParams, gen: torch.Generator) -> State:
    d2d = common_d2d(shape, params, gen)
    spread = 1 + params.pow_gamma_dtod * _normal(shape, gen)
    d2d["pow_gamma"] = (params.pow_gamma * spread).abs()  # AIHWKIT enforce_consistency
    return d2d


def step_sizes(w: Tensor, d2d: State, params: PowStepParams) -> tuple[Tensor, Tensor]:
    span = (d2d["w_max"] - d2d["w_min"]).clamp_min(1e-12)
    omega_up = ((d2d["w_max"] - w) / span).clamp(0, 1)
    omega_down = ((w - d2d["w_min"]) / span).clamp(0, 1)
    g = d2d["pow_gamma"]
    return d2d["dw_up"] * omega_up.pow(g), d2d["dw_down"] * omega_down.pow(g)


def granularity(params: PowStepParams) -> float:
    """AIHWKIT ``PowStepDevice``: the step at mid-range, ``dw_min 0.5^pow_gamma``."""
    return params.dw_min * 0.5**params.pow_gamma


MODEL = register(PulsedDeviceModel("pow_step", PowStepParams, sample_d2d, step_sizes, granularity))
