"""CUDA against CPU (statistically), then CUDA forward time, SQuAD eval time and memory (issue 15).

One run on a GPU machine does three things and writes one JSON (``gpu_check_cuda.json``):

1. **Agreement with the CPU, statistically.** The random streams of a CUDA and a CPU generator
   differ, so the same seed gives other numbers on each; what must agree is their distribution.
   For ``pcm_inference``, ``bert_squad:0.0175`` (programmed, drifted to 1 day, eval forward) and
   the ``standard_hwa`` training forward, one layer (512 x 512 and 768 x 3072; fixed weights and
   inputs) is run as ``--chips`` chips on each device with the same seeds. Per chip: the
   programming error of the weights (mean, std), the drift exponents (mean, std), the drift
   compensation factor (mean over tiles), the output error ``y - (x W^T + b)`` (mean, std) and
   the fraction of first-pass ADC outputs at the bound. Each statistic is compared between the
   devices with Welch's z = (mean_cpu - mean_dev) / sqrt(var_cpu / K + var_dev / K) over the K
   chips; it passes at ``|z| <= 6``: weights and inputs are fixed, so the per-chip values vary
   only with the chips' noise; with K = 16, Student's t with about 30 degrees of freedom
   exceeds 6 with probability about 1e-6, so the ~40 z-tests of a run give a false alarm about
   once in 20,000 runs, while a noise amplitude wrong by 1 % is tens of standard errors of
   ``out_err_std``. A floor of 1e-5 of the mean on the standard error keeps a statistic that
   hardly varies from chip to chip from failing on float32 arithmetic done in another order
   (which moves a statistic by far less). The pooled output errors (one random token per
   output column and chip) and programming errors (4096 random weights per chip) of the two
   devices also go through a two-sample Kolmogorov-Smirnov test, which fails at p < 1e-4 (10
   tests: a false alarm about once in 1,000 runs). A CPU-against-CPU run of the full sizes
   (other seeds) gave |z| <= 3.1 and p >= 0.27.
2. **Agreement without noise.** With every noise source off (output, input and weight read
   noise 0, PCM read noise 0), a chip programmed on the CPU and loaded onto the device
   (``state_dict``) drifts to the same tiles (no element off by more than 1e-5 of the largest),
   the same compensation factors (relative L2 difference 1e-4) and the same outputs. Float32
   sums run in another order on the device (relative differences about 1e-6), which can move an
   ADC rounding or a bound-management decision (by estimate for about 1e-4 of the outputs, by
   one converter step), so outputs pass at a relative L2 difference <= 3e-3 with at most 1 % of
   them off by more than 1e-5 of the largest (with an exact periphery: 1e-5 and none). The
   straight-through gradients of the HWA training forward agree to 1e-4, and the same seed
   gives the same outputs twice on the device (1e-6). Inputs at exactly half a DAC step (the
   bound with 7 and 255 steps; a bound-management round of the 7-bit DAC) take the same level
   on both: every output within 1e-6 (PyTorch's CUDA kernel would divide by a CPU scalar as a
   product with its reciprocal, which rounds such inputs the other way; aimc divides by a
   device tensor there).
3. **The counter stream, bit for bit.** The compiled forward's noise (``CounterStream``) is a
   pure function of the layer's seed, so it must not depend on the device: SplitMix64's words
   and the 24-bit uniforms of six keys (zero, negative, the int64 extremes) equal the CPU's
   bit for bit and the normals agree to float rounding (relative L2 1e-6), eagerly and compiled
   (on CUDA, triton's integer arithmetic), as do the rows that bound management redraws; the
   integer-reduced sine and cosine of every 24-bit angle, compiled on the device, are within
   2.5e-7 of float64, and the Box-Muller radius of every 24-bit ``u1`` within 5e-7 relative
   (the CPU: 1.3e-7; an approximate GPU logarithm would fail near ``u1 = 1``). With
   ``--compile``: a chip programmed and drifted on the CPU, loaded onto the device, gives the
   CPU's compiled outputs, noise included (two calls; the tolerance of part 2), while its two
   calls differ by the noise (relative L2 at least 0.01).
4. **Speed and memory on the device.** The eval forward of a programmed, drifted layer against
   ``nn.Linear`` on the three shapes of ``bench_linear.py`` (interleaved A B A B, CUDA events,
   median and min-max of ``--repeats``) for ``pcm_inference`` and ``bert_squad:0.0175``, and one
   SQuAD evaluation point (the shared MiniLM, 500 dev questions, ``bert_squad:0.0175`` drifted
   to 1 day) against the digital model, interleaved; with the peak of
   ``torch.cuda.max_memory_allocated`` during each forward (over what was allocated before it).

The CPU side of parts 1 and 3 runs on the GPU machine's cores. On a lent H200 with 16 cores
(PyTorch 2.11) the whole run with ``--compile`` took 156 s before part 3 existed: part 1 87 s
(most of it the CPU's first noise-kernel compile), the speed rows 51 s (six compiles of 5-10 s
each), SQuAD 17 s. Part 3 at full size with ``--compile`` took 167 s CPU against CPU on a
2-core host, most of it compiles: budget about 5 minutes for the whole run.
Every statistic and verdict is in the JSON; the exit status is 1 when a check fails and 2 when
a section raised (its traceback is in the JSON, the other sections still run).

    python benchmarks/gpu_check.py [--compile] [--out PATH_OR_DIR]  # results/gpu_check_cuda.json
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp   # CPU against CPU, tiny

``--device cpu`` compares the CPU against itself with other seeds (``--smoke``: tiny sizes, a
few seconds; ``tests/test_gpu_check.py`` runs it).

On the lent GPU machine (the device tool's ``run``): it starts bare and reaches no registry, but
its ``python3`` already has a CUDA build of torch, transformers and safetensors, which is all
this needs (the CPU-only ``.venv`` made here cannot go: its torch has no CUDA). The shared
MiniLM and the SQuAD dev set live outside the checkout, so copy them into the ignored folder
``.gpucheck/`` of the checkout that the tool sends (its repository root) first, here::

    mkdir -p .gpucheck && cp -r ../shared/models/minilm-l6-squad ../shared/data/squad/dev-v1.1.json.gz .gpucheck/

(about 47 MB of the 64 MiB that may travel), then pass ``run`` the command (timeout_s 600,
carry [".gpucheck"])::

    set -o pipefail; export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; nvidia-smi -L; python3 benchmarks/gpu_check.py --compile --out $OUT --model .gpucheck/minilm-l6-squad --data .gpucheck/dev-v1.1.json.gz 2>&1 | tee $OUT/gpu_check.log

and copy ``gpu_check_cuda.json`` from the returned files to ``benchmarks/results/``.
"""  # noqa: E501

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import aimc
from aimc import mvm
from aimc import random as arand
from aimc.experiments.squad_drift import DEFAULT_DATA, DEFAULT_MODEL
from aimc.experiments.sweep import resolve_config
from aimc.nn import AnalogLinear
from aimc.random import derive_seed

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0
Z_MAX = 6.0  #: Welch z bound of a statistic (see the module docstring)
KS_P_MIN = 1e-4  #: smallest two-sample Kolmogorov-Smirnov p-value that passes
REL_FLOOR = 1e-5  #: relative floor of a statistic's standard error (float rounding)
SECTIONS = ("agreement", "deterministic", "stream", "speed", "squad")
EVAL_CONFIGS = ("pcm_inference", "bert_squad:0.0175")
SIZES = {
    "full": dict(
        stat_shapes=[(512, 512, 1024), (768, 3072, 1024)],
        chips=16,
        speed_shapes=[(768, 768, 2048), (768, 3072, 2048), (4096, 4096, 256)],
        repeats=25,
        questions=500,
        squad_repeats=3,
        stream_sizes=[1000, (1 << 20) + 3],
        angle_stride=1,
        stream_configs=list(EVAL_CONFIGS),
    ),
    "smoke": dict(
        stat_shapes=[(96, 80, 64)],
        chips=4,
        speed_shapes=[(96, 80, 64)],
        repeats=3,
        questions=4,
        squad_repeats=1,
        stream_sizes=[1000],
        angle_stride=4099,
        stream_configs=["bert_squad:0.0175"],
    ),
}


