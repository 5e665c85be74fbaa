"""In-situ (pulsed) analog training: device models, stochastic pulse-train updates, optimizers.

See ``docs/insitu.md``. REFERENCE.md §6 gives the device formulas and constants.
"""

from . import devices, presets
from .array import PulsedArray
from .config import (
    MixedPrecisionConfig,
    PulsedConfig,
    PulsedDeviceParams,
    TikiTakaConfig,
    UpdateConfig,
    UpdateMode,
)
from .devices.constant_step import ConstantStepParams
from .devices.exp_step import ExpStepParams
from .devices.linear_step import LinearStepParams
from .devices.piecewise_step import PiecewiseStepParams
from .devices.pow_step import PowStepParams
from .devices.soft_bounds import SoftBoundsParams
from .optim import AnalogSGD, MixedPrecision, TikiTaka
from .update import expected_counts, pulse_probabilities, slot_counts

__all__ = [
    "AnalogSGD",
    "ConstantStepParams",
    "ExpStepParams",
    "LinearStepParams",
    "MixedPrecision",
    "MixedPrecisionConfig",
    "PiecewiseStepParams",
    "PowStepParams",
    "PulsedArray",
    "PulsedConfig",
    "PulsedDeviceParams",
    "SoftBoundsParams",
    "TikiTaka",
    "TikiTakaConfig",
    "UpdateConfig",
    "UpdateMode",
    "devices",
    "expected_counts",
    "presets",
    "pulse_probabilities",
    "slot_counts",
]
