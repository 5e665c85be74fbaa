"""Loading and sub-sampling of SQuAD v1.1 data sets.

The official file layout is::

    {"version": "1.1",
     "data": [{"title": str,
               "paragraphs": [{"context": str,
                               "qas": [{"id": str, "question": str,
                                        "answers": [{"text": str, "answer_start": int}]}]}]}]}

:func:`load_squad` reads plain ``.json`` as well as ``.json.gz`` and ``.json.xz`` files, validates
the layout and flattens it into one :class:`SquadExample` per question, in file order. All errors
are :class:`ValueError` (or :class:`FileNotFoundError`) with a message that names the file and says
what is wrong, since the path usually comes straight from the ``--data`` command-line option.

:func:`select_questions` draws a deterministic, seeded subset of questions for quick evaluations.
Only the standard library is used.
"""

from __future__ import annotations

import gzip
import json
import lzma
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SquadExample", "load_squad", "select_questions"]

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"

# Accepted file-name endings and the format each announces.
_SUFFIX_FORMATS: tuple[tuple[str, str], ...] = (
    (".json.gz", "gzip"),
    (".json.xz", "xz"),
    (".json", "json"),
    (".gz", "gzip"),
    (".xz", "xz"),
)


@dataclass(frozen=True)
class SquadExample:
    """One SQuAD question with its paragraph and all gold answers.

    Attributes:
        id: The question id (unique within a data set).
        title: Title of the article the paragraph comes from.
        context: The paragraph text the answer is to be extracted from.
        question: The question text.
        answers: Gold answer texts in file order (duplicates kept, as in the official data).
        answer_starts: Character offset into ``context`` of each gold answer, parallel to
            ``answers``.
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def _format_from_suffix(path: Path) -> str:
    """Return "json", "gzip" or "xz" from the file name, or raise ``ValueError``."""
    name = path.name.lower()
    for suffix, fmt in _SUFFIX_FORMATS:
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"--data: {path}: unsupported file type {''.join(path.suffixes) or '(no suffix)'!r}; "
        "expected .json, .json.gz or .json.xz"
    )


def _format_from_magic(raw: bytes) -> str | None:
    """Return "gzip" or "xz" when ``raw`` starts with that format's magic bytes, else None."""
    if raw.startswith(_GZIP_MAGIC):
        return "gzip"
    if raw.startswith(_XZ_MAGIC):
        return "xz"
    return None


def _read_text(path: Path) -> tuple[str, str]:
    """Read ``path`` and decompress it as its content (magic bytes) says; decode UTF-8.

    Returns the text and a hint for error messages: empty, or a note that the file name announces
    a compression its content does not have.
    """
    if not path.exists():
        raise FileNotFoundError(f"--data: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"--data: {path}: not a regular file")
    named = _format_from_suffix(path)
    raw = path.read_bytes()
    # The content decides: a mislabelled file (plain JSON named .gz, gzip named .json, ...) works.
    actual = _format_from_magic(raw) or "json"
    hint = ""
    if named != "json" and actual == "json":
        hint = f" (the name says {named} but the file does not start with the {named} magic bytes)"
    if actual != "json":
        try:
            raw = gzip.decompress(raw) if actual == "gzip" else lzma.decompress(raw)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise ValueError(f"--data: {path}: corrupt or truncated {actual} data: {exc}") from exc
    try:
        return raw.decode("utf-8-sig"), hint
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"--data: {path}: not UTF-8 text at byte {exc.start}{hint}; expected SQuAD JSON"
        ) from exc


