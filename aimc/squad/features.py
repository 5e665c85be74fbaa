"""SQuAD features (tokenize once), batched QA-model evaluation and span post-processing.

Follows the standard extractive-QA recipe of HuggingFace's ``run_qa.py``: question + context
through the model's fast tokenizer with ``truncation="only_second"``, ``max_length`` 384 and a
``stride`` of 128 overlapping tokens, offsets kept for the context tokens; the answer is the
best-scoring span (``start_logit + end_logit``) over the ``n_best`` start and end positions of all
features of a question, within the context and at most ``max_answer_length`` tokens long.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import SquadExample


@dataclass
class Features:
    """Tokenized features of a list of examples (one example may give several features)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example_index: list[int]  #: which example each feature came from
    offsets: list[list[tuple[int, int] | None]]  #: character span of context tokens, else None
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_windows(
    examples: list[SquadExample], tokenizer, max_length: int = 384, stride: int = 128
):
    """The fast tokenizer's encoding of every (question, context) pair as overlapping windows of
    ``max_length`` tokens (``stride`` tokens of overlap), with offsets and the window -> example
    map (``overflow_to_sample_mapping``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "--model: the tokenizer must be a fast (Rust) tokenizer: offsets are "
            "needed to map answer spans to and from the context"
        )
    _check_question_lengths(examples, tokenizer, max_length, stride)
    return tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _check_question_lengths(examples, tokenizer, max_length: int, stride: int) -> None:
    """Every window holds its question whole plus more than ``stride`` context tokens: a
    longer question made the fast tokenizer fail (a "Truncation error", or a Rust panic that
    no ``except Exception`` catches where the context needs several windows)."""
    if not examples:
        return
    questions = [e.question.lstrip() for e in examples]
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[worst] >= room:
        raise ValueError(
            f"--data: question {examples[worst].id!r} has {lengths[worst]} tokens; allowed: "
            f"fewer than {room} (--max-length {max_length} minus the special tokens minus "
            f"--stride {stride}: each window holds the question and more than --stride context "
            "tokens) — raise --max-length, lower --stride or leave the question out"
        )


def make_features(
    examples: list[SquadExample], tokenizer, max_length: int = 384, stride: int = 128
) -> Features:
    """Tokenize every (question, context) pair once."""
    enc = tokenize_windows(examples, tokenizer, max_length, stride)
    offsets = []
    for i, offs in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(offs, seq, strict=True)])
    return Features(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        example_index=list(enc["overflow_to_sample_mapping"]),
        offsets=offsets,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def _batches(features: Features, batch_size: int) -> list[list[int]]:
    """Feature indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(features)), key=lambda i: -len(features.input_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    input_ids: list[list[int]],
    token_type_ids: list[list[int]] | None,
    idx: list[int],
    pad_id: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """The sequences ``idx`` right-padded to the longest of them: ``input_ids``,
    ``attention_mask`` (and ``token_type_ids`` when the tokenizer gives them), on ``device``."""
    width = max(len(input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(input_ids[i])
        ids[row, :n] = torch.tensor(input_ids[i])
        mask[row, :n] = 1
        if token_type_ids is not None:
            types[row, :n] = torch.tensor(token_type_ids[i])
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if token_type_ids is not None:
        batch["token_type_ids"] = types.to(device)
    return batch


def _collate(features: Features, idx: list[int], device: torch.device) -> dict[str, Tensor]:
    return pad_batch(features.input_ids, features.token_type_ids, idx, features.pad_id, device)


def feature_batches(
    features: Features, batch_size: int = 32, device: torch.device | str = "cpu"
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """``(indices, model inputs)`` of each batch :func:`qa_logits` runs, in its order: features
    of similar length together, longest first, right-padded, on ``device``."""
    device = torch.device(device)
    for idx in _batches(features, batch_size):
        yield idx, _collate(features, idx, device)


def store_logits(
    out: object, idx: list[int], features: Features, starts: list[Tensor], ends: list[Tensor]
) -> None:
    """Put a batch's ``out.start_logits`` / ``out.end_logits`` (float32, on CPU, unpadded) at
    the features ``idx`` of ``starts`` / ``ends``."""
    s, e = out.start_logits.float().cpu(), out.end_logits.float().cpu()  # type: ignore[attr-defined]
    for row, i in enumerate(idx):
        n = len(features.input_ids[i])
        starts[i], ends[i] = s[row, :n], e[row, :n]


@torch.inference_mode()
def qa_logits(
    model: nn.Module, features: Features, batch_size: int = 32, device: torch.device | str = "cpu"
) -> tuple[list[Tensor], list[Tensor]]:
    """Start and end logits of every feature (float32, on CPU, unpadded), in feature order."""
    starts: list[Tensor] = [torch.empty(0)] * len(features)
    ends: list[Tensor] = [torch.empty(0)] * len(features)
    for idx, batch in feature_batches(features, batch_size, device):
        store_logits(model(**batch), idx, features, starts, ends)
    return starts, ends


def best_spans(
    examples: list[SquadExample],
    features: Features,
    starts: list[Tensor],
    ends: list[Tensor],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """The predicted answer text of every example (``""`` if no valid span)."""
    best: dict[int, tuple[float, str]] = {}
    for f, ex_i in enumerate(features.example_index):
        offs = features.offsets[f]
        s_log, e_log = starts[f], ends[f]
        k = min(n_best, len(s_log))
        s_top = torch.topk(s_log, k).indices.tolist()
        e_top = torch.topk(e_log, k).indices.tolist()
        context = examples[ex_i].context
        for s in s_top:
            if offs[s] is None:
                continue
            for e in e_top:
                if offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if ex_i not in best or score > best[ex_i][0]:
                    best[ex_i] = (score, context[offs[s][0] : offs[e][1]])
    return {ex.id: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}
