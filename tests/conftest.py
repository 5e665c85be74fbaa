"""Shared test helpers: where the shared data and models are, and a tiny random BERT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_MODEL = SHARED / "models" / "minilm-l6-squad"
SHARED_DEV = SHARED / "data" / "squad" / "dev-v1.1.json.gz"


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
