"""Named configurations (plain functions returning a fresh :class:`aimc.AnalogConfig`).

Every PCM preset carries the PCM statistical model (REFERENCE.md §2, ``pcm``) with global drift
compensation (§3); ``ideal()`` has no device model.
"""

from __future__ import annotations

from .config import (
    AnalogConfig,
    BoundManagement,
    DeviceConfig,
    DriftCompensation,
    HWAConfig,
    IOConfig,
    MappingConfig,
    NoiseManagement,
    OutputBoundMask,
    WeightClip,
    WeightNoiseType,
    WeightRemap,
    resolution_from_bits,
)


def _pcm() -> DeviceConfig:
    return DeviceConfig(model="pcm", drift_compensation=DriftCompensation.GLOBAL)


def ideal() -> AnalogConfig:
    """Everything off: perfect IO, no tiling effects; equals the digital model, in training too
    (``hwa.output_bound_mask="none"``: AIHWKIT's perfect tiles still drop the input gradient of
    outputs beyond 0.999 * ``out_bound``, which the digital model does not)."""
    return AnalogConfig(
        io=IOConfig(is_perfect=True),
        mapping=MappingConfig(max_input_size=0, max_output_size=0),
        hwa=HWAConfig(output_bound_mask=OutputBoundMask.NONE),
    )


def pcm_inference() -> AnalogConfig:
    """AIHWKIT 1.2.0 ``InferenceRPUConfig()`` defaults (REFERENCE.md §5): 7-bit DAC, 9-bit ADC
    (bound 12), output noise 0.06, abs-max noise management, iterative bound management,
    512 x 512 tiles, no weight scaling (``weight_scaling_omega = 0``, AIHWKIT's default), digital
    bias, PCM model, global drift compensation. Checked against AIHWKIT itself by the
    conformance suite (``tests/conformance``)."""
    return AnalogConfig(device=_pcm())


def pcm_weights_only() -> AnalogConfig:
    """:func:`pcm_inference` with a perfect periphery: only the (device) weight effects remain."""
    cfg = pcm_inference()
    return cfg.replace(io=cfg.io.replace(is_perfect=True))


def standard_hwa() -> AnalogConfig:
    """AIHWKIT ``StandardHWATrainingPreset`` (Rasch et al., Nat. Commun. 14, 5282 (2023)):
    8-bit DAC and ADC, output noise 0.04, ADC bound 10, no bound management, constant noise
    management (1.0), ``pcm_read`` weight noise 0.0175, tiles of 512 inputs with no output split,
    column-wise weight scaling, learned column-wise output scales, digital bias.

    HWA training: learned input ranges (replacing the constant noise management in training and
    eval), weights clipped at 1.0 and remapped column-wise after every optimizer step
    (:func:`aimc.post_step`). PCM model with global drift compensation.
    """
    res = resolution_from_bits(8)
    return AnalogConfig(
        io=IOConfig(
            inp_res=res,
            out_res=res,
            out_noise=0.04,
            out_bound=10.0,
            bound_management=BoundManagement.NONE,
            noise_management=NoiseManagement.CONSTANT,
            nm_thres=1.0,
            w_noise_type=WeightNoiseType.PCM_READ,
            w_noise=0.0175,
        ),
        mapping=MappingConfig(
            max_input_size=512,
            max_output_size=0,
            digital_bias=True,
            weight_scaling_omega=1.0,
            weight_scaling_columnwise=True,
            learn_out_scaling=True,
            out_scaling_columnwise=True,
        ),
        device=_pcm(),
        hwa=HWAConfig(
            clip=WeightClip.FIXED,
            clip_value=1.0,
            remap=WeightRemap.COLUMNWISE,
            learn_input_range=True,
        ),
    )


def bert_squad(w_noise: float = 0.0175) -> AnalogConfig:
    """The BERT-on-SQuAD experiment of AIHWKIT's examples (REFERENCE.md §5): 8-bit DAC/ADC
    (256 steps), output noise 0.04, ADC bound 10, abs-max noise management, iterative bound
    management, ``pcm_read`` weight noise ``w_noise`` (0.0175 = standard PCM; 0.035, 0.07),
    tiles of 512 inputs, column-wise weight scaling, learned output scaling, digital bias, PCM
    model, global drift compensation.

    The example sets ``inp_res = out_res = 256`` (256 steps, i.e. 1/256 of the range), which
    differs slightly from ``resolution_from_bits(8) = 1/254`` used by :func:`standard_hwa`."""
    res = 256.0
    return AnalogConfig(
        io=IOConfig(
            inp_res=res,
            out_res=res,
            out_noise=0.04,
            out_bound=10.0,
            bound_management=BoundManagement.ITERATIVE,
            noise_management=NoiseManagement.ABS_MAX,
            w_noise_type=WeightNoiseType.PCM_READ,
            w_noise=w_noise,
        ),
        mapping=MappingConfig(
            max_input_size=512,
            max_output_size=0,
            digital_bias=True,
            weight_scaling_omega=1.0,
            weight_scaling_columnwise=True,
            learn_out_scaling=True,
            out_scaling_columnwise=True,
        ),
        device=_pcm(),
    )


def analog_foundation(w_noise: float = 0.0175) -> AnalogConfig:
    """The LLM-typical AIMC hardware of "Analog Foundation Models" (J. Büchel et al., NeurIPS
    2025, arXiv:2505.09663): 8-bit DAC and 8-bit ADC, *static* per-layer input ranges instead of
    dynamic (per-token abs-max) noise management, and per-channel (column-wise) weight scaling.

    In aimc terms: the DAC range of each layer is ``hwa.learn_input_range`` (the same parameter
    hardware-aware training learns); inputs are clipped to ``[-r, r]`` and divided by ``r``, one
    ``r`` per layer for all tokens. A model that was not trained with those ranges needs them
    set from data before it is evaluated: :func:`aimc.calibrate_input_ranges` (``aimc lm-drift``
    calibrates on the first corpus windows). Until then ``r`` is AIHWKIT's initial value 3.0.
    The ADC range is static too (no bound management: ``out_bound`` 10 in units of the full-scale
    input times the column's largest weight, 8-bit steps of 1/254 of it).

    The remaining numbers are those of :func:`bert_squad` / :func:`standard_hwa`, as the paper
    builds on that line of work: output noise 0.04, ``pcm_read`` weight noise ``w_noise``,
    tiles of 512 inputs (no output split), learned column-wise output scales, digital bias, PCM
    model with global drift compensation. It differs from ``bert_squad(w_noise)`` only in the
    static input range (bert_squad: abs-max per token and tile) and in having no bound
    management, the two choices that matter for LLM activations with outliers.
    """
    res = resolution_from_bits(8)
    cfg = bert_squad(w_noise)
    io = cfg.io.replace(
        inp_res=res,
        out_res=res,
        bound_management=BoundManagement.NONE,
        noise_management=NoiseManagement.NONE,
    )
    return cfg.replace(io=io, hwa=HWAConfig(learn_input_range=True))


__all__ = [
    "ideal",
    "pcm_inference",
    "pcm_weights_only",
    "standard_hwa",
    "bert_squad",
    "analog_foundation",
]