# --- inputs and one chip -------------------------------------------------------------------------


def layer_data(n_in: int, n_out: int, tokens: int, stats: bool = False) -> dict:
    """Fixed CPU weights, bias, inputs, an output gradient and the exact float64 output, from a
    seed that depends only on the shape. Speed (as ``bench_linear.py``): ``nn.Linear``'s init
    ``U[-1/sqrt(in), 1/sqrt(in)]``, standard-normal inputs. Statistics (``stats``): weights and
    inputs ``U[-1, 1]`` (as ``drift_error_table.py``), so that some ADC outputs saturate
    (weights up to 1 matter for ``pcm_inference``, which has no weight scaling; uniform inputs
    fill the DAC range better than Gaussian ones under abs-max noise management)."""
    gen = torch.Generator().manual_seed(n_in * 100003 + n_out * 101 + tokens)
    bound = 1.0 if stats else 1 / n_in**0.5
    w = torch.empty(n_out, n_in).uniform_(-bound, bound, generator=gen)
    b = torch.empty(n_out).uniform_(-bound, bound, generator=gen)
    if stats:
        x = torch.empty(tokens, n_in).uniform_(-1, 1, generator=gen)
    else:
        x = torch.randn(tokens, n_in, generator=gen)
    grad = torch.randn(tokens, n_out, generator=gen)
    exact = x.double() @ w.double().T + b.double()
    return {"w": w, "b": b, "x": x, "grad": grad, "exact": exact}


def make_layer(cfg: aimc.AnalogConfig, data: dict, seed: int, device) -> AnalogLinear:
    n_out, n_in = data["w"].shape
    layer = AnalogLinear(n_in, n_out, config=cfg, seed=seed, device=device)
    with torch.no_grad():
        layer.weight.copy_(data["w"])
        layer.bias.copy_(data["b"])
    return layer


