"""The tutorial notebook runs top to bottom (on a tiny random model, so it cannot rot).

``notebooks/bert_squad_drift.ipynb`` is executed with nbclient after its ``parameters`` cell is
replaced: a tiny random-init ``BertForQuestionAnswering`` (saved with the shared MiniLM fast
tokenizer), 4 SQuAD dev questions, 1 chip, 2 drift times, 1 thread. ``make test`` installs
nbclient, nbformat and ipykernel (the ``docs`` extra); elsewhere the test is skipped with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SHARED_DEV, SHARED_MODEL, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "bert_squad_drift.ipynb"


def _tiny_qa_model(out: Path) -> None:
    save_tiny_bert(out)


def test_parameters_cell_is_tagged_and_first_code_cell():
    nbformat = pytest.importorskip(
        "nbformat", reason="nbformat not installed (pip install .[docs])"
    )
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("MODEL", "DATA", "N_QUESTIONS", "TIMES", "CHIPS", "THREADS"):
        assert f"\n{name} = " in "\n" + code[0].source


def test_notebook_executes_on_tiny_model(tmp_path, monkeypatch):
    reason = "nbclient/nbformat/ipykernel not installed (pip install .[docs]; make test does)"
    nbformat = pytest.importorskip("nbformat", reason=reason)
    nbclient = pytest.importorskip("nbclient", reason=reason)
    pytest.importorskip("ipykernel", reason=reason)
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    pytest.importorskip("transformers", reason="transformers not installed")
    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")

    model_dir = tmp_path / "tiny-qa"
    _tiny_qa_model(model_dir)
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = "\n".join(
        [
            f"MODEL = {str(model_dir)!r}",
            f"DATA = {str(SHARED_DEV)!r}",
            "N_QUESTIONS = 4",
            "TIMES = [0.0, 86400.0]",
            "CHIPS = 1",
            "W_NOISE = 0.0175",
            "THREADS = 1",
            "BATCH_SIZE = 8",
        ]
    )
    # the kernel is a subprocess: it must import this checkout's aimc, offline, on one thread
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 questions" in text
    assert "chip 0  t = " in text and "digital again" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot was not produced"
