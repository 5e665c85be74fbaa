"""Stochastic pulse trains and coincidence counting, vectorised over the tile and the batch.

For a batch of inputs ``x`` (``(B, in)``) and errors ``delta`` (``(B, out)``) the wanted update is
``Delta W = -lr delta^T x`` (the SGD step of a layer ``y = W x``). In hardware (Gokmen & Vlasov,
Front. Neurosci. 10, 333 (2016)) each row ``j`` of the crossbar receives a train of ``BL``
slots, firing in each with probability ``p_x = A |x_j|``, and each column ``i`` one with
``p_d = B |delta_i|``; where an x-pulse and a delta-pulse meet in a slot, device ``ij`` gets one
pulse in the direction ``-sign(x_j delta_i)``. With ``A B = lr / (dw_min BL)`` the expected
number of pulses is ``lr |x_j delta_i| / dw_min``, i.e. ``E[Delta w] = -lr x_j delta_i`` for an
ideal device.

Here the loop runs over the ``BL`` slots only. In each slot the Bernoulli draws of the whole
batch are made at once and the coincidences of all samples are counted with two matrix products
(all coincidences, and same-sign minus opposite-sign ones). **Approximation** (the only one of
the stochastic mode): the pulses a device receives in one slot from different batch samples are
applied together at its current state (``n`` steps, cycle-to-cycle noise with std scaled by
``sqrt(n)``); AIHWKIT applies them one sample after another. With the small per-slot
coincidence rates of update management this rarely matters (a device gets more than one pulse
per slot with probability ``O((B p_x p_d)^2)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..random import uniform_
from .config import UpdateConfig


def pulse_probabilities(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Firing probabilities ``p_x`` (``(B, in)``), ``p_d`` (``(B, out)``) and train lengths
    ``BL`` (``(B, 1)``, float) per batch sample, with update and BL management exactly as
    AIHWKIT 1.2.0 (``PulsedUpdateMetaParameter::performUpdateManagement``). ``dw_min`` is the
    device's weight granularity (:attr:`PulsedDeviceModel.granularity`). A sample with ``x = 0``
    or ``delta = 0`` gets ``BL = 0``.

    With ``k = lr x_max d_max / dw_min``: BL management sets ``BL = min(ceil(k), desired_bl)``
    (else ``BL = desired_bl``); ``A = B = sqrt(lr / (dw_min BL))``. Update management (always
    on with BL management, as in AIHWKIT) balances them, ``p_x = B sqrt(d'/x_max) |x|``, ``p_d =
    A sqrt(x_max/d') |delta|`` with ``d' = d_max`` — or, when the update saturates (``k >
    desired_bl``), ``d' = d_max desired_bl / k``: the x-probabilities then top out at 1 and the
    delta-probabilities are ``k / desired_bl`` times larger (clipped at 1).
    """
    x_max = x.abs().amax(dim=1, keepdim=True)
    d_max = d.abs().amax(dim=1, keepdim=True)
    live = (x_max > 0) & (d_max > 0)
    k_val = lr * x_max * d_max / dw_min
    desired = float(cfg.desired_bl)
    if cfg.update_bl_management:
        bl = torch.ceil(k_val).clamp(1, desired)
    else:
        bl = torch.full_like(x_max, desired)
    bl = torch.where(live, bl, torch.zeros_like(bl))
    base = (lr / (dw_min * bl.clamp_min(1))).sqrt()
    if cfg.update_management or cfg.update_bl_management:
        x_val = x_max.clamp_min(1e-30)
        d_val = d_max * torch.where(k_val > desired, desired / k_val.clamp_min(1e-30), 1.0)
        d_val = d_val.clamp_min(1e-30)
        b = base * (d_val / x_val).sqrt()  # scales x
        a = base * (x_val / d_val).sqrt()  # scales delta
    else:
        a = b = base
    p_x = (b * x.abs()).clamp(max=1.0)
    p_d = (a * d.abs()).clamp(max=1.0)
    return p_x, p_d, bl


def _up_down(fd: Tensor, sd: Tensor, fx: Tensor, sx: Tensor) -> tuple[Tensor, Tensor]:
    """Up and down coincidences from firing weights ``fd`` ``(B, out)``, ``fx`` ``(B, in)`` and
    signs ``sd``, ``sx``: with ``T = fd^T fx`` (all) and ``S = (fd sd)^T (fx sx)`` (same sign
    minus opposite sign), ``down = (T + S) / 2`` and ``up = (T - S) / 2`` (``Delta w = -lr delta
    x``: same signs move down). Two matrix products; exact for integer counts below 2**24.
    """
    total = fd.t() @ fx
    signed = (fd * sd).t() @ (fx * sx)
    return (total - signed) * 0.5, (total + signed) * 0.5


def expected_counts(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig
) -> tuple[Tensor, Tensor]:
    """Expected up and down pulse counts per device, ``sum_b BL_b p_x p_d`` by direction
    (``(out, in)`` each, fractional). Without probability clipping ``up - down`` equals
    ``-lr delta^T x / dw_min``."""
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    return _up_down(p_d * bl, d.sign(), p_x, x.sign())


def slot_counts(
    x: Tensor,
    d: Tensor,
    lr: float,
    dw_min: float,
    cfg: UpdateConfig,
    gen: torch.Generator,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Up and down coincidence counts ``(out, in)`` of each slot of the pulse trains.

    Yields one pair per slot that has at least one coincidence (empty slots are skipped, their
    random draws still made so the stream does not depend on the outcome).
    """
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    n_slots = int(bl.max().item()) if bl.numel() else 0
    sx, sd = x.sign(), d.sign()
    for t in range(n_slots):
        fire_x = (uniform_(torch.empty_like(p_x), gen) < p_x).float()
        fire_d = (uniform_(torch.empty_like(p_d), gen) < p_d).float() * (bl > t)
        up, down = _up_down(fire_d, sd, fire_x, sx)
        if bool(up.any()) or bool(down.any()):
            yield up, down


def max_train_length(x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig) -> int:
    """The number of slots :func:`slot_counts` will run for this batch."""
    _, _, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    return int(bl.max().item()) if bl.numel() else 0


def check_batch(x: Tensor, d: Tensor, shape: tuple[int, int], name: str = "layer") -> None:
    """Clear errors for inputs and errors that do not fit a ``(out, in)`` array."""
    out, inp = shape
    if x.ndim != 2 or x.shape[1] != inp:
        raise ValueError(f"{name}: x has shape {tuple(x.shape)}; allowed: (batch, {inp})")
    if d.ndim != 2 or d.shape[1] != out or d.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: delta has shape {tuple(d.shape)}; allowed: ({x.shape[0]}, {out})"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(d).all()):
        raise ValueError(f"{name}: x or delta has non-finite values; allowed: finite values")


def check_lr(lr: object, name: str = "lr") -> float:
    """A learning rate: a finite number >= 0."""
    ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
    if not ok or lr < 0:
        raise ValueError(f"{name}: got {lr!r}; allowed: a finite number >= 0")
    return float(lr)
