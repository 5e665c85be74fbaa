"""``torch.compile`` for analog models (eval forwards).

(A plain ``torch.compile`` of a model in training mode also works: each analog layer in training
mode runs its MVM eagerly, a graph break, with the eager forward's noise and gradients.)

The compiled forward is the same algorithm as the eager one — noise management, DAC, MVM,
weight and output noise, ADC, iterative bound management, digital rescale — written without
graph breaks: the IO noise comes from each layer's counter-based stream
(:class:`aimc.random.CounterStream`, in tensor operations that inductor fuses into the kernel that
adds it, rounds and clips), and programmed chips are read from their tile cache. Bound
management runs under one ``torch.cond`` (a forward in which nothing saturates runs no round and
copies nothing); its rounds are one custom op, eager code inside the graph, that redoes only the
saturated (tile, vector) pairs, as the eager forward does, and draws for each the noise a round
over every pair would draw there (:class:`aimc.random.RowStream`).

Compiling takes time once per layer shape and config: on the project's 2-core AVX2 host
27–34 s for one small layer (``pcm_inference()`` or ``bert_squad()``, the durations of the
compile tests in ``tests/test_compile.py -k same_stream``, inductor's caches off) and 23–35 s
per layer in ``benchmarks/bench_eval_forward.py --compile`` (``compiled_first_call_s``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .convert import analog_layers
from .mvm import _check_bf16_cpu
from .nn.chip import _cache_chip_tiles


def prepare_compile(model: nn.Module) -> nn.Module:
    """Fill the tile cache of every programmed analog layer of ``model`` (in eval mode), so that
    its compiled forward needs no graph break (``fullgraph=True``); returns ``model``.

    Raises for a layer in training mode (compiled forwards are for evaluation), an unprogrammed
    layer with a device model, and a lean chip (``storage='lean'``, regenerated at every
    forward: program with ``storage='full'``)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: got {type(model).__name__}; allowed: a torch.nn.Module")
    for name, layer in analog_layers(model):
        if layer.training:
            raise ValueError(
                f"aimc.compile: layer {name!r} is in training mode; allowed: a model in eval mode "
                "(model.eval()): compiled analog forwards are for evaluation"
            )
        if layer.has_device():
            _cache_chip_tiles(layer)
        if layer.analog_config.io.w_noise_bf16 and layer.weight.device.type == "cpu":
            _check_bf16_cpu()  # the eager forward warns on its first call; a compiled one can't
    return model


#: :func:`compile` raises dynamo's ``recompile_limit`` (default 8) to at least this (process-wide)
RECOMPILE_LIMIT = 64


def compile(model: nn.Module, **kwargs: Any) -> nn.Module:  # noqa: A001 - mirrors torch.compile
    """``torch.compile(model, **kwargs)`` after :func:`prepare_compile`, with dynamo's
    ``specialize_float`` on and its ``recompile_limit`` at least :data:`RECOMPILE_LIMIT`
    (both process-wide).

    Float settings (noise levels, bounds, resolutions) must stay constants of the graph: the
    bound-management rounds run under ``torch.cond``, whose branches cannot take symbolic
    floats, and torch 2.13 turns a float into a symbolic one when a second compile of the
    same code sees another value (e.g. a model with another config).

    The compiled model draws its IO noise from each layer's counter stream, seeded from the
    layer's seed: reproducible from the seeds, the same distribution as the eager forward,
    other numbers. Re-programming, drifting or reseeding the model (also under
    ``torch.inference_mode()``) does not make it compile again: the next call reads the new chip
    and stream (``tests/test_compile.py``).

    On the CPU a compiled graph allocates its buffers afresh on every call, and glibc maps a
    buffer of 32 MiB or more anew each time (every 4 KiB page faulting on first touch: a
    768 x 3072 layer on 2,048 tokens faulted about 24,600 times per call). So a layer whose
    tile outputs reach :data:`aimc.mvm.EAGER_MIN_BYTES` (16 MiB) runs its eager forward, which
    reuses its buffers, as one custom op inside the graph (no graph break; its noise seeded
    from the layer's counter stream, so reproducible from the seeds as well); so does a layer
    whose eager MVM runs in 8-bit integers (:mod:`aimc._intmvm`: on a CPU with VNNI, at least
    :data:`aimc.mvm.INT_MIN_VECTORS` vectors, DAC levels that fit int8), which inductor's
    float32 GEMM would make slower; other layers are compiled through.

    Each analog config is a graph of its own (its noise levels, bounds and resolutions are
    constants of the graph), and dynamo counts every graph of a function against its
    ``recompile_limit``, those of models since deleted included: with dynamo's default of 8,
    the ninth config compiled in one process (a sweep over noise levels, say) would run
    *eagerly* (a logged warning only; without ``fullgraph=True`` no error), its noise from the
    layers' ``torch.Generator`` instead of their counter streams — the same distribution,
    other numbers than a fresh process gives. Hence the higher limit."""
    _dynamo_settings()
    return torch.compile(prepare_compile(model), **kwargs)


