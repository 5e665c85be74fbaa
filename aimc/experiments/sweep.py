"""The drift-sweep machinery shared by ``squad-drift`` and ``train-vision``.

A sweep is a list of work units ``(config, chip, t)``. Every random draw of a unit comes from
seeds derived from ``(seed, config, chip)`` (programming) and ``(seed, config, chip, t)`` (read
noise and IO noise), so a unit's result does not depend on which process runs it or in which
order: a resumed run, or one split over ``torchrun`` ranks, gives the same table as one
uninterrupted process. Results are appended to ``results.jsonl`` as each unit finishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import presets
from ..config import AnalogConfig, DeviceConfig, DriftCompensation, IOConfig
from ..convert import convert, manual_seed, to_digital
from ..lifecycle import drift, program
from ..random import derive_seed
from .rundir import barrier, dist_info
from .safeio import append_row, read_rows

DAY = 86400.0


def _ideal_bert_squad(drift: bool = False) -> AnalogConfig:
    """REFERENCE.md §5's "ideal", as AIHWKIT example 24's ``create_ideal_rpu_config``: the
    bert_squad mapping with one learned output scale per layer, perfect IO, the PCM model with
    programming noise, read noise *and drift* scaled to 0 and no drift compensation. The chip
    then holds the exact weights at every drift time (up to aimc's float16 chip storage: output
    error ~2e-4 relative), so the accuracy is flat over time.

    ``drift=True`` is the ``ideal_drift`` entry (aimc's "ideal" before 0.2): drift on (drift
    exponents as in the PCM model) with global compensation, noise off -- the drift-only
    ablation; it loses ~5 % (1 h) to ~14 % (1 year) relative output error, which AIHWKIT's ideal
    does not."""
    cfg = presets.bert_squad()
    params = {"prog_noise_scale": 0.0, "read_noise_scale": 0.0}
    if drift:
        comp = DriftCompensation.GLOBAL
        mapping = cfg.mapping
    else:
        params["drift_scale"] = 0.0
        comp = DriftCompensation.NONE
        mapping = cfg.mapping.replace(out_scaling_columnwise=False)
    device = DeviceConfig(model="pcm", params=params, drift_compensation=comp)
    return cfg.replace(io=IOConfig(is_perfect=True), mapping=mapping, device=device)


def with_output_bound_mask(cfg: AnalogConfig | None, mask: str, preset: str) -> AnalogConfig | None:
    """``cfg`` with ``hwa.output_bound_mask = mask`` (the ``--hwa-output-bound-mask`` option of
    ``train-vision`` and ``finetune-squad``); ``""`` keeps ``cfg``. ``preset`` names the training
    config in the error of a digital one."""
    if not mask:
        return cfg
    if cfg is None:
        raise ValueError(
            f"--hwa-output-bound-mask: got {mask!r} with the digital training config "
            f"{preset!r}; allowed: only with an analog training config"
        )
    try:
        return cfg.replace(hwa=cfg.hwa.replace(output_bound_mask=mask))
    except ValueError as err:
        raise ValueError(f"--hwa-output-bound-mask: {err}") from None


def resolve_config(name: str) -> AnalogConfig | None:
    """The analog config of a sweep entry (``None`` for ``digital``).

    Names: ``digital``, ``ideal`` and ``ideal_drift`` (see :func:`_ideal_bert_squad`),
    ``pcm_inference``, ``pcm_weights_only``, ``standard_hwa``, ``bert_squad`` or
    ``bert_squad:<w_noise>``, ``analog_foundation`` or ``analog_foundation:<w_noise>``
    (:func:`aimc.presets.analog_foundation`: static input ranges, to be calibrated).
    """
    if name == "digital":
        return None
    if name in ("ideal", "ideal_drift"):
        return _ideal_bert_squad(drift=name == "ideal_drift")
    base, _, arg = name.partition(":")
    simple = {
        "pcm_inference": presets.pcm_inference,
        "pcm_weights_only": presets.pcm_weights_only,
        "standard_hwa": presets.standard_hwa,
    }
    if base in simple and not arg:
        return simple[base]()
    with_noise = {"bert_squad": presets.bert_squad, "analog_foundation": presets.analog_foundation}
    if base in with_noise:
        if not arg:
            return with_noise[base]()
        try:
            w_noise = float(arg)
        except ValueError:
            w_noise = math.nan
        if not math.isfinite(w_noise) or w_noise < 0:
            raise ValueError(f"--configs: got {name!r}; allowed: {base}:<w_noise >= 0>")
        return with_noise[base](w_noise)
    allowed = (
        "digital, ideal, ideal_drift, pcm_inference, pcm_weights_only, standard_hwa, "
        "bert_squad[:w], analog_foundation[:w]"
    )
    raise ValueError(f"--configs: unknown config {name!r}; allowed: {allowed}")


def validate_sweep(configs: list[str], times: list[float], chips: int) -> None:
    """Check the sweep axes; errors name the command-line option."""
    for option, value in (("--configs", configs), ("--times", times)):
        if not isinstance(value, (list, tuple)):  # a str would be read letter by letter
            raise ValueError(f"{option}: got {value!r} ({type(value).__name__}); allowed: a list")
    for name in configs:
        resolve_config(name)
    if not configs or len(set(configs)) != len(configs):
        raise ValueError(f"--configs: got {configs!r}; allowed: distinct config names")
    if not times:
        raise ValueError("--times: got an empty list; allowed: times >= 0 in seconds")
    for t in times:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"--times: got {t!r}; allowed: finite times >= 0 (seconds)")
    if len(set(times)) != len(times):
        raise ValueError(f"--times: got duplicates in {times!r}")
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ValueError(f"--chips: got {chips!r}; allowed: an integer >= 1")


@dataclass(frozen=True)
class Unit:
    """One evaluation: a config, a chip (program seed index) and a drift time."""

    config: str
    chip: int
    t: float | None  # None: no drift (digital)

    @property
    def key(self) -> str:
        return f"{self.config}|{self.chip}|{self.t!r}"


def work_units(configs: list[str], chips: int, times: list[float]) -> list[Unit]:
    """All units of a sweep in canonical order (config, chip, t); digital has one unit."""
    units = []
    for name in configs:
        if resolve_config(name) is None:
            units.append(Unit(name, 0, None))
            continue
        units += [Unit(name, chip, float(t)) for chip in range(chips) for t in times]
    return units


def unit_seeds(seed: int, unit: Unit) -> tuple[int, int]:
    """(program seed, read/IO-noise seed) of a unit — a function of the unit alone."""
    chip_key = f"{unit.config}|chip{unit.chip}"
    return derive_seed(seed, chip_key), derive_seed(seed, f"{chip_key}|t{unit.t!r}")


# --------------------------------------------------------------------------------------------
# results file (the run directory: .rundir, crash-safe files: .safeio)


def read_results(out: Path) -> list[dict[str, Any]]:
    """Rows of ``results*.jsonl`` in ``out``. A torn last line from a killed run is skipped (that
    unit is redone); a bad line elsewhere is a :class:`~aimc.experiments.safeio.RunDirError`
    naming the file and line."""
    rows = []
    for path in sorted(out.glob("results*.jsonl")):
        rows += read_rows(path, required=("key",))
    return rows


# --------------------------------------------------------------------------------------------
# running the units


class SweepModel:
    """A model and which sweep state it is in (config converted, chip programmed).

    ``convert_options`` go to :func:`aimc.convert` (e.g. ``exclude``); ``after_convert(model,
    config name)`` runs after each conversion, before the chip is programmed (e.g. a
    deterministic calibration of static input ranges)."""

    def __init__(
        self,
        model: torch.nn.Module,
        seed: int,
        convert_options: dict[str, Any] | None = None,
        after_convert: Callable[[torch.nn.Module, str], None] | None = None,
        chip_storage: str = "full",
    ) -> None:
        self.model, self.seed = model, seed
        self.chip_storage = chip_storage
        self.convert_options = dict(convert_options or {})
        self.after_convert = after_convert
        self.config: str | None = None  # name of the converted config, None = digital
        self.chip: int | None = None

    def prepare(self, unit: Unit) -> None:
        cfg = resolve_config(unit.config)
        if self.config != unit.config:
            if self.config is not None and resolve_config(self.config) is not None:
                to_digital(self.model)
            if cfg is not None:
                seed = derive_seed(self.seed, unit.config)
                convert(self.model, cfg, seed=seed, **self.convert_options)
            self.model.eval()
            if cfg is not None and self.after_convert is not None:
                self.after_convert(self.model, unit.config)
            self.config, self.chip = unit.config, None
        if cfg is None:
            return
        prog_seed, read_seed = unit_seeds(self.seed, unit)
        if cfg.device.model != "none":
            if self.chip != unit.chip:
                program(self.model, seed=prog_seed, storage=self.chip_storage)
                self.chip = unit.chip
            drift(self.model, unit.t, seed=read_seed)
        manual_seed(self.model, read_seed)


def run_units(
    model: torch.nn.Module,
    units: list[Unit],
    evaluate: Callable[[torch.nn.Module], dict[str, float]],
    out: Path,
    seed: int,
    logger: Any,
    progress: bool,
    extra_row: dict[str, Any] | None = None,
    main_metric: str = "",
    convert_options: dict[str, Any] | None = None,
    after_convert: Callable[[torch.nn.Module, str], None] | None = None,
    chip_storage: str = "full",
) -> list[dict[str, Any]]:
    """Run this rank's share of ``units`` not yet in ``out``; every rank then waits, and all
    rows (merged over ranks, one per unit, canonical order) are returned.

    ``evaluate(model) -> {metric: value}`` runs on the prepared model (eval mode);
    ``convert_options`` and ``after_convert``: see :class:`SweepModel`."""
    rank, world = dist_info()
    done = {row["key"] for row in read_results(out)}
    mine = [u for i, u in enumerate(units) if i % world == rank and u.key not in done]
    results_path = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    state = SweepModel(model, seed, convert_options, after_convert, chip_storage)
    bar = _progress(progress and rank == 0, len(mine))
    for unit in mine:
        start = time.perf_counter()
        state.prepare(unit)
        eval_start = time.perf_counter()
        scores = evaluate(state.model)
        now = time.perf_counter()
        prog_seed, read_seed = unit_seeds(seed, unit)
        cfg = resolve_config(unit.config)
        row = {
            "key": unit.key,
            "config": unit.config,
            "chip": unit.chip,
            "t": unit.t,
            **scores,
            **(extra_row or {}),
            "eval_s": now - eval_start,
            "wall_s": now - start,
            "program_seed": prog_seed if cfg is not None else None,
            "read_seed": read_seed if cfg is not None else None,
            "rank": rank,
            "config_resolved": cfg.to_dict() if cfg is not None else None,
        }
        append_row(results_path, row)
        logger.log_unit(row)
        bar.update(1)
        shown = f" {main_metric} {scores[main_metric]:.2f}" if main_metric in scores else ""
        bar.set_postfix_str(f"{unit.config} chip {unit.chip} t={unit.t}{shown}")
    bar.close()
    logger.close()
    barrier(world)
    return final_rows(read_results(out), units)


def final_rows(rows: list[dict[str, Any]], units: list[Unit]) -> list[dict[str, Any]]:
    """One row per unit in canonical order (a unit redone after a kill keeps its first row)."""
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_key.setdefault(row["key"], row)
    missing = [u.key for u in units if u.key not in by_key]
    if missing:
        raise RuntimeError(
            f"sweep: {len(missing)} work units have no result "
            f"(first: {missing[0]}); rerun with --resume"
        )
    return [by_key[u.key] for u in units]


def _progress(enabled: bool, total: int, desc: str = "sweep", unit: str = "eval"):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency of the extra
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n: int) -> None: ...
            def set_postfix_str(self, s: str) -> None: ...
            def close(self) -> None: ...

        return _Null()
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
