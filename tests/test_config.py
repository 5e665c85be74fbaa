"""Validation, serialization, step arithmetic and presets of aimc.config and aimc.presets.

The expected values come from REFERENCE.md §1 (periphery defaults, resolution convention) and §5
(presets); the presets' device-model and HWA-training parts are not implemented yet and are only
checked to be in their "off" state.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import aimc
from aimc import presets
from aimc.config import (
    CONFIG_VERSION,
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

NAN = float("nan")
INF = float("inf")

PRESETS = {
    "ideal": presets.ideal,
    "pcm_inference": presets.pcm_inference,
    "pcm_weights_only": presets.pcm_weights_only,
    "standard_hwa": presets.standard_hwa,
    "bert_squad": presets.bert_squad,
    "bert_squad_0.035": lambda: presets.bert_squad(0.035),
    "bert_squad_0.07": lambda: presets.bert_squad(0.07),
}


def assert_rejects(cls, field: str, value, allowed: str, path: str | None = None) -> None:
    """``cls(field=value)`` raises ValueError naming the path, the value and what is allowed."""
    path = path or f"{cls._prefix}.{field}"
    with pytest.raises(ValueError) as info:
        cls(**{field: value})
    msg = str(info.value)
    assert path in msg, msg
    assert repr(value) in msg, msg
    assert "allowed" in msg and allowed in msg, msg


# --------------------------------------------------------------------------------------------
# Validation of IOConfig

IO_STRICT_POSITIVE = ["max_bm_factor", "max_bm_res"]
IO_NON_NEGATIVE = ["nm_thres", "inp_noise", "w_noise", "out_noise"]
#: any finite number, as in AIHWKIT: a resolution <= 0 is no quantization, a bound <= 0 no bound
IO_ANY_FINITE = ["inp_bound", "out_bound", "inp_res", "out_res"]
IO_BOOLS = ["is_perfect", "inp_sto_round"]
IO_ENUMS = {
    "noise_management": NoiseManagement,
    "bound_management": BoundManagement,
    "w_noise_type": WeightNoiseType,
}


@pytest.mark.parametrize("field", IO_STRICT_POSITIVE)
@pytest.mark.parametrize("value", [0, 0.0, -1e-12, -1.0, -12])
def test_io_strictly_positive_fields_reject_non_positive(field, value):
    assert_rejects(IOConfig, field, value, "> 0")


@pytest.mark.parametrize("field", IO_NON_NEGATIVE)
@pytest.mark.parametrize("value", [-1e-12, -0.06, -1, -254])
def test_io_non_negative_fields_reject_negative(field, value):
    assert_rejects(IOConfig, field, value, ">= 0")


@pytest.mark.parametrize("field", IO_NON_NEGATIVE)
def test_io_non_negative_fields_accept_zero(field):
    cfg = IOConfig(**{field: 0})
    assert getattr(cfg, field) == 0.0
    assert isinstance(getattr(cfg, field), float)


def _nm_for(field: str) -> dict:
    """A DAC bound other than 1 needs noise management off (AIHWKIT's rule, checked below)."""
    return {"noise_management": "none"} if field == "inp_bound" else {}


@pytest.mark.parametrize("nm", ["abs_max", "constant"])
@pytest.mark.parametrize("bound", [2.0, 0.5, 0.0, -1.0])
def test_io_inp_bound_other_than_one_needs_noise_management_off(nm, bound):
    """AIHWKIT 1.2.0 refuses noise management with a DAC bound other than 1
    ("Forward noise managment expects bound==1"); so does aimc, naming both fields."""
    with pytest.raises(ValueError) as err:
        IOConfig(noise_management=nm, inp_bound=bound)
    msg = str(err.value)
    assert msg.startswith(f"io.inp_bound: got {bound}") and "io.noise_management" in msg
    assert repr(nm) in msg and "allowed: 1.0" in msg
    saved = AnalogConfig(io=IOConfig(noise_management="none", inp_bound=bound)).to_dict()
    saved["io"]["noise_management"] = nm  # a saved config with the combination: refused too
    with pytest.raises(ValueError, match="io.inp_bound"):
        AnalogConfig.from_dict(saved)
    # allowed: the unit bound, noise management off, or no periphery at all
    assert IOConfig(noise_management=nm, inp_bound=1.0).inp_bound == 1.0
    assert IOConfig(noise_management="none", inp_bound=bound).inp_bound == bound
    assert IOConfig(noise_management=nm, inp_bound=bound, is_perfect=True).is_perfect


@pytest.mark.parametrize("field", IO_ANY_FINITE)
@pytest.mark.parametrize("value", [0, -1e-12, -1, -254.0])
def test_io_off_values_of_aihwkit_are_accepted(field, value):
    cfg = IOConfig(**{field: value}, **_nm_for(field))
    assert getattr(cfg, field) == value and type(getattr(cfg, field)) is float
    assert (cfg.inp_step if field.startswith("inp") else cfg.out_step) == 0.0  # "off"


@pytest.mark.parametrize("field", IO_STRICT_POSITIVE + IO_NON_NEGATIVE + IO_ANY_FINITE)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_io_numbers_reject_non_finite(field, value):
    assert_rejects(IOConfig, field, value, "finite")


@pytest.mark.parametrize("field", IO_STRICT_POSITIVE + IO_NON_NEGATIVE + IO_ANY_FINITE)
@pytest.mark.parametrize("value", [True, False, "1.0", None, [1.0], 1 + 0j])
def test_io_numbers_reject_non_numbers(field, value):
    assert_rejects(IOConfig, field, value, "a number")


@pytest.mark.parametrize("field", IO_STRICT_POSITIVE + IO_NON_NEGATIVE + IO_ANY_FINITE)
def test_io_numbers_accept_ints_and_store_floats(field):
    cfg = IOConfig(**{field: 3}, **_nm_for(field))
    assert getattr(cfg, field) == 3.0
    assert type(getattr(cfg, field)) is float


@pytest.mark.parametrize("field", IO_BOOLS)
@pytest.mark.parametrize("value", [0, 1, 1.0, "True", "false", None])
def test_io_bools_reject_non_bools(field, value):
    assert_rejects(IOConfig, field, value, "True or False")


@pytest.mark.parametrize("field", IO_BOOLS)
@pytest.mark.parametrize("value", [True, False])
def test_io_bools_accept_bools(field, value):
    assert getattr(IOConfig(**{field: value}), field) is value


@pytest.mark.parametrize("field", sorted(IO_ENUMS))
@pytest.mark.parametrize("value", ["", "bogus", "abs-max", "pcm read", 0, 1, None, True])
def test_io_enums_reject_unknown_names(field, value):
    enum_type = IO_ENUMS[field]
    allowed = "one of " + ", ".join(repr(m.value) for m in enum_type)
    assert_rejects(IOConfig, field, value, allowed)


@pytest.mark.parametrize("field", sorted(IO_ENUMS))
def test_io_enums_accept_members_and_case_insensitive_strings(field):
    enum_type = IO_ENUMS[field]
    for member in enum_type:
        for value in (member, member.value, member.value.upper(), member.value.title()):
            got = getattr(IOConfig(**{field: value}), field)
            assert got is member, (value, got)


def test_io_defaults_are_reference_section_1():
    io = IOConfig()
    assert io.is_perfect is False
    assert io.noise_management is NoiseManagement.ABS_MAX
    assert io.bound_management is BoundManagement.ITERATIVE
    assert io.max_bm_factor == 1000.0
    assert io.max_bm_res == 0.25
    assert io.inp_bound == 1.0
    assert io.inp_res == 1 / 126
    assert io.inp_sto_round is False
    assert io.inp_noise == 0.0
    assert io.w_noise_type is WeightNoiseType.NONE
    assert io.w_noise == 0.0
    assert io.out_noise == 0.06
    assert io.out_bound == 12.0
    assert io.out_res == 1 / 510


# --------------------------------------------------------------------------------------------
# Validation of MappingConfig, DeviceConfig, HWAConfig, AnalogConfig

MAPPING_INTS = ["max_input_size", "max_output_size"]
MAPPING_BOOLS = [
    "digital_bias",
    "weight_scaling_columnwise",
    "learn_out_scaling",
    "out_scaling_columnwise",
]


@pytest.mark.parametrize("field", MAPPING_INTS)
@pytest.mark.parametrize("value", [-1, -512])
def test_mapping_tile_sizes_reject_negative(field, value):
    assert_rejects(MappingConfig, field, value, "an integer >= 0")


@pytest.mark.parametrize("field", MAPPING_INTS)
@pytest.mark.parametrize("value", [512.0, 0.5, "512", None, True, False, NAN])
def test_mapping_tile_sizes_reject_non_ints(field, value):
    path = f"mapping.{field}"
    with pytest.raises(ValueError) as info:
        MappingConfig(**{field: value})
    msg = str(info.value)
    assert path in msg and repr(value) in msg and "an integer >= 0" in msg, msg


@pytest.mark.parametrize("field", MAPPING_INTS)
@pytest.mark.parametrize("value", [0, 1, 7, 512, 4096])
def test_mapping_tile_sizes_accept_non_negative_ints(field, value):
    assert getattr(MappingConfig(**{field: value}), field) == value


@pytest.mark.parametrize("value", [-0.1, NAN, INF, True, "1.0", None])
def test_mapping_omega_rejects_bad_values(value):
    with pytest.raises(ValueError) as info:
        MappingConfig(weight_scaling_omega=value)
    msg = str(info.value)
    assert "mapping.weight_scaling_omega" in msg and repr(value) in msg and "allowed" in msg


@pytest.mark.parametrize("field", MAPPING_BOOLS)
@pytest.mark.parametrize("value", [0, 1, "yes", None])
def test_mapping_bools_reject_non_bools(field, value):
    assert_rejects(MappingConfig, field, value, "True or False")


def test_mapping_defaults_are_aihwkit_mapping_parameter():
    m = MappingConfig()
    assert (m.max_input_size, m.max_output_size) == (512, 512)
    assert m.digital_bias is True
    assert m.weight_scaling_omega == 0.0  # AIHWKIT 1.2.0: no weight scaling by default
    assert m.weight_scaling_columnwise is False
    assert m.learn_out_scaling is False
    assert m.out_scaling_columnwise is False


@pytest.mark.parametrize("model", ["pcm_typo", "PCM", "", None, 0])
def test_device_unknown_model_raises(model):
    assert_rejects(DeviceConfig, "model", model, "'none'")


def test_device_default_model_none():
    assert DeviceConfig().model == "none"


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("modifier", "gauss", "'add_normal'"),
        ("clip", "hard", "'layer_gaussian'"),
        ("remap", "rowwise", "'columnwise'"),
        ("modifier_std", -0.1, ">= 0"),
        ("modifier_res", float("nan"), ">= 0"),
        ("clip_value", 0.0, "> 0"),
        ("clip_sigma", -1.0, "> 0"),
        ("input_range_init_std", 0.0, "> 0"),
        ("input_range_decay", -1e-3, ">= 0"),
        ("input_range_gradient_scale", -1.0, ">= 0"),
        ("input_range_min_inside", 1.5, "in [0, 1]"),
        ("input_range_min_inside", -0.1, ">= 0"),
        ("input_range_gradient_relative", 1, "True or False"),
        ("input_range_init_batches", -1, ">= 0"),
        ("learn_input_range", 1, "True or False"),
        ("modifier_per_tile", "yes", "True or False"),
        ("modifier_coeffs", (1.0, 2.0), "three finite numbers"),
    ],
)
def test_hwa_rejects_bad_values(field, value, allowed):
    assert_rejects(HWAConfig, field, value, allowed)


