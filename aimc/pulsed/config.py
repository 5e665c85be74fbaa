"""Configuration of in-situ (pulsed) training: device parameters, pulse-train update, compounds.

Data only, validated on construction, versioned to/from dict (the same conventions as
:mod:`aimc.config`). Semantics and defaults follow REFERENCE.md §6 (IBM AIHWKIT 1.2.0
``PulsedDevice`` / ``UpdateParameters``); weights are in the device's own units (the conductance
range ``[w_min, w_max]`` expressed as weights).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..config import (
    _SUBCONFIGS,
    Migration,
    _as_float,
    _check_bool,
    _check_dict,
    _check_enum,
    _check_int,
    _check_number,
    _ConfigBase,
    _fail,
    _loads,
    _upgrade,
)

PULSED_CONFIG_VERSION = 1
"""Version of the dict / JSON form written by :meth:`PulsedConfig.to_dict`."""

#: Upgrades of older pulsed-config dicts, ``{v: dict of version v -> dict of version v + 1}``
#: (without the ``"version"`` key), as :data:`aimc.config.CONFIG_MIGRATIONS`. Empty: version 1
#: is the first.
PULSED_CONFIG_MIGRATIONS: dict[int, Migration] = {}


def check_finite(path: str, value: Any) -> float:
    """Validate a finite real number (either sign)."""
    v = _as_float(value)
    if v is None or not math.isfinite(v):
        _fail(path, value, "a finite number")
    return v


class UpdateMode(str, Enum):
    """How a pulsed update is computed (see :mod:`aimc.pulsed.update`)."""

    STOCHASTIC = "stochastic"  #: Bernoulli pulse trains, coincidences, per-pulse c2c noise
    EXPECTED = "expected"  #: one deterministic step of the expected pulse counts (approximation)


@dataclass
class PulsedDeviceParams(_ConfigBase):
    """Parameters every pulsed device shares (REFERENCE.md §6; AIHWKIT ``PulsedDevice``).

    Device-to-device (d2d) values are drawn once per device, when an array is created (AIHWKIT
    1.2.0 ``PulsedRPUDevice::populate``): with ``g_ij = 1 + dw_min_dtod xi`` and ``r_ij =
    up_down_dtod xi``, the up step is ``dw_min |g_ij + min(up_down, 0) + r_ij|`` and the down
    step ``dw_min |g_ij - max(up_down, 0) - r_ij|``; ``w_max_ij = w_max (1 + w_max_dtod xi)``,
    ``w_min_ij = w_min (1 + w_min_dtod xi)``. A pulse's step is that times the device model's
    state-dependent factor, times the cycle-to-cycle factor ``(1 + dw_min_std xi)``.
    """

    _prefix = "pulsed.params"

    dw_min: float = 0.001
    """Mean step of one pulse at the symmetry point (Gokmen & Vlasov, Front. Neurosci. 2016)."""
    dw_min_dtod: float = 0.3
    """Device-to-device spread of ``dw_min`` (relative std)."""
    dw_min_std: float = 0.3
    """Cycle-to-cycle spread of each pulse's step (relative std; Gokmen & Vlasov 2016)."""
    mult_noise: bool = True
    """Cycle-to-cycle noise multiplies the state-dependent step (True, REFERENCE §6), or is
    additive with std ``dw_min_std * dw^d_ij``, the device's up or down step (AIHWKIT
    ``mult_noise=False``, used by the ReRAM soft-bounds and capacitor fits)."""
    up_down: float = 0.0
    """Up/down asymmetry (AIHWKIT ``up_down``): ``> 0`` shortens the down steps to ``dw_min (1 -
    up_down)``, ``< 0`` the up steps to ``dw_min (1 + up_down)``; the other direction keeps
    ``dw_min``."""
    up_down_dtod: float = 0.01
    """Device-to-device std of the asymmetry, in units of ``dw_min``: ``+r`` on the up step,
    ``-r`` on the down step."""
    w_max: float = 0.6
    """Mean upper bound of a device's weight."""
    w_min: float = -0.6
    """Mean lower bound of a device's weight."""
    w_max_dtod: float = 0.3
    """Device-to-device spread of ``w_max`` (relative std)."""
    w_min_dtod: float = 0.3
    """Device-to-device spread of ``w_min`` (relative std)."""

    def _validate(self) -> None:
        for name in ("dw_min",):
            self._number(name, strict=True)
        for name in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_max_dtod", "w_min_dtod"):
            self._number(name)
        for name in ("up_down", "w_max", "w_min"):
            setattr(self, name, check_finite(f"{self._prefix}.{name}", getattr(self, name)))
        self._flag("mult_noise")
        if not self.w_min < self.w_max:
            p = self._prefix
            _fail(f"{p}.w_max", self.w_max, f"a number > {p}.w_min ({self.w_min})")
        if abs(self.up_down) >= 1:
            _fail(f"{self._prefix}.up_down", self.up_down, "a number in (-1, 1)")

    def _flag(self, name: str) -> None:
        setattr(self, name, _check_bool(f"{self._prefix}.{name}", getattr(self, name)))

    def _number(self, name: str, strict: bool = False) -> None:
        path = f"{self._prefix}.{name}"
        setattr(self, name, _check_number(path, getattr(self, name), min_value=0, strict=strict))


