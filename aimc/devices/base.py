"""Device-model plugin protocol, registry, and the weight <-> conductance-pair converter.

A device model is one file that defines

* a params dataclass (validated config data, subclass of :class:`aimc.config.DeviceParams`) with
  at least ``g_max``;
* ``program(g_target, params, generator) -> state``: programmed conductances and any per-device
  state (e.g. drift exponents) as a dict of tensors shaped like ``g_target``, with the
  conductances under ``"g"``;
* ``drift(state, t_inference, params, generator) -> conductances`` at ``t_inference`` seconds
  after programming, including fresh read noise;

and registers them with :func:`register`. The weight <-> conductance mapping (by default a
differential pair per weight, :func:`to_conductances`) can be swapped per model. See
``aimc/devices/gaussian.py`` for a complete example in ~60 lines, and ``docs/devices.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from ..config import DEVICE_PARAMS, DeviceParams

T = TypeVar("T")

State = dict[str, Tensor]


def to_conductances(w: Tensor, n_out: int, g_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """Differential pair per weight (REFERENCE.md §2), one scale per tile.

    ``w`` is ``(B, O_pad, ci)`` tile weights, tiles being ``n_out`` column blocks of each input
    split. Returns ``(g_pos, g_neg, scale)`` with ``scale = g_max / max(max|W_tile|, 1e-7)`` of
    shape ``(B, to)``; ``g_pos = clamp(W * scale, 0, g_max)``, ``g_neg = clamp(-W * scale, 0,
    g_max)``.
    """
    b, o, c = w.shape
    w_max = w.abs().view(b, n_out, o // n_out, c).amax(dim=(2, 3))
    scale = g_max / w_max.clamp_min(1e-7)
    per_row = scale.repeat_interleave(o // n_out, dim=1).unsqueeze(2)  # (B, O_pad, 1)
    g = w * per_row
    return g.clamp(0, g_max), (-g).clamp(0, g_max), scale


def from_conductances(g_pos: Tensor, g_neg: Tensor, scale: Tensor) -> Tensor:
    """Inverse of :func:`to_conductances`: ``W = (G+ - G-) / scale``."""
    b, o, _ = g_pos.shape
    per_row = scale.repeat_interleave(o // scale.shape[1], dim=1).unsqueeze(2)
    return (g_pos - g_neg) / per_row


@dataclass(frozen=True)
class DeviceModel:
    """A registered device model: its name, params class and the two physics functions."""

    name: str
    params_class: type[DeviceParams]
    program: Callable[[Tensor, DeviceParams, torch.Generator], State]
    drift: Callable[[State, float, DeviceParams, torch.Generator], Tensor]
    to_conductances: Callable[[Tensor, int, float], tuple[Tensor, Tensor, Tensor]] = to_conductances
    """Weights -> (G+, G-, per-tile scale); swap in another mapping if the device needs one."""
    from_conductances: Callable[[Tensor, Tensor, Tensor], Tensor] = from_conductances
    """(G+, G-, scale) -> weights, the inverse of ``to_conductances``."""


DEVICE_MODELS: dict[str, DeviceModel] = {}


def register(model: DeviceModel) -> DeviceModel:
    """Make ``model`` selectable as ``DeviceConfig(model=model.name)``."""
    if model.name == "none" or not model.name.isidentifier():
        raise ValueError(
            f"device model name: got {model.name!r}; allowed: an identifier, not 'none'"
        )
    DEVICE_MODELS[model.name] = model
    DEVICE_PARAMS[model.name] = model.params_class
    return model


def lookup(table: dict[str, T], name: str, field: str) -> T:
    """``table[name]`` of a name registry, or a ``ValueError`` naming ``field``, the value and
    the registered names."""
    if name not in table:
        allowed = ", ".join(repr(n) for n in sorted(table))
        raise ValueError(f"{field}: got {name!r}; allowed: one of {allowed}")
    return table[name]


def get(name: str) -> DeviceModel:
    """The registered device model ``name``."""
    return lookup(DEVICE_MODELS, name, "device.model")
