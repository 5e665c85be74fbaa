"""Where the reference simulator (IBM AIHWKIT 1.2.0) comes from and whether it can run here."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT.parent / "shared" / "wheels"
WHEEL_GLOB = "aihwkit-1.2.0-cp*-cp*-*.whl"
TORCH_PIN = "2.13.0"  # the wheel's C++ extension is built against exactly this torch


def wheel_status() -> tuple[Path | None, str]:
    """``(wheel, "")`` when the shared wheel fits this interpreter and torch, else
    ``(None, reason)``."""
    wheels = sorted(WHEELS.glob(WHEEL_GLOB)) if WHEELS.is_dir() else []
    if not wheels:
        return None, f"no {WHEEL_GLOB} in {WHEELS}"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    fitting = [w for w in wheels if f"-{tag}-" in w.name]
    if not fitting:
        return None, f"{wheels[0].name} is not built for this Python ({tag})"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if torch.__version__.split("+")[0] != TORCH_PIN:
        return None, f"the wheel needs torch=={TORCH_PIN}, this venv has {torch.__version__}"
    return fitting[0], ""


def reference_status() -> tuple[bool, str]:
    """``(True, "")`` when ``aihwkit`` imports; else ``(False, reason)``. On a machine where the
    wheel fits, a missing or broken install is an error in CI (never a silent skip)."""
    wheel, reason = wheel_status()
    if importlib.util.find_spec("aihwkit") is None:
        if wheel is not None:
            reason = f"aihwkit is not installed although {wheel.name} fits (run make test)"
        return False, f"AIHWKIT unavailable: {reason}"
    try:
        import aihwkit.simulator.rpu_base  # noqa: F401  (the C++ extension)
    except Exception as e:  # noqa: BLE001
        return False, f"AIHWKIT does not import: {type(e).__name__}: {e}"
    return True, ""


def must_run() -> bool:
    """In CI on a machine where the wheel fits, the conformance suite may not skip."""
    return bool(os.environ.get("CI")) and wheel_status()[0] is not None
