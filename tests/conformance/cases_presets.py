"""Presets against their AIHWKIT counterparts (REFERENCE.md §5)."""

from __future__ import annotations

from aimc import presets

from .harness import YEAR, Case, Tolerance


def _inference_rpu():
    from aihwkit.simulator.configs import InferenceRPUConfig

    return InferenceRPUConfig()


def standard_hwa_rpu():
    """AIHWKIT's ``StandardHWATrainingPreset`` with no IR drop (AIHWKIT: ``forward.ir_drop =
    1.0``), which aimc does not model (see ``_HWA_NOTE``)."""
    from aihwkit.simulator.presets import StandardHWATrainingPreset

    rpu = StandardHWATrainingPreset()
    rpu.forward.ir_drop = 0.0
    return rpu


def bert_squad_rpu(w_noise: float = 0.0175, modifier_noise: float = 0.1):
    """``create_rpu_config`` of AIHWKIT example 24 (BERT on SQuAD), with the seed experiment's
    ``w_noise`` (the example hard-codes 0.0175; the modifier only acts in training)."""
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.simulator.configs import (
        BoundManagementType,
        InferenceRPUConfig,
        MappingParameter,
        NoiseManagementType,
        WeightClipParameter,
        WeightClipType,
        WeightModifierParameter,
        WeightModifierType,
        WeightNoiseType,
    )
    from aihwkit.simulator.presets import PresetIOParameters

    return InferenceRPUConfig(
        clip=WeightClipParameter(type=WeightClipType.FIXED_VALUE, fixed_value=1.0),
        modifier=WeightModifierParameter(
            rel_to_actual_wmax=True, type=WeightModifierType.ADD_NORMAL, std_dev=modifier_noise
        ),
        mapping=MappingParameter(
            digital_bias=True,
            learn_out_scaling=True,
            weight_scaling_omega=1.0,
            out_scaling_columnwise=True,
            weight_scaling_columnwise=True,
            max_input_size=512,
            max_output_size=0,
        ),
        forward=PresetIOParameters(
            w_noise_type=WeightNoiseType.PCM_READ,
            w_noise=w_noise,
            inp_res=256,
            out_res=256,
            out_bound=10.0,
            out_noise=0.04,
            bound_management=BoundManagementType.ITERATIVE,
            noise_management=NoiseManagementType.ABS_MAX,
        ),
        noise_model=PCMLikeNoiseModel(),
        drift_compensation=GlobalDriftCompensation(),
    )


def ideal_bert_squad_rpu():
    """``create_ideal_rpu_config`` of AIHWKIT example 24: perfect IO, every PCM scale 0 (drift
    too) and no drift compensation."""
    from aihwkit.inference import PCMLikeNoiseModel
    from aihwkit.simulator.configs import InferenceRPUConfig, MappingParameter
    from aihwkit.simulator.presets import PresetIOParameters

    return InferenceRPUConfig(
        mapping=MappingParameter(
            digital_bias=True,
            learn_out_scaling=True,
            weight_scaling_omega=1.0,
            out_scaling_columnwise=False,
            weight_scaling_columnwise=True,
            max_input_size=512,
            max_output_size=0,
        ),
        forward=PresetIOParameters(is_perfect=True),
        noise_model=PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0),
        drift_compensation=None,
    )


_PROTOCOLS = [
    ("programmed", "program", 0.0),
    ("drift 1 h", "drift", 3600.0),
    ("drift 1 year", "drift", YEAR),
]

_HWA_NOTE = (
    "AIHWKIT's IR drop off (aimc has no IR-drop model; with forward.ir_drop 1.0 aimc is "
    "-0.9 % programmed, ~0 % after 1 year on the 768x256 probe). The learned input range "
    "starts at AIHWKIT's init_value 3.0 since aimc 0.2 (at 1.0 aimc was -1.4 % programmed, "
    "-6.4 % after 1 year)"
)
_BERT_NOTE = (
    "before aimc drifted the programmed weights re-mapped onto a fresh pair (as AIHWKIT), its "
    "error after drift was 1.5-2.7 % lower (real: ~20 standard errors on the 768x768 probe)"
)

# The probe: one 768x768 layer, W ~ N(0, 0.05²), X ~ U[-1, 1], 256 rows, 10 chips.
PRESET_CASES = [
    Case(
        f"pcm_inference = InferenceRPUConfig(), {label}",
        presets.pcm_inference,
        _inference_rpu,
        protocol=protocol,
        t=t,
        in_features=768,
        out_features=768,
        rows=256,
    )
    for label, protocol, t in [
        ("unprogrammed", "io", 0.0),
        ("programmed", "program", 0.0),
        ("drift 1 h", "drift", 3600.0),
        ("drift 1 year", "drift", YEAR),
    ]
]

# The eval forward of the HWA presets on a smaller probe (768 inputs = 2 tiles of 384, 256
# outputs, 64 rows; ~1-3 s a case) with a 1 % tolerance: the drift deviation fixed while building
# these cases was 1.5-2.7 %.
_SMALL = {"in_features": 768, "out_features": 256, "rows": 64, "tol": Tolerance(rel=0.01)}

PRESET_CASES += [
    Case(
        f"standard_hwa = StandardHWATrainingPreset(), {label}",
        presets.standard_hwa,
        standard_hwa_rpu,
        protocol=protocol,
        t=t,
        note=_HWA_NOTE,
        **_SMALL,
    )
    for label, protocol, t in _PROTOCOLS
]

PRESET_CASES += [
    Case(
        f"bert_squad({w}) = example 24 create_rpu_config, {label}",
        lambda w=w: presets.bert_squad(w),
        lambda w=w: bert_squad_rpu(w),
        protocol=protocol,
        t=t,
        note=_BERT_NOTE,
        **_SMALL,
    )
    for w in (0.0175, 0.035, 0.07)
    for label, protocol, t in _PROTOCOLS
]