def _parse_json(path: Path, text: str, hint: str) -> Any:
    """``json.loads`` with errors turned into a ``ValueError`` naming the file and position."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--data: {path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos}){hint}"
        ) from exc


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    """Return ``obj[key]`` after checking that it exists and has the expected type."""
    kind_name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    if not isinstance(obj, dict):
        raise ValueError(f"--data: {path}: {where} is not a JSON object (got {type(obj).__name__})")
    if key not in obj:
        raise ValueError(f"--data: {path}: {where} has no {key!r}")
    value = obj[key]
    # bool is a subclass of int; never accept it where a number or string is expected.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(
            f"--data: {path}: {where}: {key!r} must be of type {kind_name}, "
            f"got {type(value).__name__}"
        )
    return value


def load_squad(path: str | Path) -> list[SquadExample]:
    """Load a SQuAD v1.1 file into a flat list of questions, in file order.

    Args:
        path: A ``.json``, ``.json.gz`` or ``.json.xz`` file in the official SQuAD v1.1 layout.
            The compression is detected from the content (magic bytes), so a mislabelled file is
            still read; the name must nevertheless carry one of those suffixes.

    Returns:
        One :class:`SquadExample` per question.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported suffix, undecodable or invalid JSON (with the error position),
            wrong layout (naming the article/paragraph/question index), a question without
            answers, no questions at all, or a duplicate question id.
    """
    path = Path(path)
    text, hint = _read_text(path)
    doc = _parse_json(path, text, hint)

    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        if not isinstance(doc, dict):
            found = f"the top level is a JSON {type(doc).__name__}, not an object"
        elif "data" in doc:
            found = f"'data' is a {type(doc['data']).__name__}"
        else:
            found = f"top-level keys: {sorted(doc)}"
        raise ValueError(f"--data: {path}: not a SQuAD file: no 'data' list ({found})")

    examples: list[SquadExample] = []
    first_seen: dict[str, str] = {}
    for a_idx, article in enumerate(doc["data"]):
        where_a = f"article {a_idx}"
        if not isinstance(article, dict):
            raise ValueError(f"--data: {path}: {where_a} is not a JSON object")
        title = article.get("title", "")
        if not isinstance(title, str):
            raise ValueError(
                f"--data: {path}: {where_a}: 'title' must be of type str, "
                f"got {type(title).__name__}"
            )
        if title:
            where_a = f"article {a_idx} ({title!r})"
        paragraphs = _require(article, "paragraphs", list, where_a, path)
        for p_idx, paragraph in enumerate(paragraphs):
            where_p = f"{where_a}, paragraph {p_idx}"
            context = _require(paragraph, "context", str, where_p, path)
            qas = _require(paragraph, "qas", list, where_p, path)
            for q_idx, qa in enumerate(qas):
                where_q = f"{where_p}, question {q_idx}"
                qid = _require(qa, "id", str, where_q, path)
                where_q = f"{where_q} (id {qid!r})"
                question = _require(qa, "question", str, where_q, path)
                answers = _require(qa, "answers", list, where_q, path)
                if not answers:
                    raise ValueError(
                        f"--data: {path}: {where_q} has an empty 'answers' list "
                        "(unanswerable SQuAD v2 questions are not supported)"
                    )
                texts: list[str] = []
                starts: list[int] = []
                for n_idx, answer in enumerate(answers):
                    where_n = f"{where_q}, answer {n_idx}"
                    texts.append(_require(answer, "text", str, where_n, path))
                    starts.append(_require(answer, "answer_start", int, where_n, path))
                if qid in first_seen:
                    raise ValueError(
                        f"--data: {path}: duplicate question id {qid!r} at {where_q}; "
                        f"first seen at {first_seen[qid]}"
                    )
                first_seen[qid] = where_q
                examples.append(
                    SquadExample(
                        id=qid,
                        title=title,
                        context=context,
                        question=question,
                        answers=tuple(texts),
                        answer_starts=tuple(starts),
                    )
                )

    if not examples:
        raise ValueError(
            f"--data: {path}: the data set is empty ({len(doc['data'])} articles, no questions)"
        )
    return examples


def select_questions(
    examples: Sequence[SquadExample], max_questions: int | None, seed: int = 0
) -> list[SquadExample]:
    """Return a deterministic subset of ``examples``, in their original order.

    Args:
        examples: The full list of questions (e.g. from :func:`load_squad`).
        max_questions: ``None`` or a value ``>= len(examples)`` keeps every question; otherwise a
            fixed random subset of this size is drawn.
        seed: Seed of the ``random.Random`` used to draw the subset; the same seed (and the same
            ``examples``) always gives the same subset.

    Returns:
        The selected questions, in the order they have in ``examples``.

    Raises:
        ValueError: ``max_questions`` is not a positive integer.
    """
    if max_questions is None:
        return list(examples)
    if isinstance(max_questions, bool) or not isinstance(max_questions, int):
        raise ValueError(
            f"--max-questions must be a positive integer, got {type(max_questions).__name__} "
            f"{max_questions!r}"
        )
    if max_questions <= 0:
        raise ValueError(f"--max-questions must be a positive integer, got {max_questions}")
    if max_questions >= len(examples):
        return list(examples)
    indices = random.Random(seed).sample(range(len(examples)), max_questions)
    return [examples[i] for i in sorted(indices)]
