"""Configuration of an analog layer: data only, validated on construction, versioned to/from dict.

A config never names the class that executes it. Every field documents its meaning and, where the
value comes from the literature or from IBM AIHWKIT 1.2.0 (the reference simulator), where from.

The resolution fields (``inp_res``, ``out_res``) follow AIHWKIT's convention: a value in ``(0, 1]``
is the quantization step as a fraction of the full range ``2 * bound``; a value ``> 1`` is a number
of steps (``254`` means ``1/254``); ``<= 0`` turns quantization off (and a bound ``<= 0`` turns
clipping and quantization off). Use :func:`resolution_from_bits` to get the step of a ``b``-bit
converter, ``1 / (2**b - 2)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

CONFIG_VERSION = 4
"""Version of the dict / JSON form written by :meth:`AnalogConfig.to_dict` (2: ``hwa`` gained
``modifier_t_min`` and ``modifier_t_max``, for the ``chip`` weight modifier; 3: ``hwa`` gained
``input_range_gradient_relative``, ``input_range_gradient_scale`` and
``input_range_min_inside``, AIHWKIT's input-range learning; 4: ``hwa`` gained
``output_bound_mask``)."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: Upgrades of the dicts written by an older aimc: ``CONFIG_MIGRATIONS[v]`` takes the dict of
#: version ``v`` (without its ``"version"`` key) and returns a new dict of version ``v + 1``
#: (without modifying its argument); :meth:`AnalogConfig.from_dict` applies them in turn up to
#: :data:`CONFIG_VERSION`. A change of the format bumps ``CONFIG_VERSION`` and adds
#: ``v: _v{v}_to_v{v+1}`` here, with a test that loads a version-``v`` dict.
CONFIG_MIGRATIONS: dict[int, Migration] = {}  # filled below the config classes

_MAX_INT = 2**63 - 1  # the largest integer field value (torch's int64)
_SHOW_CHARS = 200  # longest value shown in an error message


class NoiseManagement(str, Enum):
    """How the DAC input range is set for each input vector (REFERENCE.md §1.1)."""

    NONE = "none"  #: no scaling, the input is used as is
    ABS_MAX = "abs_max"  #: divide by ``max|x|`` of the vector within each tile
    CONSTANT = "constant"  #: divide by the constant ``nm_thres``


class BoundManagement(str, Enum):
    """What happens when an ADC output saturates (REFERENCE.md §1.6)."""

    NONE = "none"  #: saturated outputs stay clipped
    ITERATIVE = "iterative"  #: halve the input and repeat the MVM until nothing saturates


class WeightNoiseType(str, Enum):
    """Output-referred weight (read) noise of the MVM (REFERENCE.md §1.4)."""

    NONE = "none"
    ADDITIVE_CONSTANT = "additive_constant"  #: ``w_noise * ||x'||_2 * xi`` per output
    PCM_READ = "pcm_read"  #: ``w_noise * sqrt(sum_j |W_ij| x'_j^2) * xi`` per output


def resolution_from_bits(bits: int) -> float:
    """Quantization step (fraction of the full range) of a signed ``bits``-bit converter.

    ``1 / (2**bits - 2)`` as in AIHWKIT (7 bits -> 1/126, 8 bits -> 1/254, 9 bits -> 1/510).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise ValueError(f"bits: got {bits!r}; allowed: an integer >= 2")
    return 1.0 / (2**bits - 2)


def _show(value: Any) -> str:
    """``repr(value)``, shortened to at most about ``_SHOW_CHARS`` characters; never raises."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a deeply nested list; an int of > 4300 digits
        if isinstance(value, int):
            return f"<an integer of {value.bit_length()} bits>"
        return f"<a deeply nested {type(value).__name__}>"
    if isinstance(value, int) and len(text) > 40:
        return f"{text[:16]}...{text[-4:]} (an integer of {len(text.lstrip('-'))} digits)"
    if len(text) > _SHOW_CHARS:
        text = text[: _SHOW_CHARS - 4] + " ..."
    return text


