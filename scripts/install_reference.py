"""Install the reference simulator (IBM AIHWKIT 1.2.0, ``../shared/wheels``) into this venv when
the wheel is there and fits the interpreter and torch; otherwise say in one line why not.

Run by ``make test`` (so CI has it). The wheel's C++ extension is ABI-bound to torch 2.13.0 and
built for CPython 3.11; ``--no-deps`` keeps pip from pulling torchvision (a CUDA torch) and the
build tools its metadata names. Exit status 0 either way: the conformance tests report the reason
(``tests/conformance/reference.py``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conformance.reference import wheel_status  # noqa: E402


def main() -> int:
    wheel, reason = wheel_status()
    if wheel is None:
        print(f"reference simulator: not installed — {reason}")
        return 0
    if importlib.util.find_spec("aihwkit") is not None:
        print(f"reference simulator: AIHWKIT already installed ({wheel.name})")
        return 0
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    # what aihwkit needs at run time (numpy is already a dev dependency); torch stays pinned
    subprocess.run([*pip, "-c", str(ROOT / "constraints-cpu.txt"), "scipy", "tqdm"], check=True)
    print(f"reference simulator: installed {wheel.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
