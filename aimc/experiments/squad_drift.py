"""``aimc squad-drift``: SQuAD v1.1 exact match and F1 of an analog QA model as PCM drifts.

The sweep is a list of work units ``(config, chip, t)``. Every random draw of a unit comes from
seeds derived from ``(seed, config, chip)`` (programming) and ``(seed, config, chip, t)`` (read
noise and IO noise), so a unit's result does not depend on which process runs it or in which
order: a resumed run, or one split over ``torchrun`` ranks, gives the same table as one
uninterrupted process. Results are appended to ``results.jsonl`` as each unit finishes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import presets
from ..config import AnalogConfig, DeviceConfig, DriftCompensation, IOConfig
from ..convert import convert, manual_seed, to_digital
from ..lifecycle import drift, program
from ..random import derive_seed

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "minilm-l6-squad"
DEFAULT_DATA = SHARED / "data" / "squad" / "dev-v1.1.json.gz"
DAY = 86400.0
#: 0, logspace(0, 6, 9) s, then 1 month, 1 year, 10 years (REFERENCE.md §5, extended).
DEFAULT_TIMES = [0.0] + [10 ** (6 * i / 8) for i in range(9)] + [30 * DAY, 365 * DAY, 3650 * DAY]
DEFAULT_CONFIGS = ("digital", "ideal", "bert_squad:0.0175", "bert_squad:0.035", "bert_squad:0.07")


def _ideal_bert_squad() -> AnalogConfig:
    """REFERENCE.md §5's "ideal": the bert_squad mapping with perfect IO and PCM noise scales 0
    (programming and read noise off; drift and its compensation on)."""
    cfg = presets.bert_squad()
    params = {"prog_noise_scale": 0.0, "read_noise_scale": 0.0}
    device = DeviceConfig(model="pcm", params=params, drift_compensation=DriftCompensation.GLOBAL)
    return cfg.replace(io=IOConfig(is_perfect=True), device=device)


def resolve_config(name: str) -> AnalogConfig | None:
    """The analog config of a sweep entry (``None`` for ``digital``).

    Names: ``digital``, ``ideal`` (see :func:`_ideal_bert_squad`), ``pcm_inference``,
    ``pcm_weights_only``, ``standard_hwa``, ``bert_squad`` or ``bert_squad:<w_noise>``.
    """
    if name == "digital":
        return None
    if name == "ideal":
        return _ideal_bert_squad()
    base, _, arg = name.partition(":")
    simple = {
        "pcm_inference": presets.pcm_inference,
        "pcm_weights_only": presets.pcm_weights_only,
        "standard_hwa": presets.standard_hwa,
    }
    if base in simple and not arg:
        return simple[base]()
    if base == "bert_squad":
        if not arg:
            return presets.bert_squad()
        try:
            w_noise = float(arg)
        except ValueError:
            w_noise = math.nan
        if not math.isfinite(w_noise) or w_noise < 0:
            raise ValueError(f"--configs: got {name!r}; allowed: bert_squad:<w_noise >= 0>")
        return presets.bert_squad(w_noise)
    allowed = "digital, ideal, pcm_inference, pcm_weights_only, standard_hwa, bert_squad[:w]"
    raise ValueError(f"--configs: unknown config {name!r}; allowed: {allowed}")


@dataclass
class SweepSpec:
    """Everything that determines the numbers of a run (saved as ``run_config.json``)."""

    model: str = str(DEFAULT_MODEL)
    data: str = str(DEFAULT_DATA)
    configs: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGS))
    times: list[float] = field(default_factory=lambda: list(DEFAULT_TIMES))
    chips: int = 3
    max_questions: int | None = None
    subset_seed: int = 0
    seed: int = 0
    max_length: int = 384
    stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30

    def validate(self) -> None:
        for name in self.configs:
            resolve_config(name)
        if not self.configs or len(set(self.configs)) != len(self.configs):
            raise ValueError(f"--configs: got {self.configs!r}; allowed: distinct config names")
        if not self.times:
            raise ValueError("--times: got an empty list; allowed: times >= 0 in seconds")
        for t in self.times:
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise ValueError(f"--times: got {t!r}; allowed: finite times >= 0 (seconds)")
        if len(set(self.times)) != len(self.times):
            raise ValueError(f"--times: got duplicates in {self.times!r}")
        if not isinstance(self.chips, int) or self.chips < 1:
            raise ValueError(f"--chips: got {self.chips!r}; allowed: an integer >= 1")
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"--max-questions: got {self.max_questions!r}; allowed: >= 1")


@dataclass(frozen=True)
class Unit:
    """One evaluation: a config, a chip (program seed index) and a drift time."""

    config: str
    chip: int
    t: float | None  # None: no drift (digital)

    @property
    def key(self) -> str:
        return f"{self.config}|{self.chip}|{self.t!r}"


def work_units(spec: SweepSpec) -> list[Unit]:
    """All units of the sweep in canonical order (config, chip, t)."""
    units = []
    for name in spec.configs:
        if resolve_config(name) is None:
            units.append(Unit(name, 0, None))
            continue
        units += [Unit(name, chip, float(t)) for chip in range(spec.chips) for t in spec.times]
    return units


def unit_seeds(spec: SweepSpec, unit: Unit) -> tuple[int, int]:
    """(program seed, read/IO-noise seed) of a unit — a function of the unit alone."""
    chip_key = f"{unit.config}|chip{unit.chip}"
    return derive_seed(spec.seed, chip_key), derive_seed(spec.seed, f"{chip_key}|t{unit.t!r}")


# --------------------------------------------------------------------------------------------
# results file


def read_results(out: Path) -> list[dict[str, Any]]:
    """Rows of ``results*.jsonl`` in ``out`` (a torn last line from a killed run is skipped)."""
    rows = []
    for path in sorted(out.glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by SIGKILL: that unit is redone
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and force it to disk (a kill loses at most the unit in flight)."""
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a line torn by a kill: end it, so this row stays whole
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def spec_dict(spec: SweepSpec) -> dict[str, Any]:
    return asdict(spec)