def _fail(path: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{path}: got {_show(value)}; allowed: {allowed}")


def _as_float(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool) that a float64 holds exactly
    (NaN and infinities included), else ``None``: an integer too large for a float or one that
    would be rounded is not silently changed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        try:
            v = float(value)
        except OverflowError:
            return None
        return v if int(v) == value else None
    return float(value)


_EXACT = "; an integer must be exactly representable as a float64"


def _check_number(path: str, value: Any, *, min_value: float, strict: bool = False) -> float:
    op = ">" if strict else ">="
    rng = "" if min_value == -math.inf else f" {op} {min_value}"  # -inf: any finite number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, f"a number{rng}")
    v = _as_float(value)
    if v is None:
        _fail(path, value, f"a finite number{rng}{_EXACT}")
    bad = math.isnan(v) or math.isinf(v) or (v <= min_value if strict else v < min_value)
    if bad:
        _fail(path, value, f"a finite number{rng}")
    return v


def _is_finite_number(value: Any) -> bool:
    v = _as_float(value)
    return v is not None and math.isfinite(v)


def check_coefficients(path: str, value: Any) -> tuple[float, float, float]:
    """Validate polynomial coefficients ``(c0, c1, c2)``: three finite numbers."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(_is_finite_number(v) for v in value)
    )
    if not ok:
        _fail(path, value, "three finite numbers (c0, c1, c2)")
    return (float(value[0]), float(value[1]), float(value[2]))


def _check_int(path: str, value: Any, *, min_value: int) -> int:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or not min_value <= value <= _MAX_INT:
        _fail(path, value, f"an integer >= {min_value} (and < 2**63)")
    return int(value)


def _check_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(path, value, "True or False")
    return value


def _check_enum(path: str, value: Any, enum_type: type[Enum]) -> Any:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, Enum):  # a member of another enum, even one with the same value
        value = object()
    names = [m.value for m in enum_type]
    if isinstance(value, str) and value.isascii() and value.lower() in names:
        return enum_type(value.lower())
    _fail(path, value, "one of " + ", ".join(repr(n) for n in names))
    return None  # unreachable


class _JSONObject(dict):
    """A JSON object of :func:`_loads`; remembers its first duplicate key, which ``json.loads``
    would otherwise resolve silently (the last value wins)."""

    duplicate: tuple[str, Any, Any] | None = None

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JSONObject:
        out = cls()
        for key, value in pairs:
            if key in out and out.duplicate is None:
                out.duplicate = (key, out[key], value)
            out[key] = value
        return out


def _loads(path: str, text: Any) -> Any:
    """``json.loads(text)``; any failure is a ``ValueError`` naming ``path``."""
    if not isinstance(text, (str, bytes, bytearray)):
        _fail(path, text, "JSON text (a str, bytes or bytearray) as written by to_json()")
    try:
        return json.loads(text, object_pairs_hook=_JSONObject.from_pairs)
    except RecursionError:
        problem = "JSON nested too deeply to parse"
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an int of > 4300 digits
        problem = f"invalid JSON: {err}"
    raise ValueError(f"{path}: got {_show(text)} ({problem}); allowed: JSON text from to_json()")


def _check_dict(path: str, data: Any) -> dict[str, Any]:
    """``data`` if it is a dict without duplicate JSON keys."""
    if not isinstance(data, dict):
        _fail(path, data, "a dict")
    if isinstance(data, _JSONObject) and data.duplicate is not None:
        key, first, second = data.duplicate
        raise ValueError(
            f"{path}.{key}: got {_show(first)} and then {_show(second)} (a duplicate key); "
            "allowed: each key once"
        )
    return data


def _check_keys(
    path: str, data: dict[Any, Any], known: list[str], *, complete: bool, keys_of: str = ""
) -> None:
    """No unknown key in ``data``; with ``complete``, no missing one either."""
    of = f" of {keys_of}" if keys_of else ""
    for key in data:
        if not isinstance(key, str) or key not in known:
            _fail(path, key, f"one of the keys{of}: " + ", ".join(sorted(known)))
    if complete:
        for key in known:
            if key not in data:
                raise ValueError(
                    f"{path}.{key}: got no value (the key is missing); allowed: a value for "
                    f"every key{of} (to_dict() writes them all)"
                )


def _upgrade(path: str, data: dict[str, Any], current: int, migrations: dict[int, Migration]):
    """``data`` (a dict with a ``"version"``) without its version, migrated to ``current``."""
    oldest = current
    while oldest - 1 in migrations:
        oldest -= 1
    readable = f"the integer {current}" if oldest == current else f"{oldest} to {current}"
    vpath = f"{path}.version"
    data = dict(data)
    version = data.pop("version", None)
    if isinstance(version, bool) or not isinstance(version, int):
        _fail(vpath, version, readable)
    if version > current:
        _fail(vpath, version, f"{readable} (this config was written by a newer aimc; upgrade aimc)")
    if version < oldest:
        _fail(vpath, version, f"{readable} (no migration from version {version} is known)")
    while version < current:
        data = migrations[version](data)
        version += 1
    return data


def _check_exact_list(path: str, value: Any) -> None:
    """No integer in a list of numbers is changed by its conversion to float."""
    ok = all(
        isinstance(v, bool) or not isinstance(v, int) or _as_float(v) is not None for v in value
    )
    if not ok:
        _fail(path, value, f"a list of finite numbers{_EXACT}")


class _ConfigBase:
    """Shared validation and (de)serialization of the config dataclasses."""

    _prefix = ""
    _params_of: tuple[str, dict[str, type[_ConfigBase]]] | None = None
    """``(name field, registry)`` of a config whose ``params`` are the params class of a
    registered model (:class:`DeviceConfig`, ``PulsedConfig``)."""

    def _validate(self) -> None:  # pragma: no cover - overridden
        pass

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                _check_exact_list(f"{self._prefix}.{f.name}", value)
        self._validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serializable; enums as their string values)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _ConfigBase):
                v = v.to_dict()
            elif isinstance(v, Enum):
                v = v.value
            elif isinstance(v, (list, tuple)):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> Any:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``, missing keys
        take their defaults (as in the constructor). The versioned forms
        (:meth:`AnalogConfig.from_dict`) require every key."""
        return cls._from_dict(data, path or cls._prefix, complete=False)

    @classmethod
    def _from_dict(cls, data: Any, path: str, *, complete: bool, keys_of: str = "") -> Any:
        """:meth:`from_dict`; ``complete`` requires every key, at every level."""
        data = _check_dict(path, data)
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        _check_keys(path, data, known, complete=complete, keys_of=keys_of)
        kwargs = {}
        for name, value in data.items():
            sub = _SUBCONFIGS.get((cls.__name__, name))
            if sub is not None:
                value = sub._from_dict(value, f"{path}.{name}", complete=complete)
            kwargs[name] = value
        if complete and cls._params_of is not None:
            kwargs["params"] = _complete_params(path, kwargs, *cls._params_of)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Any:
        """A validated copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _complete_params(
    path: str, kwargs: dict[str, Any], name_field: str, registry: dict[str, type[_ConfigBase]]
) -> Any:
    """The ``params`` of a loaded dict as the registered model's params class, every key
    required; left to the constructor when the model name is not a registered one."""
    name, params = kwargs[name_field], kwargs["params"]
    if not isinstance(name, str) or name not in registry or type(params) is registry[name]:
        return params  # the constructor checks them
    owner = f"{path}.{name_field} {name!r}"
    if not isinstance(params, dict):
        _fail(f"{path}.params", params, f"a dict of the parameters of {owner}")
    return registry[name]._from_dict(params, f"{path}.params", complete=True, keys_of=owner)


@dataclass
class IOConfig(_ConfigBase):
    """Forward periphery of a tile: noise/bound management, DAC, MVM noise, ADC (REFERENCE.md §1).

    Defaults are AIHWKIT 1.2.0 ``IOParameters()`` (the forward of ``InferenceRPUConfig``).
    """

    _prefix = "io"

    is_perfect: bool = False
    """Skip the whole periphery (steps 1-6 of REFERENCE.md §1): an exact MVM."""
    noise_management: NoiseManagement = NoiseManagement.ABS_MAX
    """Input scaling per input vector and tile: ``none``, ``abs_max`` (default) or ``constant``."""
    nm_thres: float = 0.0
    """Noise-management threshold (AIHWKIT ``IOParameters.nm_thres``, default 0): the divisor of
    ``noise_management='constant'`` (0 means 1); under ``abs_max`` a cap on the divisor,
    ``s = min(max|x|, nm_thres)`` when > 0 (inputs beyond it then clip at the DAC bound)."""
    bound_management: BoundManagement = BoundManagement.ITERATIVE
    """``iterative`` (default) halves the input of a saturating tile and repeats; ``none``."""
    max_bm_factor: float = 1000.0
    """Iterative bound management stops once the input down-scaling ``r`` exceeds this (AIHWKIT)."""
    max_bm_res: float = 0.25
    """... or once ``r > max_bm_res / inp_step`` (the input would vanish below a DAC step)."""
    inp_bound: float = 1.0
    """DAC input range ``[-inp_bound, inp_bound]``; ``<= 0`` = no bound and no quantization
    (AIHWKIT: an infinite bound)."""
    inp_res: float = 1.0 / 126
    """DAC step as a fraction of ``2*inp_bound`` (7-bit: 1/126); > 1 = number of steps; <= 0 =
    off."""
    inp_sto_round: bool = False
    """Stochastic instead of nearest rounding in the DAC."""
    inp_noise: float = 0.0
    """Std of Gaussian noise added to the DAC output (in units of ``inp_bound``)."""
    w_noise_type: WeightNoiseType = WeightNoiseType.NONE
    """Output-referred weight read noise: ``none``, ``additive_constant`` or ``pcm_read``."""
    w_noise: float = 0.0
    """Scale of the weight read noise (0.0175 is 'standard PCM', Rasch et al. 2023)."""
    w_noise_bf16: bool = False
    """Compute the ``pcm_read`` noise variance ``sum_j |W_ij| x'_j^2`` (an extra MVM per forward)
    in bfloat16 with float32 accumulation. About 2x faster for that MVM on GPUs and on CPUs with
    AVX512-BF16 or AMX; on other x86 CPUs PyTorch emulates bfloat16 matmuls (measured 35-41x
    slower than float32 on an AVX2-only host, ``benchmarks/bench_bf16_matmul.py``), so aimc
    warns once there. The noise std carries a relative error of at most about 0.4 % (bfloat16
    keeps 8 significand bits). The noise-free MVM stays float32. An implementation choice, not
    physics; off = exact float32 — which on CPUs with native bfloat16 matmuls also computes
    this MVM in bfloat16 in eager forwards, but bracketed (``aimc._bracket``): each output's
    ADC level is proven equal to the float32 variance's, or computed from it, so the
    statistics are exact and the speed about the same as with this option."""
    out_noise: float = 0.06
    """Std of additive Gaussian output noise before the ADC (AIHWKIT default 0.06)."""
    out_bound: float = 12.0
    """ADC range ``[-out_bound, out_bound]`` (AIHWKIT default 12); ``<= 0`` = no bound and no
    quantization (AIHWKIT: an infinite bound; bound management then never triggers)."""
    out_res: float = 1.0 / 510
    """ADC step as a fraction of ``2*out_bound`` (9-bit: 1/510); > 1 = number of steps; <= 0 =
    off."""

    def _validate(self) -> None:
        p = self._prefix
        self.is_perfect = _check_bool(f"{p}.is_perfect", self.is_perfect)
        self.inp_sto_round = _check_bool(f"{p}.inp_sto_round", self.inp_sto_round)
        self.w_noise_bf16 = _check_bool(f"{p}.w_noise_bf16", self.w_noise_bf16)
        self.noise_management = _check_enum(
            f"{p}.noise_management", self.noise_management, NoiseManagement
        )
        self.bound_management = _check_enum(
            f"{p}.bound_management", self.bound_management, BoundManagement
        )
        self.w_noise_type = _check_enum(f"{p}.w_noise_type", self.w_noise_type, WeightNoiseType)
        for name in ("max_bm_factor", "max_bm_res"):
            setattr(
                self,
                name,
                _check_number(f"{p}.{name}", getattr(self, name), min_value=0, strict=True),
            )
        for name in ("nm_thres", "inp_noise", "w_noise", "out_noise"):
            setattr(self, name, _check_number(f"{p}.{name}", getattr(self, name), min_value=0))
        # AIHWKIT's "off" values: a resolution <= 0 is no quantization, a bound <= 0 no bound
        for name in ("inp_bound", "out_bound", "inp_res", "out_res"):
            setattr(
                self, name, _check_number(f"{p}.{name}", getattr(self, name), min_value=-math.inf)
            )
        # AIHWKIT 1.2.0 refuses this combination (IOMetaParameter::initializeForForward,
        # "Forward noise managment expects bound==1"): noise management maps each input vector
        # onto [-1, 1], the DAC range of a unit bound
        nm = self.noise_management
        if not self.is_perfect and nm != NoiseManagement.NONE and self.inp_bound != 1.0:
            _fail(
                f"{p}.inp_bound",
                self.inp_bound,
                f"1.0 while {p}.noise_management is {nm.value!r} (noise management scales each "
                "input vector onto [-1, 1]; AIHWKIT 1.2.0 refuses other bounds with it too); "
                f"another DAC range needs {p}.noise_management='none'",
            )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._update_key()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name != "_key" and "_key" in self.__dict__:  # a field changed after __init__
            self._update_key()

    def _update_key(self) -> None:
        """Name this config by its fields (``_key``, kept current on every field change) and
        register a snapshot under that name (:func:`io_config_by_key`).

        A compiled graph's bound-management op takes no config object, only this string: the
        graph reads it as a plain attribute, a constant that dynamo guards. (A function that
        computed it inside the graph, under ``torch._dynamo.assume_constant_result``, failed to
        compile with torch 2.11: ``IOConfig is not a constant``.)"""
        key = repr(self)  # the dataclass repr: the fields only
        if key not in _IO_BY_KEY:
            # a copy made without __init__, __setattr__ or __setstate__: its fields stay as
            # they are now
            snapshot = object.__new__(type(self))
            snapshot.__dict__.update(self.__dict__, _key=key)
            _IO_BY_KEY[key] = snapshot
        object.__setattr__(self, "_key", key)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickling: a config pickled before aimc kept ``_key`` gets one
        self.__dict__.update(state)
        self._update_key()

    @property
    def inp_step(self) -> float:
        """DAC step in input units (0 when quantization is off)."""
        return _step(self.inp_res, self.inp_bound)

    @property
    def out_step(self) -> float:
        """ADC step in output units (0 when quantization is off)."""
        return _step(self.out_res, self.out_bound)


#: Snapshots of the IO configs by their ``_key`` (:meth:`IOConfig._update_key`)
_IO_BY_KEY: dict[str, IOConfig] = {}


def io_config_by_key(key: str) -> IOConfig:
    """The IO config whose fields are named by ``key`` (an :class:`IOConfig`'s ``_key``)."""
    try:
        return _IO_BY_KEY[key]
    except KeyError:
        raise KeyError(f"aimc: no IO config has the key {key!r}") from None


def _step(res: float, bound: float) -> float:
    if res <= 0 or bound <= 0:
        return 0.0
    frac = 1.0 / res if res > 1 else res
    return frac * 2.0 * bound


@dataclass
class MappingConfig(_ConfigBase):
    """How a logical weight matrix is mapped onto physical tiles and rescaled digitally.

    Defaults are AIHWKIT 1.2.0 ``MappingParameter()``.
    """

    _prefix = "mapping"

    max_input_size: int = 512
    """Most rows (inputs) per tile; larger layers are split into near-equal parts. 0 = no split."""
    max_output_size: int = 512
    """Most columns (outputs) per tile; 0 = no split."""
    digital_bias: bool = True
    """Add the bias digitally after the ADC (True) or as an extra analog input row (False)."""
    weight_scaling_omega: float = 0.0
    """Scale weights so that ``max|W| = omega`` on each tile (or column); the inverse scale is
    applied digitally to the output. 0 turns weight scaling off — AIHWKIT 1.2.0's default
    (``MappingParameter.weight_scaling_omega = 0.0``): the output noise is then relative to the
    raw weight magnitudes. (aimc < 0.2 defaulted to 1.0, which made ``pcm_inference()`` 27-48 %
    less noisy than AIHWKIT's ``InferenceRPUConfig()``.)"""
    weight_scaling_columnwise: bool = False
    """Weight scaling per tile column instead of per tile."""
    learn_out_scaling: bool = False
    """Add a trainable digital output scale (initialised to 1) to every tile, on top of the weight
    scaling: each input tile's output is scaled by its own before the sum over input tiles
    (AIHWKIT's ``out_scaling_alpha`` of each tile module)."""
    out_scaling_columnwise: bool = False
    """The trainable output scale of a tile has one value per tile column (else one per
    tile)."""

    def _validate(self) -> None:
        p = self._prefix
        for name in ("max_input_size", "max_output_size"):
            setattr(self, name, _check_int(f"{p}.{name}", getattr(self, name), min_value=0))
        self.weight_scaling_omega = _check_number(
            f"{p}.weight_scaling_omega", self.weight_scaling_omega, min_value=0
        )
        for name in (
            "digital_bias",
            "weight_scaling_columnwise",
            "learn_out_scaling",
            "out_scaling_columnwise",
        ):
            setattr(self, name, _check_bool(f"{p}.{name}", getattr(self, name)))


class DriftCompensation(str, Enum):
    """How the drift of the conductances is compensated digitally (REFERENCE.md §3)."""

    NONE = "none"  #: no compensation
    GLOBAL = "global"  #: one factor per tile from the mean |output| of an identity readout
    PER_COLUMN = "per_column"  #: one factor per tile column
    EXACT_REFERENCE = "exact_reference"  #: global, baseline from the exact (target) weights


class DeviceParams(_ConfigBase):
    """Base of a device model's parameters (each device-model file defines a dataclass)."""

    _prefix = "device.params"
    g_max: float

    def _check_positive(self, *names: str) -> None:
        for name in names:
            setattr(
                self,
                name,
                _check_number(
                    f"{self._prefix}.{name}", getattr(self, name), min_value=0, strict=True
                ),
            )

    def _check_non_negative(self, *names: str) -> None:
        for name in names:
            setattr(
                self,
                name,
                _check_number(f"{self._prefix}.{name}", getattr(self, name), min_value=0),
            )


#: Parameter classes of the registered device models (filled by ``aimc.devices``).
DEVICE_PARAMS: dict[str, type[DeviceParams]] = {}


@dataclass
class DeviceConfig(_ConfigBase):
    """Device / noise model of the conductances (programming, drift, read noise) and the drift
    compensation (REFERENCE.md §2-3).

    ``model='none'`` means the tiles hold the exact weights (only the IO noise of
    :class:`IOConfig` applies). Other names are device-model plugins (``aimc.devices``):
    ``pcm``, ``pcm_custom_drift``, ``gaussian``.
    """

    _prefix = "device"
    _params_of = ("model", DEVICE_PARAMS)

    model: str = "none"
    """Name of a registered device model, or ``'none'``."""
    params: Any = None
    """The model's parameters: a dict (missing keys take the model's defaults) or the model's
    params dataclass. Must be empty for ``model='none'``."""
    drift_compensation: DriftCompensation = DriftCompensation.NONE
    """``none``, ``global`` (AIHWKIT's default for inference), ``per_column`` or
    ``exact_reference``."""

    def _validate(self) -> None:
        p = self._prefix
        allowed = ["none", *sorted(DEVICE_PARAMS)]
        if not isinstance(self.model, str) or self.model not in allowed:
            _fail(f"{p}.model", self.model, "one of " + ", ".join(repr(m) for m in allowed))
        self.drift_compensation = _check_enum(
            f"{p}.drift_compensation", self.drift_compensation, DriftCompensation
        )
        if self.model == "none":
            empty = self.params is None or (isinstance(self.params, dict) and not self.params)
            if not empty:
                _fail(f"{p}.params", self.params, f"None or {{}} when {p}.model is 'none'")
            self.params = None
            return
        cls = DEVICE_PARAMS[self.model]
        owner = f"{p}.model {self.model!r}"
        if self.params is None:
            self.params = cls()
        elif isinstance(self.params, dict):
            self.params = cls._from_dict(self.params, f"{p}.params", complete=False, keys_of=owner)
        elif type(self.params) is not cls:  # a subclass would carry fields the model ignores
            _fail(f"{p}.params", self.params, f"a dict or a {cls.__name__} (for {owner})")


class WeightModifier(str, Enum):
    """Weight noise injected in the training forward, resampled every mini-batch (REFERENCE §4)."""

    NONE = "none"
    ADD_NORMAL = "add_normal"  #: ``W + std * a * xi``
    MULT_NORMAL = "mult_normal"  #: ``W + W * std * a * xi``
    DISCRETIZE = "discretize"  #: ``a * Q(W / a)`` with step ``res``
    POLY = "poly"  #: ``W + a * std * (c0 + c1 |W|/a + c2 (|W|/a)^2) * xi``
    #: ``poly`` with the PCM programming-noise coefficients / g_max; the noise is mirrored at
    #: zero so no weight changes sign (AIHWKIT ``ProgNoise``)
    PROG_NOISE = "prog_noise"
    #: the deployed chip: the device model's own programming noise, drift and read noise at a
    #: time drawn log-uniformly in ``[modifier_t_min, modifier_t_max]``, with the config's drift
    #: compensation (REFERENCE.md §2-3; needs ``device.model`` other than ``'none'``)
    CHIP = "chip"


class WeightClip(str, Enum):
    """Clipping of the digital weights after each optimizer step (REFERENCE §4)."""

    NONE = "none"
    FIXED = "fixed"  #: clip to ``+-clip_value``
    #: clip each tile to ``+-clip_sigma * std`` of that tile's weights (analog bias included),
    #: as AIHWKIT clips its tiles
    LAYER_GAUSSIAN = "layer_gaussian"


class WeightRemap(str, Enum):
    """Symmetric remapping of the digital weights after each optimizer step (REFERENCE §4)."""

    NONE = "none"
    LAYERWISE = "layerwise"  #: scale W so that max|W| = 1 on each tile (AIHWKIT: per tile)
    COLUMNWISE = "columnwise"  #: ... per tile column; the scale moves to the tile's output scale


class OutputBoundMask(str, Enum):
    """Which tile outputs the input gradient of a training backward leaves out (AIHWKIT's
    ``handle_output_bound``, every inference tile of AIHWKIT 1.2.0)."""

    #: AIHWKIT's rule: the outputs whose tile output reaches ``0.999 * out_bound`` in the tile's
    #: own units (its normalised weights times its input with noise management's scale and bound
    #: management's factor applied back, the learned range divided out). Under abs-max noise
    #: management that is ``|W_tile x| >= 0.999 * out_bound`` in the input's units, saturated or
    #: not.
    AIHWKIT = "aihwkit"
    #: only the outputs the ADC clipped: ``|ADC output| >= 0.999 * out_bound`` in the ADC's units
    #: (none with perfect IO, which has no ADC; AIHWKIT's rule masks there too)
    SATURATED = "saturated"
    #: none: the input gradient is straight-through (aimc up to 2026-12-06)
    NONE = "none"


@dataclass
class HWAConfig(_ConfigBase):
    """Hardware-aware training knobs (REFERENCE.md §4; Rasch et al., Nat. Commun. 14, 5282
    (2023); AIHWKIT ``WeightModifierParameter``, ``WeightClipParameter``,
    ``WeightRemapParameter``, input-range learning).

    Weight modifiers act in the training forward only (resampled every forward). Clipping and
    remapping change the digital weights after an optimizer step (:func:`aimc.post_step`). The
    learned input range is the DAC range in training and eval; it is only updated in training.
    """

    _prefix = "hwa"

    modifier: WeightModifier = WeightModifier.NONE
    """Weight-noise model of the training forward."""
    modifier_std: float = 0.0
    """Noise std of ``add_normal``, ``mult_normal``, ``poly``, ``prog_noise`` (relative to
    ``a = max|W|``)."""
    modifier_res: float = 0.0
    """Step of ``discretize`` as a fraction of ``a`` (> 1 = number of steps; 0 = off)."""
    modifier_coeffs: tuple[float, float, float] = (0.0105392, 0.0768, -0.046925)
    """``(c0, c1, c2)`` of ``poly``; default AIHWKIT 1.2.0's ``WeightModifierParameter.coeffs``
    (close to the PCM programming-noise polynomial / 25 µS, whose c1 would be 0.0786)."""
    modifier_per_tile: bool = True
    """``a = max|W|`` per tile (True) or per layer."""
    modifier_t_min: float = 3600.0
    """Shortest drift time (s after programming) of the ``chip`` modifier: every training
    forward programs the layer's weights afresh with the device model (programming noise and
    per-device drift exponents; for PCM Nandakumar et al., ICECS 2019, and Joshi et al., Nat.
    Commun. 11, 2473 (2020)) and reads them at a time ``t`` drawn log-uniformly in
    ``[modifier_t_min, modifier_t_max]``, so that HWA training (Rasch et al., Nat. Commun. 14,
    5282 (2023)) sees the chip it will be deployed on over its whole life. Default 1 hour.
    A time > 0, or equal to ``modifier_t_max`` (then ``t`` is fixed; 0 is allowed then)."""
    modifier_t_max: float = 3.156e8
    """Longest drift time (s) of the ``chip`` modifier (see ``modifier_t_min``); default 10
    years. A finite number >= ``modifier_t_min``."""
    clip: WeightClip = WeightClip.NONE
    """Weight clipping after each optimizer step."""
    clip_value: float = 1.0
    """``fixed`` clipping bound (> 0)."""
    clip_sigma: float = 2.5
    """``layer_gaussian`` bound in standard deviations of each tile's weights (> 0)."""
    remap: WeightRemap = WeightRemap.NONE
    """Symmetric remapping after each optimizer step (needs ``mapping.learn_out_scaling``)."""
    learn_input_range: bool = False
    """Learn a per-layer DAC input range ``r`` (inputs clipped to ``[-r, r]`` and divided by it;
    noise management then acts on ``x / r``, as AIHWKIT's tile applies it)."""
    input_range_init_batches: int = 100
    """Initialise the input range from this many training batches (mean of
    ``input_range_init_std * std(x)``; AIHWKIT ``init_from_data``); 0 keeps the range as set
    (3.0, AIHWKIT's ``init_value``, or calibrated). >= 0."""
    input_range_init_std: float = 3.0
    """... in standard deviations of the inputs."""
    input_range_decay: float = 0.001
    """Slow decay of the range: ``decay * r`` is added to its gradient while more than
    ``input_range_min_inside`` of a batch's inputs are inside the range (AIHWKIT 1.2.0
    ``InputRangeParameter.decay``; Rasch et al., Nat. Commun. 14, 5282 (2023)). >= 0."""
    input_range_gradient_relative: bool = True
    """Scale the range's gradient from the clipped inputs by the range itself, times
    ``input_range_gradient_scale`` (AIHWKIT ``gradient_relative``, on in its presets). The
    gradient is ``r * scale * (sum_{x >= r} min(g, 0) - sum_{x <= -r} max(g, 0))``: only the
    part of the clipped inputs' gradient ``g`` that widens the range (AIHWKIT's
    ``post_backward``); off, the same sum unscaled."""
    input_range_gradient_scale: float = 1.0
    """Factor of the relative range gradient (AIHWKIT ``gradient_scale``; as there, it applies
    only with ``input_range_gradient_relative``). >= 0."""
    input_range_min_inside: float = 0.95
    """The decay acts only while more than this fraction of a batch's inputs are inside the
    range, ``|x| < r`` (AIHWKIT ``input_min_percentage``). In [0, 1]."""
    output_bound_mask: OutputBoundMask = OutputBoundMask.AIHWKIT
    """Which tile outputs the input gradient leaves out (:class:`OutputBoundMask`): ``aihwkit``
    (AIHWKIT's ``handle_output_bound``: in the tile's own units, which under abs-max noise
    management are the input's, so large outputs are left out whether the ADC clipped them or
    not, and with perfect IO too), ``saturated`` (only outputs at the ADC's bound) or ``none``
    (straight-through). The weight, bias and output-scale gradients keep every output. Measured
    (docs/hwa.md): LeNet-5 trained under ``pcm_inference()`` or ``pcm_weights_only()`` (exact
    IO) with SGD at lr 0.05 diverges with ``aihwkit`` (its outputs exceed 12 in input units) and
    trains with ``saturated``."""

    def _validate(self) -> None:
        p = self._prefix
        self.modifier = _check_enum(f"{p}.modifier", self.modifier, WeightModifier)
        self.clip = _check_enum(f"{p}.clip", self.clip, WeightClip)
        self.remap = _check_enum(f"{p}.remap", self.remap, WeightRemap)
        self.output_bound_mask = _check_enum(
            f"{p}.output_bound_mask", self.output_bound_mask, OutputBoundMask
        )
        for name in (
            "modifier_std",
            "modifier_res",
            "input_range_decay",
            "input_range_gradient_scale",
            "modifier_t_min",
            "modifier_t_max",
        ):
            setattr(self, name, _check_number(f"{p}.{name}", getattr(self, name), min_value=0))
        self._check_drift_times()
        for name in ("clip_value", "clip_sigma", "input_range_init_std"):
            setattr(
                self,
                name,
                _check_number(f"{p}.{name}", getattr(self, name), min_value=0, strict=True),
            )
        name = f"{p}.input_range_min_inside"
        self.input_range_min_inside = _check_number(name, self.input_range_min_inside, min_value=0)
        if self.input_range_min_inside > 1:
            _fail(name, self.input_range_min_inside, "a finite number in [0, 1]")
        for name in ("modifier_per_tile", "learn_input_range", "input_range_gradient_relative"):
            setattr(self, name, _check_bool(f"{p}.{name}", getattr(self, name)))
        self.input_range_init_batches = _check_int(
            f"{p}.input_range_init_batches", self.input_range_init_batches, min_value=0
        )
        self.modifier_coeffs = check_coefficients(f"{p}.modifier_coeffs", self.modifier_coeffs)
        if self.modifier == WeightModifier.DISCRETIZE and self.modifier_res <= 0:
            _fail(f"{p}.modifier_res", self.modifier_res, f"> 0 when {p}.modifier is 'discretize'")

    def _check_drift_times(self) -> None:
        p = self._prefix
        t_min, t_max = self.modifier_t_min, self.modifier_t_max
        if t_min > t_max:
            _fail(
                f"{p}.modifier_t_min",
                t_min,
                f"a time (s) <= {p}.modifier_t_max, which is {_show(t_max)}",
            )
        if t_min == 0 and t_max > 0:
            _fail(
                f"{p}.modifier_t_min",
                t_min,
                f"a time > 0 s when below {p}.modifier_t_max (the time is drawn "
                f"log-uniformly, which needs t > 0), or 0 together with {p}.modifier_t_max = 0 "
                "(a fixed time)",
            )

    @property
    def any_modifier(self) -> bool:
        """Whether the training forward modifies the weights."""
        return self.modifier != WeightModifier.NONE


@dataclass
class AnalogConfig(_ConfigBase):
    """Complete configuration of an analog layer."""

    _prefix = "config"

    io: IOConfig = field(default_factory=IOConfig)
    """Forward periphery (REFERENCE.md §1)."""
    mapping: MappingConfig = field(default_factory=MappingConfig)
    """Tiling and digital rescaling."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    """Conductance / device model (REFERENCE.md §2-3)."""
    hwa: HWAConfig = field(default_factory=HWAConfig)
    """Hardware-aware training (REFERENCE.md §4)."""

    def _validate(self) -> None:
        for name, typ in (
            ("io", IOConfig),
            ("mapping", MappingConfig),
            ("device", DeviceConfig),
            ("hwa", HWAConfig),
        ):
            if not isinstance(getattr(self, name), typ):
                _fail(f"config.{name}", getattr(self, name), f"an aimc.config.{typ.__name__}")
        if self.hwa.learn_input_range and not self.mapping.digital_bias:
            _fail(
                "config.hwa.learn_input_range",
                True,
                "False unless mapping.digital_bias is True (an analog bias row would be "
                "clipped by the learned range)",
            )
        if self.hwa.modifier == WeightModifier.CHIP and self.device.model == "none":
            _fail(
                "config.hwa.modifier",
                self.hwa.modifier.value,
                "not 'chip' while device.model is 'none' (the chip modifier draws the device "
                "model's programming and drift noise; choose one, e.g. device.model='pcm')",
            )
        if self.hwa.remap != WeightRemap.NONE and not self.mapping.learn_out_scaling:
            _fail(
                "config.hwa.remap",
                self.hwa.remap.value,
                "'none' unless mapping.learn_out_scaling is True (the remap scale is moved to "
                "the output scale)",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with a ``version`` field."""
        return {"version": CONFIG_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> AnalogConfig:
        """Inverse of :meth:`to_dict`. Every problem is a ``ValueError`` naming the field: a
        version other than :data:`CONFIG_VERSION` (an older one is migrated by
        :data:`CONFIG_MIGRATIONS`), an unknown or a missing key, a wrong value."""
        path = path or cls._prefix
        data = _upgrade(path, _check_dict(path, data), CONFIG_VERSION, CONFIG_MIGRATIONS)
        return cls._from_dict(data, path, complete=True)

    def to_json(self, **kwargs: Any) -> str:
        """JSON string of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> AnalogConfig:
        """Inverse of :meth:`to_json`; invalid JSON and a duplicate key are ``ValueError``s too."""
        return cls.from_dict(_loads(cls._prefix, text))


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: ``hwa.modifier_t_min`` / ``hwa.modifier_t_max`` appeared (the ``chip``
    modifier); a version-1 config had no use for them, so they take their defaults."""
    out = dict(data)
    hwa = out.get("hwa")
    if isinstance(hwa, dict):  # anything else is reported by the loader, naming the field
        hwa = dict(hwa)
        for name in ("modifier_t_min", "modifier_t_max"):
            if name in hwa:
                _fail(f"config.hwa.{name}", hwa[name], "no such key in a version-1 config")
            hwa[name] = getattr(HWAConfig, name)
        out["hwa"] = hwa
    return out


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: ``hwa.input_range_gradient_relative``, ``input_range_gradient_scale``
    and ``input_range_min_inside`` appeared (AIHWKIT's input-range learning); they take their
    defaults, AIHWKIT's. A version-2 config's learned ranges were trained with the symmetric
    range gradient of aimc up to 0.3.0 (docs/changelog.md); the loaded config trains them as
    AIHWKIT does."""
    out = dict(data)
    hwa = out.get("hwa")
    if isinstance(hwa, dict):  # anything else is reported by the loader, naming the field
        hwa = dict(hwa)
        for name in _V3_HWA_FIELDS:
            if name in hwa:
                _fail(f"config.hwa.{name}", hwa[name], "no such key in a version-2 config")
            hwa[name] = getattr(HWAConfig, name)
        out["hwa"] = hwa
    return out


_V3_HWA_FIELDS = (
    "input_range_gradient_relative",
    "input_range_gradient_scale",
    "input_range_min_inside",
)


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 -> 4: ``hwa.output_bound_mask`` appeared; it takes its default, AIHWKIT's rule,
    which a version-3 config (aimc 2026-12-06) trained with already."""
    out = dict(data)
    hwa = out.get("hwa")
    if isinstance(hwa, dict):  # anything else is reported by the loader, naming the field
        hwa = dict(hwa)
        if "output_bound_mask" in hwa:
            _fail(
                "config.hwa.output_bound_mask",
                hwa["output_bound_mask"],
                "no such key in a version-3 config",
            )
        hwa["output_bound_mask"] = HWAConfig.output_bound_mask.value
        out["hwa"] = hwa
    return out


CONFIG_MIGRATIONS[1] = _v1_to_v2
CONFIG_MIGRATIONS[2] = _v2_to_v3
CONFIG_MIGRATIONS[3] = _v3_to_v4

_SUBCONFIGS: dict[tuple[str, str], type[_ConfigBase]] = {
    ("AnalogConfig", "io"): IOConfig,
    ("AnalogConfig", "mapping"): MappingConfig,
    ("AnalogConfig", "device"): DeviceConfig,
    ("AnalogConfig", "hwa"): HWAConfig,
}