@contextlib.contextmanager
def adc_clip_rate():
    """Records the fraction of ADC outputs at the bound in the first MVM pass of a forward
    (before bound management redoes any), by wrapping ``aimc.mvm._mvm_adc``."""
    seen: list[float] = []
    original = mvm._mvm_adc

    def spy(xq, tw, io, gen, z, n_out=None, *rest):
        sat = original(xq, tw, io, gen, z, n_out, *rest)
        if not seen and io.out_bound > 0:
            limit = io.out_bound / mvm.units(io)[1]
            seen.append(float((z.abs() >= limit * (1 - 1e-6)).float().mean()))
        return sat

    mvm._mvm_adc = spy
    try:
        with mvm.unfused_adc():  # z rounded and clipped by the first pass, as read above
            yield seen
    finally:
        mvm._mvm_adc = original


def run_chip(cfg, data: dict, seed: int, device, train: bool, picks: dict) -> dict:
    """One chip (eval: programmed, drifted to 1 day) or one HWA training forward: its per-chip
    statistics, the KS samples chosen by ``picks`` and (train) the gradients."""
    layer = make_layer(cfg, data, seed, device)
    stats: dict[str, float] = {}
    samples: dict[str, torch.Tensor] = {}
    x = data["x"].to(device, copy=True)
    if train:
        layer.train()
        x.requires_grad_(True)
    else:
        layer.eval()
        layer.program_chip(derive_seed(seed, "program"))
        target = layer.tile_weights().w.double().cpu()
        err = layer.chip_tiles().w.double().cpu() - target
        rms = target.square().mean().sqrt()
        stats["prog_err_mean"] = float(err.mean() / rms)
        stats["prog_err_std"] = float(err.std() / rms)
        samples["prog_err"] = err.flatten()[picks["weights"]] / rms
        nu = layer.chip_nu_pos.double()
        stats["nu_mean"], stats["nu_std"] = float(nu.mean()), float(nu.std())
        layer.drift_chip(DAY, derive_seed(seed, "drift"))
        stats["alpha_mean"] = float(layer.compensation_factor().double().mean())
    with adc_clip_rate() as clip, torch.set_grad_enabled(train):
        y = layer(x)
    stats["adc_clip_rate"] = clip[0] if clip else 0.0
    out = {"y": y.detach().cpu()}
    if train:
        y.backward(data["grad"].to(device))
        out["grad_x"], out["grad_w"] = x.grad.cpu(), layer.weight.grad.cpu()
    e = out["y"].double() - data["exact"]
    rms = data["exact"].square().mean().sqrt()
    stats["out_err_mean"] = float(e.mean() / rms)
    stats["out_err_std"] = float(e.std() / rms)
    samples["out_err"] = e[picks["tokens"], torch.arange(e.shape[1])] / rms
    out.update(stats=stats, samples=samples)
    return out


def picks_for(chip: int, data: dict, k_weights: int = 4096) -> dict:
    """The KS samples of chip number ``chip``: one token per output column, ``k_weights``
    weights; the same on both devices."""
    gen = torch.Generator().manual_seed(1000 + chip)
    tokens, n_in = data["x"].shape
    n_out = data["w"].shape[0]
    n_w = min(k_weights, n_in * n_out)
    return {
        "tokens": torch.randint(0, tokens, (n_out,), generator=gen),
        "weights": torch.randperm(n_in * n_out, generator=gen)[:n_w],
    }


# --- statistics ----------------------------------------------------------------------------------


def welch(name: str, ref: list[float], dev: list[float]) -> dict:
    k_r, k_d = len(ref), len(dev)
    m_r, m_d = statistics.fmean(ref), statistics.fmean(dev)
    s_r, s_d = statistics.stdev(ref), statistics.stdev(dev)
    floor = REL_FLOOR * max(abs(m_r), abs(m_d)) + 1e-12
    se = math.sqrt(s_r**2 / k_r + s_d**2 / k_d + floor**2)
    z = (m_r - m_d) / se
    return {
        "kind": "z",
        "name": name,
        "ref_mean": m_r,
        "ref_std": s_r,
        "dev_mean": m_d,
        "dev_std": s_d,
        "z": z,
        "limit": Z_MAX,
        "ok": abs(z) <= Z_MAX,
    }


