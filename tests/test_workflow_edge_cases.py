"""Experiment-workflow edge cases: squad-drift, lm-drift, finetune-squad, the CLI.

Each test failed before its fix (2026-12-06 review: silent wrong results, missing input
checks, crashes with unhelpful messages); see the docstring of each test. Models are tiny
random-init HuggingFace models, run offline.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DEV, SHARED_MODEL, official_layout, save_tiny_bert, tiny_squad_assets

from aimc.lm.data import sliding_windows
from aimc.lm.metrics import score_windows

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def squad_assets(tmp_path_factory) -> dict[str, Any]:
    return tiny_squad_assets(tmp_path_factory.mktemp("review_s15_squad"), n_questions=4)


def _squad_spec(assets: dict[str, Any], **kw: Any):
    from aimc.experiments.squad_drift import SweepSpec

    base = dict(
        model=str(assets["model"]),
        data=str(assets["data"]),
        configs=["digital"],
        times=[0.0],
        chips=1,
    )
    return SweepSpec(**(base | kw))


def _catch(fn) -> BaseException | None:
    """What ``fn()`` raises (a Rust panic of the tokenizers is a BaseException), or None."""
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - PanicException derives from BaseException
        return err
    return None


# --------------------------------------------------------------------------------------------
# lm-drift: sliding-window perplexity


class _ToyLM(torch.nn.Module):
    """A causal LM whose logits at a position depend only on that position's token."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, logits_to_keep: int = 0):
        logits = self.emb(input_ids)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return type("Out", (), {"logits": logits})()


