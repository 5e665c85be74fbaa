"""Pulsed-device plugin protocol, registry, and the pulse application shared by every model.

A pulsed device model is one file that defines

* a params dataclass (subclass of :class:`aimc.pulsed.config.PulsedDeviceParams`);
* ``sample_d2d(shape, params, generator) -> state``: the per-device (device-to-device)
  parameters, drawn once, as a dict of tensors of ``shape`` (start from :func:`common_d2d`);
* ``step_sizes(w, d2d, params) -> (up, down)``: the mean magnitude (>= 0) of one up and one
  down pulse for devices at weight ``w``;
* optionally ``granularity(params) -> float``: the nominal step the update is computed for
  (AIHWKIT's ``calcWeightGranularity``; default ``dw_min``);

and registers them with :func:`register`. :func:`apply_pulses` turns signed pulse counts into a
new weight with the cycle-to-cycle noise and the per-device bounds, the same for every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...devices.base import lookup
from ...random import normal_
from ..config import PULSED_PARAMS, PulsedDeviceParams

State = dict[str, Tensor]


def _normal(shape: torch.Size | tuple[int, ...], gen: torch.Generator, device=None) -> Tensor:
    return normal_(torch.empty(shape, dtype=torch.float32, device=device), gen)


def common_d2d(
    shape: tuple[int, ...], params: PulsedDeviceParams, gen: torch.Generator, device=None
) -> State:
    """The d2d draws every model shares (AIHWKIT 1.2.0 ``PulsedRPUDevice::populate``).

    With a gain ``g_ij = 1 + dw_min_dtod xi`` and an asymmetry ``r_ij = up_down_dtod xi``:
    ``dw_up = |dw_min (g_ij + min(up_down, 0) + r_ij)|`` and ``dw_down = |dw_min (g_ij -
    max(up_down, 0) - r_ij)|``, i.e. ``up_down`` shortens the steps of one direction only (the
    other keeps ``dw_min``) and the asymmetry spread is additive. Bounds ``w_max (1 + w_max_dtod
    xi)`` and ``w_min (1 + w_min_dtod xi)``; when the mean range contains 0 (AIHWKIT's
    requirement), an inverted pair is swapped and ``w_max_ij = |.|``, ``w_min_ij = -|.|``
    (``enforce_consistency``); otherwise a bound is kept on the side of zero of its mean and
    ``w_max_ij`` is raised to ``w_min_ij`` where a draw would invert them.
    """
    p = params
    gain = 1 + p.dw_min_dtod * _normal(shape, gen, device)
    r = p.up_down_dtod * _normal(shape, gen, device)
    w_max = p.w_max * (1 + p.w_max_dtod * _normal(shape, gen, device))
    w_min = p.w_min * (1 + p.w_min_dtod * _normal(shape, gen, device))
    up_bias, down_bias = min(p.up_down, 0.0), -max(p.up_down, 0.0)
    if p.w_min <= 0 <= p.w_max:
        w_max, w_min = torch.maximum(w_max, w_min).abs(), -torch.minimum(w_max, w_min).abs()
    else:
        if p.w_max >= 0:
            w_max = w_max.clamp_min(0)
        if p.w_min <= 0:
            w_min = w_min.clamp_max(0)
        w_max = torch.maximum(w_max, w_min)
    return {
        "dw_up": (p.dw_min * (gain + up_bias + r)).abs(),
        "dw_down": (p.dw_min * (gain + down_bias - r)).abs(),
        "w_max": w_max,
        "w_min": w_min,
    }


def nominal_granularity(params: PulsedDeviceParams) -> float:
    """The default weight granularity of a model: ``dw_min``."""
    return float(params.dw_min)


@dataclass(frozen=True)
class PulsedDeviceModel:
    """A registered pulsed device model: name, params class, d2d sampler and step function."""

    name: str
    params_class: type[PulsedDeviceParams]
    sample_d2d: Callable[[tuple[int, ...], PulsedDeviceParams, torch.Generator], State]
    step_sizes: Callable[[Tensor, State, PulsedDeviceParams], tuple[Tensor, Tensor]]
    #: the weight granularity of the update (AIHWKIT ``calcWeightGranularity``): the nominal
    #: step that the pulse probabilities and train lengths are computed for
    #: (``A B = lr / (granularity BL)``); ``dw_min`` unless the model says otherwise
    granularity: Callable[[PulsedDeviceParams], float] = nominal_granularity


PULSED_DEVICES: dict[str, PulsedDeviceModel] = {}


def register(model: PulsedDeviceModel) -> PulsedDeviceModel:
    """Make ``model`` selectable as ``PulsedConfig(device=model.name)``."""
    if not model.name.isidentifier():
        raise ValueError(f"pulsed device name: got {model.name!r}; allowed: an identifier")
    PULSED_DEVICES[model.name] = model
    PULSED_PARAMS[model.name] = model.params_class
    return model


def get(name: str) -> PulsedDeviceModel:
    """The registered pulsed device model ``name``."""
    return lookup(PULSED_DEVICES, name, "pulsed.device")


def apply_pulses(
    model: PulsedDeviceModel,
    w: Tensor,
    n_up: Tensor,
    n_down: Tensor,
    d2d: State,
    params: PulsedDeviceParams,
    gen: torch.Generator | None,
) -> Tensor:
    """New weights after ``n_up`` up and ``n_down`` down pulses on devices at ``w``.

    All pulses of one call see the current state ``w`` (``n`` pulses move by ``n`` steps); the
    cycle-to-cycle noise of ``n`` independent pulses is one Gaussian with variance ``n sigma^2
    step^2`` (multiplicative noise) or ``n sigma^2 dw^2`` (additive). ``gen=None`` applies no
    noise (the expected step; counts may then be fractional). The result is clipped to the
    per-device bounds. Counts are tensors broadcastable to ``w``.
    """
    up, down = model.step_sizes(w, d2d, params)
    new = w + n_up * up - n_down * down
    sigma = params.dw_min_std
    if gen is not None and sigma > 0:
        if params.mult_noise:
            var = n_up * up.square() + n_down * down.square()
        else:
            var = n_up * d2d["dw_up"].square() + n_down * d2d["dw_down"].square()
        new = new + sigma * var.sqrt() * _normal(new.shape, gen, new.device)
    return torch.minimum(torch.maximum(new, d2d["w_min"]), d2d["w_max"])


def linear_factor(w: Tensor, gamma: Tensor | float, bound: Tensor | float) -> Tensor:
    """``max(1 - gamma w / bound, 0)``: the step shrink toward ``bound`` (the pulse's direction)
    of the soft-bounds model (linear-step has its own, unclamped factor). A zero bound has no
    slope."""
    bound = torch.as_tensor(bound, dtype=w.dtype, device=w.device)
    safe = torch.where(bound == 0, torch.ones_like(bound), bound)
    slope = torch.where(bound == 0, torch.zeros_like(safe), gamma / safe)
    return (1 - slope * w).clamp_min(0)
