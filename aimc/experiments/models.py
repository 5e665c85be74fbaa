"""Loading HuggingFace models for the experiments (shared by the SQuAD and LM commands)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .safeio import reason


def load_weights(load: Callable[[], Any], path: str) -> Any:
    """``load()`` (a ``from_pretrained``); unreadable weights (a truncated or damaged
    ``model.safetensors``) are a ``ValueError`` naming ``--model`` and the file."""
    try:
        return load()
    except ValueError:
        raise
    except Exception as err:
        files = [Path(path) / n for n in ("model.safetensors", "pytorch_model.bin")]
        where = next((str(f) for f in files if f.exists()), path)
        raise ValueError(
            f"--model: cannot load the weights in {where} ({reason(err)}); the file is damaged "
            "or incomplete: export or download the model again"
        ) from err


__all__ = ["load_weights"]