def test_hwa_discretize_needs_a_resolution():
    with pytest.raises(ValueError, match=r"hwa\.modifier_res"):
        HWAConfig(modifier="discretize")
    assert HWAConfig(modifier="discretize", modifier_res=1 / 16).modifier_res == 1 / 16


def test_hwa_cross_field_rules():
    with pytest.raises(ValueError, match=r"config\.hwa\.remap.*learn_out_scaling"):
        AnalogConfig(hwa=HWAConfig(remap="columnwise"))
    with pytest.raises(ValueError, match=r"config\.hwa\.learn_input_range.*digital_bias"):
        AnalogConfig(
            mapping=MappingConfig(digital_bias=False), hwa=HWAConfig(learn_input_range=True)
        )


@pytest.mark.parametrize(
    "field, value",
    [
        ("io", MappingConfig()),
        ("io", {"out_bound": 12.0}),
        ("io", None),
        ("mapping", IOConfig()),
        ("device", "none"),
        ("hwa", False),
        ("hwa", DeviceConfig()),
    ],
)
def test_analog_config_rejects_wrong_sub_config_type(field, value):
    with pytest.raises(ValueError) as info:
        AnalogConfig(**{field: value})
    msg = str(info.value)
    assert f"config.{field}" in msg and "allowed" in msg, msg


