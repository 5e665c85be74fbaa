"""Float32 GEMMs through oneDNN on x86 CPUs: the ``pcm_read`` variance MVM, the analog
layers' backward, and the MVM itself where it does not run in int8.

PyTorch runs a float32 ``mm`` / ``bmm`` on x86 CPUs through its BLAS, MKL. On AMD CPUs MKL's
single-precision GEMM is far below the hardware's speed: on the Zen 5 host (AMD EPYC, CPU
family 26, AVX-512, 2 threads, 2026-12-07) oneDNN's float32 matmul, which PyTorch ships too
(``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU fusions call), took 0.41-0.50
of MKL's time on the benchmark shapes (``benchmarks/bench_onednn_gemm.py``). The variance MVM
of ``pcm_read`` weight noise, ``x'^2 @ |W|^T`` in float32, is the dearest product of an eager
``pcm_read`` forward (the signal ``W x'`` runs in int8 where it can, :mod:`aimc._intmvm`), so
it runs here where this module applies.

**Accuracy.** The same float32 products and sums in another order (oneDNN's blocking): the
result is within float32 rounding of the exact one, as MKL's is (on the benchmark shapes,
relative errors against float64 of at most 1.4-1.9e-6 against MKL's 0.7e-6; the sums have
``ci`` terms of one sign, whose float32 bound is ``ci * 2**-24``, 3e-5 for 512 rows). Like
the choice between ``bmm`` and one ``addmm`` per tile, it can move an output lying on an ADC
rounding tie by one level; no statistic changes. A self-check against float64 arithmetic runs
before the first use (where it fails, MKL's GEMM runs, warned once).

Only for float32 CPU tensors outside autograd and compiled graphs, on x86-64 CPUs with PyTorch
built with oneDNN; switched off with ``AIMC_ONEDNN_GEMM=0`` (MKL's GEMM everywhere: for
comparisons), where ``torch.backends.mkldnn.flags(enabled=False)`` is in force, and where the
user let float32 matmuls run in bfloat16 or TF32 (``torch.set_float32_matmul_precision``
below ``"highest"``: ``torch.bmm`` then runs, following that setting). Measured only on AMD
hosts; on Intel CPUs MKL is fast and the two should be close (not measured here).

**What the gain means.** ``nn.Linear`` runs MKL's GEMM, so on AMD CPUs the analog layer's
ratio to it falls by what the variance MVM gains; against ``nn.Linear``'s product through
oneDNN (0.44-0.50 of ``nn.Linear``'s time on the benchmark shapes) the analog forward costs
about twice as much as against ``nn.Linear`` (``docs/benchmarks.md`` reports both).
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import warnings

import torch
from torch import Tensor

#: The environment variable that switches the oneDNN GEMM off (``"0"``)
ENV = "AIMC_ONEDNN_GEMM"

#: The most bytes of one oneDNN call's (fresh) output: larger products run in row blocks, so
#: that each output comes from the allocator's reused memory (glibc maps blocks above 32 MiB
#: afresh, every 4 KiB page faulting on first touch) ...
BLOCK_BYTES = 8 << 20
#: ... of at least this many rows (fewer would cost the GEMM more than the faults)
MIN_BLOCK_ROWS = 256


@functools.cache
def _available() -> bool:
    """An x86-64 CPU and a PyTorch built with oneDNN and its linear op (fixed for the process:
    asked once)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class OneDnnGemm:
    """Whether a float32 product runs through oneDNN (:func:`bmm`, :func:`bmm_`,
    :func:`affine_bmm`)."""

    def __init__(self) -> None:
        self.failed: str | None = None
        self._checked = False
        self._lock = threading.Lock()

    def switched_on(self) -> bool:
        """Not switched off by ``AIMC_ONEDNN_GEMM=0`` or by ``torch.backends.mkldnn``'s
        ``enabled`` flag, float32 matmuls allowed no lower precision in oneDNN, not failed its
        check, on an x86-64 CPU with oneDNN in this PyTorch build (checks nothing)."""
        return (
            os.environ.get(ENV, "1") != "0"
            and self.failed is None
            and _available()
            and torch._C._get_mkldnn_enabled()  # torch.backends.mkldnn.flags(enabled=False)
            # float32 products in float32: not where the user allowed oneDNN bfloat16 or TF32
            # (torch.set_float32_matmul_precision("medium"), torch.backends.mkldnn.matmul's
            # fp32_precision); torch.bmm then follows the user's setting
            and torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")
        )

    def applies(self, *tensors: Tensor) -> bool:
        """Whether this module's products run oneDNN on these operands: float32 CPU tensors that
        autograd does not track, outside a compiled graph's tracing, the check passed."""
        if torch.compiler.is_compiling() or not self.switched_on():
            return False
        for t in tensors:
            if t.device.type != "cpu" or t.dtype != torch.float32:
                return False
            if t.requires_grad and torch.is_grad_enabled():
                return False
        if not self._checked:
            with self._lock:
                if not self._checked:
                    self._check()
        return self.failed is None

    def _check(self) -> None:
        """Compare oneDNN's result with float64 arithmetic on a few small products (odd sizes,
        a bias, positive and mixed signs); where it differs beyond float32 rounding, or the op
        fails, :attr:`failed` says why and the caller keeps MKL's GEMM (warned once)."""
        gen = torch.Generator().manual_seed(0)
        try:
            for m, k, n, signed in ((37, 70, 53, True), (300, 512, 96, False), (1, 3, 1, False)):
                x = torch.rand(m, k, generator=gen, dtype=torch.float32)
                w = torch.rand(n, k, generator=gen, dtype=torch.float32)
                if signed:
                    x, w = x - 0.5, w - 0.5
                bias = torch.rand(n, generator=gen, dtype=torch.float32)
                got = _linear(x, w, bias).double()
                ref = x.double() @ w.double().T + bias.double()
                scale = x.double().abs() @ w.double().abs().T + bias.double().abs()
                err = float(((got - ref).abs() / scale.clamp_min(1e-30)).max())
                if not err <= 4 * k * 2.0**-24:
                    self.failed = f"a {m}x{k}x{n} product off by {err:.2e} relative"
                    break
        except Exception as e:  # noqa: BLE001 - any failure means: keep MKL's GEMM
            self.failed = f"{type(e).__name__}: {e}"
        self._checked = True
        if self.failed is not None:
            warnings.warn(
                f"aimc: oneDNN's float32 GEMM failed its check ({self.failed}); aimc's float32 "
                "products (the pcm_read variance MVM, the float32 MVM, the backward) run "
                f"through torch's bmm instead (slower on AMD CPUs). Set {ENV}=0 to skip the "
                "attempt.",
                RuntimeWarning,
                stacklevel=4,
            )


