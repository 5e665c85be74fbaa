"""``aimc.convert``: swap digital layers of any model for analog ones, in place.

Nothing is deep-copied: each analog layer is built on the meta device and then takes over the
original ``weight``/``bias`` Parameter objects, so tied weights stay tied, optimizers built before
conversion keep working, and memory does not double. :func:`to_digital` undoes it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Union

import torch
from torch import Tensor, nn

from .config import AnalogConfig
from .nn import AnalogConv1D, AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear
from .nn.base import AnalogLayerMixin
from .nn.checks import check_finite_weights, check_weight_dtype
from .random import check_seed, derive_seed

Pattern = Union[str, "re.Pattern[str]"]


def _hf_conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # transformers is optional
        return None
    return Conv1D


#: Subclasses (module.qualname) with a forward of their own that computes what the base
#: class's does: timm's ``Linear`` only casts the bias for TorchScript under AMP.
_SAME_FORWARD = frozenset(
    {
        "torch.nn.modules.linear.NonDynamicallyQuantizableLinear",
        "timm.layers.linear.Linear",
    }
)


def _handlers() -> list[tuple[type, type]]:
    """(digital type, analog type), most specific first; matched with ``isinstance``."""
    table: list[tuple[type, type]] = [
        (nn.Linear, AnalogLinear),
        (nn.Conv1d, AnalogConv1d),
        (nn.Conv2d, AnalogConv2d),
        (nn.Conv3d, AnalogConv3d),
    ]
    hf = _hf_conv1d_type()
    if hf is not None:
        table.append((hf, AnalogConv1D))
    return table


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (checked without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def peft_base_name(name: str) -> str:
    """A module's name in a peft model without the wrapper's parts (``base_model.model.`` and
    ``.base_layer``): its name in the base model."""
    name = name.removeprefix("base_model.model.")
    return name.removesuffix(".base_layer").replace(".base_layer.", ".")


def seed_name(name: str, peft: bool) -> str:
    """The name a layer's seeds derive from (its noise streams in :func:`convert` and
    :func:`manual_seed`, its chip in :func:`aimc.program` / :func:`aimc.drift`). In a peft model
    (``peft``: LoRA adapters attached) the wrapper's parts of the name are left out
    (:func:`peft_base_name`), so the same seed gives the same noise and the same chip with and
    without the adapters (paired comparisons)."""
    return peft_base_name(name) if peft else name


def _matches(pattern: Pattern, name: str) -> bool:
    """Exact name, dotted suffix (``"query"`` hits ``"...attention.self.query"``), or regex.

    A regex is a compiled ``re.Pattern`` or a string starting with ``"re:"``; it must match the
    whole qualified name (``fullmatch``).
    """
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    if not isinstance(pattern, str):
        raise ValueError(f"pattern: got {pattern!r}; allowed: a str or a compiled re.Pattern")
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def _as_list(value: Pattern | Iterable[Pattern] | None, field: str) -> list[Pattern]:
    if value is None:
        return []
    if isinstance(value, (str, re.Pattern)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise ValueError(
            f"{field}: got {value!r}; allowed: a pattern or a list of patterns"
        ) from None


def _adapter_prefixes(model: nn.Module) -> list[str]:
    """Qualified names of the adapter containers of every peft tuner layer in ``model`` (LoRA's
    ``lora_A``, ``lora_B``, ...): a tuner layer has a ``base_layer`` and names its adapter
    submodules in ``adapter_layer_names`` (peft's ``BaseTunerLayer``; peft is not imported)."""
    prefixes = []
    for name, module in model.named_modules():
        names = getattr(module, "adapter_layer_names", ())
        if names and isinstance(getattr(module, "base_layer", None), nn.Module):
            prefixes += [f"{name}.{a}" if name else a for a in names]
    return prefixes


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def convert(
    model: nn.Module,
    config: AnalogConfig | None = None,
    *,
    targets: Pattern | Iterable[Pattern] | None = None,
    exclude: Pattern | Iterable[Pattern] | None = None,
    overrides: Mapping[Pattern, AnalogConfig] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Replace, in place, every targeted ``nn.Linear``, ``nn.Conv1d/2d/3d`` and HuggingFace
    ``Conv1D`` of ``model`` by its analog counterpart and return the same ``model`` object.

    Args:
        model: any ``nn.Module``; its submodules are replaced (the root itself cannot be).
        config: the analog configuration (default ``AnalogConfig()``).
        targets: only convert modules whose qualified name matches one of these patterns
            (exact name, dotted suffix, or regex — see below). Default: every supported module.
        exclude: never convert modules matching these patterns.
        overrides: ``{pattern: config}`` — a per-layer config for matching modules; the first
            matching pattern (in the mapping's order) wins.
        filter_fn: ``(module, qualified_name) -> bool``, a further filter.
        seed: base seed; layer ``name`` gets its own stream ``derive_seed(seed, name)`` (in a
            peft model the name without peft's wrapper parts: :func:`seed_name`).

    Patterns: a string is an exact qualified name or a dotted suffix (``"query"`` matches
    ``"bert.encoder.layer.0.attention.self.query"``); ``"re:<regex>"`` or a compiled
    ``re.Pattern`` must match the whole name. A pattern in ``targets``, ``exclude`` or
    ``overrides`` that matches no supported module raises ``ValueError`` (a typo would
    otherwise silently convert the wrong layers).

    Modules already analog are left alone. Modules inside ``nn.MultiheadAttention`` are skipped:
    it reads ``out_proj.weight`` directly and never calls the submodule's forward. The adapters
    of a peft model (LoRA's ``lora_A`` / ``lora_B`` Linears) are skipped too: they stay digital
    beside the analog ``base_layer`` they wrap (analog LoRA, :mod:`aimc.lora`), so converting a
    model after ``get_peft_model`` or ``PeftModel.from_pretrained`` converts only the base.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: got {type(model).__name__}; allowed: a torch.nn.Module")
    config = AnalogConfig() if config is None else config
    if not isinstance(config, AnalogConfig):
        raise ValueError(f"config: got {type(config).__name__}; allowed: aimc.AnalogConfig")
    check_seed(seed)
    target_list = _as_list(targets, "targets")
    if targets is not None and not target_list:
        raise ValueError(
            "targets: got an empty list; allowed: None (every convertible module) or at least "
            "one pattern — an empty list converted every layer"
        )
    exclude_list = _as_list(exclude, "exclude")
    if filter_fn is not None and not callable(filter_fn):
        raise ValueError(
            f"filter_fn: got {type(filter_fn).__name__}; allowed: None or a callable "
            "filter_fn(module, name) -> bool"
        )
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(
            f"overrides: got {type(overrides).__name__}; allowed: a dict of pattern -> "
            "aimc.AnalogConfig"
        )
    override_map = dict(overrides or {})
    for pat, cfg in override_map.items():
        if not isinstance(cfg, AnalogConfig):
            raise ValueError(
                f"overrides[{pat!r}]: got {type(cfg).__name__}; allowed: aimc.AnalogConfig"
            )
    handlers = _handlers()
    mha_children = {
        f"{n}.{c}" if n else c
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_children()
    }
    adapters = tuple(_adapter_prefixes(model))
    # every name of each module (one registered under several names: a pattern may name any)
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    # the names a pattern may give: every alias, and in a peft model the base model's names
    peft = is_peft_model(model)
    pattern_names = {
        key: names + [b for n in names if (b := peft_base_name(n)) != n] if peft else names
        for key, names in aliases.items()
    }
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, AnalogLayerMixin) or name in mha_children:
            continue
        if any(name == a or name.startswith(a + ".") for a in adapters):
            continue
        analog_cls = next((a for d, a in handlers if isinstance(module, d)), None)
        if analog_cls is not None:
            candidates.append((name, module, analog_cls))
    seen = {"targets": set(), "exclude": set(), "overrides": set()}
    override_pats = list(override_map)
    chosen = []

    def hits(p: Pattern, module: nn.Module) -> bool:
        return any(_matches(p, a) for a in pattern_names[id(module)])

    for name, module, analog_cls in candidates:
        for key, pats in (
            ("targets", target_list),
            ("exclude", exclude_list),
            ("overrides", override_pats),
        ):
            seen[key].update(i for i, p in enumerate(pats) if hits(p, module))
        if target_list and not any(hits(p, module) for p in target_list):
            continue
        if any(hits(p, module) for p in exclude_list):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        chosen.append((name, module, analog_cls))
    for key, pats in (
        ("targets", target_list),
        ("exclude", exclude_list),
        ("overrides", override_pats),
    ):
        missing = [p for i, p in enumerate(pats) if i not in seen[key]]
        if missing:
            raise ValueError(
                f"{key}: pattern(s) {missing!r} matched no convertible module; "
                "allowed: exact names, dotted suffixes or 're:' regexes of "
                "Linear/Conv modules"
            )
    configs = [
        next((override_map[p] for p in override_pats if hits(p, module)), config)
        for _, module, _ in chosen
    ]
    # every check before the first module is replaced: a refused model stays as it was
    for (name, module, analog_cls), cfg in zip(chosen, configs, strict=True):
        if not name:
            raise ValueError(
                f"model: the root module itself is a {type(module).__name__}; convert() "
                "replaces submodules in place — wrap it (nn.Sequential) or use "
                f"aimc.nn.{analog_cls.__name__}.from_digital(module, config)"
            )
        label = f"{type(module).__name__} {name!r}"
        if not isinstance(module.weight, nn.Parameter):
            raise ValueError(
                f"convert: {label} weight is a {type(module.weight).__name__} computed by the "
                "module (weight norm or another parametrization), not a Parameter; allowed: "
                f"leave it digital with exclude=[{name!r}], or remove the parametrization first "
                "(torch.nn.utils.parametrize.remove_parametrizations)"
            )
        base = next(d for d, a in handlers if a is analog_cls)
        own_forward = type(module).forward is not base.forward
        qualname = f"{type(module).__module__}.{type(module).__qualname__}"
        if own_forward and qualname not in _SAME_FORWARD:
            raise ValueError(
                f"convert: {label} is a {base.__name__} subclass with its own forward (it may "
                "transform the weight or the input, which the analog layer would not); allowed: "
                f"leave it digital with exclude=[{name!r}]"
            )
        check_weight_dtype(module, label)
        if module.weight.numel() == 0:  # (before any layer is replaced)
            raise ValueError(
                f"convert: {label} weight has shape {tuple(module.weight.shape)}, no weights; "
                "allowed: at least one input and one output (a crossbar has at least one row "
                f"and one column) — leave it digital with exclude=[{name!r}]"
            )
        if cfg.device.model != "none":  # it will be programmed: refuse NaN/inf weights
            check_finite_weights(module, "convert", label)
    for (name, module, analog_cls), cfg in zip(chosen, configs, strict=True):
        new = analog_cls.from_digital(module, cfg, seed=derive_seed(seed, seed_name(name, peft)))
        new.analog_name = name
        new._digital_class = type(module)
        for alias in aliases[id(module)]:  # a module registered under several names
            _set_submodule(model, alias, new)
    _fast_paths(model, analog=True)
    return model


def _fast_paths(model: nn.Module, analog: bool) -> None:
    """``nn.TransformerEncoderLayer``'s fused fast path (eval, no autograd) reads ``linear1`` /
    ``linear2``'s weights itself and never calls the layers: with either analog it is switched
    off (its ``activation_relu_or_gelu`` flag, which the slow path does not read), and restored
    by :func:`to_digital`."""
    for m in model.modules():
        if not isinstance(m, nn.TransformerEncoderLayer):
            continue
        analog_linears = isinstance(m.linear1, AnalogLayerMixin) or isinstance(
            m.linear2, AnalogLayerMixin
        )
        if analog and analog_linears:
            if not hasattr(m, "_aimc_fast_path"):
                m._aimc_fast_path = m.activation_relu_or_gelu
            m.activation_relu_or_gelu = 0
        elif not analog and hasattr(m, "_aimc_fast_path"):
            m.activation_relu_or_gelu = m.__dict__.pop("_aimc_fast_path")


def _weight_of_matrix(module: AnalogLayerMixin, m: Tensor) -> Tensor:
    """A ``(G, O, K)`` matrix of :meth:`weight_matrix`'s layout in the layer's weight layout."""
    if isinstance(module, AnalogConv1D):
        return m[0].t()
    if isinstance(module, AnalogLinear):
        return m[0]
    return m.reshape(module.weight.shape)


def _digital_twin(module: AnalogLayerMixin, in_place: bool = True) -> nn.Module:
    """The digital twin of ``module``. Learned output scales other than 1 are folded into the
    weight (and an analog bias): in place on the shared Parameter (``in_place``: the twin keeps
    the optimizer's Parameter), else into a new Parameter of the twin's own — for a weight
    another module shares (a tied embedding would be rescaled with it) and for
    :func:`digital_module` (the analog layer stays as it is)."""
    cls = getattr(module, "_digital_class", None)
    with torch.device("meta"):
        if isinstance(module, AnalogConv1D):
            hf = _hf_conv1d_type()
            if hf is None:
                raise RuntimeError("to_digital: transformers is needed to rebuild a Conv1D")
            new = hf(module.nf, module.nx)
            cls = cls or hf
        elif isinstance(module, AnalogLinear):
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            cls = cls or nn.Linear
        else:
            base = {AnalogConv1d: nn.Conv1d, AnalogConv2d: nn.Conv2d, AnalogConv3d: nn.Conv3d}
            digital = next(d for a, d in base.items() if isinstance(module, a))
            new = digital(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            cls = cls or digital
    if cls is not type(new) and issubclass(cls, type(new)):
        new.__class__ = cls  # a plain subclass (e.g. NonDynamicallyQuantizableLinear)
    new.weight = module.weight
    new.bias = module.bias
    scales = module.effective_out_scale()
    if scales is not None and not bool((scales.detach() == 1).all()):
        # fold the learned output scales into the digital weight: each input tile's block of W
        # times that tile's scales; a digital bias is added after the output scale, an analog
        # one (the last input of the single tile) is scaled with W
        # (inference_mode(False) would switch grad mode back on: entered only for inference
        # tensors, whose in-place update needs it)
        inference = torch.inference_mode() if module.weight.is_inference() else nullcontext()
        with inference, torch.no_grad():
            per_weight = module.tile_layout().per_weight(module.out_scale_columns())
            w = module.weight_matrix()
            k = w.shape[2]
            folded = _weight_of_matrix(module, w * per_weight[..., :k].to(w.dtype))
            bias = None
            if module.analog_bias():
                bias = module.bias * per_weight[..., k].reshape(-1).to(module.bias.dtype)
            if in_place:  # (copy_: also where weight_matrix is a copy, a channels_last conv)
                module.weight.copy_(folded)
                if bias is not None:
                    module.bias.copy_(bias)
            else:
                grad = module.weight.requires_grad
                # (in the weight's own memory format, as the in-place fold leaves it)
                own = torch.empty_like(module.weight).copy_(folded)
                new.weight = nn.Parameter(own, requires_grad=grad)
                if bias is not None:
                    new.bias = nn.Parameter(bias, requires_grad=module.bias.requires_grad)
    new.train(module.training)
    return new


def to_digital(model: nn.Module) -> nn.Module:
    """Replace every analog layer of ``model`` (in place) by the digital module it came from,
    sharing its Parameters. The learned output scales are folded into the weight (each input
    tile's block of columns times that tile's scales) and an analog bias, so the digital model
    computes what the noise-free analog one did."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: got {type(model).__name__}; allowed: a torch.nn.Module")
    # how many modules hold each Parameter: a weight tied to another module's (GPT-2's lm_head
    # and wte) gets the scales folded into a Parameter of the twin's own
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    twins: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, AnalogLayerMixin):
            if not name:
                raise ValueError(
                    "model: the root module itself is analog; use "
                    "aimc.digital_module(model) to get its digital twin"
                )
            if id(module) not in twins:  # a layer registered under several names: fold once
                shared = any(owners.get(id(p), 0) > 1 for p in (module.weight, module.bias))
                twins[id(module)] = _digital_twin(module, in_place=not shared)
            _set_submodule(model, name, twins[id(module)])
    _fast_paths(model, analog=False)
    return model


def digital_module(module: AnalogLayerMixin) -> nn.Module:
    """The digital twin of one analog layer, sharing its Parameters — unless it has learned
    output scales other than 1, which are folded into a weight of the twin's own (the analog
    layer is left as it is)."""
    if not isinstance(module, AnalogLayerMixin):
        raise ValueError(
            f"module: got {type(module).__name__}; allowed: an analog layer (aimc.nn.Analog*)"
        )
    return _digital_twin(module, in_place=False)


def analog_layers(model: nn.Module) -> list[tuple[str, AnalogLayerMixin]]:
    """``(qualified name, layer)`` of every analog layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayerMixin)]


def manual_seed(model: nn.Module, seed: int, io_stream: int | None = None) -> None:
    """Restart every analog layer's noise stream: layer ``name`` gets ``derive_seed(seed, name)``
    (in a peft model the name without peft's wrapper parts: :func:`seed_name`).

    Two runs of the same model with the same seed give bit-identical outputs on the same device.
    ``io_stream`` (e.g. the data-parallel rank) gives the IO noise its own stream while the HWA
    weight modifier keeps the shared one (see :meth:`AnalogLinear.manual_seed
    <aimc.nn.base.AnalogLayerMixin.manual_seed>`).
    """
    check_seed(seed)
    peft = is_peft_model(model)
    for name, layer in analog_layers(model):
        layer.manual_seed(derive_seed(seed, seed_name(name, peft)), io_stream)
