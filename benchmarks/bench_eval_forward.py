"""Eval forward of a programmed, drifted analog layer against ``nn.Linear`` (issue 15's targets).

Every layer is programmed (seed 0) and drifted to 1 hour (seed 0), then its eval forward under
``torch.inference_mode`` is timed against the digital layer, the two sides interleaved
(A B A B ...) in one run; the medians, their ratio and the min-max spread are reported. Layers:

* the three ``bench_linear.py`` shapes, ``nn.Linear``'s initialisation, standard normal inputs;
* three layers of the shared MiniLM SQuAD model (attention query 384x384, FFN in 384->1536, FFN
  out 1536->384) on the activations they see for 8 real SQuAD dev features (2048 tokens).

Configs: ``pcm_inference`` (no weight noise: one MVM) and ``bert_squad:0.0175`` (``pcm_read``
weight noise: a second MVM of ``|W| x^2``), the latter also with that MVM in bfloat16
(``bert_squad:0.0175+w_noise_bf16``, the opt-in ``IOConfig.w_noise_bf16``). Targets: <= 1.5x
and <= 2.0x.

    python benchmarks/bench_eval_forward.py [--threads 2] [--repeats 15] [--compile]

Writes ``benchmarks/results/eval_forward_cpu.json`` (``--out`` to change), with each row's
first-pass saturated fraction: the share of (tile, vector) pairs that bound management redoes.
``--saturation-only`` fills that column into an existing result without timing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from bench_linear import _stats, cpu_host  # benchmarks/ is the script's directory

import aimc
import aimc.mvm as mvm
from aimc.experiments.sweep import resolve_config

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = [(768, 768, 2048), (768, 3072, 2048), (4096, 4096, 256)]
MINILM_LAYERS = {
    "minilm query": "bert.encoder.layer.2.attention.self.query",
    "minilm ffn in": "bert.encoder.layer.2.intermediate.dense",
    "minilm ffn out": "bert.encoder.layer.2.output.dense",
}
#: ``+w_noise_bf16``: the config with the opt-in bfloat16 ``pcm_read`` variance MVM
#: (``IOConfig.w_noise_bf16``)
BF16 = "+w_noise_bf16"
CONFIGS = ("pcm_inference", "bert_squad:0.0175", "bert_squad:0.0175" + BF16)
TARGETS = {"pcm_inference": 1.5, "bert_squad:0.0175": 2.0, "bert_squad:0.0175" + BF16: 2.0}


def config_of(name: str) -> aimc.AnalogConfig:
    """A sweep config name (``resolve_config``), optionally suffixed with ``+w_noise_bf16``."""
    base = name.removesuffix(BF16)
    cfg = resolve_config(base)
    if cfg is None:
        raise ValueError(f"--configs: got {name!r}; allowed: an analog config")
    return cfg.replace(io=cfg.io.replace(w_noise_bf16=True)) if name.endswith(BF16) else cfg


def synthetic_layers(tokens_scale: float = 1.0) -> list[tuple[str, torch.nn.Linear, torch.Tensor]]:
    """The bench_linear shapes, drawn from an explicit generator."""
    out = []
    gen = torch.Generator().manual_seed(0)
    for n_in, n_out, tokens in SYNTHETIC:
        lin = torch.nn.Linear(n_in, n_out)
        bound = 1 / n_in**0.5  # nn.Linear's default init range
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        x = torch.randn(max(1, int(tokens * tokens_scale)), n_in, generator=gen)
        out.append((f"{n_in}x{n_out}, {x.shape[0]} tokens", lin, x))
    return out


def minilm_layers(tokens: int = 2048) -> list[tuple[str, torch.nn.Linear, torch.Tensor]]:
    """Three layers of the shared MiniLM and the inputs they get on real SQuAD features."""
    from aimc.experiments.squad_drift import DEFAULT_DATA, DEFAULT_MODEL, load_qa_model
    from aimc.squad.data import load_squad, select_questions
    from aimc.squad.features import make_features, qa_logits

    model, tokenizer = load_qa_model(str(DEFAULT_MODEL), torch.device("cpu"))
    examples = select_questions(load_squad(DEFAULT_DATA), 64, 0)
    features = make_features(examples, tokenizer)
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in MINILM_LAYERS}
    modules = dict(model.named_modules())
    hooks = []
    for label, name in MINILM_LAYERS.items():
        hook = modules[name].register_forward_hook(
            lambda m, a, o, label=label: seen[label].append(
                a[0].detach().reshape(-1, a[0].shape[-1])
            )
        )
        hooks.append(hook)
    with torch.inference_mode():
        qa_logits(model, features, 16)
    for h in hooks:
        h.remove()
    out = []
    for label, name in MINILM_LAYERS.items():
        x = torch.cat(seen[label])[:tokens].clone()
        lin = torch.nn.Linear(modules[name].in_features, modules[name].out_features)
        lin.load_state_dict(modules[name].state_dict())
        out.append((f"{label} {lin.in_features}x{lin.out_features}, {x.shape[0]} tokens", lin, x))
    return out


def analog_twin(lin: torch.nn.Linear, config_name: str) -> torch.nn.Module:
    """``lin`` converted with ``config_name``, programmed (seed 0) and drifted to 1 h (seed 0)."""
    wrapper = torch.nn.Sequential(copy.deepcopy(lin))
    analog = aimc.convert(wrapper, config_of(config_name), seed=0).eval()
    aimc.program(analog, seed=0)
    aimc.drift(analog, 3600.0, seed=0)
    return analog


def saturation_fraction(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Fraction of (tile, vector) pairs whose first-pass output saturates the ADC in one forward
    of ``layer`` (an analog layer, or a module holding exactly one) on ``x``: the share that
    iterative bound management has to recompute at least once. 0 where nothing saturates or the
    config has no bound management."""
    seen: list[float] = []

    def record(z, sat, *args) -> None:
        seen.append(float(sat.float().mean()))

    with spying("_bound_management", record), torch.no_grad():
        layer(x)
    return seen[0] if seen else 0.0


