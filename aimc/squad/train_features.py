"""Labelled SQuAD features for fine-tuning an extractive-QA model.

The recipe of HuggingFace's ``run_qa.py`` (``prepare_train_features``): question + context through
the fast tokenizer with ``truncation="only_second"``, overlapping windows of ``max_length`` tokens
with ``stride`` tokens of overlap; each window is labelled with the token positions of the first
gold answer, or with the position of the ``[CLS]`` token when the answer is not entirely inside
the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import SquadExample
from .features import pad_batch, tokenize_windows


@dataclass
class TrainFeatures:
    """Tokenized, labelled training windows (unpadded)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    start_positions: list[int]
    end_positions: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def answerable(self) -> int:
        """How many windows contain their answer (the others point at ``[CLS]``)."""
        return sum(1 for s in self.start_positions if s > 0)


def _label(
    offsets: list[tuple[int, int]], seq: list[int | None], start: int, end: int, cls: int
) -> tuple[int, int]:
    """Token span of the characters ``[start, end)`` inside the context part, or ``(cls, cls)``."""
    ctx = [i for i, s in enumerate(seq) if s == 1]
    if not ctx:
        return cls, cls
    first, last = ctx[0], ctx[-1]
    if offsets[first][0] > start or offsets[last][1] < end:
        return cls, cls
    s_tok = first
    while s_tok <= last and offsets[s_tok][0] <= start:
        s_tok += 1
    e_tok = last
    while e_tok >= first and offsets[e_tok][1] >= end:
        e_tok -= 1
    return s_tok - 1, e_tok + 1


def make_train_features(
    examples: list[SquadExample], tokenizer, max_length: int = 384, stride: int = 128
) -> TrainFeatures:
    """Tokenize and label every (question, context) pair (first gold answer)."""
    if stride >= max_length:
        raise ValueError(
            f"--stride: got {stride} with --max-length {max_length}; allowed: stride < max_length"
        )
    enc = tokenize_windows(examples, tokenizer, max_length, stride)
    starts, ends = [], []
    cls_id = tokenizer.cls_token_id
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        ids = enc["input_ids"][i]
        cls = ids.index(cls_id) if cls_id in ids else 0
        if not ex.answers:
            s, e = cls, cls
        else:
            a_start = ex.answer_starts[0]
            s, e = _label(offsets, enc.sequence_ids(i), a_start, a_start + len(ex.answers[0]), cls)
        starts.append(s)
        ends.append(e)
    return TrainFeatures(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        start_positions=starts,
        end_positions=ends,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def collate_train(
    features: TrainFeatures, idx: list[int], device: torch.device
) -> dict[str, Tensor]:
    """A padded batch of the windows ``idx`` with their labels, on ``device``."""
    batch = pad_batch(features.input_ids, features.token_type_ids, idx, features.pad_id, device)
    batch["start_positions"] = torch.tensor(
        [features.start_positions[i] for i in idx], device=device
    )
    batch["end_positions"] = torch.tensor([features.end_positions[i] for i in idx], device=device)
    return batch


__all__ = ["TrainFeatures", "collate_train", "make_train_features"]
