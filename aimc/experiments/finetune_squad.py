"""``aimc finetune-squad``: fine-tune a HuggingFace extractive-QA model on SQuAD v1.1, digitally or
hardware-aware (HWA), single process or under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA).

Outputs in ``--out``: ``checkpoints/step-NNNNNNN/`` (a HuggingFace model directory — safetensors,
config, tokenizer — plus ``training_state.pt`` to resume from), ``model/`` (the final model, the
directory to give ``aimc squad-drift --model``), ``train_log.jsonl``, ``run_config.json`` and
TensorBoard logs. Exported models are digital: an HWA model's learned output scales are folded
into its weights (:func:`aimc.to_digital`), so the export computes what the noise-free analog
model did; learned input ranges are written to ``aimc_finetune.json`` beside the weights.

``--teacher`` adds knowledge distillation from a digital QA model (:mod:`.distill`); ``--lora``
trains only digital LoRA adapters beside the frozen analog layers (:mod:`aimc.lora`), and the
exported model is then the frozen base plus ``adapter/``, which ``squad-drift`` attaches.

Determinism: the data order of epoch ``e`` comes from ``(seed, e)``; the HWA noise (the ``chip``
modifier's drift time and chip included), dropout and IO noise of step ``s`` from ``(seed, s)``
(and the rank). A resumed run therefore ends with the
same weights as an uninterrupted one, and a DDP run draws the same HWA weight realization on all
ranks (as a single process does for the whole batch) with independent IO noise and dropout.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import AnalogConfig, WeightModifier
from ..convert import analog_layers, convert, manual_seed
from ..hwa import register_post_step_hook
from ..lora import attach_lora, parameter_counts
from ..random import derive_seed
from .checkpoints import export_model, latest_checkpoint, resume_from, save_checkpoint
from .distill import SELF, distill_loss, load_teacher, teacher_logits
from .models import check_positions, load_weights, with_merged_adapter
from .rundir import barrier, dist_info, fail_if_busy, init_distributed, open_run_dir
from .safeio import append_row, keep_rows
from .sweep import resolve_config, with_output_bound_mask

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "minilm-l6-squad"
DEFAULT_TRAIN = SHARED / "data" / "squad" / "train-v1.1.rebuilt.json.xz"
#: Values of ``--hwa-modifier``.
HWA_MODIFIERS = ("add_normal", "chip")


@dataclass
class FinetuneSpec:
    """Everything that determines the numbers of a fine-tuning run."""

    model: str = str(DEFAULT_MODEL)  #: HF model dir or hub id (QA head optional: added if absent)
    train: str = str(DEFAULT_TRAIN)  #: SQuAD v1.1 train JSON (.json, .json.gz, .json.xz)
    preset: str = "digital"  #: training config: digital or a squad-drift config name
    hwa_noise: float = 0.0  #: add_normal weight noise (relative to max|W| per tile) while training
    #: training weight modifier: ``add_normal`` (with ``hwa_noise`` > 0) or ``chip`` (the device
    #: model's programming + drift at a log-uniform time in ``hwa_drift_range``)
    hwa_modifier: str = "add_normal"
    #: ``(t_min, t_max)`` drift times (s) of the ``chip`` modifier (default 1 hour .. 10 years)
    hwa_drift_range: tuple[float, float] = (3600.0, 3.156e8)
    #: the training config's ``hwa.output_bound_mask`` ("" keeps the config's own, AIHWKIT's)
    hwa_output_bound_mask: str = ""
    max_questions: int | None = None  #: train on a fixed random subset of questions
    subset_seed: int = 0
    max_length: int = 256
    stride: int = 128
    epochs: int = 1
    max_steps: int | None = None  #: stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32  #: global batch (split evenly over torchrun ranks)
    lr: float = 5e-5
    warmup: float = 0.1  #: fraction of the steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0  #: max global gradient norm (0 = off)
    freeze_embeddings: bool = False  #: keep the word embeddings fixed
    seed: int = 0
    #: knowledge distillation: a digital QA model dir / hub id, or "self" (the starting model)
    teacher: str | None = None
    distill_alpha: float = 0.5  #: weight of the distillation loss (1 - alpha: the label loss)
    distill_temperature: float = 2.0  #: softmax temperature of the distillation loss
    #: analog LoRA: "r=8,alpha=16,dropout=0,targets=query,value" (keys optional, "" = defaults);
    #: the analog base is frozen and only the digital adapters train (aimc.lora)
    lora: str | None = None

    def validate(self) -> None:
        self._check_modifier()
        self.training_config()
        self._validate_distill_lora()
        for name in ("epochs", "batch_size", "max_length", "max_steps", "max_questions"):
            v = getattr(self, name)
            if v is None and name in ("max_steps", "max_questions"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: an integer >= 1")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 0:
            raise ValueError(f"--stride: got {self.stride!r}; allowed: an integer >= 0")
        if self.stride >= self.max_length:
            raise ValueError(
                f"--stride: got {self.stride} with --max-length {self.max_length}; "
                "allowed: stride < max-length"
            )
        checks = {
            "lr": (self.lr, 0, False, "a number > 0"),
            "warmup": (self.warmup, 0, True, "a fraction in [0, 1)"),
            "weight_decay": (self.weight_decay, 0, True, "a number >= 0"),
            "grad_clip": (self.grad_clip, 0, True, "a number >= 0 (0 = off)"),
            "hwa_noise": (self.hwa_noise, 0, True, "a number >= 0"),
        }
        for name, (v, lo, inclusive, allowed) in checks.items():
            ok = (
                isinstance(v, (int, float))
                and math.isfinite(v)
                and (v >= lo if inclusive else v > lo)
            )
            if not ok or (name == "warmup" and v >= 1):
                raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: {allowed}")

    def _validate_distill_lora(self) -> None:
        from .distill import check_distill_options

        check_distill_options(self)
        spec = self.lora_spec()
        if spec is not None and self.training_config() is None:
            raise ValueError(
                f"--lora: got {self.lora!r} with --preset digital and no --hwa-noise or "
                "--hwa-modifier chip; allowed: "
                "an analog training config (the adapters sit beside analog layers)"
            )

    def lora_spec(self):
        """The parsed ``lora`` option (:class:`aimc.lora.LoraSpec`), ``None`` without LoRA."""
        from ..lora import parse_lora

        return None if self.lora is None else parse_lora(self.lora)

    def _check_modifier(self) -> None:
        """``--hwa-modifier`` and ``--hwa-drift-range`` (before the config is built, so the
        messages name the options)."""
        if self.hwa_modifier not in HWA_MODIFIERS:
            raise ValueError(
                f"--hwa-modifier: got {self.hwa_modifier!r}; allowed: one of "
                + ", ".join(repr(m) for m in HWA_MODIFIERS)
            )
        r = self.hwa_drift_range
        ok = (
            isinstance(r, (tuple, list))
            and len(r) == 2
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in r
            )
            and (0 < r[0] <= r[1] or r[0] == r[1] == 0)
        )
        if not ok:
            raise ValueError(
                f"--hwa-drift-range: got {r!r}; allowed: T_MIN,T_MAX in seconds, finite, with "
                "0 < T_MIN <= T_MAX (log-uniform; equal = a fixed time, 0,0 allowed)"
            )
        if self.hwa_modifier == "chip" and self.hwa_noise > 0:
            raise ValueError(
                f"--hwa-noise: got {self.hwa_noise!r} with --hwa-modifier chip; allowed: 0 "
                "(one weight modifier at a time: --hwa-noise is the add_normal std)"
            )

    def training_config(self) -> AnalogConfig | None:
        """The analog config of the training forward (``None`` = digital). ``--hwa-noise`` adds
        an ``add_normal`` weight modifier, ``--hwa-modifier chip`` the ``chip`` modifier (the
        preset's device model and drift compensation, times in ``--hwa-drift-range``); with
        ``--preset digital`` either is added to ``bert_squad`` (the periphery and PCM chip
        ``squad-drift`` evaluates). ``--hwa-output-bound-mask`` sets ``hwa.output_bound_mask``."""
        cfg = resolve_config(self.preset)
        chip = self.hwa_modifier == "chip"
        if self.hwa_noise > 0 or chip:
            base = cfg if cfg is not None else resolve_config("bert_squad")
            if chip and base.device.model == "none":
                raise ValueError(
                    f"--hwa-modifier: got 'chip' with --preset {self.preset}, whose device "
                    "model is 'none'; allowed: a preset with a device model (e.g. bert_squad, "
                    "pcm_inference, standard_hwa; digital trains on bert_squad)"
                )
            if chip:
                t_min, t_max = (float(v) for v in self.hwa_drift_range)
                hwa = base.hwa.replace(
                    modifier=WeightModifier.CHIP, modifier_t_min=t_min, modifier_t_max=t_max
                )
            else:
                hwa = base.hwa.replace(
                    modifier=WeightModifier.ADD_NORMAL, modifier_std=self.hwa_noise
                )
            cfg = base.replace(hwa=hwa)
        return with_output_bound_mask(cfg, self.hwa_output_bound_mask, self.preset)


def load_model(path: str, device: torch.device, seed: int):
    """``(model, fast tokenizer, new_head)``: a QA model from a QA checkpoint or from a base
    encoder (then the QA head is new, initialised from ``seed``); from an ``--lora`` export,
    its base with the adapter merged (:func:`.models.with_merged_adapter`)."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model: cannot load a HuggingFace model from {path!r}: {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"--model: {path!r} has no fast tokenizer (offsets are needed)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a new QA head is initialised from torch's default generator
        try:
            model = load_weights(lambda: AutoModelForQuestionAnswering.from_pretrained(path), path)
        except ValueError as err:
            if str(err).startswith("--model: cannot load the weights"):
                raise
            raise ValueError(
                f"--model: {path!r} (model_type {hf_config.model_type!r}) has no extractive-QA "
                f"variant in transformers: {err}"
            ) from None
    model = with_merged_adapter(model, path)  # a LoRA export: its base with the adapter merged
    new_head = not any(a.endswith("ForQuestionAnswering") for a in hf_config.architectures or [])
    return model.to(device), tokenizer, new_head


def _teacher_and_lora(spec: FinetuneSpec, dev: torch.device, tokenizer, new_head: bool):
    """The teacher model (``None`` without ``--teacher``) and the parsed ``--lora`` (``None``
    without); errors before anything is written."""
    lora = spec.lora_spec()
    if new_head and (lora is not None or spec.teacher == SELF):
        option = "--lora" if lora is not None else "--teacher self"
        raise ValueError(
            f"{option}: {spec.model!r} has no trained QA head (a new one would be random "
            f"{'and frozen' if lora is not None else 'and teach noise'}); allowed: a model "
            "fine-tuned for extractive QA"
        )
    teacher = load_teacher(spec, dev, tokenizer) if spec.teacher is not None else None
    return teacher, lora


def _optimizer(model: torch.nn.Module, spec: FinetuneSpec, total: int):
    if spec.freeze_embeddings:
        for name, p in model.named_parameters():
            if name.endswith("word_embeddings.weight"):
                p.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            plain = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            (no_decay if plain else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=spec.lr,
    )
    warm = int(spec.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batch_indices(step: int, n: int, batch: int, steps_per_epoch: int, seed: int) -> list[int]:
    epoch, k = divmod(step, steps_per_epoch)
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(derive_seed(seed, f"order{epoch}"))
    )
    return order[k * batch : (k + 1) * batch].tolist()


def _sync_input_ranges(model: torch.nn.Module, world: int) -> None:
    """Average the learned input ranges over ranks after each step: while they are initialised
    from data each rank sees its own samples; afterwards they are equal and this changes
    nothing. Keeps every rank's parameters identical."""
    ranges = [m.input_range for _, m in analog_layers(model) if m.input_range is not None]
    if world > 1 and ranges:
        with torch.no_grad():
            flat = torch.cat([r.detach().view(-1) for r in ranges])
            torch.distributed.all_reduce(flat)
            flat /= world
            for r, v in zip(ranges, flat.split([r.numel() for r in ranges]), strict=True):
                r.copy_(v.view_as(r))


class _TrainLogger:
    """Rank 0's per-step log: ``train_log.jsonl``, TensorBoard and (optionally) W&B."""

    def __init__(self, out: Path, rank: int, use_wandb: bool, wandb_mode: str, spec: dict) -> None:
        from .report import _tb_writer, _wandb_init

        self.out, self.active = out, rank == 0
        self.tb = _tb_writer(out / "tensorboard" / "train") if self.active else None
        self.wandb = None
        if use_wandb and self.active:
            self.wandb = _wandb_init(out, wandb_mode, spec, "train", project="aimc-finetune-squad")

    def log(self, row: dict[str, Any]) -> None:
        if not self.active:
            return
        append_row(self.out / "train_log.jsonl", row)
        if self.tb is not None:
            for key in ("loss", "lr", "step_s"):
                self.tb.add_scalar(f"train/{key}", row[key], global_step=row["step"])
        if self.wandb is not None:
            self.wandb.log(
                {f"train/{k}": row[k] for k in ("loss", "lr", "step_s")}, step=row["step"]
            )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _check_run_options(save_every: int, keep: int, amp: bool, dev: torch.device) -> None:
    for name, v in (("save_every", save_every), ("keep", keep)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: an integer >= 1")
    if amp and dev.type != "cuda":
        raise ValueError(f"--amp: mixed precision needs a CUDA --device; got {dev.type!r}")


def run(
    spec: FinetuneSpec,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    amp: bool = False,
    save_every: int = 500,
    keep: int = 2,
    use_wandb: bool = False,
    wandb_mode: str = "offline",
    progress: bool = True,
) -> Path:
    """Fine-tune (or resume); returns the directory of the exported final model."""
    from ..squad.data import load_squad, select_questions
    from ..squad.train_features import make_train_features
    from .sweep import _progress

    spec.validate()
    out = Path(out)
    rank, world = dist_info()
    dev = init_distributed(device, world)
    _check_run_options(save_every, keep, amp, dev)
    if spec.batch_size % world:
        raise ValueError(
            f"--batch-size: got {spec.batch_size} with {world} ranks; allowed: a multiple of "
            "the number of ranks (each rank takes an equal share of the global batch)"
        )
    fail_if_busy(out)  # before the (long) loading and tokenizing of the data
    examples = select_questions(load_squad(spec.train), spec.max_questions, spec.subset_seed)
    model, tokenizer, new_head = load_model(spec.model, dev, spec.seed)
    check_positions(getattr(model, "config", None), spec.max_length, f"--model {spec.model!r}")
    teacher, lora = _teacher_and_lora(spec, dev, tokenizer, new_head)
    feats = make_train_features(examples, tokenizer, spec.max_length, spec.stride)
    per_epoch = len(feats) // spec.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"--batch-size: got {spec.batch_size} but the data give only {len(feats)} "
            "training windows; allowed: at most the number of windows"
        )
    total = spec.max_steps if spec.max_steps is not None else spec.epochs * per_epoch
    cfg = spec.training_config()
    extra = {"spec": asdict(spec), "training_config": cfg.to_dict() if cfg else None}
    determines = asdict(spec) | {"world_size": world, "device": dev.type, "amp": amp}
    determines |= {"training_config": extra["training_config"]}
    determines |= {"lora": lora.text() if lora is not None else None}  # canonical form
    if cfg is not None:
        convert(model, cfg, seed=spec.seed)
    if lora is not None:  # after convert: the adapters wrap the analog layers and stay digital
        model = attach_lora(model, lora, seed=derive_seed(spec.seed, "lora"))
    with open_run_dir(out, determines, resume, extra):  # one process (or job) per --out
        opt, sched = _optimizer(model, spec, total)
        if cfg is not None and lora is None:  # LoRA: the base (the chip's weights) is fixed
            register_post_step_hook(opt, model)
        start = resume_from(out, model, opt, sched, dev)
        if rank == 0:  # steps after the checkpoint are redone: so are their log rows
            keep_rows(out / "train_log.jsonl", lambda row: row.get("step", -1) < start)
        meta = {
            "spec": asdict(spec),
            "training_config": cfg.to_dict() if cfg else None,
            "new_qa_head": new_head,
            "train_windows": len(feats),
            "total_steps": total,
            "lora": lora.text() if lora is not None else None,
            "trainable_parameters": list(parameter_counts(model)),  # (trainable, total)
        }
        net = model
        if world > 1:
            ids = [dev.index] if dev.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        logger = _TrainLogger(out, rank, use_wandb, wandb_mode, asdict(spec))
        bar = _progress(progress and rank == 0, total - start, "finetune", "step")
        model.train()
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for step in range(start, total):
                t0 = time.perf_counter()
                idx = _batch_indices(step, len(feats), spec.batch_size, per_epoch, spec.seed)
                lr = sched.get_last_lr()[0]  # this step's (the step advances the scheduler)
                loss = _train_step(
                    net, model, opt, sched, feats, idx, step, spec, dev, amp, teacher
                )
                _sync_input_ranges(model, world)
                row = {
                    "step": step,
                    "epoch": step // per_epoch,
                    "loss": loss,
                    "lr": lr,
                    "step_s": time.perf_counter() - t0,
                }
                logger.log(row)
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.4f}")
                if (step + 1) % save_every == 0 or step + 1 == total:
                    if rank == 0:
                        save_checkpoint(out, step, model, tokenizer, opt, sched, meta, keep)
                    barrier(world)
        bar.close()
        logger.close()
        if world > 1:
            meta["ddp_max_weight_diff_across_ranks"] = _rank_weight_diff(model)
        final = out / "model"
        if rank == 0:
            export_model(model, tokenizer, final, meta | {"step": total - 1})
        barrier(world)
    return final


