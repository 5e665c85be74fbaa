"""``linear_step``: the step shrinks (or grows) linearly with the weight.

Up: ``dw_up_ij (1 - gamma_up_ij w / w_max_ref)``; down: ``dw_down_ij (1 - gamma_down_ij w /
w_min_ref)`` (never below 0), i.e. REFERENCE.md §6 ``w += Delta w^d (gamma^d w + 1)`` with the
slope written in AIHWKIT's convention (``gamma_up = -slope_up w_max / dw_min``, AIHWKIT
``LinearStepDevice``). ``w_*_ref`` are the device's own bounds, or the mean bounds with
``mean_bound_reference``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, _normal, common_d2d, linear_factor, register


@dataclass
class LinearStepParams(PulsedDeviceParams):
    """Parameters of the linear-step device (AIHWKIT ``LinearStepDevice``)."""

    gamma_up: float = 0.0
    """Relative step reduction of an up pulse at ``w = w_max`` (``1`` = soft bound)."""
    gamma_down: float = 0.0
    """Relative step reduction of a down pulse at ``w = w_min``."""
    gamma_up_dtod: float = 0.05
    """Device-to-device spread of ``gamma_up`` (relative std)."""
    gamma_down_dtod: float = 0.05
    """Device-to-device spread of ``gamma_down`` (relative std)."""
    mean_bound_reference: bool = False
    """Scale the slope by the mean bounds ``w_max``/``w_min`` instead of each device's own."""

    def _validate(self) -> None:
        super()._validate()
        for name in ("gamma_up", "gamma_down", "gamma_up_dtod", "gamma_down_dtod"):
            self._number(name)
        self._flag("mean_bound_reference")


def sample_d2d(shape: tuple[int, ...], params: LinearStepParams, gen: torch.Generator) -> State:
    d2d = common_d2d(shape, params, gen)
    d2d["gamma_up"] = params.gamma_up * (1 + params.gamma_up_dtod * _normal(shape, gen))
    d2d["gamma_down"] = params.gamma_down * (1 + params.gamma_down_dtod * _normal(shape, gen))
    return d2d


def step_sizes(w: Tensor, d2d: State, params: LinearStepParams) -> tuple[Tensor, Tensor]:
    if params.mean_bound_reference:
        ref_max, ref_min = params.w_max, params.w_min
    else:
        ref_max, ref_min = d2d["w_max"], d2d["w_min"]
    up = d2d["dw_up"] * linear_factor(w, d2d["gamma_up"], ref_max)
    down = d2d["dw_down"] * linear_factor(w, d2d["gamma_down"], ref_min)
    return up, down


MODEL = register(PulsedDeviceModel("linear_step", LinearStepParams, sample_d2d, step_sizes))
