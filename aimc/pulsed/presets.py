"""Published device fits as plain functions returning a fresh :class:`PulsedConfig`.

Constants are those of IBM AIHWKIT's device presets (``aihwkit.simulator.presets.devices``),
which fit the cited measurements. All use the default update (``BL = 31``, update and BL
management on, as AIHWKIT's ``PresetUpdateParameters``). AIHWKIT's additional write noise
(``write_noise_std``), capacitor leakage and PCM reset variation are not modelled here.
"""

from __future__ import annotations

from .config import PulsedConfig
from .devices.constant_step import ConstantStepParams
from .devices.exp_step import ExpStepParams
from .devices.linear_step import LinearStepParams
from .devices.soft_bounds import SoftBoundsParams


def reram_exp_step() -> PulsedConfig:
    """ReRAM, exponential-step fit to Gong et al., "Signal and noise extraction from analog
    memory elements for neuromorphic computing", Nat. Commun. 9, 2102 (2018) (AIHWKIT
    ``ReRamESPresetDevice``). Strongly asymmetric and noisy (``dw_min_std = 5``)."""
    params = ExpStepParams(
        dw_min=0.00135,
        up_down=0.259359,
        w_max=1.0,
        w_min=-1.0,
        a=-0.5,
        b=-0.5,
        gamma_up=5.0,
        gamma_down=5.0,
        A_up=-1.18445,
        A_down=-0.081404,
        dw_min_dtod=0.2,
        up_down_dtod=0.05,
        w_max_dtod=0.3,
        w_min_dtod=0.3,
        dw_min_std=5.0,
    )
    return PulsedConfig(device="exp_step", params=params)


def reram_soft_bounds() -> PulsedConfig:
    """ReRAM, loose soft-bounds fit to Gong et al., Nat. Commun. 9, 2102 (2018), assuming the
    symmetry point was calibrated to 0 by a reference device (AIHWKIT ``ReRamSBPresetDevice``).
    Additive cycle-to-cycle noise."""
    params = SoftBoundsParams(
        dw_min=0.002,
        up_down=0.0,
        w_max=1.25,
        w_min=-0.75,
        mult_noise=False,
        dw_min_dtod=0.3,
        up_down_dtod=0.01,
        w_max_dtod=0.3 / 1.25,
        w_min_dtod=0.3 / 0.75,
        dw_min_std=3.75,
    )
    return PulsedConfig(device="soft_bounds", params=params)


def ecram() -> PulsedConfig:
    """Lithium-based ECRAM, linear-step fit to Tang et al., "ECRAM as scalable synaptic cell
    for high-speed, low-power neuromorphic computing", IEDM 2018 (AIHWKIT
    ``EcRamPresetDevice``); range shifted so the symmetry point is at 0."""
    params = LinearStepParams(
        dw_min=0.002,
        up_down=0.0,
        w_max=1.1724,
        w_min=-0.8276,
        mult_noise=True,
        gamma_up=0.1153,
        gamma_down=0.5085,
        dw_min_dtod=0.1,
        up_down_dtod=0.01,
        w_max_dtod=0.05,
        w_min_dtod=0.05,
        gamma_up_dtod=0.05,
        gamma_down_dtod=0.05,
        dw_min_std=0.3,
        mean_bound_reference=True,
    )
    return PulsedConfig(device="linear_step", params=params)


def ecram_metal_oxide() -> PulsedConfig:
    """Metal-oxide ECRAM, linear-step fit to Kim et al., "Metal-oxide based, CMOS-compatible
    ECRAM for deep learning accelerator", IEDM 2019 (AIHWKIT ``EcRamMOPresetDevice``)."""
    params = LinearStepParams(
        dw_min=2.8214e-4,
        up_down=0.0,
        w_max=1.1714,
        w_min=-0.8286,
        mult_noise=True,
        gamma_up=0.4152,
        gamma_down=0.7342,
        dw_min_dtod=0.1,
        up_down_dtod=0.01,
        w_max_dtod=0.05,
        w_min_dtod=0.05,
        gamma_up_dtod=0.05,
        gamma_down_dtod=0.05,
        dw_min_std=2.0,
        mean_bound_reference=True,
    )
    return PulsedConfig(device="linear_step", params=params)


