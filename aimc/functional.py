"""Pure tensor math of an analog tile: quantizers, DAC/ADC, noise and bound management, tiled MVM.

Nothing here holds state. Every random draw takes an explicit ``torch.Generator``.

Conventions of the tiled MVM (see REFERENCE.md §1):

* a (grouped) weight ``W`` of shape ``(G, O, K)`` maps inputs of size ``K`` to outputs of size
  ``O``; ``G`` independent groups (grouped convolution) are simulated side by side;
* the ``K`` inputs are split into ``ti`` near-equal parts as AIHWKIT does (``base + (i <
  extra)`` rows with ``base, extra = divmod(K, ti)``: 13 at 4 -> 4 + 3 + 3 + 3), each laid out on
  a tile of ``ci`` = the largest part's rows; likewise the ``O`` outputs into ``to`` tiles of
  ``ro`` columns. A shorter part is followed by zero padding *within its own tile* (zero
  rows/columns change neither the MVM nor any of its noise terms, and padded outputs are
  discarded), so the tiles stay a plain reshape. An even split (``K % ti == 0``) has no padding
  at all; an uneven one maps between the logical and the padded index with a cached index map
  (:meth:`TileLayout.pad_in` and friends);
* a physical tile is one (group, input split, output split) triple. The MVM runs as one batched
  matmul over ``B = G * ti`` input splits against all output columns at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import MappingConfig
from .random import noise_uniform_


def split_sizes(n: int, max_size: int) -> list[int]:
    """The part sizes of ``n`` rows split over tiles of at most ``max_size`` (0 = no split).

    AIHWKIT 1.2.0 ``TileModuleArray.get_split_sizes``: ``parts = ceil(n / max_size)`` parts of
    ``base + (i < extra)`` rows, ``base, extra = divmod(n, parts)`` (13 at 4 -> 4 + 3 + 3 + 3,
    1030 at 512 -> 344 + 343 + 343, 768 at 512 -> 384 + 384).
    """
    if n <= 0:
        raise ValueError(f"split_sizes: n must be > 0, got {n}")
    parts = 1 if max_size <= 0 or n <= max_size else -(-n // max_size)
    return _part_sizes(n, parts)


def _part_sizes(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` parts of ``base + (i < extra)``, ``base, extra = divmod(n,
    parts)``: the longer parts first."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def split_size(n: int, max_size: int) -> tuple[int, int]:
    """Split ``n`` rows into near-equal tiles of at most ``max_size`` (0 = no split).

    Returns ``(number_of_tiles, rows_per_tile)``, the rows of a tile being the largest part of
    :func:`split_sizes` (768 -> 2 x 384, 3072 -> 6 x 512, 1025 -> 3 x 342 holding 342 + 342 +
    341 rows, 13 at 4 -> 4 x 4 holding 4 + 3 + 3 + 3).
    """
    sizes = split_sizes(n, max_size)
    return len(sizes), sizes[0]


@functools.lru_cache(maxsize=256)
def _positions(n: int, parts: int, size: int, device: torch.device) -> Tensor:
    """Padded position (``tile * size + row``) of each of the ``n`` logical indices split as
    :func:`split_sizes` into ``parts`` tiles of ``size`` slots."""
    base, extra = n // parts, n % parts  # (not divmod: dynamo cannot trace it)
    with torch.inference_mode(False):  # a normal tensor: usable in and outside inference mode
        i = torch.arange(n, dtype=torch.int64)
        # the first ``extra`` parts hold base + 1 rows, the others base
        big = extra * (base + 1)
        tile = torch.where(i < big, i // (base + 1), extra + (i - big) // base)
        row = torch.where(i < big, i % (base + 1), (i - big) % base)
        return (tile * size + row).to(device)


@functools.lru_cache(maxsize=256)
def _columns(n: int, parts: int, size: int, device: torch.device) -> Tensor:
    """``(parts * size,)`` int64: the logical index at each padded slot, -1 for padding (the
    inverse of :func:`_positions`)."""
    with torch.inference_mode(False):  # a normal tensor: usable in and outside inference mode
        out = torch.full((parts * size,), -1, dtype=torch.int64, device=device)
        return out.index_copy_(
            0, _positions(n, parts, size, device), torch.arange(n, device=device)
        )


def _valid(n: int, parts: int, size: int, device: torch.device) -> Tensor:
    mask = torch.zeros(parts * size, dtype=torch.bool, device=device)
    return mask.index_fill_(0, _positions(n, parts, size, device), True)


def _pad(x: Tensor, dim: int, n: int, parts: int, size: int) -> Tensor:
    if parts * size == n:
        return x
    dim = dim % x.dim()
    shape = list(x.shape)
    shape[dim] = parts * size
    return x.new_zeros(shape).index_copy_(dim, _positions(n, parts, size, x.device), x)


def _unpad(x: Tensor, dim: int, n: int, parts: int, size: int) -> Tensor:
    if parts * size == n:
        return x
    return x.index_select(dim, _positions(n, parts, size, x.device))


@dataclass(frozen=True)
class TileLayout:
    """Shape bookkeeping of a tiled weight ``(G, O, K)``."""

    groups: int
    out_size: int
    in_size: int
    n_in: int  #: ``ti``, tiles along the inputs
    rows: int  #: ``ci``, input rows per tile
    n_out: int  #: ``to``, tiles along the outputs
    cols: int  #: ``ro``, output columns per tile

    @classmethod
    def build(cls, groups: int, out_size: int, in_size: int, mapping: MappingConfig) -> TileLayout:
        n_in, rows = split_size(in_size, mapping.max_input_size)
        n_out, cols = split_size(out_size, mapping.max_output_size)
        return cls(groups, out_size, in_size, n_in, rows, n_out, cols)

    @property
    def batch(self) -> int:
        """Number of input splits over all groups, ``G * ti``."""
        return self.groups * self.n_in

    @property
    def has_padding(self) -> bool:
        """Whether a split is uneven: the tile matrices then hold padding cells, which must
        stay zero (a crossbar of AIHWKIT's has no such cells)."""
        return self.n_in * self.rows != self.in_size or self.n_out * self.cols != self.out_size

    @property
    def padded_in(self) -> int:
        return self.n_in * self.rows

    @property
    def padded_out(self) -> int:
        return self.n_out * self.cols

    @property
    def in_sizes(self) -> list[int]:
        """The rows of each input part (AIHWKIT's ``in_sizes``)."""
        return _part_sizes(self.in_size, self.n_in)

    @property
    def out_sizes(self) -> list[int]:
        """The columns of each output part (AIHWKIT's ``out_sizes``)."""
        return _part_sizes(self.out_size, self.n_out)

    def in_positions(self, device: torch.device) -> Tensor:
        """``(K,)`` padded input position of each input (cached per layout and device)."""
        return _positions(self.in_size, self.n_in, self.rows, torch.device(device))

    def out_positions(self, device: torch.device) -> Tensor:
        """``(O,)`` padded output position of each output (cached per layout and device)."""
        return _positions(self.out_size, self.n_out, self.cols, torch.device(device))

    def out_columns(self, device: torch.device) -> Tensor:
        """``(O_pad,)`` int64: the output column at each padded output position, -1 for
        padding (cached per layout and device; the inverse of :meth:`out_positions`)."""
        return _columns(self.out_size, self.n_out, self.cols, torch.device(device))

    def in_valid(self, device: torch.device) -> Tensor:
        """``(K_pad,)`` bool: the padded input positions that hold a real input."""
        return _valid(self.in_size, self.n_in, self.rows, torch.device(device))

    def out_valid(self, device: torch.device) -> Tensor:
        """``(O_pad,)`` bool: the padded output positions that hold a real output."""
        return _valid(self.out_size, self.n_out, self.cols, torch.device(device))

    def pad_in(self, x: Tensor, dim: int = -1) -> Tensor:
        """``K`` -> ``K_pad`` along ``dim``: each input part into its tile, zeros after it.
        Returns ``x`` itself when the split is even (no padding)."""
        return _pad(x, dim, self.in_size, self.n_in, self.rows)

    def pad_out(self, x: Tensor, dim: int = -1) -> Tensor:
        """``O`` -> ``O_pad`` along ``dim`` (as :meth:`pad_in`)."""
        return _pad(x, dim, self.out_size, self.n_out, self.cols)

    def unpad_in(self, x: Tensor, dim: int = -1) -> Tensor:
        """``K_pad`` -> ``K`` along ``dim``, dropping the padding (``x`` itself if even)."""
        return _unpad(x, dim, self.in_size, self.n_in, self.rows)

    def unpad_out(self, x: Tensor, dim: int = -1) -> Tensor:
        """``O_pad`` -> ``O`` along ``dim``, dropping the padding (``x`` itself if even)."""
        return _unpad(x, dim, self.out_size, self.n_out, self.cols)

    def tile_columns(self, values: Tensor) -> Tensor:
        """``(..., to)`` one value per output tile -> ``(..., O)``: each output column gets its
        tile's value (differentiable)."""
        if self.n_out == 1:
            return values.expand(*values.shape[:-1], self.out_size)
        tile = self.out_positions(values.device) // self.cols
        return values.index_select(values.dim() - 1, tile)

    def per_weight(self, values: Tensor) -> Tensor:
        """``(G, ti, O)`` one value per (input tile, output column) -> ``(G, O, K)``: each weight
        gets the value of the input tile that holds it (differentiable)."""
        if self.n_in == 1:
            return values.transpose(1, 2).expand(self.groups, self.out_size, self.in_size)
        tile = self.in_positions(values.device) // self.rows
        return values.index_select(1, tile).transpose(1, 2)


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: float, bound: float) -> Tensor:  # type: ignore[override]
        y = x if step <= 0 else torch.round(x / step) * step
        return y.clamp(-bound, bound) if bound > 0 else y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return grad, None, None


