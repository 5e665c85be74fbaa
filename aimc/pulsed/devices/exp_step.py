"""``exp_step``: exponentially state-dependent steps (fits of ReRAM and PCM pulse responses).

``w += max(y, 0) d dw^d_ij`` (the per-device up/down steps of ``common_d2d``) with
``y = 1 - A^d exp(d gamma^d z)``,
``z = 2 a w / (w_max_ij - w_min_ij) + b`` (REFERENCE.md §6; AIHWKIT ``ExpStepDevice``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import _check_number
from ..config import PulsedDeviceParams, check_finite
from .base import PulsedDeviceModel, State, common_d2d, register


@dataclass
class ExpStepParams(PulsedDeviceParams):
    """Parameters of the exponential-step device (AIHWKIT ``ExpStepDevice`` defaults)."""

    A_up: float = 0.00081
    """Amplitude of the exponential reduction of up steps."""
    A_down: float = 0.36833
    """Amplitude of the exponential reduction of down steps."""
    gamma_up: float = 12.44625
    """Exponent of the up-step reduction."""
    gamma_down: float = 12.78785
    """Exponent of the down-step reduction."""
    a: float = 0.244
    """Slope of ``z`` in the normalised weight."""
    b: float = 0.2425
    """Offset of ``z``."""

    def _validate(self) -> None:
        super()._validate()
        for name in ("A_up", "A_down", "a", "b"):
            setattr(self, name, check_finite(f"{self._prefix}.{name}", getattr(self, name)))
        for name in ("gamma_up", "gamma_down"):
            path = f"{self._prefix}.{name}"
            setattr(self, name, _check_number(path, getattr(self, name), min_value=0))


def sample_d2d(shape: tuple[int, ...], params: ExpStepParams, gen: torch.Generator) -> State:
    return common_d2d(shape, params, gen)


def step_sizes(w: Tensor, d2d: State, params: ExpStepParams) -> tuple[Tensor, Tensor]:
    p = params
    span = (d2d["w_max"] - d2d["w_min"]).clamp_min(1e-12)
    z = 2 * p.a * w / span + p.b
    y_up = (1 - p.A_up * torch.exp(p.gamma_up * z)).clamp_min(0)
    y_down = (1 - p.A_down * torch.exp(-p.gamma_down * z)).clamp_min(0)
    return d2d["dw_up"] * y_up, d2d["dw_down"] * y_down


def granularity(params: ExpStepParams) -> float:
    """AIHWKIT ``ExpStepDevice``: the mean down step of the nominal device at ``w = 0`` (AIHWKIT
    1.2.0 averages the down step with itself, ``(dw_down + dw_down) / 2``; reproduced), or
    ``dw_min`` if that is not positive."""
    p = params
    down_scale = (1.0 - max(p.up_down, 0.0)) * p.dw_min
    z = p.b  # 2 a w / (w_max - w_min) + b at w = 0
    dw_down = down_scale * max(1.0 - p.A_down * math.exp(-p.gamma_down * z), 0.0)
    return dw_down if dw_down > 0 else p.dw_min


MODEL = register(PulsedDeviceModel("exp_step", ExpStepParams, sample_d2d, step_sizes, granularity))
