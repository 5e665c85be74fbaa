"""Relative output error of one 768x768 PCM layer as it drifts (the reference table).

W ~ N(0, 0.05^2), X ~ U[-1, 1] (256 rows); ||y - y_digital|| / ||y_digital||, mean and std over
10 chips (program seeds), at t = 0 (programmed only, no read), 1 s, 1 h, 1 day, 1 month, 1 year,
for pcm_inference() and pcm_weights_only(). Writes benchmarks/results/drift_error_table.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import aimc

TIMES = {
    "0 (programmed)": None,
    "1 s": 1.0,
    "1 h": 3600.0,
    "1 day": 86400.0,
    "1 month": 30 * 86400.0,
    "1 year": 365 * 86400.0,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="chips (program seeds) per point")
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "drift_error_table.json")
    )
    args = p.parse_args()
    seeds = args.seeds
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(768, 768, generator=gen) * 0.05
    x = torch.rand(256, 768, generator=gen) * 2 - 1
    ref = x @ w.T
    table: dict[str, dict[str, list[float]]] = {}
    for preset in ("pcm_inference", "pcm_weights_only"):
        model = torch.nn.Sequential(torch.nn.Linear(768, 768, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(w)
        aimc.convert(model, getattr(aimc.presets, preset)())
        model.eval()
        table[preset] = {}
        for label, t in TIMES.items():
            errs = []
            for seed in range(seeds):
                aimc.manual_seed(model, seed)
                aimc.program(model, seed=seed)
                if t is not None:
                    aimc.drift(model, t, seed=seed)
                with torch.no_grad():
                    errs.append(float((model(x) - ref).norm() / ref.norm()))
            table[preset][label] = errs
    print(f"{'t':<16}" + "".join(f"{p:>26}" for p in table))
    for label in TIMES:
        cells = []
        for p in table:
            e = torch.tensor(table[p][label])
            cells.append(f"{float(e.mean()):.4f} ± {float(e.std()):.4f}")
        print(f"{label:<16}" + "".join(f"{c:>26}" for c in cells))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seeds": seeds, "errors": table}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
