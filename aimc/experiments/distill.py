"""Knowledge distillation for ``aimc finetune-squad --teacher``: a digital QA model teaches the
(analog) student on the same inputs.

Loss: ``alpha * T**2 * KL(p_teacher || p_student) + (1 - alpha) * label loss``, with ``p`` the
softmax of the start (and end) logits at temperature ``T`` over a window's real tokens, the KL
averaged over windows and over start and end (Hinton, Vinyals & Dean, "Distilling the knowledge
in a neural network", arXiv:1503.02531, 2015). The direction is Hinton's ``KL(teacher ||
student)`` (the cross-entropy to the teacher's soft targets up to a constant): it is
mass-covering, so the student learns the teacher's whole span distribution including the
runner-up spans, and its gradient in the student logits, ``(p_student - p_teacher) / T``, has
the form of the label loss's, which the ``T**2`` factor brings to the same scale for any ``T``.
The reverse ``KL(student || teacher)`` would be mode-seeking and its gradient vanishes where the
student puts no mass, which is where an analog student most needs the teacher.

The teacher runs digitally, in eval and inference mode (no autograd graph, no dropout), once per
batch; it is never converted, trained or wrapped in DDP.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch
from torch import Tensor

SELF = "self"  #: ``--teacher self``: the digital copy of the starting model


def distill_loss(
    student_start: Tensor,
    student_end: Tensor,
    teacher_start: Tensor,
    teacher_end: Tensor,
    attention_mask: Tensor,
    temperature: float,
) -> Tensor:
    """``T**2 * KL(p_teacher || p_student)`` at temperature ``T``, over the real tokens of each
    window (padding is masked out of both softmaxes), summed over positions, averaged over the
    windows and over the start and end distributions."""
    pad = attention_mask == 0
    kl = 0.0
    for s, t in ((student_start, teacher_start), (student_end, teacher_end)):
        log_s = torch.log_softmax(s.float().masked_fill(pad, -1e9) / temperature, dim=-1)
        log_t = torch.log_softmax(t.float().masked_fill(pad, -1e9) / temperature, dim=-1)
        per_token = (log_t.exp() * (log_t - log_s)).masked_fill(pad, 0.0)
        kl = kl + per_token.sum(dim=-1).mean()
    return kl / 2 * temperature**2


def load_teacher(spec: Any, device: torch.device, tokenizer) -> torch.nn.Module:
    """The teacher of ``spec.teacher`` (a model directory / hub id, or ``"self"`` = a fresh
    digital copy of ``spec.model``), frozen, in eval mode. Errors name ``--teacher``: no QA head,
    a QA head that does not give start and end logits, a different vocabulary or normalizer than
    the student's tokenizer, fewer positions than ``--max-length``."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from .models import load_weights, max_positions, qa_config, with_merged_adapter

    path = spec.model if spec.teacher == SELF else spec.teacher
    label = f"--teacher {SELF} (the starting model {path!r})" if spec.teacher == SELF else None
    label = label or f"--teacher: {path!r}"
    cfg = qa_config(path, label)
    try:
        teacher_tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{label}: cannot load the tokenizer of {path!r}: {err}") from None
    why = _tokenizer_difference(tokenizer, teacher_tok)
    if why:
        raise ValueError(
            f"{label} has a different tokenizer than --model ({why}); allowed: a teacher with "
            "the student's vocabulary (its logits index the same tokens)"
        )
    positions = max_positions(cfg)
    if positions is not None and positions < spec.max_length:
        raise ValueError(
            f"{label} takes at most {positions} positions but --max-length is "
            f"{spec.max_length}; allowed: a teacher with at least --max-length positions"
        )
    teacher = load_weights(lambda: AutoModelForQuestionAnswering.from_pretrained(path), path)
    teacher = with_merged_adapter(teacher, path)  # a LoRA export: base + adapter
    head = getattr(teacher, "qa_outputs", None)
    outputs = getattr(head, "out_features", cfg.num_labels)
    if outputs != 2:
        raise ValueError(
            f"{label} has a QA head with {outputs} outputs; allowed: 2 (start and end logits, "
            "as the student's)"
        )
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def _tokenizer_difference(student, teacher) -> str:
    """What differs between two tokenizers' vocabularies and normalizers ("" if nothing)."""
    a, b = student.get_vocab(), teacher.get_vocab()
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:3]
        return f"vocabularies of {len(a)} and {len(b)} tokens differ, e.g. {diff!r}"

    def normalizer(tok) -> Any:
        backend = getattr(tok, "backend_tokenizer", None)
        return json.loads(backend.to_str()).get("normalizer") if backend is not None else None

    if normalizer(student) != normalizer(teacher):
        return "the text normalizers differ (e.g. lower-casing or accent stripping)"
    return ""


def teacher_logits(teacher: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The teacher's start and end logits on ``batch`` (the inputs its forward accepts), with no
    autograd graph."""
    accepted = inspect.signature(teacher.forward).parameters
    inputs = {k: v for k, v in batch.items() if k in accepted}
    with torch.inference_mode():
        out = teacher(**inputs)
    return out.start_logits.clone(), out.end_logits.clone()


def check_distill_options(spec: Any) -> None:
    """``--teacher``, ``--distill-alpha`` and ``--distill-temperature`` of a spec."""
    import math

    t = spec.teacher
    if t is not None and (not isinstance(t, str) or not t.strip()):
        raise ValueError(f"--teacher: got {t!r}; allowed: a model directory, hub id or 'self'")
    checks = (
        ("distill_alpha", spec.distill_alpha, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        ("distill_temperature", spec.distill_temperature, lambda v: v > 0, "a number > 0"),
    )
    for name, v, ok, allowed in checks:
        good = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not good or not ok(v):
            raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: {allowed}")


__all__ = ["SELF", "check_distill_options", "distill_loss", "load_teacher", "teacher_logits"]