def test_lm_stride_equal_to_window_is_refused():
    """docs/lm.md: "Every token but the first is scored exactly once". With ``stride ==
    window`` each later window starts exactly where the previous one ended, so its first token
    has no predicting position inside the window and was never scored (12 tokens, window 4 =
    stride 4 scored 9 tokens, not 11): ``sliding_windows`` and ``--stride`` refuse it (a
    single window, the whole corpus, still takes any stride)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (12,))
    model = _ToyLM()
    reference = score_windows(model, ids, sliding_windows(12, 12, 12))  # one window: all 11
    assert reference["tokens"] == 11
    with pytest.raises(ValueError, match="1 <= stride < window"):
        sliding_windows(12, 4, 4)
    got = score_windows(model, ids, sliding_windows(12, 4, 3), batch_size=2)
    assert got["tokens"] == 11
    from aimc.experiments.lm_drift import LMSweepSpec

    with pytest.raises(ValueError, match="--stride: got 4 with --window 4"):
        LMSweepSpec(window=4, stride=4).validate()


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_summary_of_a_non_finite_perplexity_over_two_chips(bad):
    """``aimc.lm.metrics.perplexity`` returns ``inf`` (mean NLL >= 700) or ``nan`` (NaN logits,
    e.g. a float16 overflow) by design, and ``fmt_value`` formats non-finite values, but
    ``summary_table`` computes ``statistics.stdev`` over the chips, which raises
    ``AttributeError: 'float' object has no attribute 'numerator'`` for a non-finite value. So
    an lm-drift run with >= 2 chips and one broken chip crashes in ``finish`` after all units
    are done, and every ``--resume`` crashes there again: the run can never finish."""
    from aimc.experiments.report import LM_METRICS, summary_table

    rows = [
        {"config": "b", "chip": 0, "t": 0.0, "perplexity": bad, "accuracy": 0.0},
        {"config": "b", "chip": 1, "t": 0.0, "perplexity": 5e8, "accuracy": 1.0},
    ]
    table = summary_table(rows, LM_METRICS)
    assert "| b |" in table and ("inf" in table or "nan" in table)


# --------------------------------------------------------------------------------------------
# squad-drift: spec checks, static input ranges, long inputs


@pytest.mark.parametrize("field", ["n_best", "max_answer_length"])
def test_squad_spec_refuses_zero_n_best_and_max_answer_length(squad_assets, tmp_path, field):
    """``SweepSpec.n_best`` / ``max_answer_length`` (they determine the numbers, and are recorded
    in run_config.json) are never checked: 0 makes ``best_spans`` find no span for any question,
    and the sweep silently reports EM = F1 = 0 for every unit instead of refusing the value."""
    spec = _squad_spec(squad_assets, **{field: 0})
    from aimc.experiments.squad_drift import run

    err = _catch(lambda: run(spec, tmp_path / "out", progress=False))
    assert isinstance(err, ValueError) and field.replace("_", "") in str(err).replace(
        "-", ""
    ).replace("_", ""), f"{field}=0 was not refused: {err!r}"


def test_squad_drift_static_input_ranges_are_calibrated_or_refused(
    squad_assets, tmp_path, monkeypatch
):
    """``squad-drift`` accepts ``--configs analog_foundation`` (shared ``resolve_config``), whose
    docstring says "A model that was not trained with those ranges needs them set from data
    before it is evaluated". lm-drift calibrates after each conversion; squad-drift does not,
    so every layer is evaluated with the placeholder range 3.0 — a silently meaningless row."""
    from aimc.experiments import squad_drift

    seen: list[list[float]] = []
    original = squad_drift._evaluator

    def spy(*args, **kw):
        evaluate = original(*args, **kw)

        def wrapped(model):
            ranges = [
                float(m.input_range.detach())
                for m in model.modules()
                if getattr(m, "input_range", None) is not None
            ]
            seen.append(ranges)
            return evaluate(model)

        return wrapped

    monkeypatch.setattr(squad_drift, "_evaluator", spy)
    spec = _squad_spec(squad_assets, configs=["analog_foundation"])
    err = _catch(lambda: squad_drift.run(spec, tmp_path / "out", progress=False))
    if isinstance(err, ValueError) and "--configs" in str(err):
        return  # refusing the config is a fix too
    assert err is None, repr(err)
    assert seen and seen[0]
    assert any(r != 3.0 for r in seen[0]), (
        f"all {len(seen[0])} static input ranges were left at the uncalibrated 3.0"
    )


def test_squad_drift_takes_the_learned_ranges_of_a_finetune_export(
    squad_assets, tmp_path, monkeypatch
):
    """A model directory with ``aimc_finetune.json`` (an ``aimc finetune-squad`` export) that
    records a learned range for every analog layer: squad-drift evaluates ``standard_hwa`` with
    those ranges, not calibrated ones."""
    import shutil

    import aimc
    from aimc.convert import analog_layers
    from aimc.experiments import squad_drift

    model_dir = tmp_path / "hwa_model"
    shutil.copytree(squad_assets["model"], model_dir)
    model, _ = squad_drift.load_qa_model(str(model_dir), torch.device("cpu"))
    aimc.convert(model, aimc.presets.standard_hwa(), seed=0)
    names = [n for n, _ in analog_layers(model)]
    ranges = {n: 1.0 + 0.01 * i for i, n in enumerate(names)}
    (model_dir / "aimc_finetune.json").write_text(json.dumps({"learned_input_ranges": ranges}))
    seen: list[dict[str, float]] = []
    original = squad_drift._evaluator

    def spy(*args, **kw):
        evaluate = original(*args, **kw)

        def wrapped(m):
            seen.append({n: float(la.input_range.detach()) for n, la in analog_layers(m)})
            return evaluate(m)

        return wrapped

    monkeypatch.setattr(squad_drift, "_evaluator", spy)
    spec = _squad_spec(squad_assets, model=str(model_dir), configs=["standard_hwa"])
    squad_drift.run(spec, tmp_path / "out", progress=False)
    assert seen and seen[0] == pytest.approx(ranges)


def test_squad_drift_model_with_fewer_positions_than_max_length(squad_assets, tmp_path):
    """A QA model with 128 position embeddings (``max_length`` is 384 and not a CLI option):
    the sweep crashes inside the model with ``RuntimeError: The size of tensor a (171) must match
    the size of tensor b (128)`` (a traceback through the CLI), after run_config.json was
    written, so even a rerun without --resume is refused. The distillation teacher gets this
    check (``load_teacher``), the evaluated model does not."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from aimc.experiments.squad_drift import run

    tok = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model_dir = tmp_path / "qa128"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertForQuestionAnswering(cfg).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    out = tmp_path / "out"
    err = _catch(lambda: run(_squad_spec(squad_assets, model=str(model_dir)), out, progress=False))
    # either the features are cut to the model's positions (HF run_qa: min(max_seq_length,
    # model_max_length)) and the run works, or a clear error comes before anything is written
    if err is None:
        return
    assert isinstance(err, ValueError), f"{type(err).__name__}: {err}"
    assert not (out / "run_config.json").exists()


def test_squad_drift_long_question_is_a_clear_error(tmp_path):
    """A SQuAD file with a question longer than ``max_length - stride`` tokens (and a context
    that needs more than one window), at the default max_length 384 / stride 128: the fast
    tokenizer panics in Rust (``pyo3_runtime.PanicException``, a BaseException that
    ``_run_or_exit`` does not catch: a Rust backtrace instead of exit status 2 naming --data and
    the question)."""
    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer not available")
    from aimc.experiments.squad_drift import run

    context = "Paris is the capital and most populous city of France. " * 20  # > 384 tokens in all
    items = [
        {
            "id": "long-q",
            "title": "t",
            "context": context,
            "question": " ".join(["which"] * 300) + "?",
            "answers": ["Paris"],
            "answer_starts": [0],
        }
    ]
    data = tmp_path / "long.json"
    data.write_text(json.dumps(official_layout(items)))
    model = save_tiny_bert(tmp_path / "tiny-qa", dropout=False)
    spec = _squad_spec({"model": model, "data": data})
    err = _catch(lambda: run(spec, tmp_path / "out", progress=False))
    assert isinstance(err, ValueError), f"{type(err).__module__}.{type(err).__name__}: {err}"


# --------------------------------------------------------------------------------------------
# finetune-squad


