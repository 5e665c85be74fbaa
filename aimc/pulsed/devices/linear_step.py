"""``linear_step``: the step shrinks (or grows) linearly with the weight.

Up: ``dw_up_ij (1 - gamma_up_ij w / w_max_ref)``; down: ``dw_down_ij (1 - gamma_down_ij w /
w_min_ref)``, i.e. REFERENCE.md §6 ``w += Delta w^d (gamma^d w + 1)`` with the slope written in
AIHWKIT's convention (``gamma_up = -slope_up w_max / dw_min``, AIHWKIT ``LinearStepDevice``).
``w_*_ref`` are the mean bounds (``mean_bound_reference``, AIHWKIT's default) or each device's
own bounds. As in AIHWKIT the factor is not clipped at 0: a device whose own bound lies beyond
``w_ref / gamma`` steps backwards there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, _normal, common_d2d, register


@dataclass
class LinearStepParams(PulsedDeviceParams):
    """Parameters of the linear-step device (AIHWKIT ``LinearStepDevice``)."""

    gamma_up: float = 0.0
    """Relative step reduction of an up pulse at ``w = w_max`` (``1`` = soft bound)."""
    gamma_down: float = 0.0
    """Relative step reduction of a down pulse at ``w = w_min``."""
    gamma_up_dtod: float = 0.05
    """Device-to-device spread of ``gamma_up`` (absolute std, AIHWKIT ``gamma_up_dtod``:
    ``gamma_up_ij = |gamma_up + gamma_up_dtod xi|``)."""
    gamma_down_dtod: float = 0.05
    """Device-to-device spread of ``gamma_down`` (absolute std)."""
    mean_bound_reference: bool = True
    """Scale the slope by the mean bounds ``w_max``/``w_min`` (True, AIHWKIT's default) instead
    of each device's own."""

    def _validate(self) -> None:
        super()._validate()
        for name in ("gamma_up", "gamma_down", "gamma_up_dtod", "gamma_down_dtod"):
            self._number(name)
        self._flag("mean_bound_reference")


def sample_d2d(shape: tuple[int, ...], params: LinearStepParams, gen: torch.Generator) -> State:
    d2d = common_d2d(shape, params, gen)
    # AIHWKIT LinearStepRPUDevice::populate: additive spread, forced >= 0 (allow_increasing off)
    d2d["gamma_up"] = (params.gamma_up + params.gamma_up_dtod * _normal(shape, gen)).abs()
    d2d["gamma_down"] = (params.gamma_down + params.gamma_down_dtod * _normal(shape, gen)).abs()
    return d2d


def _factor(w: Tensor, gamma: Tensor, bound: Tensor | float) -> Tensor:
    """``1 - gamma w / bound`` (no slope where the reference bound is 0; not clipped)."""
    bound = torch.as_tensor(bound, dtype=w.dtype, device=w.device)
    safe = torch.where(bound == 0, torch.ones_like(bound), bound)
    return 1 - torch.where(bound == 0, torch.zeros_like(safe), gamma / safe) * w


def step_sizes(w: Tensor, d2d: State, params: LinearStepParams) -> tuple[Tensor, Tensor]:
    if params.mean_bound_reference:
        ref_max, ref_min = params.w_max, params.w_min
    else:
        ref_max, ref_min = d2d["w_max"], d2d["w_min"]
    up = d2d["dw_up"] * _factor(w, d2d["gamma_up"], ref_max)
    down = d2d["dw_down"] * _factor(w, d2d["gamma_down"], ref_min)
    return up, down


MODEL = register(PulsedDeviceModel("linear_step", LinearStepParams, sample_d2d, step_sizes))