#: Parameter classes of the registered pulsed device models (filled by ``aimc.pulsed.devices``).
PULSED_PARAMS: dict[str, type[PulsedDeviceParams]] = {}


@dataclass
class UpdateConfig(_ConfigBase):
    """Stochastic pulse-train update (Gokmen & Vlasov, Front. Neurosci. 10, 333 (2016); AIHWKIT
    ``UpdateParameters``).

    For a batch sample with input ``x`` and error ``delta``, input ``j`` fires in each of ``BL``
    slots with probability ``p_x = A |x_j|`` and output ``i`` with ``p_d = B |delta_i|``; a
    coincidence moves device ``ij`` by one pulse in direction ``-sign(x_j delta_i)``. With
    ``A B = lr / (dw_min BL)`` the expected change is ``-lr x_j delta_i`` (plain SGD).
    """

    _prefix = "pulsed.update"

    desired_bl: int = 31
    """Length ``BL`` of the pulse trains (AIHWKIT default 31)."""
    update_management: bool = True
    """Balance the x- and delta-probabilities so their maxima are equal:
    ``A = sqrt(lr d_max / (dw_min BL x_max))``, ``B = sqrt(lr x_max / (dw_min BL d_max))``
    (Gokmen & Vlasov 2016; AIHWKIT ``update_management``); when the update saturates
    (``lr x_max d_max / dw_min > desired_bl``) the x-probabilities top out at 1 and the
    delta-probabilities take the rest (AIHWKIT). Off: ``A = B = sqrt(lr/(dw_min BL))``. On
    whenever ``update_bl_management`` is (as in AIHWKIT). ``dw_min`` here is the device model's
    weight granularity (``PulsedDeviceModel.granularity``: ``dw_min``, or e.g. for
    ``pow_step`` ``dw_min 0.5^pow_gamma``)."""
    update_bl_management: bool = True
    """Shorten the trains when the update is small: ``BL = min(desired_bl,
    ceil(lr x_max d_max / dw_min))`` per sample (AIHWKIT ``update_bl_management``)."""
    mode: UpdateMode = UpdateMode.STOCHASTIC
    """``stochastic`` (pulse trains) or ``expected``: one step of the expected pulse counts
    ``BL p_x p_d`` at the current state, no c2c noise — an approximation for fast studies."""

    def _validate(self) -> None:
        p = self._prefix
        self.desired_bl = _check_int(f"{p}.desired_bl", self.desired_bl, min_value=1)
        self.update_management = _check_bool(f"{p}.update_management", self.update_management)
        self.update_bl_management = _check_bool(
            f"{p}.update_bl_management", self.update_bl_management
        )
        self.mode = _check_enum(f"{p}.mode", self.mode, UpdateMode)


@dataclass
class PulsedConfig(_ConfigBase):
    """A pulsed (trainable) crossbar array: device model, its parameters and the update.

    ``one_sided_pair=True`` stores each weight as ``w = g_plus - g_minus`` on two devices that
    only ever receive up pulses (PCM-like; Nandakumar et al., Front. Neurosci. 14, 406 (2020);
    AIHWKIT ``OneSidedUnitCell``), refreshed when a device saturates.
    """

    _prefix = "pulsed"
    _params_of = ("device", PULSED_PARAMS)

    device: str = "constant_step"
    """Name of a registered pulsed device model (``aimc.pulsed.devices``)."""
    params: Any = None
    """The model's parameters: a dict (missing keys take the defaults) or its params dataclass."""
    update: UpdateConfig = field(default_factory=UpdateConfig)
    """Pulse-train update."""
    one_sided_pair: bool = False
    """Two up-only devices per weight, ``w = g_plus - g_minus`` (needs ``params.w_min >= 0``)."""
    refresh_every: int = 1
    """Check for refresh every this many updates (``one_sided_pair`` only; 0 = never)."""
    refresh_upper_thres: float = 0.75
    """Refresh a pair when one of its devices exceeds this fraction of its ``w_max`` (AIHWKIT
    ``OneSidedUnitCell.refresh_upper_thres``)."""

    def _validate(self) -> None:
        p = self._prefix
        allowed = sorted(PULSED_PARAMS)
        if not isinstance(self.device, str) or self.device not in allowed:
            _fail(f"{p}.device", self.device, "one of " + ", ".join(repr(m) for m in allowed))
        cls = PULSED_PARAMS[self.device]
        owner = f"{p}.device {self.device!r}"
        if self.params is None:
            self.params = cls()
        elif isinstance(self.params, dict):
            self.params = cls._from_dict(self.params, f"{p}.params", complete=False, keys_of=owner)
        elif type(self.params) is not cls:
            _fail(f"{p}.params", self.params, f"a dict or a {cls.__name__} (for {owner})")
        if not isinstance(self.update, UpdateConfig):
            _fail(f"{p}.update", self.update, "an aimc.pulsed.UpdateConfig")
        self.one_sided_pair = _check_bool(f"{p}.one_sided_pair", self.one_sided_pair)
        self.refresh_every = _check_int(f"{p}.refresh_every", self.refresh_every, min_value=0)
        thres = _check_number(f"{p}.refresh_upper_thres", self.refresh_upper_thres, min_value=0)
        if thres > 1:
            _fail(f"{p}.refresh_upper_thres", thres, "a number in [0, 1]")
        self.refresh_upper_thres = thres
        if self.one_sided_pair and self.params.w_min < 0:
            _fail(f"{p}.params.w_min", self.params.w_min, f">= 0 when {p}.one_sided_pair is True")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with a ``version`` field."""
        return {"version": PULSED_CONFIG_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> PulsedConfig:
        """Inverse of :meth:`to_dict`. Every problem is a ``ValueError`` naming the field: a
        version other than :data:`PULSED_CONFIG_VERSION` (an older one is migrated by
        :data:`PULSED_CONFIG_MIGRATIONS`), an unknown or a missing key, a wrong value."""
        path = path or cls._prefix
        data = _check_dict(path, data)
        data = _upgrade(path, data, PULSED_CONFIG_VERSION, PULSED_CONFIG_MIGRATIONS)
        return cls._from_dict(data, path, complete=True)

    def to_json(self, **kwargs: Any) -> str:
        """JSON string of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> PulsedConfig:
        """Inverse of :meth:`to_json`; invalid JSON and a duplicate key are ``ValueError``s too."""
        return cls.from_dict(_loads(cls._prefix, text))


