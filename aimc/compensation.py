"""Drift compensation (REFERENCE.md §3): identity readout through the noisy IO path.

The readout of a tile is the mean absolute output of its forward pass (the same periphery as
inference, noise included) on one-hot inputs. Right after programming it gives the baseline
``m_0``; at drift time ``t`` it gives ``m_t``, and ``alpha = m_0 / m_t`` multiplies the tile's
output in eval mode (one factor per tile, or per tile column). The ``exact_reference`` variant
takes the baseline from the exact MVM of the target weights (:func:`exact_readout`), as
AIHWKIT's ``GlobalDriftCompensationWithExactReference``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import IOConfig, WeightNoiseType
from .functional import TileLayout
from .mvm import TileWeights, analog_mvm, units


def valid_rows_cols(layout: TileLayout, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(B, ci)`` real input rows of every input split and ``(O_pad,)`` real output columns
    (the rest is the padding of an uneven split)."""
    lo = layout
    return lo.in_valid(device).view(lo.n_in, lo.rows).repeat(lo.groups, 1), lo.out_valid(device)


def valid_mask(layout: TileLayout, device: torch.device) -> Tensor:
    """``(B, ci, O_pad)`` mask of the tile cells that hold real weights (not padding)."""
    row_ok, col_ok = valid_rows_cols(layout, device)
    return row_ok.unsqueeze(2) & col_ok.view(1, 1, -1)


def readout(
    w: Tensor, layout: TileLayout, io: IOConfig, gen: torch.Generator, per_column: bool
) -> Tensor:
    """Mean |output| of every tile on the identity: ``(B, to)`` or ``(B, O_pad)`` if per column.

    ``w`` is ``(B, O_pad, ci)`` tile weights in normalised units. Clamped below at 1e-4.
    """
    lo = layout
    nb = lo.batch
    per_tile = TileLayout(nb, lo.padded_out, lo.rows, 1, lo.rows, lo.n_out, lo.cols)
    in_unit, out_unit = units(io)
    need_abs = io.w_noise_type == WeightNoiseType.PCM_READ and io.w_noise > 0
    tw = TileWeights(per_tile, w * (in_unit / out_unit), None, w.abs() if need_abs else None)
    eye = torch.eye(lo.rows, device=w.device, dtype=torch.float32)
    y = analog_mvm(eye.expand(nb, lo.rows, lo.rows).contiguous(), tw, io, gen)  # (B, ci, O)
    return _mean_abs(y, lo, per_column)


def readout_tiles(
    w: Tensor, mask: Tensor, io: IOConfig, gen: torch.Generator, per_column: bool
) -> Tensor:
    """:func:`readout` of ``(k, ro, ci)`` tile matrices given their ``(k, ro, ci)`` mask of real
    cells: ``(k,)`` per tile or ``(k, ro)`` per column (a chunk of a large layer's tiles)."""
    k, cols, rows = w.shape
    one = TileLayout(k, cols, rows, 1, rows, 1, cols)
    in_unit, out_unit = units(io)
    need_abs = io.w_noise_type == WeightNoiseType.PCM_READ and io.w_noise > 0
    tw = TileWeights(one, w * (in_unit / out_unit), None, w.abs() if need_abs else None)
    eye = torch.eye(rows, device=w.device, dtype=torch.float32)
    y = analog_mvm(eye.expand(k, rows, rows).contiguous(), tw, io, gen)  # (k, ci, ro)
    m = mask.transpose(1, 2).to(y.dtype)
    y = y.abs_().mul_(m)
    if per_column:
        out = y.sum(dim=1) / m.sum(dim=1).clamp_min(1)
    else:
        out = y.sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)
    return out.clamp_min(1e-4)


def exact_readout(w: Tensor, layout: TileLayout, per_column: bool) -> Tensor:
    """The noise-free readout: mean ``|W|`` of every tile (the exact MVM on the identity), shaped
    as :func:`readout`. AIHWKIT's ``GlobalDriftCompensationWithExactReference`` baseline."""
    return _mean_abs(w.transpose(1, 2), layout, per_column)


def _mean_abs(y: Tensor, lo: TileLayout, per_column: bool) -> Tensor:
    """Mean ``|y|`` over the real (not padded) cells of ``(B, ci, O_pad)`` identity outputs, per
    tile ``(B, to)`` or per column ``(B, O_pad)``; clamped below at 1e-4."""
    mask = valid_mask(lo, y.device).to(y.dtype)
    y = y.abs() * mask
    if per_column:
        m = y.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    else:
        m = y.reshape(lo.batch, lo.rows, lo.n_out, lo.cols).sum(dim=(1, 3))
        m = m / mask.view(lo.batch, lo.rows, lo.n_out, lo.cols).sum(dim=(1, 3)).clamp_min(1)
    return m.clamp_min(1e-4)