def compile_layers(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Compile each analog layer of ``model`` on its own, in place (``nn.Module.compile`` of
    each, ``kwargs`` passed to ``torch.compile``), after :func:`prepare_compile` and with the
    dynamo settings of :func:`compile`; returns ``model``. The rest of the model (attention,
    norms, activations) stays eager.

    Layers of the same shape and config share one compiled graph, so compiling takes time per
    distinct layer, not per layer, where :func:`compile` of a whole model generates code for
    every analog layer in it. Measured on the 2-core AVX2 host (one run each): a 2-layer BERT
    for QA with 12 analog layers of 3 shapes under ``bert_squad(0.0175)`` compiled in 76 s
    (3 graphs) this way, against 320 s with :func:`compile` (one graph); both without graph
    breaks and with the eager forward's error statistics. The same algorithm and counter
    streams as :func:`compile`; what is lost is inductor's fusion across a layer's boundary
    (its input and output stay tensors in memory) and a few tens of microseconds of dynamo's
    guards per layer call. :func:`aimc.to_digital` replaces the layers, compiled or not.

    All layers of a class share one function for dynamo, so their graphs count together
    against ``recompile_limit``: up to two per distinct layer (shape and config; the second
    once another batch size makes dynamo compile the batch dimension dynamically, e.g. a
    smaller last batch) — on the shared MiniLM 6–8 per config. Each call therefore raises the
    limit (process-wide) by two per distinct layer it compiles, on top of
    :data:`RECOMPILE_LIMIT`, so that a sweep compiling config after config in one process does
    not fall back to running its later configs eagerly (see :func:`compile`)."""
    global _layer_graphs
    prepare_compile(model)
    layers = [layer for _, layer in analog_layers(model)]
    kinds = {
        (type(layer), tuple(layer.weight.shape), repr(layer.analog_config)) for layer in layers
    }
    _layer_graphs += 2 * len(kinds)
    _dynamo_settings()
    for layer in layers:
        layer.compile(**kwargs)
    return model


#: Graphs that :func:`compile_layers` may have added in this process (two per distinct layer);
#: its calls raise dynamo's limits by as much.
_layer_graphs = 0


def _dynamo_settings() -> None:
    """``specialize_float`` on and ``recompile_limit`` at least :data:`RECOMPILE_LIMIT` plus
    the graphs :func:`compile_layers` may have added (process-wide), see :func:`compile`;
    ``accumulated_recompile_limit`` (all functions together) at least four times that."""
    torch._dynamo.config.specialize_float = True
    limit = RECOMPILE_LIMIT + _layer_graphs
    if torch._dynamo.config.recompile_limit < limit:
        torch._dynamo.config.recompile_limit = limit
    if torch._dynamo.config.accumulated_recompile_limit < 4 * limit:
        torch._dynamo.config.accumulated_recompile_limit = 4 * limit
