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
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.seeds < 1:
            parser.error(f"--seeds: got {args.seeds}; allowed: an integer >= 1")
        import torch

        from .demo import run

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        print(run(args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
