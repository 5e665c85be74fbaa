"""SQuAD v1.1 exact-match and F1 metrics, with the official evaluation script's semantics.

:func:`normalize_answer`, :func:`exact_match_score`, :func:`f1_score` and
:func:`metric_max_over_ground_truths` reproduce ``evaluate-v1.1.py`` of the SQuAD v1.1 release
exactly, including its corner cases:

* normalisation is ``white_space_fix(remove_articles(remove_punc(lower(s))))``; only the ASCII
  characters of :data:`string.punctuation` are removed, and articles are removed after punctuation
  (so ``"the-end"`` becomes ``"theend"`` and keeps its "the");
* two answers that both normalise to the empty string (e.g. ``"The"`` and ``"a"``) are an exact
  match but have F1 0, because F1 is 0 whenever there is no common token.

:func:`squad_scores` aggregates over a list of questions like the script's ``evaluate``: a
question without a prediction scores 0. Unlike the script it does not print a message for it but
reports the number of such questions, and it rejects predictions for unknown question ids.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from aimc.squad.data import SquadExample

__all__ = [
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "normalize_answer",
    "squad_scores",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, remove punctuation, remove articles and collapse whitespace (in that order)."""

    def remove_articles(text: str) -> str:
        return _ARTICLES.sub(" ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        return "".join(ch for ch in text if ch not in _PUNCTUATION)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of two answers after :func:`normalize_answer` (0 without common tokens)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """Whether the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], float], prediction: str, ground_truths: Iterable[str]
) -> float:
    """The best score of ``prediction`` against any of the gold answers.

    Raises:
        ValueError: ``ground_truths`` is empty (as ``max`` of an empty sequence in the script).
    """
    scores = [metric_fn(prediction, ground_truth) for ground_truth in ground_truths]
    if not scores:
        raise ValueError("metric_max_over_ground_truths: no ground-truth answers")
    return max(scores)


def squad_scores(
    predictions: Mapping[str, str], examples: Sequence[SquadExample]
) -> dict[str, float]:
    """Official SQuAD v1.1 exact match and F1 (both in percent) over ``examples``.

    Args:
        predictions: Predicted answer text per question id. Questions of ``examples`` without a
            prediction score 0 on both metrics (as in the official script).
        examples: The questions to score, e.g. the (sub)set that was evaluated.

    Returns:
        ``{"exact_match": ..., "f1": ..., "count": n, "missing": k}``: the two metrics as
        100 * mean over the ``n`` questions, and the number ``k`` of questions without a prediction.

    Raises:
        ValueError: ``examples`` is empty, ``predictions`` has ids that are not in ``examples``,
            or a prediction is not a string.
    """
    if not examples:
        raise ValueError("squad_scores: no questions to score")
    known = {example.id for example in examples}
    unknown = [qid for qid in predictions if qid not in known]
    if unknown:
        shown = ", ".join(repr(qid) for qid in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(
            f"squad_scores: {len(unknown)} prediction(s) for question ids that are not among the "
            f"{len(known)} questions scored: {shown}{more}"
        )
    exact_match = 0.0
    f1 = 0.0
    missing = 0
    for example in examples:
        if example.id not in predictions:
            missing += 1
            continue
        prediction = predictions[example.id]
        if not isinstance(prediction, str):
            raise ValueError(
                f"squad_scores: the prediction for question {example.id!r} must be a str, "
                f"got {type(prediction).__name__}"
            )
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, example.answers)
        f1 += metric_max_over_ground_truths(f1_score, prediction, example.answers)
    total = len(examples)
    return {
        "exact_match": 100.0 * exact_match / total,
        "f1": 100.0 * f1 / total,
        "count": total,
        "missing": missing,
    }
