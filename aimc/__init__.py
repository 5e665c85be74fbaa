"""aimc: fast, pure-PyTorch simulation of analog in-memory-computing crossbar hardware."""

from . import functional, nn, presets
from .config import (
    AnalogConfig,
    BoundManagement,
    DeviceConfig,
    HWAConfig,
    IOConfig,
    MappingConfig,
    NoiseManagement,
    WeightNoiseType,
    resolution_from_bits,
)
from .convert import analog_layers, convert, digital_module, manual_seed, to_digital

__version__ = "0.1.0"

__all__ = [
    "AnalogConfig",
    "BoundManagement",
    "DeviceConfig",
    "HWAConfig",
    "IOConfig",
    "MappingConfig",
    "NoiseManagement",
    "WeightNoiseType",
    "analog_layers",
    "convert",
    "digital_module",
    "functional",
    "manual_seed",
    "nn",
    "presets",
    "resolution_from_bits",
    "to_digital",
]
