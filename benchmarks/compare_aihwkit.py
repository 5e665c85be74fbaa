"""The same layer under aimc and IBM AIHWKIT: output-error statistics and forward speed.

Needs ``import aihwkit`` to work (``pip install aihwkit``); without it the script says so and
exits with status 2 — nothing is measured and no JSON is written.

One ``Linear(768, 768)`` (``nn.Linear``'s default initialisation, fixed seed) and 2048 standard
normal input rows, under AIHWKIT's ``InferenceRPUConfig()`` defaults and aimc's
``pcm_inference()`` (the same semantics, REFERENCE.md §1-3):

* **fidelity** — the relative error ``||y - y_digital|| / ||y_digital||`` and the mean and std of
  the element-wise error ``y - y_digital``, over ``--repeats`` noise draws, for
  (a) the IO periphery alone (DAC/ADC, output noise, noise and bound management; exact weights),
  and (b) PCM programmed and drifted to each of ``--times`` (a fresh chip per repeat);
* **speed** — the forward time of the IO-periphery layer, aimc and AIHWKIT interleaved with
  ``nn.Linear`` (median, min, max over ``--timing-repeats``).

    python benchmarks/compare_aihwkit.py [--threads 2] [--repeats 10] [--device cpu]

Writes ``benchmarks/results/compare_aihwkit_<device>.json`` and prints a table.
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

IN, OUT, TOKENS = 768, 768, 2048
DAY = 86400.0


def _aihwkit_available() -> str | None:
    try:
        import aihwkit
    except ImportError:
        return None
    return getattr(aihwkit, "__version__", "unknown")


def _reference(device: torch.device) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    digital = torch.nn.Linear(IN, OUT).to(device)
    x = torch.randn(TOKENS, IN, device=device)
    with torch.no_grad():
        y = digital(x)
    return digital, x, y


def _errors(y: torch.Tensor, y_ref: torch.Tensor) -> dict[str, float]:
    d = (y - y_ref).double()
    return {
        "rel_error": float(d.norm() / y_ref.double().norm()),
        "err_mean": float(d.mean()),
        "err_std": float(d.std()),
    }


def _summary(draws: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in draws[0]:
        vals = [d[k] for d in draws]
        out[k] = statistics.mean(vals)
        out[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


# --- aimc --------------------------------------------------------------------------------------


def aimc_layer(digital: torch.nn.Linear, pcm: bool, seed: int) -> torch.nn.Module:
    import aimc

    cfg = aimc.presets.pcm_inference()
    if not pcm:
        cfg = cfg.replace(device=aimc.DeviceConfig())  # exact weights, IO periphery only
    layer = aimc.nn.AnalogLinear.from_digital(digital, cfg, seed=seed)
    return layer.eval()


def aimc_draw(layer, x: torch.Tensor, seed: int, t: float | None) -> torch.Tensor:
    import aimc

    if t is not None:
        aimc.program(layer, seed=seed)
        aimc.drift(layer, t, seed=seed + 1)
    aimc.manual_seed(layer, seed)
    with torch.no_grad():
        return layer(x)


# --- AIHWKIT -----------------------------------------------------------------------------------


def aihwkit_layer(digital: torch.nn.Linear) -> torch.nn.Module:
    """AIHWKIT's layer; it uses the exact weights until ``program_analog_weights``."""
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig

    rpu = InferenceRPUConfig()  # the defaults aimc's pcm_inference() reproduces
    rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
    rpu.drift_compensation = GlobalDriftCompensation()
    layer = AnalogLinear(IN, OUT, bias=True, rpu_config=rpu).to(digital.weight.device)
    layer.set_weights(digital.weight.detach().clone(), digital.bias.detach().clone())
    layer.eval()
    return layer


def aihwkit_draw(layer, x: torch.Tensor, seed: int, t: float | None) -> torch.Tensor:
    torch.manual_seed(seed)
    if t is not None:
        layer.program_analog_weights()
        layer.drift_analog_weights(t)
    with torch.no_grad():
        return layer(x)


# --- measurements ------------------------------------------------------------------------------


def fidelity(
    make: Callable[[bool], torch.nn.Module],
    draw: Callable[[torch.nn.Module, torch.Tensor, int, float | None], torch.Tensor],
    x: torch.Tensor,
    y_ref: torch.Tensor,
    times: list[float],
    repeats: int,
) -> dict[str, dict[str, float]]:
    out = {}
    io = make(False)
    out["io_only"] = _summary([_errors(draw(io, x, 1000 + r, None), y_ref) for r in range(repeats)])
    pcm = make(True)
    for t in times:
        draws = [_errors(draw(pcm, x, 2000 + 7 * r, t), y_ref) for r in range(repeats)]
        out[f"pcm_t={t:g}"] = _summary(draws)
    return out


def _time(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def speed(
    layers: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Forward times, all layers interleaved (A B C A B C ...) so a busy machine slows all."""
    times: dict[str, list[float]] = {name: [] for name in layers}
    with torch.no_grad():
        for layer in layers.values():  # warm-up
            layer(x), layer(x)
        for _ in range(repeats):
            for name, layer in layers.items():
                times[name].append(_time(lambda layer=layer: layer(x), device))
    base = statistics.median(times["nn.Linear"])
    return {
        name: {
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "vs_nn_linear": statistics.median(ts) / base,
        }
        for name, ts in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="noise draws per fidelity cell")
    parser.add_argument("--timing-repeats", type=int, default=15)
    parser.add_argument(
        "--times", default="0,86400,31536000", help="PCM drift times in s (comma-separated)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)

    version = _aihwkit_available()
    if version is None:
        print(
            "compare_aihwkit: AIHWKIT is not installed (`import aihwkit` failed), so there is "
            "nothing to compare against; install it (pip install aihwkit) and rerun. "
            "Nothing was measured or written.",
            file=sys.stderr,
        )
        return 2

    import aimc

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    times = [float(t) for t in args.times.split(",") if t.strip()]
    digital, x, y_ref = _reference(device)
    result = {
        "meta": {
            "aihwkit": version,
            "aimc": aimc.__version__,
            "torch": torch.__version__,
            "threads": args.threads,
            "device": device.type,
            "machine": platform.machine(),
            "shape": {"in": IN, "out": OUT, "tokens": TOKENS},
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "fidelity": {
            "aimc": fidelity(
                lambda pcm: aimc_layer(digital, pcm, 0), aimc_draw, x, y_ref, times, args.repeats
            ),
            "aihwkit": fidelity(
                lambda pcm: aihwkit_layer(digital), aihwkit_draw, x, y_ref, times, args.repeats
            ),
        },
        "speed": speed(
            {
                "nn.Linear": digital,
                "aimc": aimc_layer(digital, False, 0),
                "aihwkit": aihwkit_layer(digital),
            },
            x,
            args.timing_repeats,
            device,
        ),
    }
    out = args.out or Path(__file__).parent / "results" / f"compare_aihwkit_{device.type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'cell':<22} {'aimc rel. error':>20} {'AIHWKIT rel. error':>20}")
    for cell, a in result["fidelity"]["aimc"].items():
        b = result["fidelity"]["aihwkit"][cell]
        print(
            f"{cell:<22} {a['rel_error']:>12.4f} ± {a['rel_error_sd']:.4f} "
            f"{b['rel_error']:>12.4f} ± {b['rel_error_sd']:.4f}"
        )
    for name, s in result["speed"].items():
        print(f"forward {name:<10} {s['median_ms']:8.1f} ms  ({s['vs_nn_linear']:.2f}x nn.Linear)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