def ks_2samp(name: str, a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two-sample Kolmogorov-Smirnov test, asymptotic p-value (Numerical Recipes' ``probks``)."""
    a, b = a.double().sort().values, b.double().sort().values
    n, m = a.numel(), b.numel()
    both = torch.cat([a, b])
    d = float(
        (torch.searchsorted(a, both, right=True) / n - torch.searchsorted(b, both, right=True) / m)
        .abs()
        .max()
    )
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    p = 1.0
    if lam > 0.2:
        terms = [(-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101)]
        p = min(1.0, max(0.0, 2 * sum(terms)))
    return {
        "kind": "ks",
        "name": name,
        "n": n,
        "m": m,
        "D": d,
        "p": p,
        "limit": KS_P_MIN,
        "ok": p >= KS_P_MIN,
    }


def closeness(name: str, ref: torch.Tensor, dev: torch.Tensor, rel_l2: float, frac=0.0) -> dict:
    """Deterministic agreement: relative L2 and max differences, and the fraction of elements
    off by more than 1e-5 of the largest |ref| (allowed: ``frac``)."""
    ref, dev = ref.double().cpu(), dev.double().cpu()
    diff = (dev - ref).abs()
    scale = float(ref.abs().max()) or 1.0
    l2 = float(diff.norm() / (ref.norm() + 1e-30))
    off = float((diff > 1e-5 * scale).double().mean())
    return {
        "kind": "det",
        "name": name,
        "rel_l2": l2,
        "max_rel": float(diff.max()) / scale,
        "frac_off": off,
        "limit_rel_l2": rel_l2,
        "limit_frac_off": frac,
        "bitwise": bool(torch.equal(ref, dev)),
        "ok": l2 <= rel_l2 and off <= frac,
    }


# --- section 1: agreement of the distributions ---------------------------------------------------


def stat_cases() -> list[tuple[str, str, bool]]:
    """(case label, config name, training forward?)."""
    cases = [(name, name, False) for name in EVAL_CONFIGS]
    return cases + [("standard_hwa training forward", "standard_hwa", True)]


def agreement(args, device: torch.device, sizes: dict) -> list[dict]:
    checks = []
    ref_device = torch.device("cpu")
    seeds = list(range(sizes["chips"]))
    dev_seeds = seeds if device.type != "cpu" else [s + 1000 for s in seeds]
    for n_in, n_out, tokens in sizes["stat_shapes"]:
        data = layer_data(n_in, n_out, tokens, stats=True)
        picks = [picks_for(i, data) for i in range(len(seeds))]
        for label, name, train in stat_cases():
            cfg = resolve_config(name)
            case = f"{label}, {n_in}×{n_out}, {tokens} tokens"
            t0 = time.perf_counter()
            ref = [run_chip(cfg, data, s, ref_device, train, picks[i]) for i, s in enumerate(seeds)]
            t1 = time.perf_counter()
            dev = [run_chip(cfg, data, s, device, train, picks[i]) for i, s in enumerate(dev_seeds)]
            t2 = time.perf_counter()
            found = compare_chips(ref, dev)
            if train:
                found.append(closeness("grad_x", ref[0]["grad_x"], dev[0]["grad_x"], 1e-4))
                found.append(closeness("grad_w", ref[0]["grad_w"], dev[0]["grad_w"], 1e-4))
            else:
                again = run_chip(cfg, data, dev_seeds[0], device, train, picks[0])
                found.append(closeness("same seed twice on device", dev[0]["y"], again["y"], 1e-6))
            for c in found:
                c.update(case=case, section="agreement")
            checks += found
            bad = [c["name"] for c in found if not c["ok"]]
            print(
                f"  {case}: {len(found) - len(bad)}/{len(found)} agree "
                f"(cpu {t1 - t0:.1f} s, {device.type} {t2 - t1:.1f} s)"
                + (f"; DIFFER: {', '.join(bad)}" if bad else ""),
                flush=True,
            )
    return checks


def compare_chips(ref: list[dict], dev: list[dict]) -> list[dict]:
    found = []
    for name in ref[0]["stats"]:
        found.append(welch(name, [r["stats"][name] for r in ref], [d["stats"][name] for d in dev]))
    for name in ref[0]["samples"]:
        a = torch.cat([r["samples"][name] for r in ref])
        b = torch.cat([d["samples"][name] for d in dev])
        found.append(ks_2samp(f"{name} distribution", a, b))
    return found


# --- section 2: the noise-free path --------------------------------------------------------------


def noise_off(cfg: aimc.AnalogConfig) -> aimc.AnalogConfig:
    io = cfg.io.replace(out_noise=0.0, w_noise=0.0, inp_noise=0.0)
    params = cfg.device.params.replace(read_noise_scale=0.0)
    return cfg.replace(io=io, device=cfg.device.replace(params=params))


def deterministic(args, device: torch.device, sizes: dict) -> list[dict]:
    """A chip programmed on the CPU, loaded onto the device, drifted on both without noise."""
    checks = []
    n_in, n_out, tokens = sizes["stat_shapes"][-1]
    data = layer_data(n_in, n_out, tokens, stats=True)
    for name in (*EVAL_CONFIGS, "pcm_weights_only"):
        cfg = noise_off(resolve_config(name))
        ref = make_layer(cfg, data, 0, "cpu").eval()
        ref.program_chip(1)
        dev = make_layer(cfg, data, 0, device).eval()
        dev.load_state_dict(ref.state_dict())
        for layer in (ref, dev):
            layer.drift_chip(DAY, 2)
        perfect = cfg.io.is_perfect
        with torch.no_grad():
            y_ref, y_dev = ref(data["x"]), dev(data["x"].to(device))
        found = [
            closeness("drifted tiles", ref.chip_tiles().w, dev.chip_tiles().w, 1e-5),
            closeness(
                "compensation factors",
                ref.compensation_factor(),
                dev.compensation_factor(),
                1e-4,
                1.0,
            ),
            closeness("outputs", y_ref, y_dev, 1e-5 if perfect else 3e-3, 0.0 if perfect else 0.01),
        ]
        case = f"noise-free {name}, chip programmed on CPU, {n_in}×{n_out}, {tokens} tokens"
        for c in found:
            c.update(case=case, section="deterministic")
        checks += found
        bad = [c["name"] for c in found if not c["ok"]]
        print(f"  {case}: {'agree' if not bad else 'DIFFER: ' + ', '.join(bad)}", flush=True)
    checks += dac_half_steps(device)
    return checks


def dac_half_steps(device: torch.device) -> list[dict]:
    """Inputs at exactly half a DAC step take the same level on the device as on the CPU (where
    ``tests/conformance/test_dac_levels.py`` checks them against AIHWKIT): the largest input of
    each vector under abs-max noise management with 7 and 255 steps (3.5 and 127.5 steps to the
    bound), and constant vectors in a bound-management round of the default 7-bit DAC (31.5
    steps). No noise, no device model; the outputs must agree to 1e-6 of the largest, all of
    them: one level off moves an output by far more."""
    w = torch.linspace(-0.4, 0.4, 2 * 64).view(2, 64)
    x = torch.full((6, 64), 0.7)
    x[1] *= 0.999
    x[2, :32] = 1.0
    x[3] = torch.linspace(-1.0, 1.0, 64)
    x[4:] = torch.rand(2, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    checks = []
    for steps in (7, 255, 126):
        cfg = aimc.AnalogConfig(io=aimc.IOConfig(inp_res=1 / steps, out_noise=0.0, out_res=0.0))
        ref = AnalogLinear(64, 2, bias=False, config=cfg).eval()
        with torch.no_grad():
            ref.weight.copy_(w)  # row 0 saturates the first pass (-12.9 > 12), not the next
        dev = AnalogLinear(64, 2, bias=False, config=cfg).to(device).eval()
        dev.load_state_dict(ref.state_dict())
        with torch.no_grad():
            y_ref, y_dev = ref(x), dev(x.to(device))
        c = closeness("outputs", y_ref, y_dev, 1e-6, 0.0)
        c.update(case=f"DAC at half a step, {steps} steps", section="deterministic")
        checks.append(c)
        print(f"  {c['case']}: {'agree' if c['ok'] else 'DIFFER'}", flush=True)
    return checks


# --- section 3: the counter stream ---------------------------------------------------------------


def exact(name: str, ref: torch.Tensor, dev: torch.Tensor) -> dict:
    """Bit-for-bit agreement (integer words, 24-bit uniforms): the fraction of elements that
    differ, allowed none."""
    ref, dev = ref.cpu(), dev.cpu()
    same = ref.shape == dev.shape and bool(torch.equal(ref, dev))
    off = 1.0 if ref.shape != dev.shape else float((ref != dev).double().mean())
    return {
        "kind": "det",
        "name": name,
        "frac_off": off,
        "limit_frac_off": 0.0,
        "bitwise": same,
        "ok": same,
    }


def within(name: str, exact64: torch.Tensor, dev: torch.Tensor, limit: float) -> dict:
    """Agreement with a float64 reference: the largest absolute error, allowed ``limit``."""
    err = float((dev.cpu().double() - exact64).abs().max())
    return {"kind": "det", "name": name, "max_abs": err, "limit_max_abs": limit, "ok": err <= limit}


def relative(name: str, exact64: torch.Tensor, dev: torch.Tensor, limit: float) -> dict:
    """Agreement with a float64 reference to a relative error ``limit`` (exact zeros must be
    zero)."""
    dev = dev.cpu().double()
    nz = exact64 != 0
    rel = (dev[nz] - exact64[nz]).abs() / exact64[nz].abs()
    err = float(rel.max()) if rel.numel() else 0.0
    zeros = bool((dev[~nz] == 0).all())
    return {
        "kind": "det",
        "name": name,
        "max_rel": err,
        "limit_max_rel": limit,
        "zeros_exact": zeros,
        "ok": err <= limit and zeros,
    }


def differs(name: str, a: torch.Tensor, b: torch.Tensor, at_least: float) -> dict:
    """That two outputs differ (fresh noise): their relative L2 difference, at least
    ``at_least`` (so that an agreement check beside it is not trivially met)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    l2 = float((a - b).norm() / (a.norm() + 1e-30))
    return {"kind": "det", "name": name, "rel_l2": l2, "min_rel_l2": at_least, "ok": l2 >= at_least}


#: keys of the stream checks: zero, small, negative, the int64 extremes
STREAM_KEYS = (0, 1, -1, 0x5DEECE66D, -(1 << 63), (1 << 63) - 1)


def _draws(key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Words, normals and uniforms of the stream at ``key`` for ``n`` values (as a compiled
    forward computes them: with ``KeyedStream``'s increment, a run-time tensor)."""
    gamma = arand.KeyedStream(key).gamma
    return (
        arand.counter_bits(key, arand._words(n), gamma),
        arand.counter_normal(key, (n,), gamma),
        arand.counter_uniform(key, (n,), gamma),
    )


def stream(args, device: torch.device, sizes: dict) -> list[dict]:
    """The compiled forward's noise (:class:`aimc.random.CounterStream`) is a pure function of
    the layer's seed, the same on every device: the device must reproduce the CPU's words bit
    for bit and its normals to float rounding, eagerly and compiled (on CUDA: triton kernels,
    with the integer sine and cosine of ``aimc.random._cos_sin_turns``); with ``--compile``,
    an ``aimc.compile``d chip (programmed and drifted on the CPU, loaded onto the device) must
    give the CPU's outputs, noise included."""
    checks: list[dict] = []

    def record(case: str, found: list[dict]) -> None:
        for c in found:
            c.update(case=case, section="stream")
        checks.extend(found)
        bad = [c["name"] for c in found if not c["ok"]]
        print(f"  {case}: {'agree' if not bad else 'DIFFER: ' + ', '.join(bad)}", flush=True)

    compiled_draws = torch.compile(_draws, fullgraph=True, dynamic=False)
    for n in sizes["stream_sizes"]:
        found = []
        for k in STREAM_KEYS:
            key = torch.tensor(k, dtype=torch.int64)
            bits, z, u = _draws(key, n)
            for how, fn in (("eager", _draws), ("compiled", compiled_draws)):
                d_bits, d_z, d_u = fn(key.to(device), n)
                found += [
                    exact(f"words, key {k}, {how}", bits, d_bits),
                    closeness(f"normals, key {k}, {how}", z, d_z, 1e-6),
                    exact(f"uniforms, key {k}, {how}", u, d_u),
                ]
            rows = torch.tensor([0, 3, n // 16 - 1], dtype=torch.int64)
            ref_rows, dev_rows = (
                {
                    kind: arand.counter_rows(key.to(d), n // 16 * 16, rows.to(d), 16, kind)
                    for kind in ("normal", "uniform")
                }
                for d in ("cpu", device)
            )
            found += [
                closeness(f"normal rows, key {k}", ref_rows["normal"], dev_rows["normal"], 1e-6),
                exact(f"uniform rows, key {k}", ref_rows["uniform"], dev_rows["uniform"]),
            ]
        record(f"counter stream, {n} values, {len(STREAM_KEYS)} keys", found)

    # every 24-bit angle (smoke: a stride) against float64, compiled on the device
    k = torch.arange(0, 1 << 24, sizes["angle_stride"], dtype=torch.int32)
    ends = torch.arange(16, dtype=torch.int32)  # the fields next to 0 and 2**24 always
    k = torch.unique(torch.cat([k, ends, (1 << 24) - 1 - ends]))
    theta = k.double() * (2 * math.pi / (1 << 24))
    cos, sin = torch.compile(arand._cos_sin_turns, fullgraph=True, dynamic=False)(k.to(device))
    record(
        f"sine and cosine of {k.numel()} 24-bit angles, compiled",
        [within("cos", theta.cos(), cos, 2.5e-7), within("sin", theta.sin(), sin, 2.5e-7)],
    )
    # every 24-bit radius field: sqrt(-2 ln u1) against float64 at the same float32 u1 (an
    # approximate logarithm, absolute error ~2^-22, fails near u1 = 1 by orders of magnitude)
    k1 = k.to(torch.int64)  # the same stride
    u1 = (k1.to(torch.int32).float() + 0.5) * 2.0**-24  # the float32 u1 of aimc.random._polar
    r = torch.compile(arand._polar, fullgraph=True, dynamic=False)((k1 << 40).to(device))[0]
    record(
        f"Box-Muller radius of {k.numel()} 24-bit u1 fields, compiled",
        [relative("radius", torch.sqrt(-2 * torch.log(u1.double())), r, 5e-7)],
    )

    if args.compile:  # the whole compiled forward, noise on
        for case, found in compiled_forward(device, sizes):
            record(case, found)
    return checks


def compiled_forward(
    device: torch.device, sizes: dict, fresh: bool = True
) -> list[tuple[str, list[dict]]]:
    """The stream section's ``--compile`` part, per config of ``sizes["stream_configs"]``: a
    chip programmed and drifted on the CPU, loaded onto ``device``, ``aimc.compile``d on both;
    two calls each, noise on. Returns ``(case, checks)`` per config: the device's outputs are
    the CPU's (the tolerance of the deterministic section: float32 sums in another order can
    move an ADC rounding or a bound-management decision), and the two calls differ by the
    noise. ``fresh``: reset dynamo before each config (the script; a test keeps its session's
    compiled kernels)."""
    n_in, n_out, tokens = sizes["stat_shapes"][0]
    data = layer_data(n_in, n_out, tokens, stats=True)
    cases = []
    for name in sizes["stream_configs"]:
        cfg = resolve_config(name)
        ref = make_layer(cfg, data, 0, "cpu").eval()
        ref.program_chip(1)
        ref.drift_chip(DAY, 2)
        dev = make_layer(cfg, data, 0, device).eval()
        dev.load_state_dict(ref.state_dict())  # the chip; the stream comes from the seed
        if fresh:
            torch._dynamo.reset()
        # both chips' tile caches filled outside inference mode, so that on the CPU (the test)
        # the second model reuses the first one's graph: dynamo guards on the dispatch keys
        c_ref, c_dev = aimc.compile(ref), aimc.compile(dev)
        with torch.inference_mode():
            x = data["x"]
            y_ref = [c_ref(x) for _ in range(2)]
            y_dev = [c_dev(x.to(device)) for _ in range(2)]
        found = [
            closeness(f"outputs, call {i + 1}", a, b, 3e-3, 0.01)
            for i, (a, b) in enumerate(zip(y_ref, y_dev, strict=True))
        ]
        found.append(differs("calls 1 and 2 differ (fresh noise)", y_ref[0], y_ref[1], 0.01))
        cases.append(
            (f"compiled {name}, chip from the CPU, {n_in}×{n_out}, {tokens} tokens", found)
        )
    return cases


# --- section 4: speed and memory -----------------------------------------------------------------


def timer(device: torch.device):
    """``fn -> seconds``: CUDA events on a GPU, the wall clock elsewhere."""
    if device.type == "cuda":

        def cuda_time(fn) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_time

    def wall_time(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return wall_time


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak ``max_memory_allocated`` while ``fn`` runs, over what was allocated before (CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def allocated(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device)


def interleaved(fa, fb, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    clock = timer(device)
    fa(), fb(), fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(clock(fa))
        tb.append(clock(fb))
    return ta, tb


def spread(ts: list[float], unit: float) -> dict[str, float]:
    return {
        "median": unit * statistics.median(ts),
        "min": unit * min(ts),
        "max": unit * max(ts),
    }


def speed(args, device: torch.device, sizes: dict) -> list[dict]:
    rows = []
    for name in EVAL_CONFIGS:
        for n_in, n_out, tokens in sizes["speed_shapes"]:
            data = layer_data(n_in, n_out, tokens)
            x = data["x"].to(device)
            before = allocated(device)
            digital = torch.nn.Linear(n_in, n_out, device=device)
            with torch.no_grad():
                digital.weight.copy_(data["w"])
                digital.bias.copy_(data["b"])
            mid = allocated(device)
            analog = make_layer(resolve_config(name), data, 0, device).eval()
            analog.program_chip(1)
            analog.drift_chip(DAY, 2)

            def fwd(m, x=x):
                def run():
                    with torch.no_grad():
                        m(x)

                return run

            ta, td = interleaved(fwd(analog), fwd(digital), args.repeats, device)
            compiled = compiled_row(args, analog, digital, x, device) if args.compile else {}
            row = {
                "config": name,
                "in": n_in,
                "out": n_out,
                "tokens": tokens,
                "analog_ms": spread(ta, 1e3),
                "digital_ms": spread(td, 1e3),
                "ratio": statistics.median(ta) / statistics.median(td),
                "analog_peak_bytes": peak_bytes(fwd(analog), device),
                "digital_peak_bytes": peak_bytes(fwd(digital), device),
                "digital_layer_bytes": None if before is None else mid - before,
                "analog_layer_bytes": None if mid is None else allocated(device) - mid,
                **compiled,
            }
            rows.append(row)
            print(
                f"  {name:<18} {n_in}x{n_out}x{tokens}: analog {row['analog_ms']['median']:.3f} "
                f"ms, nn.Linear {row['digital_ms']['median']:.3f} ms, ratio {row['ratio']:.2f}"
                + (
                    f"; compiled {row['compiled_ms']['median']:.3f} ms, ratio "
                    f"{row['compiled_ratio']:.2f} (first call {row['compiled_first_call_s']:.0f} s)"
                    if "compiled_ms" in row
                    else f"; compiled: {row['compiled_error']}"
                    if "compiled_error" in row
                    else ""
                ),
                flush=True,
            )
            del analog, digital, x
    return rows


def compiled_row(args, analog, digital, x, device: torch.device) -> dict:
    """The ``aimc.compile``d eval forward of ``analog`` against ``digital`` (interleaved): its
    time, ratio and first call (the compile); or the error where it does not compile."""
    torch._dynamo.reset()  # a fresh compile per row (not dynamo's recompile limit)
    try:
        model = aimc.compile(analog)

        def run():
            with torch.no_grad():
                model(x)

        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first = time.perf_counter() - t0

        def digital_run():
            with torch.no_grad():
                digital(x)

        tc, td = interleaved(run, digital_run, args.repeats, device)
    except Exception as err:  # recorded in the row; the eager numbers stand
        return {"compiled_error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    return {
        "compiled_ms": spread(tc, 1e3),
        "compiled_digital_ms": spread(td, 1e3),
        "compiled_ratio": statistics.median(tc) / statistics.median(td),
        "compiled_first_call_s": first,
    }


def squad(args, device: torch.device, sizes: dict) -> dict:
    """One SQuAD evaluation point (``bert_squad:0.0175``, 1 day) against digital, interleaved."""
    from aimc.experiments.squad_drift import load_qa_model
    from aimc.squad.data import load_squad, select_questions
    from aimc.squad.features import best_spans, make_features, qa_logits
    from aimc.squad.metrics import squad_scores

    name = "bert_squad:0.0175"
    examples = select_questions(load_squad(args.data), sizes["questions"], 0)
    base = allocated(device)
    digital, tokenizer = load_qa_model(str(args.model), device)
    mid = allocated(device)
    analog, _ = load_qa_model(str(args.model), device)
    features = make_features(examples, tokenizer)
    aimc.convert(analog, resolve_config(name), seed=0).eval()
    aimc.program(analog, seed=0)
    aimc.drift(analog, DAY, seed=0)
    scores = {}

    def evaluate(model, key):
        def run():
            with torch.no_grad():
                s, e = qa_logits(model, features, 32, device)
            scores[key] = squad_scores(best_spans(examples, features, s, e), examples)["f1"]

        return run

    ta, td = interleaved(
        evaluate(analog, "analog"), evaluate(digital, "digital"), sizes["squad_repeats"], device
    )
    row = {
        "config": name,
        "t_seconds": DAY,
        "questions": len(examples),
        "features": len(features),
        "analog_s": spread(ta, 1.0),
        "digital_s": spread(td, 1.0),
        "ratio": statistics.median(ta) / statistics.median(td),
        "analog_peak_bytes": peak_bytes(evaluate(analog, "analog"), device),
        "digital_peak_bytes": peak_bytes(evaluate(digital, "digital"), device),
        "digital_model_bytes": None if base is None else mid - base,
        "analog_model_bytes": None if mid is None else allocated(device) - mid,
        "analog_f1": scores["analog"],
        "digital_f1": scores["digital"],
    }
    cpu = ROOT / "benchmarks" / "results" / "squad_eval_cpu.json"
    if cpu.is_file():  # the CPU measurement of the same point, for comparison (not a check)
        for r in json.loads(cpu.read_text()).get("rows", []):
            if r.get("config") == name and r.get("questions") == len(examples):
                row["cpu_reference"] = {k: r.get(k) for k in ("digital_f1", "analog_f1_1day")}
    print(
        f"  SQuAD {name}, {len(examples)} questions: analog {row['analog_s']['median']:.2f} s, "
        f"digital {row['digital_s']['median']:.2f} s, ratio {row['ratio']:.2f}; F1 analog "
        f"{row['analog_f1']:.2f}, digital {row['digital_f1']:.2f}",
        flush=True,
    )
    return row


# --- driver --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device checked against the CPU (cuda)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds on a CPU")
    p.add_argument("--out", type=Path, default=None, help="JSON file, or a directory for it")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run (comma list)")
    p.add_argument("--chips", type=int, default=None, help="chips per device and case")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the aimc.compile'd eval forward (one compile per speed row)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the SQuAD QA model")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SQuAD v1.1 dev file")
    args = p.parse_args(argv)
    if args.chips is not None and args.chips < 2:
        p.error("--chips: at least 2 (the z-tests need a spread over chips)")
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    return args


def out_path(args, device: torch.device) -> Path:
    name = f"gpu_check_{device.type}{'_smoke' if args.smoke else ''}.json"
    if args.out is None:
        folder = ROOT / ("runs" if args.smoke else "benchmarks/results")
        return folder / name
    return args.out / name if args.out.is_dir() else args.out


def meta(args, device: torch.device, sizes: dict) -> dict:
    info = {
        "aimc": aimc.__version__,
        "torch": torch.__version__,
        "device": str(device),
        "reference_device": "cpu",
        "smoke": args.smoke,
        "compile": args.compile,
        "sizes": sizes,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "z_max": Z_MAX,
        "ks_p_min": KS_P_MIN,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["capability"] = list(torch.cuda.get_device_capability(device))
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (use --device cpu to test)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    sizes = dict(SIZES["smoke" if args.smoke else "full"])
    sizes["chips"] = args.chips or sizes["chips"]
    sizes["repeats"] = args.repeats or sizes["repeats"]
    args.repeats = sizes["repeats"]
    path = out_path(args, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"meta": meta(args, device, sizes), "checks": [], "errors": []}
    sections = {
        "agreement": lambda: result["checks"].extend(agreement(args, device, sizes)),
        "deterministic": lambda: result["checks"].extend(deterministic(args, device, sizes)),
        "stream": lambda: result["checks"].extend(stream(args, device, sizes)),
        "speed": lambda: result.__setitem__("speed", speed(args, device, sizes)),
        "squad": lambda: result.__setitem__("squad", squad(args, device, sizes)),
    }
    start = time.perf_counter()
    for name in args.only.split(","):
        print(f"{name} ({device} against cpu):", flush=True)
        t0 = time.perf_counter()
        try:
            sections[name]()
        except Exception as err:  # record it, run the other sections
            traceback.print_exc()
            result["errors"].append(
                {"section": name, "error": repr(err), "traceback": traceback.format_exc()}
            )
        result["meta"][f"{name}_s"] = time.perf_counter() - t0
        write(path, result)
    failed = [c for c in result["checks"] if not c["ok"]]
    result["ok"] = not failed and not result["errors"]
    result["meta"]["total_s"] = time.perf_counter() - start
    write(path, result)
    n = len(result["checks"])
    print(f"{n - len(failed)}/{n} checks agree, {len(result['errors'])} section error(s); {path}")
    return 2 if result["errors"] else 1 if failed else 0


def write(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
