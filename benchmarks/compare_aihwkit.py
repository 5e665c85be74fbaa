"""aimc against IBM AIHWKIT 1.2.0 itself: the conformance table and the forward speed.

Needs the reference simulator (``make test`` installs it from ``../shared/wheels`` where the wheel
fits); without it the script says why and exits with status 2 — nothing is measured or written.

* **fidelity** — every case of the conformance suite (``tests/conformance``: the periphery, PCM
  drift, the presets, HWA training forwards) through both simulators with the same weights,
  inputs and protocol: the statistics, their deviation and the case's verdict;
* **speed** — the eval forward of a programmed layer drifted to 1 h on the shapes of
  ``bench_linear.py``: ``nn.Linear``, aimc ``pcm_inference()``, AIHWKIT's C++ tile
  (``InferenceRPUConfig()``) and AIHWKIT's pure-torch tile (``TorchInferenceRPUConfig()``),
  interleaved (A B C D A B C D ...) in one run; medians, min-max and the ratio to ``nn.Linear``.

    python benchmarks/compare_aihwkit.py [--threads 2] [--repeats 9] [--skip-fidelity]

Writes ``benchmarks/results/compare_aihwkit_cpu.json`` and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHAPES = [(768, 768, 2048), (768, 3072, 2048), (4096, 4096, 256)]  # (in, out, rows)


def fidelity() -> list[dict]:
    """Every conformance case: both simulators' statistics and the verdicts."""
    from conformance.harness import run_case
    from conformance.test_conformance import CASES

    rows = []
    for case in CASES:
        start = time.perf_counter()
        res = run_case(case)
        rows.append(
            {
                "case": case.name,
                "note": case.note,
                "draws": case.draws,
                "aimc": res["aimc"],
                "aihwkit": res["aihwkit"],
                "ok": res["ok"],
                "verdicts": [
                    {
                        "stat": v.stat,
                        "aimc": v.aimc,
                        "aihwkit": v.aihwkit,
                        "allowed": v.allowed,
                        "ok": v.ok,
                    }
                    for v in res["verdicts"]
                ],
                "seconds": time.perf_counter() - start,
            }
        )
        err = rows[-1]["aimc"]["rel_error"], rows[-1]["aihwkit"]["rel_error"]
        flag = "ok " if res["ok"] else "BAD"
        print(f"{flag} {case.name:<60} aimc {err[0]:.4f}  AIHWKIT {err[1]:.4f}", flush=True)
    return rows


def _layers(k: int, o: int) -> dict[str, torch.nn.Module]:
    """The four sides on the same weights, programmed and drifted to 1 h where analog."""
    from aihwkit.nn import AnalogLinear as KitLinear
    from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig

    import aimc

    torch.manual_seed(0)
    digital = torch.nn.Linear(k, o)
    ours = aimc.nn.AnalogLinear.from_digital(digital, aimc.presets.pcm_inference(), seed=0)
    ours.eval()
    aimc.drift(aimc.program(ours, seed=1), 3600.0, seed=2)
    sides: dict[str, torch.nn.Module] = {"nn.Linear": digital, "aimc": ours}
    for name, rpu in (
        ("AIHWKIT C++", InferenceRPUConfig),
        ("AIHWKIT torch", TorchInferenceRPUConfig),
    ):
        layer = KitLinear(k, o, bias=True, rpu_config=rpu())
        layer.set_weights(digital.weight.detach().clone(), digital.bias.detach().clone())
        layer.eval()
        layer.program_analog_weights()
        layer.drift_analog_weights(3600.0)
        sides[name] = layer
    return sides


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(repeats: int) -> list[dict]:
    """Interleaved forward times per shape."""
    out = []
    for k, o, n in SHAPES:
        sides = _layers(k, o)
        x = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
        times: dict[str, list[float]] = {name: [] for name in sides}
        with torch.no_grad():
            for layer in sides.values():  # warm-up
                layer(x), layer(x)
            for _ in range(repeats):
                for name, layer in sides.items():
                    times[name].append(_time(lambda layer=layer, x=x: layer(x)))
        base = statistics.median(times["nn.Linear"])
        row = {"shape": [k, o, n], "sides": {}}
        for name, ts in times.items():
            row["sides"][name] = {
                "median_ms": 1e3 * statistics.median(ts),
                "min_ms": 1e3 * min(ts),
                "max_ms": 1e3 * max(ts),
                "vs_nn_linear": statistics.median(ts) / base,
            }
        out.append(row)
        cells = "  ".join(f"{s}: {v['vs_nn_linear']:.2f}x" for s, v in row["sides"].items())
        print(f"speed {k}x{o}x{n}: {cells}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="timed forwards per side")
    parser.add_argument("--skip-fidelity", action="store_true", help="only the speed table")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare_aihwkit_cpu.json"
    )
    args = parser.parse_args(argv)

    from conformance.reference import reference_status

    ok, reason = reference_status()
    if not ok:
        print(f"compare_aihwkit: {reason}; nothing was measured or written.", file=sys.stderr)
        return 2
    import aihwkit

    import aimc

    torch.set_num_threads(args.threads)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = {
        "meta": {
            "aihwkit": aihwkit.__version__,
            "aimc": aimc.__version__,
            "torch": torch.__version__,
            "huge_pages": aimc.huge_pages_active(),
            "threads": args.threads,
            "machine": platform.machine(),
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "fidelity": old.get("fidelity", []) if args.skip_fidelity else fidelity(),
        "speed": speed(args.repeats),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    bad = [r["case"] for r in result["fidelity"] if not r["ok"]]
    if bad:
        print(f"compare_aihwkit: {len(bad)} case(s) disagree: {bad}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