def prepare_run_dir(out: Path, spec: SweepSpec, resume: bool, numbers: dict[str, Any]) -> None:
    """Create ``out`` and ``run_config.json``; refuse to mix runs made with settings that change
    the numbers (the spec, the batch size — noise draws follow the batching — and the device
    type)."""
    cfg_path = out / "run_config.json"
    out.mkdir(parents=True, exist_ok=True)
    mine = spec_dict(spec) | numbers
    if cfg_path.exists() or read_results(out):
        if not resume:
            raise ValueError(
                f"--out: {out} already holds a run; pass --resume to continue it "
                "or choose a new directory"
            )
        old = (
            json.loads(cfg_path.read_text()).get("determines_numbers", {})
            if cfg_path.exists()
            else {}
        )
        diff = [k for k in mine if k in old and old[k] != mine[k]]
        if diff:
            raise ValueError(
                "--resume: the run in "
                + str(out)
                + " was made with different "
                + ", ".join(f"{k} ({old[k]!r} != {mine[k]!r})" for k in diff)
            )
    meta = {
        "spec": spec_dict(spec),
        "determines_numbers": mine,
        "torch": torch.__version__,
        "configs_resolved": {
            n: (c.to_dict() if (c := resolve_config(n)) else None) for n in spec.configs
        },
    }
    cfg_path.write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# the run


