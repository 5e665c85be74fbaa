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
        a variant already built runs without raising the recompile limit."""
        if not self.usable(device):
            return self.fn(*args)
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
