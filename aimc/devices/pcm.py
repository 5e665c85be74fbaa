"""``pcm``: the PCM statistical model (REFERENCE.md §2).

Programming noise, conductance-dependent drift exponents, power-law drift and accumulated 1/f
read noise, fitted to measurements of about one million IBM PCM devices: S. R. Nandakumar et al.,
"Phase-change memory models for deep learning training and inference", ICECS 2019; V. Joshi et
al., "Accurate deep neural network inference using computational phase-change memory", Nat.
Commun. 11, 2473 (2020). Constants as in IBM AIHWKIT 1.2.0 ``PCMLikeNoiseModel``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import DeviceParams, check_coefficients
from ..random import normal_
from .base import DeviceModel, State, register

#: Programming-noise polynomial ``sigma(g) = c0 + c1 g/g_max + c2 (g/g_max)^2`` (µS at g_max=25).
PROG_COEFF = (0.26348, 1.9650, -1.1731)


@dataclass
class PCMParams(DeviceParams):
    """Parameters of the PCM statistical model (units: µS and seconds)."""

    g_max: float = 25.0
    """Conductance of the largest weight (µS)."""
    prog_noise_scale: float = 1.0
    """Multiplier of the programming-noise std (0 = perfect programming)."""
    read_noise_scale: float = 1.0
    """Multiplier of the accumulated 1/f read-noise std (0 = noiseless reads)."""
    drift_scale: float = 1.0
    """Multiplier of the drift exponents (0 = no drift)."""
    t0: float = 20.0
    """Time of the reference conductance read after programming (s)."""
    t_read: float = 250e-9
    """Duration of one read pulse (s); sets the low-frequency cut-off of the 1/f noise."""
    prog_coeff: tuple[float, float, float] = field(default=PROG_COEFF)
    """Coefficients ``(c0, c1, c2)`` of the programming-noise polynomial, in µS. The default is
    the fit at 25 µS and is rescaled by ``g_max / 25``; coefficients you give are taken at this
    ``g_max`` as they are (AIHWKIT's ``prog_coeff_g_max_reference`` rule)."""

    def _validate(self) -> None:
        self._check_positive("g_max", "t0", "t_read")
        if self.t_read > self.t0:  # (log(t0 / t_read) of the 1/f read noise: a domain error)
            raise ValueError(
                f"{self._prefix}.t_read: got {self.t_read!r} with t0 {self.t0!r}; allowed: "
                "at most t0 (a read pulse's duration in seconds, 250e-9 by default)"
            )
        self._check_non_negative("prog_noise_scale", "read_noise_scale", "drift_scale")
        self.prog_coeff = check_coefficients(f"{self._prefix}.prog_coeff", self.prog_coeff)


def prog_coeff_reference(params: PCMParams) -> float:
    """The ``g_max`` (µS) at which ``prog_coeff`` holds: 25 for the built-in fit, else ``g_max``.

    As AIHWKIT 1.2.0 ``PCMLikeNoiseModel``: its default coefficients carry
    ``prog_coeff_g_max_reference = 25``, explicitly given ones the model's ``g_max`` (aimc < 0.2
    rescaled every coefficient set by ``g_max / 25``: 0.4x AIHWKIT's noise for own coefficients
    at ``g_max = 10``). Only the exact default values count as the built-in fit.
    """
    return 25.0 if tuple(params.prog_coeff) == PROG_COEFF else params.g_max


# The functions below work in place on as few full-size temporaries as they can (fresh
# multi-megabyte tensors cost page faults comparable to the arithmetic on them); each keeps the
# operation order of its formula, so the results are those of the plain expressions, bit for bit.


def prog_noise_std(g: Tensor, params: PCMParams) -> Tensor:
    """``sigma_prog(g) = (c0 + c1 g/g_max + c2 (g/g_max)^2) * g_max / g_ref`` (µS), ``g_ref``
    from :func:`prog_coeff_reference` (25 for the default coefficients)."""
    c0, c1, c2 = params.prog_coeff
    rel = g / params.g_max
    out = rel * c1
    out.add_(c0).add_(rel.mul_(c2).mul_(g / params.g_max))
    return out.mul_(params.g_max / prog_coeff_reference(params))


def nu_mean_std(g: Tensor, params: DeviceParams) -> tuple[Tensor, Tensor]:
    """Mean and std of the drift exponent for target conductances ``g`` (REFERENCE.md §2)."""
    log_g = (g / params.g_max).abs_().clamp_min_(1e-7).log_()
    mu = (log_g * -0.0155).add_(0.0244).clamp_(0.049, 0.1)
    sigma = log_g.mul_(-0.0125).sub_(0.0059).clamp_(0.008, 0.045)
    return mu, sigma


def program_with(
    g_target: Tensor, params: PCMParams, gen: torch.Generator, nu_stats=nu_mean_std
) -> State:
    """Programming noise and drift exponents (shared with ``pcm_custom_drift``):
    ``g = max(0, g_target + prog_noise_scale * sigma_prog(g_target) * xi)``,
    ``nu = |mu(g_target) + sigma(g_target) * xi'| * drift_scale``."""
    xi = normal_(torch.empty_like(g_target), gen)
    g = prog_noise_std(g_target, params).mul_(params.prog_noise_scale).mul_(xi)
    g.add_(g_target).clamp_min_(0)
    mu, sigma = nu_stats(g_target, params)
    nu = normal_(xi, gen).mul_(sigma).add_(mu).abs_().mul_(params.drift_scale)
    return {"g": g, "nu": nu}


def read_noise_q(g_prog: Tensor, params: DeviceParams) -> Tensor:
    """``Q_s = min(0.0088 / max((|g|/g_max)^0.65, 1e-3), 0.2)``."""
    # 0.0088 / q is computed by torch as q.reciprocal() * 0.0088
    q = g_prog.abs().div_(params.g_max).pow_(0.65).clamp_min_(1e-3)
    return q.reciprocal_().mul_(0.0088).clamp_max_(0.2)


def drift(state: State, t_inference: float, params: PCMParams, gen: torch.Generator) -> Tensor:
    """``g(t) = max(0, g_drift + |g_drift| * read_noise_scale * sigma_read * xi)``."""
    g_prog, nu = state["g"].float(), state["nu"].float()
    t = t_inference + params.t0
    late = t > params.t0
    g_drift = torch.pow(t / params.t0, nu.neg()).mul_(g_prog) if late else g_prog.clone()
    sigma_read = read_noise_q(g_prog, params).mul_(
        math.sqrt(math.log((t + params.t_read) / (2 * params.t_read)))
    )
    xi = normal_(torch.empty_like(g_drift), gen)
    noise = g_drift.abs().mul_(sigma_read.mul_(params.read_noise_scale)).mul_(xi)
    return noise.add_(g_drift).clamp_min_(0)


MODEL = register(DeviceModel("pcm", PCMParams, program_with, drift))