ONEDNN_GEMM = OneDnnGemm()


def _linear(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ w^T + bias`` by oneDNN's float32 matmul (a fresh tensor; ``w`` may be a view)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` per batch through oneDNN as a fresh ``(B, M, N)`` tensor: ``a`` ``(B, M, K)``,
    ``b`` ``(B, K, N)``, float32 CPU tensors (:meth:`OneDnnGemm.applies`) of any strides
    (oneDNN reads transposed views as they are), no dimension 0."""
    nb, m, k = a.shape
    if b.shape[0] != nb or b.shape[1] != k or 0 in (nb, m, k, b.shape[2]):
        raise ValueError(
            f"aimc._onednn.bmm: shapes a {tuple(a.shape)}, b {tuple(b.shape)}; allowed: "
            "(B, M, K) and (B, K, N), none of them 0"
        )
    if nb == 1:  # oneDNN's result as it is, no copy
        return _linear(a[0], b[0].transpose(0, 1), None).unsqueeze(0)
    return bmm_(a.new_empty((nb, m, b.shape[2])), a, b)


#: aimc runs a product through oneDNN from this many rows per batch on (``aimc.mvm``'s
#: ``_onednn_takes``; fewer: MKL's lower call overhead wins on small layers; Zen 5 host,
#: 2 threads: a 2 x (1 x 384 x 768) product 0.031 ms through MKL against 0.057 ms, at 8 rows
#: 0.094 against 0.085, at 127 rows 0.71 against 0.38 ms).
MIN_ROWS = 8


def bmm_(z: Tensor, a: Tensor, b: Tensor, beta: float = 0.0, alpha: float = 1.0) -> Tensor:
    """``z <- beta * z + alpha * a @ b`` per batch, in place, through oneDNN (``beta = 0``
    ignores ``z``): :func:`bmm`'s operands, ``z`` ``(B, M, N)`` float32. The product comes fresh
    from oneDNN and is then added (one pass over ``z``; MKL adds inside the GEMM)."""
    nb, m, _ = a.shape
    if tuple(z.shape) != (nb, m, b.shape[2]):
        raise ValueError(
            f"aimc._onednn.bmm_: z has shape {tuple(z.shape)}; allowed: {(nb, m, b.shape[2])}"
        )
    for i in range(nb):
        y = _linear(a[i], b[i].transpose(0, 1), None)
        if beta == 0.0:
            if alpha == 1.0:
                z[i].copy_(y)
            else:
                torch.mul(y, alpha, out=z[i])
        else:
            if beta != 1.0:
                z[i].mul_(beta)
            z[i].add_(y, alpha=alpha)
    return z


def affine_bmm(out: Tensor, x: Tensor, w: Tensor, offset: float) -> Tensor:
    """``x @ w^T + offset`` per batch through oneDNN, in ``out`` where it takes more than one
    call (several batches or row blocks), else the one call's result; returns it.

    ``x`` ``(B, M, K)``, ``w`` ``(B, N, K)`` (each batch a linear layer's weight: output rows,
    input columns), ``out`` ``(B, M, N)``; float32 CPU tensors (:meth:`OneDnnGemm.applies`)."""
    b, m, k = x.shape
    if w.shape[0] != b or w.shape[2] != k or tuple(out.shape) != (b, m, w.shape[1]):
        raise ValueError(
            f"aimc._onednn.affine_bmm: shapes x {tuple(x.shape)}, w {tuple(w.shape)}, out "
            f"{tuple(out.shape)}; allowed: (B, M, K), (B, N, K), (B, M, N)"
        )
    n = w.shape[1]
    bias = torch.full((n,), offset, dtype=torch.float32)
    block = max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * max(n, 1)))
    if b == 1 and m <= block:
        return _linear(x[0], w[0], bias).unsqueeze(0)
    for i in range(b):
        wi = w[i]
        for r in range(0, m, block):
            rows = slice(r, min(m, r + block))
            out[i, rows].copy_(_linear(x[i, rows], wi, bias))
    return out
