"""The compiled CPU kernels of :class:`aimc._kernels.FusedKernel` (the noise kernel, bound
management's rows, the input-range clip) check every graph they compile against the same graph
run eagerly, and are keyed in inductor's on-disk cache by their vector width.

Why: inductor's graph cache keyed a graph on its config, not on the vector ISA it was generated
for, and on a hit compiled the cached C++ for the ISA of the process at hand; a graph generated
for 512-bit vectors then ran with 256-bit ones and left half of every vector unwritten (half
of a noise draw garbage, NaN among it: ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 host with a
warm cache, 2026-12-05). :func:`test_a_cache_from_a_wider_isa_serves_right_values` runs that
scenario for real where the host allows it; the other tests make a compiled graph compute
wrong values on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import ROOT, run_as_avx2_host

from aimc import _kernels
from aimc import random as arandom
from aimc._kernels import FusedKernel, isa_options


def _fill_into(x: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(torch.sin(x) * 2.0 + 1.0)


def _corrupting_compile_fx(monkeypatch, corrupt_graphs: set[int]) -> list[dict]:
    """Make inductor's ``compile_fx`` return, for the graphs numbered in ``corrupt_graphs``
    (0: the first compiled), a function that leaves every second output value unwritten (what
    the stale cache did); returns the config patches each compile got."""
    from torch._inductor import compile_fx as cfx

    real = cfx.compile_fx
    calls: list[dict] = []
    depth = [0]

    def compile_fx(gm, example_inputs, config_patches=None, **kwargs):
        if depth[0]:  # compile_fx calling itself with the patches applied
            return real(gm, example_inputs, config_patches=config_patches, **kwargs)
        number = len(calls)
        calls.append(dict(config_patches or {}))
        depth[0] += 1
        try:
            compiled = real(gm, example_inputs, config_patches=config_patches, **kwargs)
        finally:
            depth[0] -= 1
        if number not in corrupt_graphs:
            return compiled

        def wrong(*args):
            outs = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 1]
            saved = [a.clone() for a in outs]
            result = compiled(*args)
            for a, before in zip(outs, saved, strict=True):
                a[1::2] = before[1::2] + 1e33  # values the kernel never wrote
            return result

        return wrong

    monkeypatch.setattr(cfx, "compile_fx", compile_fx)
    return calls


def test_a_wrong_first_graph_is_dropped_with_the_eager_values(monkeypatch):
    torch._dynamo.reset()
    calls = _corrupting_compile_fx(monkeypatch, {0})
    kernel = FusedKernel(_fill_into, env="AIMC_TEST_KERNEL")
    x = torch.linspace(-3, 3, 1000)
    out = torch.full((1000,), 7.0)
    with pytest.warns(RuntimeWarning, match=r"compiled kernel was dropped.*_fill_into.*input 1"):
        kernel(x, out)
    assert calls, "the kernel was not compiled"
    assert torch.equal(out, torch.sin(x) * 2.0 + 1.0)  # the eager values, every one written
    assert kernel.failed is not None and not kernel.usable()
    out2 = torch.empty(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        kernel(x + 1, out2)
    assert torch.equal(out2, torch.sin(x + 1) * 2.0 + 1.0)


def test_a_wrong_recompiled_graph_is_caught_too(monkeypatch):
    """The first graph is right and checked once; dynamo compiles a second graph for another
    kind of input under the same variant name (here: an input of size 1 it specializes on,
    a second dtype) — that graph's first run is checked as well."""
    torch._dynamo.reset()
    calls = _corrupting_compile_fx(monkeypatch, {1})
    kernel = FusedKernel(_fill_into, env="AIMC_TEST_KERNEL")
    x = torch.linspace(-3, 3, 1000)
    out = torch.empty(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, out, variant="one name")
        kernel(x[:999], out[:999], variant="one name")  # the same graph, checked already
    assert len(calls) == 1 and kernel.failed is None
    xd, outd = x.double(), torch.empty(1000, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="compiled kernel was dropped"):
        kernel(xd, outd, variant="one name")
    assert len(calls) == 2
    assert torch.equal(outd, torch.sin(xd) * 2.0 + 1.0)


def test_a_large_first_call_leaves_the_check_to_a_smaller_one(monkeypatch):
    """Above CHECK_MAX_BYTES of tensors a first run is not checked (the eager reference of a
    large noise draw would peak at several times its size); the graph's first smaller run
    is, and a wrong graph is then dropped."""
    torch._dynamo.reset()
    _corrupting_compile_fx(monkeypatch, {0})
    monkeypatch.setattr(_kernels, "CHECK_MAX_BYTES", 4000)
    kernel = FusedKernel(_fill_into, env="AIMC_TEST_KERNEL")
    # zeros, not empty: the corruption adds 1e33 to what was there, and uninitialised memory
    # may hold NaN, which no comparison finds wrong
    x, out = torch.linspace(-3, 3, 1000), torch.zeros(1000)  # 8,000 bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, out)
    assert kernel.failed is None
    assert float((out - (torch.sin(x) * 2.0 + 1.0)).abs().max()) > 1e30  # unchecked: wrong
    small = torch.empty(400)
    with pytest.warns(RuntimeWarning, match="compiled kernel was dropped"):
        kernel(x[:400], small)
    assert torch.equal(small, torch.sin(x[:400]) * 2.0 + 1.0)
    assert kernel.failed is not None


