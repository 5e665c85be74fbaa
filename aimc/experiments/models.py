"""Loading HuggingFace models for the experiments (shared by the SQuAD and LM commands)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .safeio import reason


def max_positions(config: Any) -> int | None:
    """The positions a HuggingFace model config takes (``max_position_embeddings``, GPT-2's
    ``n_positions``), or None where it names none."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_positions(config: Any, max_length: int, label: str) -> None:
    """Refuse ``--max-length`` beyond the positions of the model ``label`` (its config)."""
    positions = max_positions(config)
    if positions is not None and positions < max_length:
        raise ValueError(
            f"--max-length: got {max_length}, but {label} takes at most {positions} positions; "
            f"allowed: at most {positions} (and --stride below it)"
        )


def with_merged_adapter(model: Any, path: str) -> Any:
    """``model`` (loaded from ``path``) with the LoRA adapter of an ``aimc finetune-squad
    --lora`` export (``path/adapter``) merged into its weights, where there is one: the model
    the export computes, as one plain model (a teacher, or a starting point for more
    fine-tuning). Merged before any conversion (peft's merge writes the weights' ``.data``)."""
    from ..lora import adapter_dir, load_adapter

    adapter = adapter_dir(path)
    return model if adapter is None else load_adapter(model, adapter).merge_and_unload()


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


def qa_config(path: str, label: str) -> Any:
    """The HuggingFace config at ``path`` (dir or hub id), checked to be an extractive-QA model
    (an architecture ``*ForQuestionAnswering``); errors start with ``label`` (the option)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{label}: cannot load a HuggingFace model from {path!r}: {err}") from None
    arch = cfg.architectures or []
    if not any(a.endswith("ForQuestionAnswering") for a in arch):
        raise ValueError(
            f"{label}: {path!r} has no trained question-answering head (architectures="
            f"{arch!r}); allowed: a model fine-tuned for extractive QA"
        )
    return cfg
