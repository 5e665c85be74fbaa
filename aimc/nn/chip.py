"""The programmed chip of an analog layer: conductances, drift state and compensation as buffers.

State is the chip. :meth:`ChipMixin.program_chip` programs the current weights and keeps, as
buffers (so ``state_dict`` carries them), the per-tile conductance and weight scales, the
drift-compensation baseline and the programming seed, and — with ``storage="full"`` (the
default) — the programmed conductances of both devices of every pair and the device model's
per-device state (float16). With ``storage="lean"`` the per-device state is not kept: it is a
deterministic function of the weights and the programming seed and is regenerated, tile chunk
by tile chunk, whenever the chip is read (LLM scale: the chip then costs a few numbers per tile
instead of 8 bytes per weight). :meth:`ChipMixin.drift_chip` records the inference time and the
read seed and computes the compensation factors; the drifted conductances (with their fresh
read noise) are computed from the buffers deterministically, so a checkpoint reloaded into a
freshly converted model reproduces the drifted model's outputs bit for bit — and a lean chip
gives bit for bit the outputs of a full one programmed with the same seed.

Large layers are processed in chunks of whole tiles (:data:`CHUNK_WEIGHTS` weights), so the
working memory of programming and drift is bounded whatever the layer size. A layer that fits
in one chunk draws its random numbers exactly as aimc 0.2 did; a larger one draws each chunk
from its own generator, seeded from the layer's seed and the chunk index.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import devices
from .._malloc import trim_if_grown
from ..compensation import exact_readout, readout, readout_tiles, valid_rows_cols
from ..config import DriftCompensation, WeightNoiseType
from ..functional import TileLayout, tile_weights
from ..mvm import TileWeights, combine_scales, units
from ..random import check_seed, derive_seed
from .checks import check_finite_weights, check_materialized, layer_label

PREFIX = "chip_"
#: Per-device state is stored in half precision (conductances relative to g_max, drift
#: exponents): the rounding (relative 5e-4) is far below programming and read noise, and it
#: keeps a full chip at 2x the float32 weight memory. A lean chip applies the same rounding when
#: it regenerates the state, so both give the same numbers.
STATE_DTYPE = torch.float16
#: Weights per chunk of tiles when programming, drifting or regenerating a chip (whole tiles;
#: a layer of at most this many weights is one chunk).
CHUNK_WEIGHTS = 1 << 22
#: How the programmed state is kept (see :meth:`ChipMixin.program_chip`).
STORAGES = ("full", "lean")


def check_time(t: Any) -> float:
    """Validate an inference time in seconds since programming."""
    allowed = "a finite number >= 0 (seconds)"
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError(f"t_seconds: got {t!r}; allowed: {allowed}")
    try:
        value = float(t)
    except OverflowError:
        raise ValueError(f"t_seconds: got {t!r}; allowed: {allowed}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"t_seconds: got {t!r}; allowed: {allowed}")
    return value


def check_storage(storage: Any, field: str = "storage") -> str:
    """Validate a chip storage mode (``"full"`` or ``"lean"``); ``field`` names the option."""
    if storage not in STORAGES:
        raise ValueError(f"{field}: got {storage!r}; allowed: one of 'full', 'lean'")
    return storage


def _chunks(layout: TileLayout) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of whole tiles (tile ``j = b * to + t``) of about
    :data:`CHUNK_WEIGHTS` weights each."""
    n = layout.batch * layout.n_out
    per = max(1, CHUNK_WEIGHTS // (layout.rows * layout.cols))
    return [(a, min(a + per, n)) for a in range(0, n, per)]


def _tiles(w: Tensor, layout: TileLayout) -> Tensor:
    """``(B, O_pad, ci)`` tile weights viewed as ``(B * to, ro, ci)``, one matrix per tile."""
    return w.view(layout.batch * layout.n_out, layout.cols, layout.rows)


def _tile_mask(layout: TileLayout, a: int, b: int, device: torch.device) -> Tensor:
    """``(b - a, ro, ci)`` bool: the cells of tiles ``a..b-1`` that hold real weights."""
    j = torch.arange(a, b, device=device)
    row_ok, col_ok = valid_rows_cols(layout, device)
    rows, cols = row_ok[j // layout.n_out], col_ok.view(layout.n_out, layout.cols)[j % layout.n_out]
    return cols.unsqueeze(2) & rows.unsqueeze(1)


class ChipMixin:
    """Programming, drift and the eval-mode tiles of an analog layer with a device model."""

    _chip_cache: tuple[tuple[Any, ...], TileWeights] | None = None
    _chip_config: tuple[Any, ...] | None = None
    _alpha: Tensor | None = None
    _lean_key: tuple[Any, ...] | None = None

    # -- helpers -----------------------------------------------------------------------------
    def has_device(self) -> bool:
        """Whether the layer's config has a device model (``device.model != 'none'``)."""
        return self.analog_config.device.model != "none"

    def is_programmed(self) -> bool:
        """Whether :meth:`program_chip` has run (or a programmed state was loaded)."""
        return hasattr(self, PREFIX + "conductance_scale")

    def chip_storage(self) -> str | None:
        """``"full"`` or ``"lean"`` (see :meth:`program_chip`); ``None`` if not programmed."""
        if not self.is_programmed():
            return None
        return "lean" if hasattr(self, PREFIX + "program_seed") else "full"

    def _chip(self, name: str) -> Tensor:
        return getattr(self, PREFIX + name)

    def _has_chip(self, name: str) -> bool:
        return self._buffers.get(PREFIX + name) is not None

    def _set_chip(self, name: str, value: Tensor) -> None:
        key = PREFIX + name
        if key in self._buffers:
            self._buffers[key] = value
        else:
            self.register_buffer(key, value)

    def _drop_chip(self) -> None:
        for key in [k for k in self._buffers if k.startswith(PREFIX)]:
            del self._buffers[key]
        self._chip_cache = None
        self._alpha = None
        self._lean_key = None

    def _digital_layout(self) -> tuple[Tensor, TileLayout, Tensor | None]:
        w = self._analog_weight()
        layout = self.tile_layout()
        w_t, scale = tile_weights(w, layout, self.analog_config.mapping)
        return w_t, layout, scale

    def _weight_key(self) -> tuple[Any, ...]:
        params = [self.weight] + ([self.bias] if self.bias is not None else [])
        return tuple(
            (p.data_ptr(), 0 if p.is_inference() else p._version, p.device, p.dtype) for p in params
        )

    # -- programming ---------------------------------------------------------------------------
    @torch.inference_mode(False)  # chip buffers must be normal tensors even if called in
    @torch.no_grad()  # inference mode (they are versioned and may be loaded into later)
    def program_chip(
        self, seed: int, storage: str = "full", drift: tuple[float, int] | None = None
    ) -> None:
        """Program the current weights: programming noise and per-device state, drawn from
        ``seed``; also the drift-compensation baseline. Fixed until the next programming.

        ``storage="full"`` keeps the programmed state of every device (float16, 8 bytes per
        weight for PCM); the chip then no longer depends on the weights. ``storage="lean"``
        keeps only the seed and per-tile scales and regenerates the state from the weights
        whenever the chip is read (same numbers, no per-weight memory, more compute per read);
        the weights must then stay as they were at programming (a change is an error).

        ``drift=(t_seconds, seed)`` also drifts the chip, as :meth:`drift_chip` right after
        would (the same numbers), in the same pass over the tiles: a lean chip is then
        generated once instead of twice.
        """
        check_seed(seed)
        check_storage(storage)
        if drift is not None:
            t_drift, drift_seed = check_time(drift[0]), check_seed(drift[1])
        if not self.has_device():
            raise RuntimeError("program: this layer has no device model (device.model='none')")
        check_materialized(self, "program")
        check_finite_weights(self, "program")
        comp = self.analog_config.device.drift_compensation
        per_column = comp == DriftCompensation.PER_COLUMN
        need_baseline = comp not in (DriftCompensation.NONE, DriftCompensation.EXACT_REFERENCE)
        w_t, layout, w_scale = self._digital_layout()
        device = w_t.device
        self._drop_chip()
        full: dict[str, Tensor] | None = {} if storage == "full" else None
        program_tiles, g_scale, baseline = self._programmer(seed, w_t, layout, need_baseline, full)
        self._set_chip("conductance_scale", g_scale.view(layout.batch, layout.n_out))
        if w_scale is not None:
            self._set_chip("weight_scale", w_scale.float())
        self._set_chip("drift_time", torch.tensor(-1.0, dtype=torch.float64, device=device))
        self._set_chip("drift_seed", torch.tensor(0, dtype=torch.int64, device=device))
        if storage == "lean":
            self._set_chip("program_seed", torch.tensor(seed, dtype=torch.int64, device=device))
            self._lean_key = self._weight_key()
        if comp == DriftCompensation.EXACT_REFERENCE:
            # AIHWKIT GlobalDriftCompensationWithExactReference: an exact (noise-free MVM)
            # readout of the target weights, not the noisy forward of them
            self._set_chip("baseline", exact_readout(w_t, layout, per_column=False))
        elif need_baseline:
            shape = (layout.batch, layout.padded_out if per_column else layout.n_out)
            self._set_chip("baseline", baseline.view(shape))
        if drift is None:
            chunks = _chunks(layout)
            for i, (a, b) in enumerate(chunks):
                program_tiles(a, b, i, len(chunks))
        else:
            self._chip("drift_time").fill_(t_drift)
            self._chip("drift_seed").fill_(drift_seed)
            tw = self._compute_chip_tiles(read_out=True, source=program_tiles)
        for name, value in (full or {}).items():
            self._set_chip(name, value)
        if drift is not None:
            self._finish_drift(tw)

    def _programmer(
        self,
        seed: int,
        w_t: Tensor,
        layout: TileLayout,
        need_baseline: bool,
        full: dict[str, Tensor] | None,
    ):
        """``(program_tiles, g_scale, baseline)``: ``program_tiles(a, b, i, n_chunks)`` programs
        tiles ``a..b-1`` of the ``(B, O_pad, ci)`` target tiles ``w_t`` (chunk ``i``) from
        ``seed``, writes their conductance scales into ``g_scale (n,)``, their compensation
        readout into ``baseline`` (``(n,)`` or ``(n, ro)``; if ``need_baseline``) and, given a
        dict ``full``, their float16 state (a full chip's buffers, created on first use); it
        returns the state as the chip reads it (through float16) and the scales ``(k, 1)``."""
        cfg = self.analog_config
        params = cfg.device.params
        model = devices.get(cfg.device.model)
        device = w_t.device
        n = layout.batch * layout.n_out
        per_column = cfg.device.drift_compensation == DriftCompensation.PER_COLUMN
        g_scale = torch.empty(n, dtype=torch.float32, device=device)
        baseline = torch.empty(
            (n, layout.cols) if per_column else (n,), dtype=torch.float32, device=device
        )
        tiles = _tiles(w_t, layout)

        def program_tiles(a: int, b: int, i: int, n_chunks: int):
            gen = self._chunk_generator(seed, i, n_chunks, device)
            state_pos, state_neg, scale = self._program_tiles(tiles[a:b], gen)
            g_scale[a:b] = scale.view(-1)
            read = []  # the state as the chip is read: through its float16 storage
            for sign, state in (("pos", state_pos), ("neg", state_neg)):
                stored = {key: _stored(key, value, params.g_max) for key, value in state.items()}
                state.clear()
                if full is not None:
                    for key, value in stored.items():
                        name = f"{key}_{sign}"
                        if name not in full:
                            full[name] = torch.empty(w_t.shape, dtype=STATE_DTYPE, device=device)
                        _tiles(full[name], layout)[a:b] = value
                read.append(_rounded(stored, params.g_max))
            if need_baseline:
                reference = model.from_conductances(read[0]["g"], read[1]["g"], scale)
                if layout.has_padding:  # the padding holds no device (see _read_pass)
                    reference.mul_(_tile_mask(layout, a, b, device))
                baseline[a:b] = self._readout(reference, layout, a, b, n_chunks, gen)
            return read[0], read[1], scale

        return program_tiles, g_scale, baseline

    @staticmethod
    def _chunk_generator(seed: int, i: int, n_chunks: int, device: torch.device):
        """Chunk ``i``'s generator: the layer's own for a one-chunk layer (aimc 0.2's draws),
        else one seeded from ``(seed, i)``."""
        gen = torch.Generator(device=device)
        return gen.manual_seed(seed if n_chunks == 1 else derive_seed(seed, f"tiles{i}"))

    def _program_tiles(self, tiles: Tensor, gen: torch.Generator):
        """Program ``(k, ro, ci)`` target tiles: ``(state_pos, state_neg, scale (k, 1))``."""
        cfg = self.analog_config
        model = devices.get(cfg.device.model)
        params = cfg.device.params
        g_pos, g_neg, scale = model.to_conductances(tiles, 1, params.g_max)
        state_pos = model.program(g_pos, params, gen)
        del g_pos
        state_neg = model.program(g_neg, params, gen)
        return state_pos, state_neg, scale

    def _readout(self, w: Tensor, layout: TileLayout, a: int, b: int, n_chunks: int, gen):
        """The compensation readout of tiles ``a..b-1`` (``(k, ro, ci)`` weights), flat per
        tile ``(k,)`` or per column ``(k, ro)``."""
        cfg = self.analog_config
        per_column = cfg.device.drift_compensation == DriftCompensation.PER_COLUMN
        if n_chunks == 1:  # the whole layer at once, as aimc 0.2 (the same noise draws)
            m = readout(
                w.view(layout.batch, layout.padded_out, layout.rows),
                layout,
                cfg.io,
                gen,
                per_column,
            )
            return m.reshape(-1, layout.cols) if per_column else m.reshape(-1)
        mask = _tile_mask(layout, a, b, w.device)
        return readout_tiles(w, mask, cfg.io, gen, per_column)

    @torch.inference_mode(False)
    @torch.no_grad()
    def drift_chip(self, t_seconds: float, seed: int) -> None:
        """Conductances ``t_seconds`` after programming, with fresh read noise from ``seed``, and
        the compensation factors. Computed now (a full chip also caches the tiles)."""
        t = check_time(t_seconds)
        check_seed(seed)
        if not self.is_programmed():
            raise RuntimeError("drift: the layer is not programmed; call aimc.program first")
        self._chip("drift_time").fill_(t)
        self._chip("drift_seed").fill_(seed)
        if self._has_chip("alpha"):
            del self._buffers[PREFIX + "alpha"]
        self._chip_cache = None
        self._finish_drift(self.chip_tiles(read_out=True))

    def _finish_drift(self, tw: TileWeights) -> None:
        """Keep the compensation factors of the drifted tiles ``tw`` as a buffer (a lean chip's
        reads then need no readout), and cache ``tw`` if the chip is full."""
        if self._alpha is not None:
            self._set_chip("alpha", self._alpha)
        self._chip_cache = None if self.chip_storage() == "lean" else (self._chip_key(), tw)

    def _stored_tiles(self, a: int, b: int, i: int, n_chunks: int):
        """A full chip's programmed state of tiles ``a..b-1`` (float32, conductances in µS),
        read from its buffers, and their conductance scales ``(k, 1)``."""
        lo = self.tile_layout()
        g_max = self.analog_config.device.params.g_max
        out = []
        for sign in ("pos", "neg"):
            names = [
                k[len(PREFIX) : -len(sign) - 1]
                for k in self._buffers
                if k.startswith(PREFIX) and k.endswith("_" + sign)
            ]
            out.append(
                _rounded({n: _tiles(self._chip(f"{n}_{sign}"), lo)[a:b] for n in names}, g_max)
            )
        scale = self._chip("conductance_scale").reshape(-1, 1)[a:b].float()
        return out[0], out[1], scale

    # -- the tiles used in eval mode -------------------------------------------------------------
    def chip_tiles(self, read_out: bool = False) -> TileWeights:
        """Tiles of the programmed (and drifted) chip, with drift compensation folded into the
        digital scale. A full chip caches them (recomputed when the chip buffers change); a lean
        chip regenerates them at every call.

        In a compiled forward (``torch.compile``) the cached tiles are used as they are: every
        change of the chip (program, drift, loading, moving) drops the cache, and dynamo's guard
        on it then retraces. A missing cache is filled by an eager call
        (:func:`_cache_chip_tiles`, a graph break: with ``fullgraph=True`` fill it first, with
        :func:`aimc.prepare_compile` or one eager forward). A lean chip cannot be compiled."""
        if torch.compiler.is_compiling():
            # (the config part of the key, which dynamo traces and guards: an IO field changed
            # in place retraces, and the new graph must not take the tiles of the old gain)
            if self._chip_cache is None or self._chip_config != self._config_key():
                _cache_chip_tiles(self)
            return self._chip_cache[1]
        if not self.is_programmed():
            raise RuntimeError(
                "eval forward of an analog layer with device model "
                f"{self.analog_config.device.model!r} before programming: call "
                "aimc.program(model, seed=...) (and aimc.drift(model, t, seed=...)) first, or "
                "use model.train() to run on the digital weights"
            )
        lean = self.chip_storage() == "lean"
        if lean:
            self._check_lean_weights()
        key = self._chip_key()
        if self._chip_cache is not None and self._chip_cache[0] == key:
            return self._chip_cache[1]
        with torch.no_grad():
            tw = self._compute_chip_tiles(read_out)
        tw.fixed = True  # (a lean chip's: its limbs are built with its tiles)
        self._chip_cache = None if lean else (key, tw)
        self._chip_config = key[-1]  # (its config part alone: what a compiled forward checks)
        if lean:
            trim_if_grown()
        return tw

    def _chip_key(self) -> tuple[Any, ...]:
        bufs = [b for k, b in self._buffers.items() if k.startswith(PREFIX) and b is not None]
        key = tuple((b.data_ptr(), 0 if b.is_inference() else b._version, b.device) for b in bufs)
        # the config too: the DAC/ADC gain is folded into the tiles (base._config_key)
        return key + (self._config_key(),)

    def _check_lean_weights(self) -> None:
        if self._lean_key is None:
            self._lean_key = self._weight_key()  # loaded from a checkpoint: weights come with it
        elif self._lean_key != self._weight_key():
            raise RuntimeError(
                f"{layer_label(self)}: its weights changed (or moved/cast) since it was "
                "programmed with storage='lean', whose chip is regenerated from the weights; "
                "call aimc.program again (or program with storage='full' to keep the chip "
                "independent of later weight changes)"
            )

    def compensation_factor(self) -> Tensor | None:
        """The drift-compensation factors α of the current (drifted) chip: ``(tiles, to)`` per
        tile (global) or ``(tiles, O_pad)`` per column; ``None`` before :meth:`drift_chip` or
        without compensation (REFERENCE.md §3)."""
        if not self.is_programmed():
            self.chip_tiles()  # the error
        if self._has_chip("alpha"):
            return self._chip("alpha")
        self.chip_tiles()
        return self._alpha

    def _compute_chip_tiles(self, read_out: bool, source=None) -> TileWeights:
        """The eval tiles, chunk by chunk; ``source(a, b, i, n_chunks)`` gives the programmed
        state of tiles ``a..b-1`` (default: read from the buffers or regenerated, lean)."""
        cfg = self.analog_config
        layout = self.tile_layout()
        t = float(self._chip("drift_time"))
        comp = cfg.device.drift_compensation
        per_column = comp == DriftCompensation.PER_COLUMN
        # the compensation needs a readout of the drifted tiles unless the factors are stored
        need_readout = t >= 0 and comp != DriftCompensation.NONE
        need_readout &= read_out or not self._has_chip("alpha")
        if source is None and self.chip_storage() == "lean":  # programmed again, same seed
            seed = int(self._chip("program_seed"))
            source = self._programmer(seed, self._digital_layout()[0], layout, False, None)[0]
        elif source is None:
            source = self._stored_tiles
        w_t, m_t = self._read_pass(source, layout, t, int(self._chip("drift_seed")), need_readout)
        alpha = None
        if need_readout:
            shape = (layout.batch, layout.padded_out if per_column else layout.n_out)
            alpha = self._chip("baseline").float() / m_t.view(shape)
        elif t >= 0 and comp != DriftCompensation.NONE:
            alpha = self._chip("alpha").float()
        self._alpha = alpha
        scale = self._chip("weight_scale").float() if self._has_chip("weight_scale") else None
        return self._finish_tiles(w_t, scale, alpha, layout)

    def _read_pass(self, source, layout: TileLayout, t: float, drift_seed: int, readout: bool):
        """One pass over the chip, chunk by chunk: the programmed state from ``source(a, b, i,
        n_chunks)``, drifted to ``t`` (unless ``t < 0``) with read noise from ``drift_seed`` and
        (if ``readout``) read out for the compensation. Returns the ``(B, O_pad, ci)`` read
        tiles and the readout ``m_t`` (``(n,)`` or ``(n, ro)``; undefined without
        ``readout``)."""
        cfg = self.analog_config
        model = devices.get(cfg.device.model)
        params = cfg.device.params
        per_column = cfg.device.drift_compensation == DriftCompensation.PER_COLUMN
        device = self.weight.device
        n = layout.batch * layout.n_out
        w_t = torch.empty(
            layout.batch, layout.padded_out, layout.rows, dtype=torch.float32, device=device
        )
        out = _tiles(w_t, layout)
        m_t = torch.empty(
            (n, layout.cols) if per_column else (n,), dtype=torch.float32, device=device
        )
        chunks = _chunks(layout)
        for i, (a, b) in enumerate(chunks):
            pos, neg, g_scale = source(a, b, i, len(chunks))
            if t < 0:  # programmed, not yet read
                out[a:b] = model.from_conductances(pos["g"], neg["g"], g_scale)
            else:
                gen = self._chunk_generator(drift_seed, i, len(chunks), device)
                out[a:b] = drift_programmed(model, params, pos, neg, g_scale, t, gen)
            del pos, neg
            if layout.has_padding:
                # the padding cells of an uneven split hold no device: zero, whatever the
                # programming noise and drift drew there (input noise on a padded row would
                # otherwise read them into the real outputs)
                out[a:b].mul_(_tile_mask(layout, a, b, device))
            if t < 0:
                continue
            if readout:
                m_t[a:b] = self._readout(out[a:b], layout, a, b, len(chunks), gen)
        return w_t, m_t

    def _finish_tiles(
        self, w_t: Tensor, scale: Tensor | None, alpha: Tensor | None, layout: TileLayout
    ) -> TileWeights:
        """Read tiles ``w_t`` (normalised units, modified in place) with the weight scale and
        the compensation factors ``alpha`` folded into the digital scale, as the MVM takes
        them."""
        io = self.analog_config.io
        scale = combine_scales(scale, alpha, layout)
        in_unit, out_unit = units(io)
        need_abs = io.w_noise_type == WeightNoiseType.PCM_READ and io.w_noise > 0
        w_abs = w_t.abs() if need_abs and not io.is_perfect else None
        if in_unit != out_unit:
            w_t.mul_(in_unit / out_unit)
        return TileWeights(layout, w_t, scale, w_abs)

    # -- a fresh chip of the current weights, nothing stored (the ``chip`` HWA modifier) -------
    @torch.no_grad()
    def fresh_chip_tiles(self, t_seconds: float, program_seed: int, drift_seed: int) -> TileWeights:
        """The tiles of a chip programmed now from the current weights with ``program_seed`` and
        read ``t_seconds`` later with ``drift_seed``, drift compensation folded into the digital
        scale: bit for bit what :meth:`program_chip` (``program_seed``), :meth:`drift_chip`
        (``t_seconds``, ``drift_seed``) and :meth:`chip_tiles` give, but nothing is stored (a
        programmed chip of the layer is left as it is). Chunk by chunk, each chunk programmed,
        read out for the compensation baseline, drifted and read out again before the next:
        the working memory is one chunk's, as programming's.

        The ``chip`` HWA modifier (:func:`aimc.hwa.draw_chip_sample`) calls it in every training
        forward. Cost: programming, drift and — with ``global`` or ``per_column`` compensation —
        two readouts through the noisy periphery (one-hot inputs, one MVM of ``rows`` vectors per
        tile); ``exact_reference`` needs one, ``none`` none. Measured (``docs/hwa.md``,
        ``bert_squad``, 1 CPU thread): 95 ms for a 768 x 768 layer and 305 ms for 768 x 3072
        with ``global`` compensation (15-22x the ``add_normal`` modifier; a training forward of
        1,024 tokens 1.4-1.45x the one without modifier); 47 / 172 ms without compensation.
        """
        comp = self.analog_config.device.drift_compensation
        per_column = comp == DriftCompensation.PER_COLUMN
        w_t, layout, w_scale = self._digital_layout()
        need_baseline = comp in (DriftCompensation.GLOBAL, DriftCompensation.PER_COLUMN)
        source, _, baseline = self._programmer(program_seed, w_t, layout, need_baseline, None)
        readout = comp != DriftCompensation.NONE
        w_out, m_t = self._read_pass(source, layout, t_seconds, drift_seed, readout)
        alpha = None
        if comp != DriftCompensation.NONE:
            shape = (layout.batch, layout.padded_out if per_column else layout.n_out)
            if comp == DriftCompensation.EXACT_REFERENCE:
                base = exact_readout(w_t, layout, per_column=False)
            else:
                base = baseline.view(shape)
            alpha = base / m_t.view(shape)
        scale = None if w_scale is None else w_scale.float()
        return self._finish_tiles(w_out, scale, alpha, layout)

    # -- the chip keeps its dtypes: model.half()/double() move it but never cast it -------------
    def _apply(self, fn, recurse=True):
        chip = {k: b for k, b in self._buffers.items() if k.startswith(PREFIX)}
        for k in chip:
            del self._buffers[k]
        try:
            out = super()._apply(fn, recurse)
        finally:
            for k, b in chip.items():
                moved = fn(b)
                # the device of fn's result, the chip's own dtype; to_empty (a meta round
                # trip) gives an empty tensor to load into, which b.to() could not copy from meta
                self._buffers[k] = moved if moved.dtype == b.dtype else b.to(moved.device)
        self._chip_cache = None
        return out

    # -- loading a programmed chip into a fresh layer ------------------------------------------
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        incoming = {
            key[len(prefix) :]
            for key in state_dict
            if key.startswith(prefix + PREFIX) and "." not in key[len(prefix) :]
        }
        if incoming:  # the checkpoint's chip replaces this layer's (full or lean)
            for name in [k for k in self._buffers if k.startswith(PREFIX)]:
                if name not in incoming:
                    del self._buffers[name]
        for name in incoming:
            if name not in self._buffers:
                value = state_dict[prefix + name]
                self.register_buffer(name, torch.empty_like(value, device=self.weight.device))
        self._chip_cache = None
        self._alpha = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if incoming:
            # the chip's weights came with it: a lean chip is keyed on them now, so a change
            # before its first read is refused too; weights loaded without a chip keep the old
            # key (a lean chip then refuses them: it was programmed from other weights)
            self._lean_key = self._weight_key()

    # -- copies (deepcopy, pickling): the weights live elsewhere, with other addresses ---------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if state.get("_lean_key") is not None:
            same = self._lean_key == self._weight_key()
            state["_lean_key"] = "unchanged" if same else "changed"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        mark = self.__dict__.get("_lean_key")
        if mark == "unchanged":
            self._lean_key = self._weight_key()
        elif mark == "changed":  # the original's weights had changed: the copy refuses too
            self._lean_key = ("changed since programming",)


@torch.compiler.disable
def _cache_chip_tiles(layer: ChipMixin) -> None:
    """Compute and cache ``layer``'s eval tiles outside a compiled graph (lean chips: an error)."""
    if layer.chip_storage() == "lean":
        raise RuntimeError(
            f"{layer_label(layer)}: a lean chip (storage='lean') is regenerated at every "
            "forward and cannot run in a compiled forward; program it with storage='full' to "
            "use torch.compile"
        )
    layer.chip_tiles()


def drift_programmed(model, params, pos: dict, neg: dict, g_scale: Tensor, t: float, gen) -> Tensor:
    """The weights of programmed tiles read ``t`` seconds after programming: ``pos`` / ``neg``
    are the device model's state of the two devices of every pair (conductances under ``"g"``,
    µS; taken out of the dicts, so that their memory is freed early), ``g_scale`` ``(k, 1)``
    the conductance scales; returns ``(k, ro, ci)`` weights.

    As AIHWKIT 1.2.0 (``BaseNoiseModel.apply_drift_noise``), drift acts on the programmed
    *weights*: they are mapped onto a fresh pair (one device of each pair at 0, the tile's
    largest programmed |W| at g_max), which then drifts with the exponents drawn at programming
    and gets the read noise. Drifting the two stored noisy devices instead gave up to 3 % less
    output error after drift (tests/conformance): the largest programmed |W| exceeds the
    target's, so AIHWKIT's conductances are lower and their 1/f read noise (relative std
    ~ g^-0.65) larger.
    """
    w_prog = model.from_conductances(pos.pop("g"), neg.pop("g"), g_scale)
    g_pos, g_neg, g_scale = model.to_conductances(w_prog, 1, params.g_max)
    del w_prog
    g_pos = model.drift({**pos, "g": g_pos}, t, params, gen)
    g_neg = model.drift({**neg, "g": g_neg}, t, params, gen)
    return model.from_conductances(g_pos, g_neg, g_scale)


def _stored(key: str, value: Tensor, g_max: float) -> Tensor:
    """A state tensor as kept in a full chip: float16, conductances relative to ``g_max``."""
    return (value / g_max if key == "g" else value).to(STATE_DTYPE)


def _rounded(state: dict[str, Tensor], g_max: float) -> dict[str, Tensor]:
    """Stored (float16) state back to float32, conductances in µS."""
    out = {k: v.float() for k, v in state.items()}
    out["g"] = out["g"] * g_max
    return out