def qa_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Mean of the start and end cross-entropies over the real tokens only.

    HuggingFace's built-in QA loss lets padding positions compete in the softmax, so with
    dynamic padding a sample's loss would depend on the other samples of its batch (and a
    data-parallel run would not match a single-process one); here padding is masked out.
    """
    pad = attention_mask == 0
    s = start_logits.float().masked_fill(pad, -1e9)
    e = end_logits.float().masked_fill(pad, -1e9)
    ce = torch.nn.functional.cross_entropy
    return (ce(s, start_positions) + ce(e, end_positions)) / 2


def _rank_weight_diff(model: torch.nn.Module) -> float:
    """The largest difference of any parameter between ranks (0.0 when DDP kept them equal)."""
    worst = 0.0
    with torch.no_grad():
        for p in model.parameters():
            hi, lo = p.detach().clone(), p.detach().clone()
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            worst = max(worst, float((hi - lo).abs().max()))
    return worst


def _train_step(net, model, opt, sched, feats, idx, step, spec, dev, amp, teacher=None) -> float:
    """One optimizer step on this rank's share of the global batch ``idx``; the loss averaged
    over all ranks. With a ``teacher``, the loss mixes in distillation on the same inputs."""
    from ..squad.train_features import collate_train

    rank, world = dist_info()
    manual_seed(model, derive_seed(spec.seed, f"step{step}"), io_stream=rank if world > 1 else None)
    torch.manual_seed(derive_seed(spec.seed, f"dropout{step}:{rank}"))
    batch = collate_train(feats, idx[rank::world], dev)
    starts, ends = batch.pop("start_positions"), batch.pop("end_positions")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = net(**batch)
        soft = teacher_logits(teacher, batch) if teacher is not None else None
    loss = qa_loss(out.start_logits, out.end_logits, batch["attention_mask"], starts, ends)
    if soft is not None:
        mask, temp = batch["attention_mask"], spec.distill_temperature
        kd = distill_loss(out.start_logits, out.end_logits, *soft, mask, temp)
        loss = spec.distill_alpha * kd + (1 - spec.distill_alpha) * loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if spec.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
    opt.step()
    sched.step()
    value = loss.detach().float()
    if world > 1:
        torch.distributed.all_reduce(value)
        value /= world
    return float(value)


__all__ = ["FinetuneSpec", "export_model", "latest_checkpoint", "load_model", "qa_loss", "run"]
