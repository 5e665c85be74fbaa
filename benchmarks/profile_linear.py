"""Where the time of an AnalogLinear forward goes (pcm_inference, CPU).

For each shape, times (median of interleaved repeats, 2 threads) the pieces of the analog
forward in isolation — the batched MVM (as aimc runs it: in int8 where ``aimc._intmvm``
applies; and in float32 as aimc splits it, as one ``bmm`` and as one ``mm`` per input tile), the
Gaussian output-noise draw, the remaining periphery — and measures the
fraction of (tile, vector) pairs that iterative bound management has to recompute. Writes
benchmarks/results/profile_linear_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_eval_forward import (  # benchmarks/ is the script's directory
    interleaved,
    saturation_fraction,
)
from bench_linear import write_results  # benchmarks/ is the script's directory

import aimc
import aimc.mvm as mvm
from aimc.nn import AnalogLinear
from aimc.random import noise_normal_

#: the three bench_linear.py shapes, and MiniLM's FFN output (3 input tiles of 512 rows)
SHAPES = [(768, 768, 2048), (768, 3072, 2048), (4096, 4096, 256), (1536, 384, 2048)]


def _median_ms(fns: dict, repeats: int = 11) -> dict[str, float]:
    times = interleaved(fns, repeats, warmup=1)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def per_tile(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    for i in range(a.shape[0]):
        torch.mm(a[i], b[i], out=z[i])


def profile_shape(n_in: int, n_out: int, tokens: int, gen: torch.Generator) -> dict:
    digital = torch.nn.Linear(n_in, n_out)
    # pcm_inference's periphery on the digital weights (not programmed), in eval mode
    cfg = aimc.presets.pcm_inference().replace(device=aimc.DeviceConfig())
    bm = AnalogLinear.from_digital(digital, cfg).eval()
    no_bm = AnalogLinear.from_digital(
        digital, cfg.replace(io=cfg.io.replace(bound_management="none"))
    ).eval()
    x = torch.randn(tokens, n_in, generator=gen)
    tw = bm.active_tiles()
    lo = tw.layout
    # DAC levels as pcm_inference makes them (whole numbers within 63 steps)
    xq = torch.randint(-63, 64, (lo.batch, tokens, lo.rows), generator=gen).float()
    z = torch.empty(lo.batch, tokens, lo.padded_out)
    g = torch.Generator().manual_seed(1)
    # the MVM as the forward runs it: in int8 where it does (aimc._intmvm), else float32
    limbs = mvm._int_limbs(x, tw, cfg.io, tokens)

    def as_run() -> object:
        if limbs is not None:
            return mvm._int_mvm_(z, xq, limbs, 0.0)
        return mvm._bmm_(z, xq, tw.w.transpose(1, 2))

    with torch.no_grad():
        t = _median_ms(
            {
                "nn.Linear": lambda: digital(x),
                "analog (iterative BM)": lambda: bm(x),
                "analog (no BM)": lambda: no_bm(x),
                "batched MVM only": as_run,
                "MVM float32": lambda: mvm._bmm_(z, xq, tw.w.transpose(1, 2)),
                "MVM as one bmm": lambda: torch.bmm(xq, tw.w.transpose(1, 2), out=z),
                "MVM as per-tile addmm": lambda: per_tile(z, xq, tw.w.transpose(1, 2)),
                "output-noise draw only": lambda: noise_normal_(z, g),
            }
        )
    t["other periphery (no BM)"] = (
        t["analog (no BM)"] - t["batched MVM only"] - t["output-noise draw only"]
    )
    t["bound-management recompute"] = t["analog (iterative BM)"] - t["analog (no BM)"]
    return {
        "in": n_in,
        "out": n_out,
        "tokens": tokens,
        "int8_mvm": limbs is not None,
        "ms": t,
        "saturated_fraction_first_pass": saturation_fraction(bm, x),
        "noise_values": lo.batch * tokens * lo.padded_out,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "profile_linear_cpu.json")
    )
    args = p.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # nn.Linear's initialisation
    rows = []
    for n_in, n_out, tokens in SHAPES:
        row = profile_shape(n_in, n_out, tokens, gen)
        rows.append(row)
        t, lin = row["ms"], row["ms"]["nn.Linear"]
        print(
            f"({n_in}, {n_out}, {tokens}): first-pass saturated (tile, vector) pairs "
            f"{100 * row['saturated_fraction_first_pass']:.0f} %, "
            f"{row['noise_values'] / 1e6:.1f} M noise values"
        )
        for k, v in t.items():
            print(f"    {k:<28} {v:7.1f} ms  ({v / lin:4.2f} x nn.Linear)")
    write_results(Path(args.out), {"rows": rows})


if __name__ == "__main__":
    main()
