"""``piecewise_step``: a measured step-vs-weight curve, linearly interpolated.

The up (down) step is ``dw_up_ij`` (``dw_down_ij``) times the linear interpolation of the node
list ``piecewise_up`` (``piecewise_down``) at the device's normalised weight; the nodes are
equally spaced from ``w_min_ij`` to ``w_max_ij`` (REFERENCE.md §6; AIHWKIT
``PiecewiseStepDevice``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import _fail
from ..config import PulsedDeviceParams
from .base import PulsedDeviceModel, State, common_d2d, register


@dataclass
class PiecewiseStepParams(PulsedDeviceParams):
    """Parameters of the piecewise-step device (AIHWKIT ``PiecewiseStepDevice``)."""

    piecewise_up: tuple[float, ...] = (1.0, 1.0)
    """Up-step factors at >= 2 equally spaced weights from ``w_min`` to ``w_max`` (>= 0)."""
    piecewise_down: tuple[float, ...] = (1.0, 1.0)
    """Down-step factors at >= 2 equally spaced weights from ``w_min`` to ``w_max`` (>= 0)."""

    def _validate(self) -> None:
        super()._validate()
        for name in ("piecewise_up", "piecewise_down"):
            value = getattr(self, name)
            ok = (
                isinstance(value, (list, tuple))
                and len(value) >= 2
                and all(
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and v >= 0
                    for v in value
                )
            )
            if not ok:
                _fail(f"{self._prefix}.{name}", value, "a list of >= 2 finite numbers >= 0")
            setattr(self, name, tuple(float(v) for v in value))


def sample_d2d(shape: tuple[int, ...], params: PiecewiseStepParams, gen: torch.Generator) -> State:
    return common_d2d(shape, params, gen)


def _interpolate(nodes: tuple[float, ...], rel: Tensor) -> Tensor:
    table = torch.tensor(nodes, dtype=rel.dtype, device=rel.device)
    pos = rel.clamp(0, 1) * (len(nodes) - 1)
    idx = pos.floor().clamp(max=len(nodes) - 2).long()
    frac = pos - idx
    return table[idx] * (1 - frac) + table[idx + 1] * frac


def step_sizes(w: Tensor, d2d: State, params: PiecewiseStepParams) -> tuple[Tensor, Tensor]:
    span = (d2d["w_max"] - d2d["w_min"]).clamp_min(1e-12)
    rel = (w - d2d["w_min"]) / span
    up = d2d["dw_up"] * _interpolate(params.piecewise_up, rel)
    down = d2d["dw_down"] * _interpolate(params.piecewise_down, rel)
    return up, down


def granularity(params: PiecewiseStepParams) -> float:
    """AIHWKIT ``PiecewiseStepDevice``: ``dw_min`` times the middle node of ``piecewise_up``
    (index ``len // 2``); ``dw_min`` if that node is 0."""
    g = params.dw_min * params.piecewise_up[len(params.piecewise_up) // 2]
    return g if g > 0 else params.dw_min


MODEL = register(
    PulsedDeviceModel("piecewise_step", PiecewiseStepParams, sample_d2d, step_sizes, granularity)
)