def quantize(x: Tensor, step: float, bound: float = 0.0) -> Tensor:
    """``clip(round(x / step) * step, -bound, bound)`` with a straight-through gradient.

    ``step <= 0`` skips rounding, ``bound <= 0`` skips clipping. Rounding is half-to-even
    (``torch.round``). NaN stays NaN; ``+-inf`` clips to ``+-bound``.
    """
    return _QuantizeSTE.apply(x, float(step), float(bound))


def stochastic_round(x: Tensor, generator: torch.Generator) -> Tensor:
    """``floor(x + u)``, ``u ~ U[0, 1)``: unbiased rounding to integers."""
    u = torch.empty_like(x)
    noise_uniform_(u, generator)
    return torch.floor(u.add_(x))


# --------------------------------------------------------------------------------------------
# Tile weights


def tile_weights(
    weight: Tensor, layout: TileLayout, mapping: MappingConfig
) -> tuple[Tensor, Tensor | None]:
    """Lay a ``(G, O, K)`` weight out as ``(B, O_pad, ci)`` tile matrices, float32.

    Returns ``(w_tiles, w_scale)``: with weight scaling (``weight_scaling_omega > 0``) the tile
    matrices are normalised so that ``max|W| = omega`` per tile (or per tile column) and
    ``w_scale`` holds the digital factor that undoes it, of shape ``(B, to)`` (per tile) or
    ``(B, O_pad)`` (columnwise); else ``w_scale`` is ``None``.
    """
    g, o, k = weight.shape
    lo = layout
    w = weight.detach().float()
    w = lo.pad_out(lo.pad_in(w, 2), 1)  # no-op for an even split
    wr = w.reshape(g, lo.padded_out, lo.n_in, lo.rows)  # (G, O_pad, ti, ci)
    wv = wr.transpose(1, 2)  # (G, ti, O_pad, ci), a view; the tiles are (B, O_pad, ci)
    omega = mapping.weight_scaling_omega
    if omega <= 0:
        return wv.reshape(lo.batch, lo.padded_out, lo.rows).contiguous(), None
    # max |W| per tile column as max(amax, -amin) over the rows of the weight as stored: no
    # |W| temporary, the same value (NaN included); two vectorised reductions (aminmax over
    # the same view is not vectorised on CPU: 10x slower)
    w_max = torch.maximum(wr.amax(dim=3), wr.amin(dim=3).neg_())  # (G, O_pad, ti)
    # (B, O_pad), contiguous (a strided scale reaching a torch.cond branch of a compiled
    # forward fails inductor's stride assertion)
    w_max = w_max.transpose(1, 2).reshape(lo.batch, lo.padded_out).contiguous()
    if not mapping.weight_scaling_columnwise:
        w_max = w_max.view(lo.batch, lo.n_out, lo.cols).amax(dim=-1)  # (B, to)
    # all-zero columns or tiles keep the scale 1; a NaN weight's NaN stays (where(w_max > 0)
    # would turn it into 1, and the forward's finiteness check of the scales would miss it)
    scale = torch.where(w_max == 0, torch.ones_like(w_max), w_max / omega)
    per_col = scale if scale.shape[1] == lo.padded_out else scale.repeat_interleave(lo.cols, 1)
    per_col = per_col.view(g, lo.n_in, lo.padded_out, 1)
    if torch.compiler.is_compiling():  # inductor fuses the copy into the division itself
        return (wv / per_col).reshape(lo.batch, lo.padded_out, lo.rows), scale
    # divided straight from the strided view into the contiguous tiles (one pass, no copy)
    tiles = torch.empty(lo.batch, lo.padded_out, lo.rows, dtype=torch.float32, device=w.device)
    view = tiles.view(g, lo.n_in, lo.padded_out, lo.rows)
    torch.div(wv, per_col, out=view)
    return tiles, scale
