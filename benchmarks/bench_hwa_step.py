"""HWA training step (forward + backward + optimizer) vs a digital step, BERT-sized layer stack.

Four transformer-MLP blocks (768 -> 3072 -> GELU -> 768), 8 x 128 tokens, AdamW. Digital and
analog steps are interleaved (A B A B ...), medians and min-max reported; 2 threads.
Writes benchmarks/results/hwa_step_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import aimc


def _stack(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            *[
                nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768))
                for _ in range(4)
            ]
        )


def _configs() -> dict[str, aimc.AnalogConfig]:
    noisy = aimc.presets.pcm_inference()
    noisy = noisy.replace(
        hwa=noisy.hwa.replace(
            modifier="add_normal", modifier_std=0.1, clip="layer_gaussian", clip_sigma=3.0
        )
    )
    return {
        "standard_hwa": aimc.presets.standard_hwa(),
        "pcm_inference + noise 0.1 + 3 sigma clip": noisy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(8 * 128, 768, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, cfg in _configs().items():
        digital, analog = _stack(0), aimc.convert(_stack(0), cfg, seed=0)
        opts = {}
        for label, model in (("digital", digital), ("analog", analog)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            if label == "analog":
                aimc.register_post_step_hook(opt, model)
            opts[label] = (model.train(), opt)

        def step(label: str, opts=opts) -> float:
            model, opt = opts[label]
            start = time.perf_counter()
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            return time.perf_counter() - start

        for _ in range(2):
            step("digital"), step("analog")
        td, ta = [], []
        for _ in range(args.repeats):
            td.append(step("digital"))
            ta.append(step("analog"))
        row = {
            "config": name,
            "digital_ms": 1e3 * statistics.median(td),
            "analog_ms": 1e3 * statistics.median(ta),
            "ratio": statistics.median(ta) / statistics.median(td),
            "digital_minmax_ms": [1e3 * min(td), 1e3 * max(td)],
            "analog_minmax_ms": [1e3 * min(ta), 1e3 * max(ta)],
        }
        rows.append(row)
        print(
            f"{name:<42} digital {row['digital_ms']:7.1f} ms  HWA {row['analog_ms']:7.1f} ms  "
            f"ratio {row['ratio']:.2f}  (digital {min(td) * 1e3:.0f}-{max(td) * 1e3:.0f}, "
            f"HWA {min(ta) * 1e3:.0f}-{max(ta) * 1e3:.0f})"
        )
    path = Path(__file__).parent / "results" / "hwa_step_cpu.json"
    path.write_text(
        json.dumps(
            {"threads": args.threads, "torch": torch.__version__, "tokens": 1024, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
