"""SQuAD v1.1 data loading/sub-sampling (aimc.squad.data) and official metrics (aimc.squad.metrics).

Metric expectations are computed by hand from the official ``evaluate-v1.1.py`` rules; the real
data checks use the shared official dev set (skipped where it is not available).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from aimc.squad.data import SquadExample, load_squad, select_questions
from aimc.squad.features import Features, feature_batches, qa_logits, store_logits
from aimc.squad.metrics import (
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
    squad_scores,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"
DEV = SHARED / "dev-v1.1.json.gz"
TRAIN = SHARED / "train-v1.1.rebuilt.json.xz"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    """A small valid SQuAD document: 2 articles, 3 paragraphs, 4 questions."""
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Alpha",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is the capital of France?",
                                "answers": [
                                    {"text": "Paris", "answer_start": 0},
                                    {"text": "Paris", "answer_start": 0},
                                ],
                            },
                            {
                                "id": "q2",
                                "question": "Of what is Paris the capital?",
                                "answers": [{"text": "France", "answer_start": 24}],
                            },
                        ],
                    },
                    {"context": "No questions here.", "qas": []},
                ],
            },
            {
                "title": "Beta",
                "paragraphs": [
                    {
                        "context": "Café au lait — a coffee drink.",
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What is café au lait?",
                                "answers": [
                                    {"text": "a coffee drink", "answer_start": 15},
                                    {"text": "coffee drink", "answer_start": 17},
                                ],
                            },
                            {
                                "id": "q0",
                                "question": "Which drink?",
                                "answers": [{"text": "Café au lait", "answer_start": 0}],
                            },
                        ],
                    }
                ],
            },
        ],
    }


def _write(path: Path, payload: bytes, compression: str | None = None) -> Path:
    if compression == "gzip":
        payload = gzip.compress(payload)
    elif compression == "xz":
        payload = lzma.compress(payload)
    path.write_bytes(payload)
    return path


def _write_doc(tmp_path: Path, doc: Any, name: str = "squad.json") -> Path:
    return _write(tmp_path / name, json.dumps(doc).encode("utf-8"))


def _ex(qid: str, *answers: str) -> SquadExample:
    return SquadExample(
        id=qid,
        title="t",
        context="c",
        question="q?",
        answers=tuple(answers),
        answer_starts=tuple(0 for _ in answers),
    )


@pytest.fixture(scope="module")
def dev_examples() -> list[SquadExample]:
    if not DEV.exists():
        pytest.skip(f"shared SQuAD dev set not available at {DEV}")
    return load_squad(DEV)


# --------------------------------------------------------------------------------------------
# normalize_answer / exact_match_score / f1_score
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The cat", "cat"),
        ("Paris!", "paris"),
        ("an apple a day", "apple day"),
        ("  New\tYork \n City  ", "new york city"),
        ("New\u00a0York", "new york"),  # str.split() also splits on Unicode whitespace
        ("A.B.C.", "abc"),  # punctuation first, so "a" is no longer a separate word
        ("the-end", "theend"),  # ... and "the" glued to "end" is not an article any more
        ("Theatre and theory", "theatre and theory"),  # articles only as whole words
        ("THE END", "end"),  # lower-casing comes first
        ("Newton's law", "newtons law"),
        ("Newton\u2019s law", "newton\u2019s law"),  # only ASCII punctuation is removed
        ("«Paris»", "«paris»"),
        ("Café the Crème", "café crème"),
        ("thé", "thé"),  # é is a word character: no boundary inside "thé"
        ("ÉCOLE", "école"),
        ("", ""),
        ("the a an", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("The cat", "cat", True),
        ("Paris!", "paris", True),
        ("  denver   broncos ", "Denver Broncos", True),
        ("cat", "cats", False),
        ("dog red", "red dog", False),
        ("the", "a", True),  # both normalise to "" (official behaviour)
        ("sthène", "Sthène", True),
        ("Newton\u2019s", "Newton's", False),
    ],
)
def test_exact_match_score(prediction: str, truth: str, expected: bool) -> None:
    assert exact_match_score(prediction, truth) is expected


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        # [big, red, dog] vs [red, dog]: precision 2/3, recall 1 -> 2*(2/3)/(5/3) = 0.8
        ("the big red dog", "red dog", 0.8),
        # [red] vs [red, dog]: precision 1, recall 1/2 -> 2/3
        ("Red.", "the red dog", 2 / 3),
        # [dog, dog, dog] vs [dog]: common = min(3, 1) = 1; P 1/3, R 1 -> 0.5
        ("dog dog dog", "dog", 0.5),
        # [a1, b, c] vs [b, c, d, e]: common 2; P 2/3, R 1/2 -> 2*(1/3)/(7/6) = 4/7
        ("a1 b c", "b c d e", 4 / 7),
        ("dog red", "red dog", 1.0),
        ("Denver Broncos", "denver broncos!", 1.0),
        ("cat", "dog", 0.0),
        ("", "dog", 0.0),
        ("", "", 0.0),  # no common tokens -> 0, even though EM is true
        ("the", "a", 0.0),
        ("café crème", "Café", 2 / 3),
    ],
)
def test_f1_score(prediction: str, truth: str, expected: float) -> None:
    assert f1_score(prediction, truth) == pytest.approx(expected, abs=1e-12)
    assert isinstance(f1_score(prediction, truth), float)


def test_metric_max_over_ground_truths() -> None:
    golds = ["red dog", "the big red dog", "cat"]
    assert metric_max_over_ground_truths(exact_match_score, "Big red dog.", golds) is True
    assert metric_max_over_ground_truths(f1_score, "big red dog", golds) == 1.0
    # [red] vs [red, dog] -> 2/3; vs [big, red, dog] -> 1/2; vs [cat] -> 0
    assert metric_max_over_ground_truths(f1_score, "red", golds) == pytest.approx(2 / 3)
    assert metric_max_over_ground_truths(exact_match_score, "red", golds) is False
    with pytest.raises(ValueError, match="no ground-truth"):
        metric_max_over_ground_truths(f1_score, "red", [])


# --------------------------------------------------------------------------------------------
# squad_scores
# --------------------------------------------------------------------------------------------


def test_squad_scores_small() -> None:
    examples = [
        _ex("e1", "Paris"),
        _ex("e2", "red dog"),
        _ex("e3", "the blue whale", "whale"),
        _ex("e4", "nothing"),
    ]
    predictions = {"e1": "paris.", "e2": "the big red dog", "e3": "Whale"}
    scores = squad_scores(predictions, examples)
    # EM: 1 + 0 + 1 + 0 (missing) = 2 of 4; F1: 1 + 0.8 + 1 + 0 = 2.8 of 4
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(70.0)
    assert scores["count"] == 4
    assert scores["missing"] == 1
    assert set(scores) == {"exact_match", "f1", "count", "missing"}


def test_squad_scores_all_correct_and_none() -> None:
    examples = [_ex("a", "x y"), _ex("b", "z")]
    assert squad_scores({"a": "X Y", "b": "z"}, examples) == {
        "exact_match": 100.0,
        "f1": 100.0,
        "count": 2,
        "missing": 0,
    }
    assert squad_scores({}, examples) == {
        "exact_match": 0.0,
        "f1": 0.0,
        "count": 2,
        "missing": 2,
    }


def test_squad_scores_errors() -> None:
    examples = [_ex("a", "x"), _ex("b", "y")]
    with pytest.raises(ValueError, match=r"not among the 2 questions.*'zz'"):
        squad_scores({"a": "x", "zz": "y"}, examples)
    with pytest.raises(ValueError, match="no questions"):
        squad_scores({}, [])
    with pytest.raises(ValueError, match="must be a str"):
        squad_scores({"a": None}, examples)  # type: ignore[dict-item]


def test_squad_scores_dev_gold_predictions(dev_examples: list[SquadExample]) -> None:
    gold = {ex.id: ex.answers[0] for ex in dev_examples}
    scores = squad_scores(gold, dev_examples)
    assert scores == {"exact_match": 100.0, "f1": 100.0, "count": 10570, "missing": 0}


# --------------------------------------------------------------------------------------------
# load_squad: valid files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "compression"),
    [("s.json", None), ("s.json.gz", "gzip"), ("s.json.xz", "xz"), ("S.JSON.GZ", "gzip")],
)
def test_load_squad_compressions(tmp_path: Path, name: str, compression: str | None) -> None:
    path = _write(tmp_path / name, json.dumps(_doc()).encode("utf-8"), compression)
    examples = load_squad(path)
    assert [ex.id for ex in examples] == ["q1", "q2", "q3", "q0"]  # file order, not sorted
    assert examples == load_squad(str(path))
    first = examples[0]
    assert first == SquadExample(
        id="q1",
        title="Alpha",
        context="Paris is the capital of France.",
        question="What is the capital of France?",
        answers=("Paris", "Paris"),
        answer_starts=(0, 0),
    )
    third = examples[2]
    assert third.title == "Beta"
    assert third.answers == ("a coffee drink", "coffee drink")
    assert third.answer_starts == (15, 17)
    assert third.context[15 : 15 + len("a coffee drink")] == "a coffee drink"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "compression"),
    [
        ("plain.json.gz", None),
        ("gzipped.json", "gzip"),
        ("xzed.json.gz", "xz"),
        ("gzipped.json.xz", "gzip"),
    ],
)
def test_load_squad_mislabelled_still_works(
    tmp_path: Path, name: str, compression: str | None
) -> None:
    path = _write(tmp_path / name, json.dumps(_doc()).encode("utf-8"), compression)
    assert [ex.id for ex in load_squad(path)] == ["q1", "q2", "q3", "q0"]


def test_load_squad_bom_and_missing_title(tmp_path: Path) -> None:
    doc = _doc()
    del doc["data"][1]["title"]
    path = _write(tmp_path / "bom.json", b"\xef\xbb\xbf" + json.dumps(doc).encode("utf-8"))
    examples = load_squad(path)
    assert [ex.title for ex in examples] == ["Alpha", "Alpha", "", ""]


def test_load_squad_real_dev(dev_examples: list[SquadExample]) -> None:
    assert len(dev_examples) == 10570
    assert len({ex.title for ex in dev_examples}) == 48
    assert len({ex.id for ex in dev_examples}) == 10570
    first = dev_examples[0]
    assert first.id == "56be4db0acb8001400a502ec"
    assert first.title == "Super_Bowl_50"
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers == ("Denver Broncos",) * 3
    assert first.answer_starts == (177,) * 3
    assert first.context[177 : 177 + len("Denver Broncos")] == "Denver Broncos"
    last = dev_examples[-1]
    assert last.id == "5737aafd1c456719005744ff"
    assert last.title == "Force"
    assert last.answers[0] == "sthène"
    assert all(ex.answers and len(ex.answers) == len(ex.answer_starts) for ex in dev_examples)


@pytest.mark.slow  # ~3 s: decompresses and parses the 87,599-question train set
def test_load_squad_real_train() -> None:
    if not TRAIN.exists():
        pytest.skip(f"shared SQuAD train set not available at {TRAIN}")
    examples = load_squad(TRAIN)
    assert len(examples) == 87599
    assert len({ex.title for ex in examples}) == 442


# --------------------------------------------------------------------------------------------
# load_squad: errors
# --------------------------------------------------------------------------------------------


def test_load_squad_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json.gz"
    with pytest.raises(FileNotFoundError, match=r"--data: file not found: .*nope\.json\.gz"):
        load_squad(path)


def test_load_squad_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_squad(tmp_path / "dir.json")


@pytest.mark.parametrize("name", ["data.txt", "data", "data.json.bz2", "data.zip"])
def test_load_squad_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = _write_doc(tmp_path, _doc(), name)
    with pytest.raises(
        ValueError, match=r"unsupported file type.*\.json, \.json\.gz or \.json\.xz"
    ):
        load_squad(path)


def test_load_squad_invalid_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json", b'{"data": [\n  {"title": "x",}\n]}')
    with pytest.raises(ValueError) as info:
        load_squad(path)
    message = str(info.value)
    assert message.startswith(f"--data: {path}: not valid JSON:")
    assert "line 2 column 17 (char 27)" in message


def test_load_squad_invalid_json_compressed(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json.xz", b"[1, 2", "xz")
    with pytest.raises(ValueError, match=r"not valid JSON: .* line 1 column 6 \(char 5\)$"):
        load_squad(path)


def test_load_squad_mislabelled_garbage(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.json.gz", b"this is not gzip")
    with pytest.raises(ValueError, match="name says gzip but the file does not start with"):
        load_squad(path)
    path = _write(tmp_path / "y.json.xz", b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"not UTF-8 text at byte 0 \(the name says xz"):
        load_squad(path)


def test_load_squad_truncated_archive(tmp_path: Path) -> None:
    payload = json.dumps(_doc()).encode("utf-8")
    gz = _write(tmp_path / "t.json.gz", gzip.compress(payload)[:40])
    with pytest.raises(ValueError, match=r"t\.json\.gz: corrupt or truncated gzip data"):
        load_squad(gz)
    xz = _write(tmp_path / "t.json.xz", lzma.compress(payload)[:40])
    with pytest.raises(ValueError, match=r"t\.json\.xz: corrupt or truncated xz data"):
        load_squad(xz)


def _mutated(mutate: Any) -> dict[str, Any]:
    doc = _doc()
    mutate(doc)
    return doc


def _set(obj: dict[str, Any], key: str, value: Any) -> None:
    obj[key] = value


LAYOUT_ERRORS = [
    pytest.param([1, 2], r"no 'data' list \(the top level is a JSON list", id="top-list"),
    pytest.param(
        {"version": "1.1"}, r"no 'data' list \(top-level keys: \['version'\]\)", id="no-data"
    ),
    pytest.param({"data": {"a": 1}}, r"no 'data' list \('data' is a dict\)", id="data-dict"),
    pytest.param({"data": ["x"]}, r"article 0 is not a JSON object", id="article-str"),
    pytest.param(
        _mutated(lambda d: d["data"][1].pop("paragraphs")),
        r"article 1 \('Beta'\) has no 'paragraphs'",
        id="no-paragraphs",
    ),
    pytest.param(
        _mutated(lambda d: _set(d["data"][0], "title", 3)),
        r"article 0: 'title' must be of type str, got int",
        id="title-int",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][0]["paragraphs"][1].pop("context")),
        r"article 0 \('Alpha'\), paragraph 1 has no 'context'",
        id="no-context",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][1]["paragraphs"][0].pop("qas")),
        r"article 1 \('Beta'\), paragraph 0 has no 'qas'",
        id="no-qas",
    ),
    pytest.param(
        _mutated(lambda d: _set(d["data"][0]["paragraphs"][0], "context", ["x"])),
        r"paragraph 0: 'context' must be of type str, got list",
        id="context-list",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][1]["paragraphs"][0]["qas"][1].pop("id")),
        r"article 1 \('Beta'\), paragraph 0, question 1 has no 'id'",
        id="no-id",
    ),
    pytest.param(
        _mutated(lambda d: _set(d["data"][0]["paragraphs"][0]["qas"][0], "id", 7)),
        r"question 0: 'id' must be of type str, got int",
        id="id-int",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question")),
        r"paragraph 0, question 1 \(id 'q2'\) has no 'question'",
        id="no-question",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("answers")),
        r"article 1 \('Beta'\), paragraph 0, question 0 \(id 'q3'\) has no 'answers'",
        id="no-answers",
    ),
    pytest.param(
        _mutated(lambda d: _set(d["data"][0]["paragraphs"][0]["qas"][0], "answers", [])),
        r"\(id 'q1'\) has an empty 'answers' list \(unanswerable SQuAD v2",
        id="empty-answers",
    ),
    pytest.param(
        _mutated(lambda d: d["data"][1]["paragraphs"][0]["qas"][0]["answers"][1].pop("text")),
        r"\(id 'q3'\), answer 1 has no 'text'",
        id="answer-no-text",
    ),
    pytest.param(
        _mutated(
            lambda d: _set(
                d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0], "answer_start", True
            )
        ),
        r"\(id 'q2'\), answer 0: 'answer_start' must be of type int, got bool",
        id="answer-start-bool",
    ),
    pytest.param(
        _mutated(lambda d: _set(d["data"][0]["paragraphs"][0]["qas"][1], "answers", ["France"])),
        r"\(id 'q2'\), answer 0 is not a JSON object \(got str\)",
        id="answer-str",
    ),
]


@pytest.mark.parametrize(("doc", "pattern"), LAYOUT_ERRORS)
def test_load_squad_layout_errors(tmp_path: Path, doc: Any, pattern: str) -> None:
    path = _write_doc(tmp_path, doc)
    with pytest.raises(ValueError, match=pattern) as info:
        load_squad(path)
    assert str(info.value).startswith(f"--data: {path}: ")


@pytest.mark.parametrize(
    "doc",
    [{"data": []}, {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": []}]}]}],
)
def test_load_squad_empty(tmp_path: Path, doc: Any) -> None:
    with pytest.raises(ValueError, match=r"the data set is empty \(\d articles, no questions\)"):
        load_squad(_write_doc(tmp_path, doc))


def test_load_squad_duplicate_ids(tmp_path: Path) -> None:
    doc = _mutated(lambda d: _set(d["data"][1]["paragraphs"][0]["qas"][1], "id", "q1"))
    with pytest.raises(ValueError) as info:
        load_squad(_write_doc(tmp_path, doc))
    message = str(info.value)
    assert "duplicate question id 'q1' at article 1 ('Beta'), paragraph 0, question 1" in message
    assert "first seen at article 0 ('Alpha'), paragraph 0, question 0" in message


# --------------------------------------------------------------------------------------------
# select_questions
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hundred() -> list[SquadExample]:
    return [_ex(f"id{i:03d}", "x") for i in range(100)]


def test_select_questions_all(hundred: list[SquadExample]) -> None:
    for max_questions in (None, 100, 101, 10**9):
        selected = select_questions(hundred, max_questions, seed=3)
        assert selected == hundred
        assert selected is not hundred  # a new list; the input is never modified


def test_select_questions_subset(hundred: list[SquadExample]) -> None:
    a = select_questions(hundred, 10, seed=0)
    assert len(a) == 10
    assert len({ex.id for ex in a}) == 10
    positions = [hundred.index(ex) for ex in a]
    assert positions == sorted(positions)  # original (file) order
    # exactly random.Random(seed).sample over the indices, re-sorted
    expected = sorted(random.Random(0).sample(range(100), 10))
    assert positions == expected
    assert select_questions(hundred, 10, seed=0) == a  # same seed, same subset
    assert select_questions(hundred, 10) == a  # seed defaults to 0
    assert select_questions(hundred, 10, seed=1) != a  # different seed, different subset
    assert select_questions(hundred, 1, seed=5) == [
        hundred[random.Random(5).sample(range(100), 1)[0]]
    ]
    assert select_questions(hundred, 99, seed=2) == sorted(
        select_questions(hundred, 99, seed=2), key=lambda ex: ex.id
    )


def test_select_questions_dev(dev_examples: list[SquadExample]) -> None:
    a = select_questions(dev_examples, 100, seed=0)
    b = select_questions(dev_examples, 100, seed=0)
    assert a == b and len(a) == 100
    index = {ex.id: i for i, ex in enumerate(dev_examples)}
    assert [index[ex.id] for ex in a] == sorted(random.Random(0).sample(range(10570), 100))


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_select_questions_bad_max(hundred: list[SquadExample], bad: int) -> None:
    with pytest.raises(ValueError, match=rf"--max-questions must be a positive integer, got {bad}"):
        select_questions(hundred, bad)


@pytest.mark.parametrize("bad", [2.5, "10", True])
def test_select_questions_bad_type(hundred: list[SquadExample], bad: Any) -> None:
    with pytest.raises(ValueError, match="--max-questions must be a positive integer"):
        select_questions(hundred, bad)


def test_feature_batches_cover_every_feature_longest_first() -> None:
    lengths = [3, 7, 5, 7, 2, 6, 4]
    ids = [[10 + i] * n for i, n in enumerate(lengths)]
    feats = Features(
        input_ids=ids,
        token_type_ids=[[1] * n for n in lengths],
        example_index=list(range(len(lengths))),
        offsets=[[None] * n for n in lengths],
        pad_id=0,
    )
    batches = list(feature_batches(feats, 3))
    order = [i for idx, _ in batches for i in idx]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    for idx, batch in batches:
        width = max(lengths[i] for i in idx)
        assert batch["input_ids"].shape == (len(idx), width)
        assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in idx]
        assert batch["token_type_ids"].sum(1).tolist() == [lengths[i] for i in idx]

    class Echo(torch.nn.Module):  # logits = the token ids (start) and their negatives (end)
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            x = input_ids.float()
            return type("Out", (), {"start_logits": x, "end_logits": -x})()

    starts, ends = qa_logits(Echo(), feats, 3)
    s2 = [torch.empty(0)] * len(lengths)
    e2 = [torch.empty(0)] * len(lengths)
    for idx, batch in batches:
        store_logits(Echo()(**batch), idx, feats, s2, e2)
    for i, n in enumerate(lengths):
        assert starts[i].tolist() == [10.0 + i] * n  # unpadded, at the feature's own index
        assert torch.equal(starts[i], s2[i]) and torch.equal(ends[i], e2[i])
        assert ends[i].tolist() == [-(10.0 + i)] * n