def test_sub_config_defaults_are_independent_instances():
    a, b = AnalogConfig(), AnalogConfig()
    assert a == b
    assert a.io is not b.io and a.mapping is not b.mapping


# --------------------------------------------------------------------------------------------
# replace() validates


@pytest.mark.parametrize(
    "obj, changes, path",
    [
        (IOConfig(), {"out_noise": -1.0}, "io.out_noise"),
        (IOConfig(), {"inp_res": NAN}, "io.inp_res"),
        (IOConfig(), {"noise_management": "bogus"}, "io.noise_management"),
        (MappingConfig(), {"max_input_size": 1.5}, "mapping.max_input_size"),
        (HWAConfig(), {"clip_value": 0.0}, "hwa.clip_value"),
        (AnalogConfig(), {"io": MappingConfig()}, "config.io"),
    ],
)
def test_replace_validates(obj, changes, path):
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        obj.replace(**changes)
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        dataclasses.replace(obj, **changes)


def test_replace_returns_normalised_copy():
    io = IOConfig()
    new = io.replace(noise_management="CONSTANT", out_bound=10)
    assert new.noise_management is NoiseManagement.CONSTANT
    assert new.out_bound == 10.0 and type(new.out_bound) is float
    assert io.noise_management is NoiseManagement.ABS_MAX and io.out_bound == 12.0


