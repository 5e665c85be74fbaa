"""Perplexity and next-token accuracy of a causal LM with HuggingFace's sliding-window method.

Each window of up to ``window`` tokens is run as one sequence; only its ``new`` last tokens (those
the previous window did not reach) are scored, the labels of the others are ``-100``. The
perplexity is ``exp`` of the token-weighted mean negative log-likelihood over all scored tokens
(the first token of the corpus has no context and is never scored); the accuracy is the fraction
of scored tokens that are the argmax of the model's prediction.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from .data import Window, stack_windows, window_batches


def window_labels(input_ids: Tensor, batch: list[Window]) -> Tensor:
    """Labels of a batch of windows: the token ids, ``-100`` on the context tokens."""
    labels = input_ids.clone()
    for i, w in enumerate(batch):
        labels[i, : w.length - w.new] = -100
    return labels


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


@torch.no_grad()
def score_windows(
    model: nn.Module,
    ids: Tensor,
    windows: list[Window],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Summed NLL (nats), scored tokens and correctly predicted tokens over ``windows`` of the
    token ids ``ids``: ``{"nll_sum", "tokens", "correct"}``.

    Windows of equal length are batched (``batch_size`` at most). Only the logits of positions
    that predict a scored token are computed where the model takes ``logits_to_keep`` (all
    HuggingFace causal LMs of transformers >= 4.50); the log-softmax is float32 whatever the
    model's dtype.
    """
    keep_ok = _accepts_logits_to_keep(model)
    nll, tokens, correct = 0.0, 0, 0
    for batch in window_batches(ids, windows, batch_size):
        input_ids = stack_windows(ids, batch).to(device)
        labels = window_labels(input_ids, batch)
        length = input_ids.shape[1]
        keep = min(length, max(w.new for w in batch) + 1)
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if keep_ok else {}
        logits = model(input_ids=input_ids, **kwargs).logits
        logits = logits[:, -keep:] if logits.shape[1] >= keep else logits
        first = length - logits.shape[1]  # position of the first kept logit
        pred = logits[:, :-1].float()  # position p predicts the token at p + 1
        target = labels[:, first + 1 :]
        mask = target != -100
        if not bool(mask.any()):
            continue
        logp = torch.log_softmax(pred[mask], dim=-1)
        t = target[mask]
        nll += float(-logp.gather(1, t.unsqueeze(1)).sum())
        tokens += int(t.numel())
        correct += int((logp.argmax(dim=-1) == t).sum())
    return {"nll_sum": nll, "tokens": tokens, "correct": correct}


def perplexity(
    model: nn.Module,
    ids: Tensor,
    windows: list[Window],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """``{"perplexity", "nll", "accuracy", "tokens"}`` of a causal LM on ``windows`` of ``ids``
    (module docstring): ``nll`` is the mean NLL per scored token in nats, ``perplexity`` its
    ``exp``, ``accuracy`` the next-token accuracy in percent."""
    s = score_windows(model, ids, windows, batch_size, device)
    if s["tokens"] == 0:
        raise ValueError("windows: no token is scored; allowed: windows with new tokens")
    mean = s["nll_sum"] / s["tokens"]
    ppl = math.exp(mean) if mean < 700 else (math.inf if mean >= 700 else math.nan)
    return {
        "perplexity": ppl,
        "nll": mean,
        "accuracy": 100.0 * s["correct"] / s["tokens"],
        "tokens": s["tokens"],
    }


__all__ = ["perplexity", "score_windows", "window_labels"]
