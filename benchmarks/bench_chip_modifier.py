"""Cost of the ``chip`` HWA weight modifier per training forward, vs ``add_normal``.

One ``AnalogLinear`` of 768 x 768 and one of 768 x 3072 (BERT-base attention and MLP shapes) with
the ``bert_squad`` periphery (8-bit DAC/ADC, ``pcm_read`` weight noise, iterative bound
management, 512-row tiles, PCM model) in training mode; 8 x 128 tokens per forward. Times one
training forward (autograd on; the modifier plus the analog MVM) and the modifier alone
(``active_tiles``), medians over interleaved repetitions, for: no modifier, ``add_normal``, and
``chip`` with each drift compensation (``global`` = the faithful default: two readouts through
the noisy periphery; ``exact_reference``: one; ``none``: none). Writes
``benchmarks/results/chip_modifier_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import aimc
from aimc.nn import AnalogLinear

SHAPES = ((768, 768), (768, 3072))  # (in, out)


def _configs() -> dict[str, aimc.AnalogConfig]:
    base = aimc.presets.bert_squad()
    out = {
        "none": base,
        "add_normal": base.replace(hwa=base.hwa.replace(modifier="add_normal", modifier_std=0.05)),
    }
    for comp in ("global", "exact_reference", "none"):
        out[f"chip ({comp})"] = base.replace(
            device=base.device.replace(drift_compensation=comp),
            hwa=base.hwa.replace(modifier="chip"),
        )
    return out


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/chip_modifier_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for k, o in SHAPES:
        x = torch.randn(1, args.tokens, k, generator=torch.Generator().manual_seed(0))
        layers = {}
        for name, cfg in _configs().items():
            torch.manual_seed(0)
            layers[name] = AnalogLinear(k, o, config=cfg, seed=1).train()
        times: dict[str, dict[str, list[float]]] = {
            n: {"forward": [], "modifier": []} for n in layers
        }
        for _ in range(args.reps + 1):  # the first round warms up
            for name, layer in layers.items():
                # the training forward (autograd on: the path HWA training takes)
                times[name]["forward"] += _time(lambda layer=layer, x=x: layer(x), 1)
                with torch.no_grad():
                    times[name]["modifier"] += _time(layer.active_tiles, 1)
        ref = statistics.median(times["none"]["forward"][1:])
        for name, t in times.items():
            fwd, mod = statistics.median(t["forward"][1:]), statistics.median(t["modifier"][1:])
            rows.append({"in": k, "out": o, "modifier": name, "forward_s": fwd, "modifier_s": mod})
            print(
                f"{k}x{o} {name:24s} forward {fwd * 1e3:8.1f} ms ({fwd / ref:5.2f}x "
                f"no modifier)  modifier alone {mod * 1e3:8.1f} ms"
            )
    meta = {
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "threads": args.threads,
        "tokens": args.tokens,
        "reps": args.reps,
        "preset": "bert_squad",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