@pytest.fixture(scope="module")
def finetune_assets(tmp_path_factory) -> dict[str, Any]:
    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    from aimc.squad.data import load_squad

    root = tmp_path_factory.mktemp("review_s15_finetune")
    model = save_tiny_bert(root / "tiny-qa", dropout=False)
    train = root / "train.json"
    dev = load_squad(SHARED_DEV)[:8]
    train.write_text(json.dumps(official_layout([e.__dict__ for e in dev])))
    return {"root": root, "model": model, "train": train}


def _finetune_spec(assets: dict[str, Any], **kw: Any):
    """test_finetune_squad's spec: 4 steps of 2 features, 128 tokens, stride 32."""
    from test_finetune_squad import _spec

    return _spec(assets, **({"batch_size": 2, "warmup": 0.5, "seed": 0} | kw))


def test_finetune_stride_that_passes_validation_but_not_the_tokenizer(finetune_assets, tmp_path):
    """``--max-length 40 --stride 32`` passes ``FinetuneSpec.validate`` (stride < max-length), but
    a window holds only ``max_length - 3 - len(question)`` context tokens, fewer than the stride
    for the SQuAD questions: the tokenizer panics in Rust (``PanicException``, not caught by
    the CLI: a Rust backtrace instead of ``--stride: ...`` with exit status 2)."""
    from aimc.experiments.finetune_squad import run

    spec = _finetune_spec(finetune_assets, max_length=40, stride=32, max_steps=1)
    err = _catch(lambda: run(spec, tmp_path / "out", progress=False))
    assert isinstance(err, ValueError) and "--stride" in str(err), (
        f"{type(err).__module__}.{type(err).__name__}: {str(err)[:200]}"
    )


def test_finetune_train_log_lr_is_the_lr_of_its_step(finetune_assets, tmp_path):
    """train_log.jsonl has "one row per step: loss, lr"; the lr of row ``s`` is read after
    ``sched.step()``, i.e. the lr of step ``s + 1``: with 2 warm-up steps of 4 the rows say
    1e-3, 1e-3, 5e-4, 0 while the steps ran at 5e-4, 1e-3, 1e-3, 5e-4 (the last step is logged
    with lr 0)."""
    from aimc.experiments.finetune_squad import run

    out = tmp_path / "run"
    run(_finetune_spec(finetune_assets), out, save_every=100, progress=False)
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    # warm = int(0.5 * 4) = 2: factor(0) = 1/2, factor(1) = 2/2, then (4 - s) / 2
    used = [5e-4, 1e-3, 1e-3, 5e-4]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx(used)


# --------------------------------------------------------------------------------------------
# lm-drift: windows longer than the model's positions


def _tiny_gpt2(root: Path, n_positions: int = 64) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    out = root / "gpt2"
    fast.save_pretrained(str(out))
    cfg = GPT2Config(
        vocab_size=len(fast), n_embd=16, n_layer=1, n_head=2, n_positions=n_positions, n_inner=32
    )
    cfg.bos_token_id = cfg.eos_token_id = fast.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(cfg).save_pretrained(str(out))
    return out


def test_lm_drift_window_longer_than_the_models_positions(tmp_path):
    """``--window 96`` on a GPT-2 with 64 positions: not checked, the forward fails with
    ``IndexError: index out of range in self`` (a traceback through the CLI, after
    run_config.json was written) instead of an error naming --window and the model's limit."""
    from aimc.experiments.lm_drift import LMSweepSpec, run

    model = _tiny_gpt2(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    spec = LMSweepSpec(
        model=str(model),
        corpus=str(corpus),
        configs=["digital"],
        times=[0.0],
        chips=1,
        max_tokens=200,
        window=96,
        stride=48,
    )
    out = tmp_path / "out"
    err = _catch(lambda: run(spec, out, batch_size=1, progress=False))
    assert isinstance(err, ValueError) and "--window" in str(err), f"{type(err).__name__}: {err}"
    assert not (out / "run_config.json").exists()


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_negative_threads_is_refused(tmp_path, capsys):
    """``--threads -1`` is silently ignored (``if args.threads > 0``): the run goes on with
    torch's default thread count instead of exit status 2 naming --threads."""
    from aimc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "squad-drift",
                "--threads",
                "-1",
                "--model",
                str(tmp_path / "no-such-model"),
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_sweep_axes_given_as_a_string_are_refused_naming_the_option():
    """Through the Python API, ``configs="bert_squad"`` or ``digital_modules="lm_head"`` was
    read letter by letter and the error named ``'b'`` or ``'l'`` (found by a review of the LLM
    path): the option and the value given are named."""
    from aimc.experiments.lm_drift import LMSweepSpec
    from aimc.experiments.sweep import validate_sweep

    with pytest.raises(ValueError, match=r"--configs: got 'bert_squad' \(str\); allowed: a list"):
        validate_sweep("bert_squad", [0.0], 1)
    with pytest.raises(ValueError, match=r"--times: got 3600"):
        validate_sweep(["digital"], 3600, 1)
    with pytest.raises(ValueError, match=r"--digital-modules: got 'lm_head'"):
        LMSweepSpec(digital_modules="lm_head").validate()
