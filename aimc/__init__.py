"""aimc: fast, pure-PyTorch simulation of analog in-memory-computing crossbar hardware."""

# huge pages: an opt-in (THP_MEM_ALLOC_ENABLE=1), see aimc._hugepages
from . import _hugepages, devices, functional, nn, presets, pulsed  # noqa: F401
from ._hugepages import huge_pages_active
from .calibrate import calibrate_input_ranges
from .compiled import compile, compile_layers, prepare_compile
from .config import (
    AnalogConfig,
    BoundManagement,
    DeviceConfig,
    DeviceParams,
    DriftCompensation,
    HWAConfig,
    IOConfig,
    MappingConfig,
    NoiseManagement,
    OutputBoundMask,
    WeightClip,
    WeightModifier,
    WeightNoiseType,
    WeightRemap,
    resolution_from_bits,
)
from .convert import analog_layers, convert, digital_module, manual_seed, to_digital
from .hwa import post_step, register_post_step_hook
from .lifecycle import drift, program

__version__ = "0.3.0"

__all__ = [
    "huge_pages_active",
    "AnalogConfig",
    "BoundManagement",
    "DeviceConfig",
    "DeviceParams",
    "DriftCompensation",
    "HWAConfig",
    "IOConfig",
    "MappingConfig",
    "NoiseManagement",
    "OutputBoundMask",
    "WeightClip",
    "WeightModifier",
    "WeightNoiseType",
    "WeightRemap",
    "analog_layers",
    "calibrate_input_ranges",
    "compile",
    "compile_layers",
    "convert",
    "devices",
    "drift",
    "digital_module",
    "functional",
    "manual_seed",
    "nn",
    "post_step",
    "presets",
    "prepare_compile",
    "program",
    "pulsed",
    "register_post_step_hook",
    "resolution_from_bits",
    "to_digital",
]
