"""Shared test helpers: where the shared data and models are, and a tiny random BERT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_MODEL = SHARED / "models" / "minilm-l6-squad"
SHARED_DEV = SHARED / "data" / "squad" / "dev-v1.1.json.gz"


@pytest.fixture(autouse=True, scope="session")
def _no_silent_eager_fallback():
    """A compiled function past dynamo's recompile limit runs eagerly without a word (unless
    compiled with ``fullgraph=True``), and a test comparing it with the eager forward would
    then pass without testing the compiled one: in the tests that is an error. (The dead
    models of earlier tests count towards a code object's limit too.)"""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (the machines have 2 cores; several processes share
    them in DDP tests), restoring the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def at_most_two_threads():
    """Run the test with at most two torch threads (AIHWKIT's tiles and aimc's on the machines'
    2 cores), restoring the thread count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, n)))
    yield
    torch.set_num_threads(n)


def outputs_on_one_and_two_threads(layer: torch.nn.Module, x: torch.Tensor, seed: int) -> list:
    """``layer(x)`` (no autograd) on one, then two torch threads, the layer's noise stream
    restarted from ``seed`` before each; the thread count restored afterwards."""
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            layer.manual_seed(seed)
            with torch.no_grad():
                outs.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    return outs


def run_as_avx2_host(files: list[str], keyword: str) -> None:
    """Run the tests ``keyword`` of ``files`` (under tests/) in a child process with
    ``ATEN_CPU_CAPABILITY=avx2`` — PyTorch's own kernels, inductor's code and aimc's
    hand-written kernels then take their AVX2 paths (8-wide vectors, other tails), as on an
    AVX2-only CPU — and fail unless all of them pass there, none skipped. Skips on a host
    without AVX2 and a wider vector ISA (an AVX2 host runs them natively). The child keeps
    this process's inductor cache: the vector width keeps the two ISAs' graphs apart."""
    from torch._inductor import cpu_vec_isa

    widths = {isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}
    if not (256 in widths and max(widths) > 256):
        pytest.skip(f"needs a CPU with AVX2 and a wider vector ISA (inductor here: {widths})")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(ROOT)}
    paths = [str(ROOT / "tests" / f) for f in files]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, "-k", keyword],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.splitlines()[-1], tail


def mlp_train_step(
    cfg: Any, sizes: tuple[int, int, int], vectors: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and every parameter's gradient of one training step (loss ``mean(y^2)``) of
    ``Linear -> GELU -> Linear`` of ``sizes`` converted to analog under ``cfg``, on ``vectors``
    seeded random inputs: the same model, seeds and inputs at every call."""
    torch.manual_seed(0)
    a, b, c = sizes
    model = torch.nn.Sequential(torch.nn.Linear(a, b), torch.nn.GELU(), torch.nn.Linear(b, c))
    import aimc

    aimc.convert(model, cfg, seed=1)
    model.train()
    x = torch.randn(vectors, a, generator=torch.Generator().manual_seed(2))
    y = model(x)
    y.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return y.detach(), grads


def float16_remapped_zero_row(cfg: Any) -> torch.nn.Sequential:
    """``Linear(8, 4)`` in float16 with an all-zero output row (a pruned unit), converted under
    ``cfg`` (learned output scales and a remap), in training mode, after one ``post_step``."""
    import aimc

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).to(torch.float16)
    with torch.no_grad():
        model[0].weight[1] = 0.0
    aimc.convert(model, cfg, seed=1)
    model.train()
    aimc.post_step(model)
    return model


def save_tiny_bert(out: Path, *, qa: bool = True, dropout: bool = True, seed: int = 0) -> Path:
    """Save a tiny random-init BERT (2 layers, hidden 32, 2 heads) with the real fast tokenizer of
    the shared MiniLM model to ``out``: ``BertForQuestionAnswering`` if ``qa`` else a bare
    ``BertModel``; ``dropout=False`` zeroes both dropout probabilities."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    if not dropout:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForQuestionAnswering(config) if qa else BertModel(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def official_layout(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Official SQuAD layout; consecutive items with the same title / context are grouped."""
    data: list[dict[str, Any]] = []
    for it in items:
        if not data or data[-1]["title"] != it["title"]:
            data.append({"title": it["title"], "paragraphs": []})
        paras = data[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != it["context"]:
            paras.append({"context": it["context"], "qas": []})
        paras[-1]["qas"].append(
            {
                "id": it["id"],
                "question": it["question"],
                "answers": [
                    {"text": t, "answer_start": s}
                    for t, s in zip(it["answers"], it["answer_starts"], strict=True)
                ],
            }
        )
    return {"version": "1.1", "data": data}


def write_tiny_idx(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """Gzipped IDX files of a tiny two-class image set (bright top half vs bright bottom half)
    in ``root``, the layout ``aimc train-vision --data`` reads."""
    import gzip
    import struct

    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def write(path: Path, data: torch.Tensor) -> None:
        header = bytes([0, 0, 0x08, data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape)
        path.write_bytes(gzip.compress(header + data.numpy().astype(">u1").tobytes()))

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 2
        images = (torch.rand(n, 28, 28, generator=gen) * 60).to(torch.uint8)
        images[labels == 0, :14] += 150
        images[labels == 1, 14:] += 150
        write(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write(root / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    return root


def tiny_squad_assets(root: Path, n_questions: int = 6) -> dict[str, Path]:
    """A tiny random QA model (:func:`save_tiny_bert`, no dropout) and a SQuAD file of the first
    ``n_questions`` shared dev questions in ``root``: ``{"root", "model", "data"}``. Skips the
    calling test when the shared tokenizer or dev set is missing."""
    import json

    import pytest

    from aimc.squad.data import load_squad

    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    items = [e.__dict__ for e in load_squad(SHARED_DEV)[:n_questions]]
    data = root / "squad.json"
    root.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(official_layout(items)))
    model = save_tiny_bert(root / "tiny-qa", dropout=False)
    return {"root": root, "model": model, "data": data}


def pytest_report_header(config):
    """One line on whether the conformance suite runs against the reference simulator."""
    from conformance.reference import reference_status

    ok, reason = reference_status()
    if ok:
        import aihwkit

        return f"conformance: against AIHWKIT {aihwkit.__version__}"
    return f"conformance: SKIPPED — {reason}"
