"""Pulsed device models (one file each) behind a two-function protocol; see
:mod:`aimc.pulsed.devices.base`."""

from . import constant_step, exp_step, linear_step, piecewise_step, pow_step, soft_bounds
from .base import PULSED_DEVICES, PulsedDeviceModel, apply_pulses, common_d2d, get, register

__all__ = [
    "PULSED_DEVICES",
    "PulsedDeviceModel",
    "apply_pulses",
    "common_d2d",
    "constant_step",
    "exp_step",
    "get",
    "linear_step",
    "piecewise_step",
    "pow_step",
    "register",
    "soft_bounds",
]
