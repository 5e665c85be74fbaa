"""``constant_step``: every pulse moves the weight by the same (per-device) step.

``w += d dw^d_ij (1 + dw_min_std xi)``, clipped to the device's bounds, with the per-device up and
down steps ``dw_up``/``dw_down`` of :func:`~aimc.pulsed.devices.base.common_d2d` (AIHWKIT's
asymmetry rule: ``up_down`` shortens one direction only; AIHWKIT ``ConstantStepDevice``; Gokmen &
Vlasov, Front. Neurosci. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, common_d2d, register


@dataclass
class ConstantStepParams(PulsedDeviceParams):
    """Parameters of the constant-step device (only the shared ones, REFERENCE.md §6)."""


def sample_d2d(shape: tuple[int, ...], params: ConstantStepParams, gen: torch.Generator) -> State:
    return common_d2d(shape, params, gen)


def step_sizes(w: Tensor, d2d: State, params: ConstantStepParams) -> tuple[Tensor, Tensor]:
    return d2d["dw_up"], d2d["dw_down"]


MODEL = register(PulsedDeviceModel("constant_step", ConstantStepParams, sample_d2d, step_sizes))
