"""Fused CPU kernels: a function compiled once per process by ``torch.compile`` (inductor, dynamic
shapes), with the same function run eagerly wherever the kernel cannot or should not run.

The noise kernel and the bound-management rows of :mod:`aimc.random` and the input-range clip
of :mod:`aimc.hwa` share this: build on first use under one lock, allow more compiled variants
than dynamo's default of 8 (the suite of a long process meets more), run a variant past that
limit eagerly for that call, and where the first build fails (no C++ compiler) keep the eager
function for the rest of the process — warning once if asked to.

Each graph that dynamo compiles of the function (the first, and every recompile) has its first
run checked against the same graph run eagerly on copies of its arguments (a first run of at
most :data:`CHECK_MAX_BYTES` of tensors); a compiled kernel that computes other values is
dropped for the process (warned once, always) and the eager values are the call's. This is
not hypothetical: inductor's on-disk graph cache keys a graph on inductor's config but not on
the vector ISA it was generated for, and on a hit compiles the cached C++ for the ISA of the
process at hand. A graph generated for 512-bit vectors then ran with 256-bit ones
(``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 host, or one cache directory shared by an AVX2
and an AVX-512 host): its loops stepped 16 values and wrote 8, and half of every noise draw
was left unwritten memory (NaN and 1e33 among them; found 2026-12-05). :func:`isa_options`
puts the vector width into the config, so each ISA has graphs of its own; the check stays for
whatever else a cache or a compiler may get wrong.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

_lock = threading.Lock()


def isa_options() -> dict[str, int]:
    """``{"cpp.simdlen": bits}``: the vector width of the ISA inductor picks here, made explicit
    in the ``torch.compile`` options so that inductor's on-disk graph cache (keyed on the
    config) keeps the graphs of each vector width apart (see the module's docstring); ``{}``
    where inductor finds no vector ISA."""
    try:
        from torch._inductor import cpu_vec_isa

        bits = int(cpu_vec_isa.pick_vec_isa().bit_width())
    except Exception:  # noqa: BLE001 - no ISA detection: inductor's default
        return {}
    return {"cpp.simdlen": bits} if bits > 0 else {}


class FusedKernel:
    """``fn`` as a compiled CPU kernel, or eagerly: off CPU (``device``), inside a graph being
    compiled, where the environment variable ``env`` is ``"0"``, for a variant past
    ``variants`` compiled ones, or after the first build failed.

    ``warn``: the message of the one ``RuntimeWarning`` of a failed build, ``{error}`` in it
    replaced by the error; ``None``: fail silently. A failure after a successful build is an
    error, raised.
    """

    def __init__(
        self, fn: Callable[..., Any], env: str, warn: str | None = None, variants: int = 64
    ) -> None:
        self.fn = fn
        self.env = env
        self.warn = warn
        self.variants = variants
        #: the ``torch.compile`` of ``fn``, once built
        self.compiled: Callable[..., Any] | None = None
        #: why the kernel cannot be built here (then ``fn`` runs eagerly)
        self.failed: str | None = None
        #: the variants that have run compiled (their later calls skip the config patch,
        #: which costs about 0.1 ms a call)
        self.built: set[Hashable] = set()

    def usable(self, device: torch.device | None = None) -> bool:
        """Whether a call now would try the compiled kernel."""
        return (
            self.failed is None
            and (device is None or device.type == "cpu")
            and not torch.compiler.is_compiling()
            and os.environ.get(self.env, "1") != "0"
        )

    def __call__(self, *args: Any, variant: Hashable = None, device: torch.device | None = None):
        """``fn(*args)``: compiled where :meth:`usable`, else eagerly. ``variant`` names what
        dynamo will guard on for these arguments (dtype, grad mode, thread count ...), so that
        a variant already built runs without raising the recompile limit; by default
        :func:`guard_key` of the arguments. A variant that dynamo tells apart and the name does
        not only costs that call the patched path."""
        if not self.usable(device):
            return self.fn(*args)
        if variant is None:
            variant = guard_key(args)
        with _lock:
            if self.compiled is None:
                self.compiled = torch.compile(
                    self.fn, dynamic=True, fullgraph=True, backend=self._backend
                )
        if variant is not None and variant in self.built:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                pass  # a variant dynamo tells apart and ``variant`` does not: build it below
        try:
            with torch._dynamo.config.patch(recompile_limit=self.variants):
                out = self.compiled(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            return self.fn(*args)  # past the limit: this call eagerly
        except Exception as err:  # noqa: BLE001 - a build failure means: no kernel here
            if self.built:  # it builds here: this is not a missing compiler
                raise
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            if self.warn is not None:
                warnings.warn(self.warn.format(error=self.failed), RuntimeWarning, stacklevel=3)
            return self.fn(*args)
        self.built.add(variant)
        return out

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        """Inductor (``compile_fx``, with ``cpp.min_chunk_size=1`` and :func:`isa_options`) for
        each graph dynamo captures of ``fn`` — the first and every recompile — with its first
        run of at most :data:`CHECK_MAX_BYTES` of tensors checked against the captured graph
        run eagerly on copies of the inputs (see the module's docstring). A graph that
        computes other values drops the kernel for the process (warned once): that run
        returns the eager values, the inputs as the eager graph left them, and later calls
        run ``fn`` eagerly."""
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(
            gm, example_inputs, config_patches={"cpp.min_chunk_size": 1, **isa_options()}
        )
        checked = False

        def run(*args: Any) -> Any:
            nonlocal checked
            if checked or _tensor_bytes(args) > CHECK_MAX_BYTES:
                return compiled(*args)
            copies = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
            out = compiled(*args)
            with torch.no_grad():
                ref = gm(*copies)
            wrong = _mismatch(out, ref) or next(
                (
                    f"input {i}: {m}"
                    for i, (a, c) in enumerate(zip(args, copies, strict=True))
                    if (m := _mismatch(a, c))
                ),
                None,
            )
            if wrong is None:
                checked = True
                return out
            self._drop(wrong)
            for a, c in zip(args, copies, strict=True):  # as the eager graph left them
                if isinstance(a, torch.Tensor):
                    a.copy_(c)
            return ref

        return run

    def _drop(self, wrong: str) -> None:
        self.failed = f"its compiled code computed other values than {_name(self.fn)} ({wrong})"
        warnings.warn(
            f"aimc: a compiled kernel was dropped: {self.failed}. The eager function runs "
            "instead for the rest of the process (the same values, slower). A stale inductor "
            "cache built for another CPU (TORCHINDUCTOR_CACHE_DIR shared between hosts, or "
            "ATEN_CPU_CAPABILITY changed) does this; clearing it is the cure.",
            RuntimeWarning,
            stacklevel=2,
        )


#: A compiled graph's first run is checked against eager (:meth:`FusedKernel._backend`) only
#: when its tensor arguments take at most this many bytes; a larger call runs unchecked and
#: leaves the check to the graph's first smaller call. The eager reference of a large call
#: costs memory: a first noise draw of 16.8 M values peaked 575 MiB above its tensor with the
#: check, 100 MiB without (the stream's int64 words in eager tensor operations).
CHECK_MAX_BYTES = 16 << 20


def _tensor_bytes(args: tuple[Any, ...]) -> int:
    return sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _mismatch(got: Any, want: Any) -> str | None:
    """How a compiled kernel's result ``got`` differs from the eager ``want`` (tensors, or
    tuples / lists of them; anything else is not compared), or None. Integer and bool tensors
    must be equal; float ones agree to 1e-4 relative plus 1e-5 of the largest finite value
    (the rounding of a compiled ``log``, ``sin``, a fused multiply-add), with NaN where the
    other is NaN. 0-dim float tensors (sums, whose order the compiled code may change) are
    only compared for being finite alike. A kernel that leaves values unwritten or computes
    them wrongly is far outside both."""
    if isinstance(got, (tuple, list)) and isinstance(want, (tuple, list)):
        if len(got) != len(want):
            return f"{len(got)} results, not {len(want)}"
        return next((m for g, w in zip(got, want, strict=True) if (m := _mismatch(g, w))), None)
    if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor):
        return None
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{tuple(got.shape)} {got.dtype}, not {tuple(want.shape)} {want.dtype}"
    if not got.dtype.is_floating_point:
        return None if torch.equal(got, want) else "integer values differ"
    g, w = got.detach().double(), want.detach().double()
    if not torch.equal(g.isfinite(), w.isfinite()) or not torch.equal(g.isnan(), w.isnan()):
        return "non-finite values differ"
    if g.dim() == 0:
        return None
    finite = w.isfinite()
    scale = float(w[finite].abs().max()) if bool(finite.any()) else 0.0
    err = (g - w).abs()[finite]
    allowed = 1e-4 * w.abs()[finite] + 1e-5 * scale
    if bool((err > allowed).any()):
        return f"largest difference {float(err.max()):.3g} (values up to {scale:.3g})"
    return None


def _arg_key(a: Any) -> Hashable:
    if isinstance(a, torch.Tensor):
        # dynamic shapes: dynamo still specializes sizes 0 and 1 and guards on the layout
        sizes = tuple(d if d < 2 else 2 for d in a.shape)
        return (a.dtype, a.requires_grad, a.is_inference(), sizes, a.is_contiguous())
    if a is None or isinstance(a, (bool, str)):
        return (type(a), a)
    if isinstance(a, int):
        return (int, a if a < 2 else 2)  # ints are symbolic past 0 and 1, as sizes
    # floats and other objects by type only, so that the set of built names stays small: a
    # value that dynamo specializes on and the name misses costs a call the patched path
    return type(a)


def guard_key(args: tuple[Any, ...]) -> Hashable:
    """What a compiled :class:`FusedKernel` variant depends on, as far as the arguments and the
    thread's modes tell (a name for :meth:`FusedKernel.__call__`'s ``variant``): each tensor's
    dtype, grad requirement, inference flag, sizes 0 and 1 and contiguity; each string, bool and
    small int; the other arguments' types; grad and inference mode and the thread count."""
    return (
        tuple(_arg_key(a) for a in args),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.get_num_threads(),
    )
