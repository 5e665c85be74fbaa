"""``aimc squad-drift``: SQuAD v1.1 exact match and F1 of an analog QA model as PCM drifts.

The sweep machinery (work units, seeds, resumable ``results.jsonl``, torchrun split) is
:mod:`aimc.experiments.sweep`; this module adds the QA model, the SQuAD features and metrics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..lora import adapter_dir, load_adapter
from .models import check_positions, load_weights, qa_config
from .report import SQUAD_METRICS
from .rundir import barrier, dist_info, fail_if_busy, init_distributed, open_run_dir
from .safeio import append_row
from .sweep import DAY, Unit, read_results, resolve_config, run_units, validate_sweep
from .sweep import unit_seeds as _unit_seeds
from .sweep import work_units as _work_units

__all__ = [
    "SweepSpec",
    "Unit",
    "append_row",
    "read_results",
    "resolve_config",
    "run",
    "unit_seeds",
    "work_units",
    "load_qa_model",
    "DEFAULT_TIMES",
    "DEFAULT_CONFIGS",
]

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "minilm-l6-squad"
DEFAULT_DATA = SHARED / "data" / "squad" / "dev-v1.1.json.gz"
#: 0, logspace(0, 6, 9) s, then 1 month, 1 year, 10 years (REFERENCE.md §5, extended).
DEFAULT_TIMES = [0.0] + [10 ** (6 * i / 8) for i in range(9)] + [30 * DAY, 365 * DAY, 3650 * DAY]
DEFAULT_CONFIGS = ("digital", "ideal", "bert_squad:0.0175", "bert_squad:0.035", "bert_squad:0.07")
METRICS = SQUAD_METRICS


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
        """Check every field; errors name the field, the value and what is allowed."""
        validate_sweep(self.configs, self.times, self.chips)
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"--max-questions: got {self.max_questions!r}; allowed: >= 1")
        # (not CLI options, but run_config.json fields that set the numbers: a 0 gave
        # EM = F1 = 0 for every unit without a word)
        for name in ("max_length", "n_best", "max_answer_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-") if name == "max_length" else name
                raise ValueError(f"{flag}: got {value!r}; allowed: an integer >= 1")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int):
            raise ValueError(f"--stride: got {self.stride!r}; allowed: an integer")
        if not 1 <= self.stride < self.max_length:
            raise ValueError(
                f"--stride: got {self.stride!r} with --max-length {self.max_length}; allowed: "
                "1 <= stride < max-length (the tokens two windows of a long context share)"
            )


def work_units(spec: SweepSpec) -> list[Unit]:
    """All units of the sweep in canonical order (config, chip, t)."""
    return _work_units(spec.configs, spec.chips, spec.times)


def unit_seeds(spec: SweepSpec, unit: Unit) -> tuple[int, int]:
    """(program seed, read/IO-noise seed) of a unit — a function of the unit alone."""
    return _unit_seeds(spec.seed, unit)


def spec_dict(spec: SweepSpec) -> dict[str, Any]:
    return asdict(spec)


def load_qa_model(path: str, device: torch.device):
    """A HuggingFace extractive-QA model and its fast tokenizer (local dir or hub id).

    A directory with an ``adapter/`` subdirectory (``aimc finetune-squad --lora``) is a frozen
    base model plus a peft LoRA adapter: the adapter is attached (a ``PeftModel``, digital) and
    the sweep then converts and programs the base only (:func:`aimc.convert` skips peft's
    adapter layers), so each chip is a new programming of the base under the same adapter."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    qa_config(path, "--model")  # a clear error before loading the weights
    model = load_weights(lambda: AutoModelForQuestionAnswering.from_pretrained(path), path)
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    adapter = adapter_dir(path)
    if adapter is not None:
        model = load_adapter(model, adapter)
    return model.to(device).eval(), tokenizer


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
    from ..squad.features import make_features
    from .report import Logger, finish

    spec.validate()
    if batch_size < 1:
        raise ValueError(f"--batch-size: got {batch_size}; allowed: an integer >= 1")
    out = Path(out)
    rank, world = dist_info()
    dev = init_distributed(device, world)
    fail_if_busy(out)  # before the (long) loading of data and model
    # load (and so validate) data and model before anything is written to --out
    examples = select_questions(load_squad(spec.data), spec.max_questions, spec.subset_seed)
    model, tokenizer = load_qa_model(spec.model, dev)
    check_positions(getattr(model, "config", None), spec.max_length, f"--model {spec.model!r}")
    features = make_features(examples, tokenizer, spec.max_length, spec.stride)
    # the batch size changes the numbers (noise draws follow the batching), so does the device;
    # the resolved configs catch a preset whose definition changed between two aimc versions
    configs = {n: (c.to_dict() if (c := resolve_config(n)) else None) for n in spec.configs}
    determines = spec_dict(spec) | {"batch_size": batch_size, "device": dev.type}
    determines |= {"configs_resolved": configs}
    extra = {"spec": spec_dict(spec), "configs_resolved": configs}
    evaluate = _evaluator(spec, examples, features, batch_size, dev)
    after_convert = _range_setter(spec.model, features, batch_size, dev)
    with open_run_dir(out, determines, resume, extra):  # one process (or job) per --out
        logger = Logger(out, rank, use_wandb, wandb_mode, spec_dict(spec), METRICS)
        extra = {"questions": len(examples), "features": len(features)}
        units = work_units(spec)
        rows = run_units(
            model,
            units,
            evaluate,
            out,
            spec.seed,
            logger,
            progress,
            extra,
            main_metric="f1",
            after_convert=after_convert,
        )
        if rank == 0:
            title = "SQuAD v1.1 dev as PCM drifts"
            finish(out, rows, spec_dict(spec), use_wandb, wandb_mode, METRICS, title)
        barrier(world)
    return rows


