"""Analog layers: drop-in replacements for ``nn.Linear``, ``nn.Conv1d/2d/3d`` and HF ``Conv1D``."""

from .base import AnalogLayerMixin
from .conv import AnalogConv1d, AnalogConv2d, AnalogConv3d
from .linear import AnalogConv1D, AnalogLinear

__all__ = [
    "AnalogLayerMixin",
    "AnalogLinear",
    "AnalogConv1D",
    "AnalogConv1d",
    "AnalogConv2d",
    "AnalogConv3d",
]