# --------------------------------------------------------------------------------------------
# Resolution and steps


@pytest.mark.parametrize("bits, res", [(7, 1 / 126), (8, 1 / 254), (9, 1 / 510), (2, 1 / 2)])
def test_resolution_from_bits(bits, res):
    assert resolution_from_bits(bits) == res


@pytest.mark.parametrize("bits", [1, 0, -8, 8.0, "8", True, None])
def test_resolution_from_bits_rejects_bad_bits(bits):
    with pytest.raises(ValueError) as info:
        resolution_from_bits(bits)
    msg = str(info.value)
    assert "bits" in msg and repr(bits) in msg and "allowed" in msg


@pytest.mark.parametrize(
    "res, bound, step",
    [
        (1 / 510, 12.0, 24 / 510),  # fraction of the full range 2 * bound
        (1 / 126, 1.0, 2 / 126),
        (1 / 254, 10.0, 20 / 254),
        (1.0, 3.0, 6.0),  # res = 1 is still a fraction: one step spans the range
        (254, 12.0, 24 / 254),  # > 1: number of steps
        (510, 12.0, 24 / 510),
        (126, 1.0, 2 / 126),
        (256, 10.0, 20 / 256),
        (0, 12.0, 0.0),  # 0: quantization off
        (0.0, 1.0, 0.0),
    ],
)
def test_inp_and_out_step(res, bound, step):
    out = IOConfig(out_res=res, out_bound=bound)
    inp = IOConfig(inp_res=res, inp_bound=bound, noise_management="none")
    assert out.out_step == pytest.approx(step, rel=1e-12, abs=0)
    assert inp.inp_step == pytest.approx(step, rel=1e-12, abs=0)


def test_steps_of_defaults():
    io = IOConfig()
    assert io.inp_step == pytest.approx(2 / 126, rel=1e-12)
    assert io.out_step == pytest.approx(24 / 510, rel=1e-12)


def test_res_fraction_and_steps_agree():
    # a fraction 1/n and a step count n describe the same converter
    for n in (3, 126, 254, 510, 1000):
        assert IOConfig(out_res=n).out_step == pytest.approx(IOConfig(out_res=1 / n).out_step)