def load_qa_model(path: str, device: torch.device):
    """A HuggingFace extractive-QA model and its fast tokenizer (local dir or hub id)."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model: cannot load a HuggingFace model from {path!r}: {err}") from None
    arch = hf_config.architectures or []
    if not any(a.endswith("ForQuestionAnswering") for a in arch):
        raise ValueError(
            f"--model: {path!r} has no question-answering head (architectures="
            f"{arch!r}); allowed: a model fine-tuned for extractive QA"
        )
    model = AutoModelForQuestionAnswering.from_pretrained(path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    return model, tokenizer


class _Model:
    """The QA model and which sweep state it is in (config converted, chip programmed)."""

    def __init__(self, model: torch.nn.Module, spec: SweepSpec) -> None:
        self.model, self.spec = model, spec
        self.config: str | None = None  # name of the converted config, None = digital
        self.chip: int | None = None

    def prepare(self, unit: Unit) -> None:
        cfg = resolve_config(unit.config)
        if self.config != unit.config:
            if self.config is not None and resolve_config(self.config) is not None:
                to_digital(self.model)
            if cfg is not None:
                convert(self.model, cfg, seed=derive_seed(self.spec.seed, unit.config))
            self.model.eval()
            self.config, self.chip = unit.config, None
        if cfg is None:
            return
        prog_seed, read_seed = unit_seeds(self.spec, unit)
        if cfg.device.model != "none":
            if self.chip != unit.chip:
                program(self.model, seed=prog_seed)
                self.chip = unit.chip
            drift(self.model, unit.t, seed=read_seed)
        manual_seed(self.model, read_seed)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def run(
    spec: SweepSpec,
    out: str | Path,
    *,
    resume: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    use_wandb: bool = False,
    wandb_mode: str = "offline",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns all result rows (on every rank, after merging)."""
    from ..squad.data import load_squad, select_questions
    from ..squad.features import best_spans, make_features, qa_logits
    from ..squad.metrics import squad_scores
    from .report import Logger, finish

    spec.validate()
    if batch_size < 1:
        raise ValueError(f"--batch-size: got {batch_size}; allowed: an integer >= 1")
    out = Path(out)
    rank, world = _dist()
    dev = torch.device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    # load (and so validate) data and model before anything is written to --out
    examples = select_questions(load_squad(spec.data), spec.max_questions, spec.subset_seed)
    model, tokenizer = load_qa_model(spec.model, dev)
    features = make_features(examples, tokenizer, spec.max_length, spec.stride)
    if rank == 0:
        prepare_run_dir(out, spec, resume, {"batch_size": batch_size, "device": dev.type})
    _barrier(world)
    units = work_units(spec)
    done = {row["key"] for row in read_results(out)}
    mine = [u for i, u in enumerate(units) if i % world == rank and u.key not in done]
    results_path = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    state = _Model(model, spec)
    logger = Logger(out, rank, use_wandb, wandb_mode, spec_dict(spec))
    bar = _progress(mine, progress and rank == 0, len(mine))
    for unit in mine:
        start = time.perf_counter()
        state.prepare(unit)
        eval_start = time.perf_counter()
        starts, ends = qa_logits(state.model, features, batch_size, dev)
        preds = best_spans(examples, features, starts, ends, spec.n_best, spec.max_answer_length)
        scores = squad_scores(preds, examples)
        now = time.perf_counter()
        prog_seed, read_seed = unit_seeds(spec, unit)
        cfg = resolve_config(unit.config)
        row = {
            "key": unit.key,
            "config": unit.config,
            "chip": unit.chip,
            "t": unit.t,
            "exact_match": scores["exact_match"],
            "f1": scores["f1"],
            "questions": len(examples),
            "features": len(features),
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
        bar.set_postfix_str(f"{unit.config} chip {unit.chip} t={unit.t} F1 {scores['f1']:.1f}")
    bar.close()
    logger.close()
    _barrier(world)
    rows = _final_rows(read_results(out), units)
    if rank == 0:
        finish(out, rows, spec, use_wandb, wandb_mode)
    _barrier(world)
    return rows


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _final_rows(rows: list[dict[str, Any]], units: list[Unit]) -> list[dict[str, Any]]:
    """One row per unit in canonical order (a unit redone after a kill keeps its first row)."""
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_key.setdefault(row["key"], row)
    missing = [u.key for u in units if u.key not in by_key]
    if missing:
        raise RuntimeError(
            f"squad-drift: {len(missing)} work units have no result "
            f"(first: {missing[0]}); rerun with --resume"
        )
    return [by_key[u.key] for u in units]


def _progress(items: list, enabled: bool, total: int):
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
    return tqdm(total=total, desc="squad-drift", unit="eval", dynamic_ncols=True)
