"""HWA training step (forward + backward + optimizer) vs a digital step, BERT-sized layer stacks.

Two stacks, 8 x 128 tokens of width 768, AdamW:
- ``mlp``: four transformer-MLP blocks (768 -> 3072 -> GELU -> 768) — only analog matmuls and a
  GELU, the worst case for the ratio;
- ``bert``: four BERT-base encoder layers (HF ``BertLayer``: attention, MLP, LayerNorms, random
  init) — what a BERT fine-tune runs.
Digital and analog steps are interleaved (A B A B ...), medians and min-max reported; 2 threads.
A third side, interleaved too, runs the same analog model with ``AIMC_ONEDNN_GEMM=0``: its
float32 GEMMs (the backward's, the ``pcm_read`` variance) through MKL as ``nn.Linear``'s are
(``ratio_mkl``: the like-for-like library ratio; ``aimc._onednn``).
Writes benchmarks/results/hwa_step_cpu.json (``--out``: another file).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from bench_linear import write_results  # benchmarks/ is the script's directory
from torch import nn

import aimc
from aimc import _onednn


class _BertStack(nn.Module):
    """``layers`` BERT-base encoder layers (no dropout)."""

    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer

        cfg = BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072)
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
        return x


def _stack(kind: str, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "bert":
            return _BertStack()
        return nn.Sequential(
            *[
                nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768))
                for _ in range(4)
            ]
        )


def trainers(
    kind: str, cfg: aimc.AnalogConfig
) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    """``{"digital": (model, optimizer), "analog": ...}``: the ``kind`` stack (seed 0) and its
    conversion under ``cfg`` (seed 0), in training mode, each with AdamW (lr 1e-4); the analog
    optimizer runs aimc's post-step hook (clipping, remapping)."""
    out = {}
    for label in ("digital", "analog"):
        model = _stack(kind, 0)
        if label == "analog":
            model = aimc.convert(model, cfg, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if label == "analog":
            aimc.register_post_step_hook(opt, model)
        out[label] = (model.train(), opt)
    return out


def _configs() -> dict[str, aimc.AnalogConfig]:
    noisy = aimc.presets.pcm_inference()
    noisy = noisy.replace(
        hwa=noisy.hwa.replace(
            modifier="add_normal", modifier_std=0.1, clip="layer_gaussian", clip_sigma=3.0
        )
    )
    std = aimc.presets.standard_hwa()
    inject = aimc.presets.pcm_weights_only()
    inject = inject.replace(
        hwa=inject.hwa.replace(
            modifier="add_normal", modifier_std=0.1, clip="layer_gaussian", clip_sigma=3.0
        )
    )
    return {
        "standard_hwa": std,
        "standard_hwa, w_noise_bf16": std.replace(io=std.io.replace(w_noise_bf16=True)),
        "pcm_inference + noise 0.1 + 3 sigma clip": noisy,
        "noise injection: pcm_weights_only + noise 0.1 + 3 sigma clip": inject,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--stacks", default="mlp,bert", help="comma-separated: mlp, bert")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "hwa_step_cpu.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    stacks = args.stacks.split(",")
    unknown = sorted(set(stacks) - {"mlp", "bert"})
    if unknown:
        parser.error(
            f"--stacks: got {args.stacks!r} ({', '.join(unknown)} unknown); allowed: mlp, bert"
        )
    cases = [(k, n, c) for k in stacks for n, c in _configs().items()]
    for kind, name, cfg in cases:
        shape = (8 * 128, 768) if kind == "mlp" else (8, 128, 768)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        opts = trainers(kind, cfg)

        def step(label: str, opts=opts, x=x, onednn: str = "1") -> float:
            model, opt = opts[label]
            os.environ[_onednn.ENV] = onednn
            try:
                start = time.perf_counter()
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
                return time.perf_counter() - start
            finally:
                os.environ.pop(_onednn.ENV)

        for _ in range(2):
            step("digital"), step("analog"), step("analog", onednn="0")
        td, ta, tm = [], [], []
        for _ in range(args.repeats):
            td.append(step("digital"))
            ta.append(step("analog"))
            tm.append(step("analog", onednn="0"))
        row = {
            "stack": kind,
            "config": name,
            "digital_ms": 1e3 * statistics.median(td),
            "analog_ms": 1e3 * statistics.median(ta),
            "ratio": statistics.median(ta) / statistics.median(td),
            "digital_minmax_ms": [1e3 * min(td), 1e3 * max(td)],
            "analog_minmax_ms": [1e3 * min(ta), 1e3 * max(ta)],
            "analog_mkl_ms": 1e3 * statistics.median(tm),
            "analog_mkl_minmax_ms": [1e3 * min(tm), 1e3 * max(tm)],
            "ratio_mkl": statistics.median(tm) / statistics.median(td),
        }
        rows.append(row)
        print(
            f"{kind:<5} {name:<42} digital {row['digital_ms']:7.1f} ms  "
            f"HWA {row['analog_ms']:7.1f} ms  "
            f"ratio {row['ratio']:.2f}  (digital {min(td) * 1e3:.0f}-{max(td) * 1e3:.0f}, "
            f"HWA {min(ta) * 1e3:.0f}-{max(ta) * 1e3:.0f}); MKL's GEMMs {row['ratio_mkl']:.2f}"
        )
    write_results(args.out, {"threads": args.threads, "tokens": 1024, "rows": rows})


if __name__ == "__main__":
    main()