# --------------------------------------------------------------------------------------------
# Serialization


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip(name):
    cfg = PRESETS[name]()
    d = cfg.to_dict()
    assert d["version"] == CONFIG_VERSION == 4
    assert set(d) == {"version", "io", "mapping", "device", "hwa"}
    back = AnalogConfig.from_dict(d)
    assert back == cfg
    assert back.to_dict() == d
    # the dict is plain data: enums appear as their string values
    assert type(d["io"]["noise_management"]) is str
    assert type(d["io"]["bound_management"]) is str
    assert type(d["io"]["w_noise_type"]) is str
    assert back.io.noise_management is cfg.io.noise_management


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name]()
    text = cfg.to_json()
    assert json.loads(text)["version"] == CONFIG_VERSION
    back = AnalogConfig.from_json(text)
    assert back == cfg
    assert back.to_json() == text
    assert AnalogConfig.from_json(cfg.to_json(indent=2, sort_keys=True)) == cfg


def test_from_dict_does_not_mutate_input():
    d = presets.standard_hwa().to_dict()
    snapshot = json.loads(json.dumps(d))
    AnalogConfig.from_dict(d)
    assert d == snapshot


def test_to_dict_is_a_copy():
    cfg = AnalogConfig()
    d = cfg.to_dict()
    d["io"]["out_bound"] = -5
    assert cfg.io.out_bound == 12.0


def test_from_dict_missing_version_raises():
    d = AnalogConfig().to_dict()
    del d["version"]
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_dict(d)
    msg = str(info.value)
    assert "config.version" in msg and "None" in msg and "1" in msg


@pytest.mark.parametrize("version", [0, 5, "2", None, [2]])
def test_from_dict_wrong_version_raises(version):
    d = AnalogConfig().to_dict()
    d["version"] = version
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_dict(d)
    msg = str(info.value)
    assert "config.version" in msg and repr(version) in msg


def test_from_dict_bool_version_raises():
    d = AnalogConfig().to_dict()
    d["version"] = True
    with pytest.raises(ValueError, match=r"config\.version"):
        AnalogConfig.from_dict(d)


def test_from_json_wrong_version_raises():
    d = AnalogConfig().to_dict()
    d["version"] = 99
    with pytest.raises(ValueError, match=r"config\.version"):
        AnalogConfig.from_json(json.dumps(d))


@pytest.mark.parametrize("data", [None, [], "config", 1])
def test_from_dict_rejects_non_dict(data):
    with pytest.raises(ValueError, match="config"):
        AnalogConfig.from_dict(data)


def test_unknown_top_level_key_raises_naming_key():
    d = AnalogConfig().to_dict()
    d["tiles"] = 3
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_dict(d)
    assert "tiles" in str(info.value)


@pytest.mark.parametrize("section", ["io", "mapping", "device", "hwa"])
def test_unknown_nested_key_raises_naming_key_and_section(section):
    d = AnalogConfig().to_dict()
    d[section]["frobnicate_level"] = 1
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_dict(d)
    msg = str(info.value)
    assert "frobnicate_level" in msg and section in msg, msg


def test_misspelled_field_is_not_silently_ignored():
    d = AnalogConfig().to_dict()
    d["io"]["out_bounds"] = 5.0  # typo of out_bound
    with pytest.raises(ValueError, match="out_bounds"):
        AnalogConfig.from_dict(d)


@pytest.mark.parametrize(
    "section, key, value, path",
    [
        ("io", "out_bound", INF, "io.out_bound"),
        ("io", "noise_management", "nope", "io.noise_management"),
        ("io", "is_perfect", 1, "io.is_perfect"),
        ("mapping", "max_input_size", -1, "mapping.max_input_size"),
        ("device", "model", "pcm_unknown", "device.model"),
        ("hwa", "modifier", "bogus", "hwa.modifier"),
    ],
)
def test_from_dict_validates_values(section, key, value, path):
    d = AnalogConfig().to_dict()
    d[section][key] = value
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        AnalogConfig.from_dict(d)


@pytest.mark.parametrize("section", ["io", "mapping", "device", "hwa"])
def test_from_dict_rejects_non_dict_section(section):
    d = AnalogConfig().to_dict()
    d[section] = "default"
    with pytest.raises(ValueError, match=rf"config\.{section}"):
        AnalogConfig.from_dict(d)


