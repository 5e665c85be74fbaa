"""The text corpus of a causal-LM evaluation: loading, tokenizing, sliding windows.

A corpus is a UTF-8 text file, a SQuAD v1.1 JSON file (``.json``, ``.json.gz``, ``.json.xz``:
its Wikipedia paragraphs, each unique ``context`` once, in file order) or a HuggingFace
``datasets`` dataset saved with ``save_to_disk`` (the rows of its text column). Paragraphs and
rows are joined with blank lines, as in HuggingFace's perplexity guide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SQUAD_SUFFIXES = (".json", ".json.gz", ".json.xz")
#: the split of a saved ``DatasetDict`` that is read, first one present
SPLITS = ("test", "validation", "train")


def squad_contexts(path: str | Path) -> str:
    """The unique ``context`` paragraphs of a SQuAD v1.1 file, in order, joined by blank lines."""
    from ..squad.data import load_squad

    try:
        examples = load_squad(path)
    except ValueError as err:
        raise ValueError(str(err).replace("--data:", "--corpus:", 1)) from None
    return "\n\n".join(dict.fromkeys(e.context for e in examples))


def _is_saved_dataset(path: Path) -> bool:
    names = ("dataset_info.json", "state.json", "dataset_dict.json")
    return path.is_dir() and any((path / n).exists() for n in names)


def _dataset_text(path: Path) -> str:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"--corpus: {path} is a saved HuggingFace dataset, but the datasets package is not "
            "installed (pip install datasets)"
        ) from None
    ds: Any = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = next((s for s in SPLITS if s in ds), None)
        if split is None:
            if len(ds) != 1:
                raise ValueError(
                    f"--corpus: {path} has the splits {sorted(ds)!r}; allowed: a dataset with "
                    f"one split or one of {', '.join(SPLITS)}"
                )
            split = next(iter(ds))
        ds = ds[split]
    columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"]
    column = "text" if "text" in columns else (columns[0] if columns else None)
    if column is None:
        raise ValueError(
            f"--corpus: {path} has no text column (columns: {list(ds.features)!r}); allowed: a "
            "dataset with a string column (preferably named 'text')"
        )
    return "\n\n".join(ds[column])


def load_corpus(path: str | Path) -> str:
    """The text of a corpus (module docstring): a UTF-8 file, a SQuAD JSON or a saved dataset.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file that is not UTF-8 text, a dataset without a text column.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--corpus: {p} does not exist")
    if _is_saved_dataset(p):
        return _dataset_text(p)
    if p.is_dir():
        raise ValueError(
            f"--corpus: {p} is a directory but not a dataset saved with save_to_disk; allowed: "
            "a UTF-8 text file, a SQuAD v1.1 JSON file or a saved HuggingFace dataset"
        )
    if p.name.endswith(SQUAD_SUFFIXES):
        return squad_contexts(p)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--corpus: {p} is not UTF-8 text (byte {err.start}: {err.reason}); allowed: a "
            "UTF-8 text file, a SQuAD v1.1 JSON file or a saved HuggingFace dataset"
        ) from None


def tokenize(text: str, tokenizer: Any, max_tokens: int | None = None) -> Tensor:
    """The token ids (int64, 1-D) of ``text``, with the tokenizer's special tokens (a BOS for
    Llama-style tokenizers) as HuggingFace's perplexity guide; cut to ``max_tokens``.

    With ``max_tokens`` only a prefix of the text is tokenized when it certainly gives the same
    first ``max_tokens`` tokens (it yields more than ``max_tokens + 16`` of them; a token never
    spans the cut that far back); otherwise the whole text is."""

    def ids_of(t: str) -> Tensor:
        return tokenizer(t, return_tensors="pt", verbose=False)["input_ids"][0].long()

    if max_tokens is None:
        return ids_of(text)
    prefix = text[: 16 * (max_tokens + 64)]
    ids = ids_of(prefix)
    if len(prefix) < len(text) and len(ids) <= max_tokens + 16:
        ids = ids_of(text)
    return ids[:max_tokens]


@dataclass(frozen=True)
class Window:
    """One window of the sliding-window evaluation: tokens ``[begin, end)``, of which the last
    ``new`` are scored (the others are context seen before)."""

    begin: int
    end: int
    new: int

    @property
    def length(self) -> int:
        return self.end - self.begin


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """HuggingFace's perplexity-guide windows: starts ``0, stride, 2 stride, ...``, each up to
    ``window`` tokens long, each scoring only the tokens the previous one did not reach; the
    last one ends at ``n_tokens``. ``1 <= stride < window`` (any stride for a single window): a
    window's first token is predicted by no position of its own window, so a later window must
    overlap the one before by at least one token for every token but the corpus's first to be
    scored exactly once."""
    if stride < 1 or (stride >= window and n_tokens > window):
        raise ValueError(
            f"sliding_windows: stride {stride!r} with window {window!r}; allowed: "
            "1 <= stride < window (with stride == window the first token of every later window "
            "would never be scored)"
        )
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        windows.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def window_batches(ids: Tensor, windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive windows grouped into batches of at most ``batch_size`` windows of the same
    length (only the last window can be shorter; it gets a batch of its own)."""
    batches: list[list[Window]] = []
    for w in windows:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and last[0].length == w.length:
            last.append(w)
        else:
            batches.append([w])
    return batches


def stack_windows(ids: Tensor, batch: list[Window]) -> Tensor:
    """``(len(batch), length)`` token ids of a batch of equal-length windows."""
    return torch.stack([ids[w.begin : w.end] for w in batch])


__all__ = [
    "Window",
    "load_corpus",
    "sliding_windows",
    "squad_contexts",
    "stack_windows",
    "tokenize",
    "window_batches",
]
