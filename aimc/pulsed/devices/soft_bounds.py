"""``soft_bounds``: the step shrinks linearly to zero at the bound in the pulse's direction.

Up: ``dw_up_ij (1 - w / w_max_ij)``; down: ``dw_down_ij (1 - w / w_min_ij)`` — the linear-step
model with ``gamma = 1`` and each device's own bounds (REFERENCE.md §6; AIHWKIT
``SoftBoundsDevice``). Under random up/down pulses a device drifts to its symmetry point, where
the up and down steps are equal (Gokmen & Haensch, Front. Neurosci. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, common_d2d, linear_factor, register


@dataclass
class SoftBoundsParams(PulsedDeviceParams):
    """Parameters of the soft-bounds device (only the shared ones, REFERENCE.md §6)."""


def sample_d2d(shape: tuple[int, ...], params: SoftBoundsParams, gen: torch.Generator) -> State:
    return common_d2d(shape, params, gen)


def step_sizes(w: Tensor, d2d: State, params: SoftBoundsParams) -> tuple[Tensor, Tensor]:
    up = d2d["dw_up"] * linear_factor(w, 1.0, d2d["w_max"])
    down = d2d["dw_down"] * linear_factor(w, 1.0, d2d["w_min"])
    return up, down


def symmetry_point(d2d: State) -> Tensor:
    """Weight where an up and a down step are equal (the fixed point of random pulsing)."""
    a, b = d2d["dw_up"], d2d["dw_down"]
    return (a - b) / (a / d2d["w_max"] - b / d2d["w_min"])


MODEL = register(PulsedDeviceModel("soft_bounds", SoftBoundsParams, sample_d2d, step_sizes))
