"""Device models (one file each) behind a two-function protocol; see :mod:`aimc.devices.base`."""

from . import gaussian, pcm, pcm_custom_drift
from .base import DEVICE_MODELS, DeviceModel, from_conductances, get, register, to_conductances

__all__ = [
    "DEVICE_MODELS",
    "DeviceModel",
    "from_conductances",
    "gaussian",
    "get",
    "pcm",
    "pcm_custom_drift",
    "register",
    "to_conductances",
]
