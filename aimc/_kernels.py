"""Fused CPU kernels: a function compiled once per process by ``torch.compile`` (inductor, dynamic
shapes), with the same function run eagerly wherever the kernel cannot or should not run.

The noise kernel and the bound-management rows of :mod:`aimc.random` and the input-range clip
of :mod:`aimc.hwa` share this: build on first use under one lock, allow more compiled variants
than dynamo's default of 8 (the suite of a long process meets more), run a variant past that
limit eagerly for that call, and where the first build fails (no C++ compiler) keep the eager
function for the rest of the process — warning once if asked to.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

_lock = threading.Lock()


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
                    self.fn, dynamic=True, fullgraph=True, options={"cpp.min_chunk_size": 1}
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
