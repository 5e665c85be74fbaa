"""Command line: ``aimc demo``."""

from __future__ import annotations

import argparse
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
    _add_train_vision(sub)
    args = parser.parse_args(argv)
    if args.command == "squad-drift":
        return _squad_drift(args, parser)
    if args.command == "train-vision":
        return _train_vision(args, parser)
    if args.command == "demo":
        if args.seeds < 1:
            parser.error(f"--seeds: got {args.seeds}; allowed: an integer >= 1")
        import torch

        from .demo import run

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
        help="comma-separated: digital, ideal, pcm_inference, pcm_weights_only, "
        "standard_hwa, bert_squad[:w_noise]",
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
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _squad_drift(args, parser) -> int:

    from .experiments.squad_drift import DEFAULT_TIMES, SweepSpec, run

    spec = SweepSpec(
        model=args.model,
        data=args.data,
        configs=_names(args.configs),
        times=args.times if args.times is not None else list(DEFAULT_TIMES),
        chips=args.chips,
        max_questions=args.max_questions,
        subset_seed=args.subset_seed,
        seed=args.seed,
    )
    return _run_or_exit(
        parser, "squad-drift", run, spec, args, batch_size=args.batch_size, device=args.device
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
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--wandb", action="store_true")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    p.add_argument("--no-progress", action="store_true")


def _train_vision(args, parser) -> int:

    from .experiments.train_vision import VisionSpec, run

    spec = VisionSpec(
        data=args.data,
        train_config=args.train_config,
        hwa_noise=args.hwa_noise,
        hwa_clip_sigma=args.hwa_clip_sigma,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_train=args.max_train,
        max_test=args.max_test,
        seed=args.seed,
        configs=_names(args.configs),
        chips=args.chips,
    )
    if args.times is not None:
        spec.times = args.times
    return _run_or_exit(parser, "train-vision", run, spec, args)


def _names(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [c.strip() for c in text.split(",") if c.strip()]


def _run_or_exit(parser, name: str, run, spec, args, **extra) -> int:
    """Run an experiment with ``--threads``; a bad input exits with status 2 and a one-line
    message."""
    import torch

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