def test_right_graphs_run_compiled_and_carry_the_vector_width(monkeypatch):
    torch._dynamo.reset()
    calls = _corrupting_compile_fx(monkeypatch, set())
    kernel = FusedKernel(_fill_into, env="AIMC_TEST_KERNEL")
    x, out = torch.linspace(-3, 3, 333), torch.empty(333)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, out)
        kernel(x, out)
    assert kernel.failed is None and kernel.built
    assert torch.allclose(out, torch.sin(x) * 2.0 + 1.0, atol=1e-6)
    assert len(calls) == 1
    assert calls[0]["cpp.min_chunk_size"] == 1
    from torch._inductor import cpu_vec_isa

    bits = cpu_vec_isa.pick_vec_isa().bit_width()
    assert isa_options() == ({"cpp.simdlen": bits} if bits else {})
    assert calls[0].get("cpp.simdlen") == isa_options().get("cpp.simdlen")


def test_mismatch_tolerances():
    m = _kernels._mismatch
    a = torch.linspace(-5, 5, 101)
    assert m(a, a.clone()) is None
    assert m(a * (1 + 1e-6), a) is None  # a compiled log / sin's rounding
    assert "largest difference" in m(a + 1e-2, a)
    b = a.clone()
    b[3] = float("nan")
    assert m(b, a) == "non-finite values differ"
    assert m((a, a.to(torch.int8)), (a, (a + 1).to(torch.int8))) == "integer values differ"
    assert m(torch.tensor(1.0), torch.tensor(1.5)) is None  # sums: finite alike only
    assert "(3,)" in m(a[:3], a[:4])


_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    from aimc import random as arandom
    from aimc import hwa
    warnings.simplefilter("error", RuntimeWarning)
    out = {"isa": torch.backends.cpu.get_cpu_capability(), "bad": {}}
    for kind, fill in (("normal", arandom.noise_normal_), ("uniform", arandom.noise_uniform_)):
        for numel in (65536, 65537, 99991):
            t = torch.empty(numel)
            fill(t, torch.Generator().manual_seed(11))
            key = torch.empty((), dtype=torch.int64).random_(
                generator=torch.Generator().manual_seed(11))
            counter = arandom.counter_normal if kind == "normal" else arandom.counter_uniform
            ref = counter(key, (numel,))
            out["bad"][f"{kind} {numel}"] = int(((t - ref).abs() > 1e-5).sum())
    x = torch.randn(3001, generator=torch.Generator().manual_seed(1)) * 3
    r = torch.tensor(1.5)
    with torch.no_grad():
        got = hwa.clipped_scratch(x, r).clone()
    out["bad"]["clip"] = int((got != x.clamp(-1.5, 1.5)).sum())
    out["failed"] = [arandom._FILL.failed, hwa._CLIP_INTO.failed]
    print(json.dumps(out))
    """
)


def _child(env: dict[str, str]) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env={**os.environ, "PYTHONPATH": str(ROOT), "AIMC_RNG_NATIVE": "0", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_cache_from_a_wider_isa_serves_right_values(tmp_path):
    """One inductor cache directory, first filled by a process with this host's vector ISA,
    then used by a process with ``ATEN_CPU_CAPABILITY=avx2`` (what an AVX2 host sharing the
    directory would do): noise draws and the input-range clip right in both, no kernel
    dropped. Before the vector width was part of the kernels' config, the second process drew
    thousands of wrong values."""
    from torch._inductor import cpu_vec_isa

    widths = {isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}
    if not (256 in widths and max(widths) > 256):
        pytest.skip(f"needs a CPU with AVX2 and a wider vector ISA (inductor here: {widths})")
    cache = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    wide = _child(cache)
    avx2 = _child({**cache, "ATEN_CPU_CAPABILITY": "avx2"})
    assert avx2["isa"] == "AVX2" and wide["isa"] != "AVX2"
    for run in (wide, avx2):
        assert run["failed"] == [None, None]
        assert not any(run["bad"].values()), run["bad"]


def test_the_noise_kernel_checks_its_graphs(monkeypatch):
    """The noise kernel as the library builds it goes through the check: a corrupted graph
    is dropped, the draw is the stream, and the warning says so."""
    torch._dynamo.reset()
    _corrupting_compile_fx(monkeypatch, {0})
    monkeypatch.setenv("AIMC_RNG_NATIVE", "0")
    k = arandom._FILL
    monkeypatch.setattr(arandom, "_FILL", FusedKernel(k.fn, k.env, k.warn, k.variants))
    t = torch.empty(70001)
    with pytest.warns(RuntimeWarning, match="compiled kernel was dropped.*_pair_fill"):
        arandom.noise_uniform_(t, torch.Generator().manual_seed(4))
    key = torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(4))
    assert torch.equal(t, arandom.counter_uniform(key, (70001,)))


def test_the_kernel_tests_pass_as_an_avx2_host_runs_them():
    """On a host with a wider vector ISA, the tests of the hand-written kernels (the fused DAC
    and ADC kernels, the AVX2 noise kernel) and of the compiled noise kernel again, in a
    process with ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own kernels, inductor's code and the
    hand-written kernels then all take their AVX2 paths (8-wide vectors, other tails), as on an
    AVX2-only CPU. (On an AVX2 host the suite runs them natively.)"""
    run_as_avx2_host(["test_fused_kernels.py", "test_functional.py"], "kernel or native or stream")


def test_the_training_kernel_tests_pass_as_an_avx2_host_runs_them():
    """The same for the kernels of the training step: the output scales' gradient (its AVX2
    intrinsics), the tiles with their limbs, the input-range clip and its std, the post-step."""
    run_as_avx2_host(["test_scale_grad_kernel.py", "test_hwa_kernels.py"], "kernel or dac or post")