@contextlib.contextmanager
def spying(name: str, record: Callable[..., object]) -> Iterator[None]:
    """``aimc.mvm.<name>`` replaced, for the block, by a wrapper that calls ``record`` with its
    arguments first."""
    original = getattr(mvm, name)

    def spy(*args):
        record(*args)
        return original(*args)

    setattr(mvm, name, spy)
    try:
        yield
    finally:
        setattr(mvm, name, original)


def page_faults_per_call(f: Callable[[], object], calls: int = 3) -> float:
    """Minor page faults of this process per call of ``f`` (after the timed calls): the first
    touches of freshly mapped memory, which large fresh temporaries cost on every call."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        f()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of every side, the sides interleaved (A B A B ...), after
    ``warmup`` calls of each (scratch buffers, cached tiles, compilation)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return times


def bench(label: str, lin: torch.nn.Linear, x: torch.Tensor, config: str, args) -> dict:
    lin = lin.eval()
    analog = analog_twin(lin, config)
    saturated = saturation_fraction(analog, x)
    sides: dict[str, Callable[[], object]] = {}

    def run(m: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def f() -> object:
            with torch.inference_mode():
                return m(x)

        return f

    sides["digital"] = run(lin)
    sides["analog"] = run(analog)
    first_call = None
    if args.compile:
        torch._dynamo.reset()  # a fresh compile per row (not dynamo's recompile limit)
        sides["analog compiled"] = run(aimc.compile(analog))
        start = time.perf_counter()
        sides["analog compiled"]()  # compiles (inductor's on-disk cache may shorten it)
        first_call = time.perf_counter() - start
    times = interleaved(sides, args.repeats)
    digital = statistics.median(times["digital"])
    row: dict = {"layer": label, "config": config, "tokens": x.shape[0]}
    if first_call is not None:
        row["compiled_first_call_s"] = first_call
    row["page_faults_per_call"] = {k: page_faults_per_call(f) for k, f in sides.items()}
    row["saturated_fraction_first_pass"] = saturated  # the fresh twin's first forward
    for k, ts in times.items():
        row[k] = _stats(ts)
        if k != "digital":
            row[f"ratio {k}"] = statistics.median(ts) / digital
    return row


def fill_saturation(path: Path, layers: dict[str, tuple[torch.nn.Linear, torch.Tensor]]) -> None:
    """Set ``saturated_fraction_first_pass`` of every row of the result at ``path`` from its
    layer and config (the same programming and drift seeds as the timed run)."""
    data = json.loads(path.read_text())
    for row in data["rows"]:
        if row["layer"] not in layers:
            raise SystemExit(
                f"--saturation-only: {path} has layer {row['layer']!r}, which --layers "
                f"{sorted(layers)} does not build; pass the --layers and --tokens-scale of that run"
            )
        lin, x = layers[row["layer"]]
        if x.shape[0] != row["tokens"]:
            raise SystemExit(
                f"--saturation-only: {row['layer']!r} was timed on {row['tokens']} tokens, "
                f"built here with {x.shape[0]}; pass that run's --tokens-scale"
            )
        frac = saturation_fraction(analog_twin(lin.eval(), row["config"]), x)
        row["saturated_fraction_first_pass"] = frac
        print(f"{row['config']:<18} {row['layer']:<34} saturated {100 * frac:.0f} %")
    data["meta"]["saturation_filled"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--layers",
        default="synthetic,minilm",
        help="comma-separated: synthetic, minilm (default: both)",
    )
    parser.add_argument("--tokens-scale", type=float, default=1.0, help="shrink the batches")
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile the analog layer"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/eval_forward_cpu.json"
    )
    parser.add_argument(
        "--saturation-only",
        action="store_true",
        help="only (re)compute the first-pass saturated fraction of every row of --out, keeping "
        "its timings (the fraction depends on the layers and seeds, not on the machine's speed)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = args.layers.split(",")
    unknown = sorted(set(kinds) - {"synthetic", "minilm"})
    if unknown:
        parser.error(
            f"--layers: got {args.layers!r} ({', '.join(unknown)} unknown); allowed: "
            "comma-separated synthetic, minilm"
        )
    layers = synthetic_layers(args.tokens_scale) if "synthetic" in kinds else []
    if "minilm" in kinds:
        layers += minilm_layers(max(1, int(2048 * args.tokens_scale)))
    print(
        f"programmed analog layer (drifted 1 h) vs nn.Linear, eval forward, {args.threads} "
        f"threads, "
        f"median of {args.repeats} interleaved runs"
    )
    if args.saturation_only:
        fill_saturation(args.out, {label: (lin, x) for label, lin, x in layers})
        return
    rows = []
    for config in args.configs.split(","):
        for label, lin, x in layers:
            row = bench(label, lin, x, config, args)
            rows.append(row)
            ratios = "  ".join(f"{k[6:]} {v:.2f}x" for k, v in row.items() if k.startswith("ratio"))
            spread = ", ".join(
                f"{k} {row[k]['min_ms']:.1f}-{row[k]['max_ms']:.1f}"
                for k in row
                if isinstance(row[k], dict) and "min_ms" in row[k]
            )
            print(
                f"{config:<18} {label:<34} digital {row['digital']['median_ms']:7.1f} ms  "
                f"analog {row['analog']['median_ms']:7.1f} ms  {ratios}  ({spread})",
                flush=True,
            )
    meta = {
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "aimc": aimc.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "targets": TARGETS,
        "machine": platform.machine(),
        "host": cpu_host(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