def test_from_dict_enum_strings_case_insensitive():
    d = AnalogConfig().to_dict()
    d["io"]["noise_management"] = "CONSTANT"
    d["io"]["w_noise_type"] = "Pcm_Read"
    cfg = AnalogConfig.from_dict(d)
    assert cfg.io.noise_management is NoiseManagement.CONSTANT
    assert cfg.io.w_noise_type is WeightNoiseType.PCM_READ


# --------------------------------------------------------------------------------------------
# Presets (REFERENCE.md §5)


def test_presets_are_fresh_objects():
    for make in PRESETS.values():
        a, b = make(), make()
        assert a == b and a is not b
        assert a.io is not b.io and a.mapping is not b.mapping
    a = presets.pcm_inference()
    a.io.out_bound = 1.0
    assert presets.pcm_inference().io.out_bound == 12.0


def test_preset_names_exported():
    assert set(presets.__all__) == {
        "ideal",
        "pcm_inference",
        "pcm_weights_only",
        "standard_hwa",
        "bert_squad",
        "analog_foundation",
    }
    for make in PRESETS.values():
        assert isinstance(make(), aimc.AnalogConfig)


def _off_parts(cfg: AnalogConfig) -> None:
    # PCM presets: the PCM statistical model with its default parameters and global drift
    # compensation (REFERENCE.md §5); HWA training is not implemented yet: its slot is off
    assert cfg.device == DeviceConfig(model="pcm", drift_compensation="global")
    assert cfg.device.params == aimc.devices.pcm.PCMParams()
    assert cfg.hwa == HWAConfig()


def test_pcm_inference_is_inference_rpu_config_defaults():
    cfg = presets.pcm_inference()
    assert cfg == AnalogConfig(device=DeviceConfig(model="pcm", drift_compensation="global"))
    io, m = cfg.io, cfg.mapping
    assert io.is_perfect is False
    assert io.inp_res == 1 / 126 and io.inp_bound == 1.0
    assert io.out_res == 1 / 510 and io.out_bound == 12.0
    assert io.out_noise == 0.06
    assert io.inp_noise == 0.0 and io.inp_sto_round is False
    assert io.w_noise_type is WeightNoiseType.NONE and io.w_noise == 0.0
    assert io.noise_management is NoiseManagement.ABS_MAX
    assert io.bound_management is BoundManagement.ITERATIVE
    assert io.max_bm_factor == 1000.0 and io.max_bm_res == 0.25
    assert (m.max_input_size, m.max_output_size) == (512, 512)
    assert m.digital_bias is True
    assert m.weight_scaling_omega == 0.0 and m.weight_scaling_columnwise is False
    assert m.learn_out_scaling is False and m.out_scaling_columnwise is False
    _off_parts(cfg)


def test_standard_hwa_preset():
    cfg = presets.standard_hwa()
    io, m = cfg.io, cfg.mapping
    assert io.is_perfect is False
    assert io.inp_res == 1 / 254 and io.out_res == 1 / 254
    assert io.inp_bound == 1.0
    assert io.out_noise == 0.04 and io.out_bound == 10.0
    assert io.bound_management is BoundManagement.NONE
    assert io.noise_management is NoiseManagement.CONSTANT and io.nm_thres == 1.0
    assert io.w_noise_type is WeightNoiseType.PCM_READ and io.w_noise == 0.0175
    assert io.inp_noise == 0.0
    assert m.max_input_size == 512 and m.max_output_size == 0
    assert m.weight_scaling_omega == 1.0 and m.weight_scaling_columnwise is True
    assert m.learn_out_scaling is True and m.out_scaling_columnwise is True
    assert m.digital_bias is True
    assert cfg.device == DeviceConfig(model="pcm", drift_compensation="global")
    # REFERENCE.md §5: learned input ranges, clip fixed 1.0, column-wise remap
    assert cfg.hwa == HWAConfig(
        clip="fixed", clip_value=1.0, remap="columnwise", learn_input_range=True
    )