@dataclass
class TikiTakaConfig(_ConfigBase):
    """Tiki-Taka transfer compound (Gokmen & Haensch, Front. Neurosci. 14, 103 (2020); AIHWKIT
    ``TransferCompound``).

    Gradient pulses go to a fast array ``A``; every ``transfer_every`` optimizer steps one
    column of ``A`` is read (a forward pass with a one-hot input) and written into the slow
    array ``C`` with a pulsed update of learning rate ``transfer_lr``. The layer's weight is
    ``gamma A + C``.
    """

    _prefix = "tiki_taka"

    transfer_every: int = 1
    """Optimizer steps (mini-batches) between two column transfers."""
    transfer_lr: float = 1.0
    """Learning rate of the A -> C transfer update."""
    scale_transfer_lr: bool = True
    """Multiply ``transfer_lr`` by the optimizer's current learning rate (AIHWKIT default)."""
    fast_lr: float = 1.0
    """Multiplies the optimizer's learning rate for the updates of ``A``."""
    columns_per_transfer: int = 1
    """Columns of ``A`` transferred at each transfer (cycling through the inputs in order)."""
    gamma: float = 0.0
    """Weight of ``A`` in the layer's weight ``gamma A + C`` (AIHWKIT default 0)."""
    read_noise: float = 0.0
    """Std of Gaussian noise added to the read-out column of ``A`` (weight units)."""

    def _validate(self) -> None:
        p = self._prefix
        self.transfer_every = _check_int(f"{p}.transfer_every", self.transfer_every, min_value=1)
        self.columns_per_transfer = _check_int(
            f"{p}.columns_per_transfer", self.columns_per_transfer, min_value=1
        )
        self.scale_transfer_lr = _check_bool(f"{p}.scale_transfer_lr", self.scale_transfer_lr)
        for name in ("transfer_lr", "fast_lr", "gamma", "read_noise"):
            setattr(self, name, _check_number(f"{p}.{name}", getattr(self, name), min_value=0))


@dataclass
class MixedPrecisionConfig(_ConfigBase):
    """Mixed-precision training (Nandakumar et al., Front. Neurosci. 14, 406 (2020); AIHWKIT
    ``MixedPrecisionCompound``).

    The gradient ``-lr delta^T x`` is accumulated digitally in ``chi``; wherever
    ``|chi| >= granularity * dw`` the device receives ``n = trunc(chi / (granularity dw))``
    pulses (one update, at the current state) and ``chi -= n granularity dw``, with ``dw`` the
    device model's weight granularity (``dw_min`` for most models; AIHWKIT's default).
    """

    _prefix = "mixed_precision"

    granularity: float = 1.0
    """Pulse threshold in units of the device's weight granularity (``dw_min`` for most
    models)."""
    max_pulses: int = 0
    """Most pulses applied to one device in one step (0 = no limit)."""

    def _validate(self) -> None:
        p = self._prefix
        self.granularity = _check_number(
            f"{p}.granularity", self.granularity, min_value=0, strict=True
        )
        self.max_pulses = _check_int(f"{p}.max_pulses", self.max_pulses, min_value=0)


_SUBCONFIGS[("PulsedConfig", "update")] = UpdateConfig