def capacitor() -> PulsedConfig:
    """Capacitor-based cell, linear-step fit to Li et al., "Capacitor-based cross-point array
    for analog neural network with record symmetry and linearity", VLSI 2018 (AIHWKIT
    ``CapacitorPresetDevice``; its leakage, ``lifetime = 1e6`` mini-batches, is not
    modelled)."""
    params = LinearStepParams(
        dw_min=0.005,
        up_down=0.0,
        w_max=1.0,
        w_min=-1.0,
        mult_noise=False,
        gamma_up=0.05,
        gamma_down=0.05,
        dw_min_dtod=0.1,
        up_down_dtod=0.06,
        w_max_dtod=0.07,
        w_min_dtod=0.07,
        gamma_up_dtod=0.01,
        gamma_down_dtod=0.01,
        dw_min_std=0.3,
        mean_bound_reference=True,
    )
    return PulsedConfig(device="linear_step", params=params)


def idealized() -> PulsedConfig:
    """Idealized symmetric constant-step device with ~10000 states: the specification of Gokmen &
    Vlasov, Front. Neurosci. 10, 333 (2016) without d2d asymmetry and with a 5x smaller step, as
    in Rasch, Gokmen & Haensch, IEEE Design & Test (2019) (AIHWKIT ``IdealizedPresetDevice``)."""
    params = ConstantStepParams(
        dw_min=0.0002,
        dw_min_dtod=0.3,
        dw_min_std=0.3,
        up_down=0.0,
        up_down_dtod=0.0,
        w_max=1.0,
        w_min=-1.0,
        w_max_dtod=0.3,
        w_min_dtod=0.3,
    )
    return PulsedConfig(device="constant_step", params=params)


def gokmen_vlasov() -> PulsedConfig:
    """The resistive-processing-unit specification of Gokmen & Vlasov, Front. Neurosci. 10, 333
    (2016), scaled to the weight range ``[-1, 1]`` (~1200 states; AIHWKIT
    ``GokmenVlasovPresetDevice``)."""
    params = ConstantStepParams(dw_min=0.0016, w_max=1.0, w_min=-1.0)
    return PulsedConfig(device="constant_step", params=params)


def pcm_pair() -> PulsedConfig:
    """Ge2Sb2Te5 PCM as a one-sided pair with refresh: exponential-step fit to Nandakumar et
    al., "Mixed-precision deep learning based on computational memory", Front. Neurosci. 14, 406
    (2020) (AIHWKIT ``PCMPresetDevice`` in a ``PCMPresetUnitCell``: two up-only devices,
    refresh checked after every update at 75 % of ``w_max``). AIHWKIT's extra state-dependent
    c2c terms (``dw_min_std_add``, ``dw_min_std_slope``) and reset variation are not
    modelled; the multiplicative c2c noise 0.6 is."""
    params = ExpStepParams(
        dw_min=0.01,
        up_down=0.0,
        w_max=2.0,
        w_min=0.0,
        a=-1.0,
        b=0.0,
        gamma_up=2.5,
        gamma_down=2.5,
        A_up=-27.235,
        A_down=-2.235,
        dw_min_dtod=0.2,
        up_down_dtod=0.05,
        w_max_dtod=0.1,
        w_min_dtod=0.0,
        dw_min_std=0.6,
    )
    return PulsedConfig(
        device="exp_step",
        params=params,
        one_sided_pair=True,
        refresh_every=1,
        refresh_upper_thres=0.75,
    )


#: Every preset by name.
PRESETS = {
    "reram_exp_step": reram_exp_step,
    "reram_soft_bounds": reram_soft_bounds,
    "ecram": ecram,
    "ecram_metal_oxide": ecram_metal_oxide,
    "capacitor": capacitor,
    "idealized": idealized,
    "gokmen_vlasov": gokmen_vlasov,
    "pcm_pair": pcm_pair,
}
