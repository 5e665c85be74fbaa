"""The programmed chip of an analog layer: conductances, drift state and compensation as buffers.

State is the chip: after :meth:`ChipMixin.program_chip` the layer holds, as buffers (so
``state_dict`` carries them), the programmed conductances of both devices of every pair and the
device model's per-device state (float16), the conductance and weight scales, and the drift
compensation baseline. :meth:`ChipMixin.drift_chip` records the inference time and the read seed;
the drifted conductances (with their fresh read noise) and the compensation factors are computed
from these buffers deterministically, so a checkpoint reloaded into a freshly converted model
reproduces the drifted model's outputs bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import devices
from ..compensation import exact_readout, readout
from ..config import DriftCompensation, WeightNoiseType
from ..functional import TileLayout, tile_weights
from ..mvm import TileWeights, combine_scales, units
from ..random import check_seed
from .checks import check_finite_weights

PREFIX = "chip_"
#: Per-device state is stored in half precision (conductances relative to g_max, drift
#: exponents): the
#: rounding (relative 5e-4) is far below programming and read noise, and it keeps the chip at
#: 2x the float32 weight memory.
STATE_DTYPE = torch.float16


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


class ChipMixin:
    """Programming, drift and the eval-mode tiles of an analog layer with a device model."""

    _chip_cache: tuple[tuple[Any, ...], TileWeights] | None = None
    _alpha: Tensor | None = None

    # -- helpers -----------------------------------------------------------------------------
    def has_device(self) -> bool:
        """Whether the layer's config has a device model (``device.model != 'none'``)."""
        return self.analog_config.device.model != "none"

    def is_programmed(self) -> bool:
        """Whether :meth:`program_chip` has run (or a programmed state was loaded)."""
        return hasattr(self, PREFIX + "g_pos")

    def _chip(self, name: str) -> Tensor:
        return getattr(self, PREFIX + name)

    def _set_chip(self, name: str, value: Tensor) -> None:
        key = PREFIX + name
        if key in self._buffers:
            self._buffers[key] = value
        else:
            self.register_buffer(key, value)

    def _digital_layout(self) -> tuple[Tensor, TileLayout, Tensor | None]:
        w = self._analog_weight()
        layout = self.tile_layout()
        w_t, scale = tile_weights(w, layout, self.analog_config.mapping)
        return w_t, layout, scale

    # -- programming ---------------------------------------------------------------------------
    @torch.inference_mode(False)  # chip buffers must be normal tensors even if called in
    @torch.no_grad()  # inference mode (they are versioned and may be loaded into later)
    def program_chip(self, seed: int) -> None:
        """Program the current weights: programming noise and per-device state, drawn from
        ``seed``; also the drift-compensation baseline. Fixed until the next programming."""
        check_seed(seed)
        if not self.has_device():
            raise RuntimeError("program: this layer has no device model (device.model='none')")
        check_finite_weights(self, "program")
        cfg = self.analog_config
        model = devices.get(cfg.device.model)
        params = cfg.device.params
        w_t, layout, w_scale = self._digital_layout()
        gen = torch.Generator(device=w_t.device).manual_seed(seed)
        g_pos, g_neg, g_scale = model.to_conductances(w_t, layout.n_out, params.g_max)
        for sign, target in (("pos", g_pos), ("neg", g_neg)):
            for key, value in model.program(target, params, gen).items():
                if key == "g":  # stored relative to g_max: float16 range for any g_max
                    value = value / params.g_max
                self._set_chip(f"{key}_{sign}", value.to(STATE_DTYPE))
        self._set_chip("conductance_scale", g_scale.float())
        if w_scale is not None:
            self._set_chip("weight_scale", w_scale.float())
        self._set_chip("drift_time", torch.tensor(-1.0, dtype=torch.float64, device=w_t.device))
        self._set_chip("drift_seed", torch.tensor(0, dtype=torch.int64, device=w_t.device))
        comp = cfg.device.drift_compensation
        if comp == DriftCompensation.EXACT_REFERENCE:
            # AIHWKIT GlobalDriftCompensationWithExactReference: an exact (noise-free MVM)
            # readout of the target weights, not the noisy forward of them
            self._set_chip("baseline", exact_readout(w_t, layout, per_column=False))
        elif comp != DriftCompensation.NONE:
            state_pos, state_neg = self._state("pos"), self._state("neg")
            reference = model.from_conductances(state_pos["g"], state_neg["g"], g_scale)
            per_column = comp == DriftCompensation.PER_COLUMN
            self._set_chip("baseline", readout(reference, layout, cfg.io, gen, per_column))
        self._chip_cache = None

    @torch.inference_mode(False)
    @torch.no_grad()
    def drift_chip(self, t_seconds: float, seed: int) -> None:
        """Conductances ``t_seconds`` after programming, with fresh read noise from ``seed``, and
        the compensation factors. Computed now and cached until the next call."""
        t = check_time(t_seconds)
        check_seed(seed)
        if not self.is_programmed():
            raise RuntimeError("drift: the layer is not programmed; call aimc.program first")
        self._chip("drift_time").fill_(t)
        self._chip("drift_seed").fill_(seed)
        self._chip_cache = None
        self.chip_tiles()

    def _state(self, sign: str) -> dict[str, Tensor]:
        """The device state of one device of every pair (float32; conductances in µS)."""
        names = [
            k[len(PREFIX) : -len(sign) - 1]
            for k in self._buffers
            if k.startswith(PREFIX) and k.endswith("_" + sign)
        ]
        state = {n: self._chip(f"{n}_{sign}").float() for n in names}
        state["g"] = state["g"] * self.analog_config.device.params.g_max
        return state

    # -- the tiles used in eval mode -------------------------------------------------------------
    def chip_tiles(self) -> TileWeights:
        """Tiles of the programmed (and drifted) chip, with drift compensation folded into the
        digital scale. Cached; recomputed when the chip buffers change."""
        if not self.is_programmed():
            raise RuntimeError(
                "eval forward of an analog layer with device model "
                f"{self.analog_config.device.model!r} before programming: call "
                "aimc.program(model, seed=...) (and aimc.drift(model, t, seed=...)) first, or "
                "use model.train() to run on the digital weights"
            )
        bufs = [b for k, b in self._buffers.items() if k.startswith(PREFIX) and b is not None]
        key = tuple((b.data_ptr(), 0 if b.is_inference() else b._version, b.device) for b in bufs)
        if self._chip_cache is not None and self._chip_cache[0] == key:
            return self._chip_cache[1]
        with torch.no_grad():
            tw = self._compute_chip_tiles()
        self._chip_cache = (key, tw)
        return tw

    def compensation_factor(self) -> Tensor | None:
        """The drift-compensation factors α of the current (drifted) chip: ``(tiles, to)`` per
        tile (global) or ``(tiles, O_pad)`` per column; ``None`` before :meth:`drift_chip` or
        without compensation (REFERENCE.md §3)."""
        self.chip_tiles()
        return self._alpha

    def _compute_chip_tiles(self) -> TileWeights:
        cfg = self.analog_config
        model = devices.get(cfg.device.model)
        params = cfg.device.params
        layout = self.tile_layout()
        t = float(self._chip("drift_time"))
        g_scale = self._chip("conductance_scale").float()
        alpha = None
        if t < 0:  # programmed, not yet read
            w_t = model.from_conductances(self._state("pos")["g"], self._state("neg")["g"], g_scale)
        else:
            gen = torch.Generator(device=g_scale.device)
            gen.manual_seed(int(self._chip("drift_seed")))
            # As AIHWKIT 1.2.0 (BaseNoiseModel.apply_drift_noise), drift acts on the programmed
            # *weights*: they are mapped onto a fresh pair (one device of each pair at 0, the
            # tile's largest programmed |W| at g_max), which then drifts with the exponents drawn
            # at programming and gets the read noise. Drifting the two stored noisy devices
            # instead gave up to 3 % less output error after drift (tests/conformance): the
            # largest programmed |W| exceeds the target's, so AIHWKIT's conductances are lower
            # and their 1/f read noise (relative std ~ g^-0.65) larger.
            state_pos, state_neg = self._state("pos"), self._state("neg")
            w_prog = model.from_conductances(state_pos.pop("g"), state_neg.pop("g"), g_scale)
            g_pos, g_neg, g_scale = model.to_conductances(w_prog, layout.n_out, params.g_max)
            del w_prog
            g_pos = model.drift({**state_pos, "g": g_pos}, t, params, gen)
            g_neg = model.drift({**state_neg, "g": g_neg}, t, params, gen)
            w_t = model.from_conductances(g_pos, g_neg, g_scale)
            del g_pos, g_neg
            comp = cfg.device.drift_compensation
            if comp != DriftCompensation.NONE:
                per_column = comp == DriftCompensation.PER_COLUMN
                baseline = self._chip("baseline").float()
                alpha = baseline / readout(w_t, layout, cfg.io, gen, per_column)
        self._alpha = alpha
        scale = (
            self._chip("weight_scale").float() if hasattr(self, PREFIX + "weight_scale") else None
        )
        scale = combine_scales(scale, alpha, layout)
        in_unit, out_unit = units(cfg.io)
        need_abs = cfg.io.w_noise_type == WeightNoiseType.PCM_READ and cfg.io.w_noise > 0
        w_abs = w_t.abs() if need_abs and not cfg.io.is_perfect else None
        return TileWeights(layout, w_t * (in_unit / out_unit), scale, w_abs)

    # -- the chip keeps its dtypes: model.half()/double() move it but never cast it -------------
    def _apply(self, fn, recurse=True):
        chip = {k: b for k, b in self._buffers.items() if k.startswith(PREFIX)}
        for k in chip:
            del self._buffers[k]
        try:
            out = super()._apply(fn, recurse)
        finally:
            for k, b in chip.items():
                self._buffers[k] = b.to(fn(b).device)
        self._chip_cache = None
        return out

    # -- loading a programmed chip into a fresh layer ------------------------------------------
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for key, value in state_dict.items():
            if key.startswith(prefix + PREFIX) and "." not in key[len(prefix) :]:
                name = key[len(prefix) :]
                if name not in self._buffers:
                    device = self.weight.device
                    self.register_buffer(name, torch.empty_like(value, device=device))
        self._chip_cache = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