@pytest.mark.parametrize("w_noise", [0.0175, 0.035, 0.07])
def test_bert_squad_preset(w_noise):
    cfg = presets.bert_squad(w_noise)
    io, m = cfg.io, cfg.mapping
    assert io.is_perfect is False
    assert io.inp_bound == 1.0
    assert io.out_noise == 0.04 and io.out_bound == 10.0
    assert io.noise_management is NoiseManagement.ABS_MAX
    assert io.bound_management is BoundManagement.ITERATIVE
    assert io.w_noise_type is WeightNoiseType.PCM_READ and io.w_noise == w_noise
    assert m.max_input_size == 512 and m.max_output_size == 0
    assert m.weight_scaling_omega == 1.0 and m.weight_scaling_columnwise is True
    assert m.learn_out_scaling is True and m.out_scaling_columnwise is True
    assert m.digital_bias is True
    _off_parts(cfg)


@pytest.mark.parametrize("w_noise", [0.0175])
def test_bert_squad_converters_have_256_steps(w_noise):
    io = presets.bert_squad(w_noise).io
    assert io.inp_step == pytest.approx(2 * io.inp_bound / 256, rel=1e-12)
    assert io.out_step == pytest.approx(2 * io.out_bound / 256, rel=1e-12)


def test_bert_squad_default_and_validation():
    assert presets.bert_squad() == presets.bert_squad(0.0175)
    with pytest.raises(ValueError, match=r"io\.w_noise"):
        presets.bert_squad(-0.01)
    with pytest.raises(ValueError, match=r"io\.w_noise"):
        presets.bert_squad(NAN)


def test_ideal_preset_is_perfect():
    cfg = presets.ideal()
    assert cfg.io.is_perfect is True
    assert cfg.mapping.learn_out_scaling is False  # no trainable scale: exactly digital
    assert cfg.mapping.digital_bias is True
    assert cfg.device == DeviceConfig(model="none")
    assert cfg.device.drift_compensation is aimc.DriftCompensation.NONE


def test_pcm_weights_only_preset():
    cfg, ref = presets.pcm_weights_only(), presets.pcm_inference()
    assert cfg.io.is_perfect is True
    assert cfg.io.replace(is_perfect=False) == ref.io
    assert cfg.mapping == ref.mapping
    assert cfg.device == ref.device
    assert cfg.hwa == ref.hwa


def test_ideal_preset_layer_equals_digital():
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(700, 600)
    analog = aimc.nn.AnalogLinear.from_digital(lin, config=presets.ideal())
    x = torch.randn(3, 700)
    with torch.no_grad():
        torch.testing.assert_close(analog(x), lin(x), rtol=0, atol=0)


def test_step_arithmetic_of_presets():
    hwa = presets.standard_hwa().io
    assert hwa.inp_step == pytest.approx(2 / 254, rel=1e-12)
    assert hwa.out_step == pytest.approx(20 / 254, rel=1e-12)
    assert math.isclose(presets.pcm_inference().io.out_step, 24 / 510, rel_tol=1e-12)


def test_io_config_key_follows_every_field_change_and_names_a_snapshot():
    """The compiled bound-management op finds its IO config by ``IOConfig._key``: the key must
    name the current fields after any change, and the config it names must not change when the
    original object is changed later."""
    import copy
    import pickle

    from aimc.config import IOConfig, io_config_by_key

    io = IOConfig()
    first = io._key
    io.out_noise = 0.1
    assert io._key != first and "out_noise=0.1" in io._key
    assert io_config_by_key(first).out_noise == 0.06
    assert io_config_by_key(io._key) == io and io_config_by_key(io._key) is not io
    io.out_noise = 0.06  # back to the first fields: the first key and its snapshot
    assert io._key == first and io_config_by_key(first).out_noise == 0.06
    assert pickle.loads(pickle.dumps(io))._key == io._key
    other = copy.deepcopy(io)
    other.w_noise = 0.02
    assert other._key != io._key and io_config_by_key(io._key).w_noise == 0.0
    assert IOConfig(out_noise=0.1)._key == IOConfig(out_noise=0.1)._key
    old = IOConfig(out_noise=0.07)  # as pickled by an aimc without the key
    del old.__dict__["_key"]
    restored = pickle.loads(pickle.dumps(old))
    assert "out_noise=0.07" in restored._key and io_config_by_key(restored._key) == restored
    with pytest.raises(KeyError, match="no IO config has the key"):
        io_config_by_key("IOConfig(nonsense)")