#: Features the static input ranges of a config without learned ones are calibrated on (the
#: first of the evaluated ones, as ``lm-drift`` calibrates on its first corpus windows).
CALIBRATION_FEATURES = 64


def _range_setter(model_dir: str, features, batch_size: int, dev: torch.device):
    """``after_convert(model, config)`` of the sweep: the static input ranges of a config that
    has them (``standard_hwa``, ``analog_foundation``: ``hwa.learn_input_range``) are the
    ranges an ``aimc finetune-squad`` export recorded for every such layer
    (``aimc_finetune.json``'s ``learned_input_ranges``), else calibrated on the first
    :data:`CALIBRATION_FEATURES` features (:func:`aimc.calibrate_input_ranges`, ``"max"``:
    deterministic, noise-free). Left at their placeholder (3.0) they gave meaningless rows."""
    from ..calibrate import calibrate_input_ranges
    from ..convert import analog_layers, is_peft_model, peft_base_name
    from ..squad.features import _collate

    learned: dict[str, float] = {}
    info = Path(model_dir) / "aimc_finetune.json"
    if info.is_file():
        learned = json.loads(info.read_text()).get("learned_input_ranges") or {}

    def after_convert(m: torch.nn.Module, config: str) -> None:
        # the export records the base model's names; a LoRA export is evaluated as a peft
        # model, whose names have peft's wrapper parts
        peft = is_peft_model(m)
        layers = [
            (peft_base_name(n) if peft else n, layer)
            for n, layer in analog_layers(m)
            if layer.input_range is not None
        ]
        if not layers:
            return
        if learned and all(n in learned for n, _ in layers):
            with torch.no_grad():
                for n, layer in layers:
                    layer.input_range.fill_(float(learned[n]))
                    batches = layer.analog_config.hwa.input_range_init_batches
                    layer.input_range_batches.fill_(batches)
            return
        k = min(CALIBRATION_FEATURES, len(features))
        batches = [
            _collate(features, list(range(i, min(i + batch_size, k))), dev)
            for i in range(0, k, batch_size)
        ]
        calibrate_input_ranges(m, batches)

    return after_convert


def _evaluator(spec: SweepSpec, examples, features, batch_size: int, dev: torch.device):
    """``evaluate(model) -> {"exact_match", "f1"}`` on the prepared SQuAD features."""
    from ..squad.features import best_spans, qa_logits
    from ..squad.metrics import squad_scores

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        starts, ends = qa_logits(m, features, batch_size, dev)
        preds = best_spans(examples, features, starts, ends, spec.n_best, spec.max_answer_length)
        scores = squad_scores(preds, examples)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}

    return evaluate
