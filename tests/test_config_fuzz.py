"""Fuzzing of config loading: a malformed dict or JSON text never loads and never crashes.

Valid dicts of every preset (and of every device model) are mutated at a random path: a leaf
replaced by a value of another type, out of range, NaN, +-inf, a huge int, a bool, None, a list, a
dict or a string; a key deleted; an unknown key added; a list element replaced. Loading the result
either gives a config whose ``to_dict()`` is the input (up to the documented normalisations: an
int in a float field is stored as a float, enum names are case-insensitive, ``{}`` params of
device model ``'none'`` are ``None``) or raises ``ValueError`` whose message names the mutated
field by its dotted path (for a deleted key: the key's path; for an unknown key: the enclosing
path and the key) — never another exception type. Every valid config round-trips through JSON
bit-exactly.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

import aimc
from aimc import presets
from aimc.config import (
    CONFIG_MIGRATIONS,
    CONFIG_VERSION,
    DEVICE_PARAMS,
    AnalogConfig,
    BoundManagement,
    DeviceConfig,
    DriftCompensation,
    HWAConfig,
    NoiseManagement,
    WeightClip,
    WeightModifier,
    WeightNoiseType,
    WeightRemap,
)
from aimc.pulsed import presets as pulsed_presets
from aimc.pulsed.config import (
    PULSED_CONFIG_MIGRATIONS,
    PULSED_CONFIG_VERSION,
    PULSED_PARAMS,
    MixedPrecisionConfig,
    PulsedConfig,
    TikiTakaConfig,
    UpdateConfig,
    UpdateMode,
)

NAN, INF = float("nan"), float("inf")
FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
SMALL = settings(max_examples=100, deadline=None, derandomize=True)

ANALOG_BASES = {
    "ideal": presets.ideal(),
    "pcm_inference": presets.pcm_inference(),
    "pcm_weights_only": presets.pcm_weights_only(),
    "standard_hwa": presets.standard_hwa(),
    "bert_squad_0.035": presets.bert_squad(0.035),
    **{
        f"device_{name}": AnalogConfig(device=DeviceConfig(model=name, drift_compensation="global"))
        for name in sorted(DEVICE_PARAMS)
    },
    "hwa_discretize": AnalogConfig(
        hwa=HWAConfig(modifier="discretize", modifier_res=1 / 16, clip="layer_gaussian")
    ),
}
ANALOG_DICTS = {name: cfg.to_dict() for name, cfg in ANALOG_BASES.items()}

PULSED_BASES = {
    **{name: make() for name, make in pulsed_presets.PRESETS.items()},
    **{f"device_{name}": PulsedConfig(device=name) for name in sorted(PULSED_PARAMS)},
}
PULSED_DICTS = {name: cfg.to_dict() for name, cfg in PULSED_BASES.items()}

#: Unversioned sub-configs with a public ``from_dict`` (missing keys take their defaults).
LENIENT_DICTS = {
    "tiki_taka": (TikiTakaConfig, TikiTakaConfig().to_dict()),
    "mixed_precision": (MixedPrecisionConfig, MixedPrecisionConfig().to_dict()),
    "pulsed.update": (UpdateConfig, UpdateConfig().to_dict()),
}

ENUMS = [
    NoiseManagement,
    BoundManagement,
    WeightNoiseType,
    DriftCompensation,
    WeightModifier,
    WeightClip,
    WeightRemap,
    UpdateMode,
]
WORDS = sorted(
    {m.value for e in ENUMS for m in e}
    | {m.value.upper() for e in ENUMS for m in e}
    | set(DEVICE_PARAMS)
    | set(PULSED_PARAMS)
    | {"none", "None", "PCM", " pcm", "abs-max", "1", "0.5", "nan", "inf", "true", "null", ""}
)

# -- strategies ------------------------------------------------------------------------------------

HUGE_INTS = st.integers(min_value=2**53 - 2, max_value=10**400) | st.integers(
    min_value=-(10**400), max_value=-(2**53 - 2)
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=4096),
    HUGE_INTS,
    st.floats(),  # NaN and +-inf included
    st.sampled_from([NAN, INF, -INF, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1.0, 2.0**53 + 2]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),  # "0.5" where 0.5 belongs
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.lists(st.floats(min_value=0, max_value=30), min_size=2, max_size=4),
    st.dictionaries(
        st.text(max_size=6) | st.sampled_from(["g_max", "out_noise"]), SCALARS, max_size=3
    ),
)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    """The path of every key of every (nested) dict."""
    out = []
    for key, value in d.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _dict_paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    """The path of every (nested) dict, the root included."""
    out = [prefix]
    for key, value in d.items():
        if isinstance(value, dict):
            out += _dict_paths(value, (*prefix, key))
    return out


def _get(d: Any, path: tuple) -> Any:
    for key in path:
        d = d[key]
    return d


@st.composite
def mutations(draw, bases: dict[str, dict], kinds: tuple[str, ...]):
    """``(data, kind, path)``: a deep copy of a base dict with one mutation at ``path``."""
    name = draw(st.sampled_from(sorted(bases)))
    data = copy.deepcopy(bases[name])
    kind = draw(st.sampled_from(kinds))
    if kind == "element":
        lists = [p for p in _paths(data) if isinstance(_get(data, p), list) and _get(data, p)]
        if not lists:
            kind = "replace"
        else:
            path = draw(st.sampled_from(lists))
            items = _get(data, path)
            index = draw(st.integers(min_value=0, max_value=len(items) - 1))
            items[index] = draw(VALUES)
            note(f"{name}: {kind} {path}[{index}] -> {items[index]!r}")
            return data, kind, path
    if kind == "add":
        path = draw(st.sampled_from(_dict_paths(data)))
        key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in _get(data, path)))
        _get(data, path)[key] = draw(VALUES)
        note(f"{name}: {kind} {path} key {key!r}")
        return data, kind, (*path, key)
    path = draw(st.sampled_from(_paths(data)))
    parent = _get(data, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
        note(f"{name}: {kind} {path}")
    else:
        parent[path[-1]] = draw(VALUES)
        note(f"{name}: {kind} {path} -> {parent[path[-1]]!r}")
    return data, kind, path


# -- the oracle ------------------------------------------------------------------------------------


def _word(text: str) -> str:
    return r"(?<![\w.])" + re.escape(text) + r"(?![\w])"


def _named(msg: str, dotted: str) -> bool:
    return not dotted or bool(re.search(r"(?<![\w])" + re.escape(dotted) + r"(?![\w])", msg))


def _mentions(msg: str, kind: str, path: tuple) -> bool:
    """Whether ``msg`` names the field at ``path``: its dotted path (with or without the
    enclosing prefixes), or, for a rule between two fields, the enclosing path and the key; an
    unknown key: the enclosing path and the key's repr."""
    parent = ".".join(str(p) for p in path[:-1])
    if kind == "add":
        return _named(msg, parent) and repr(path[-1]) in msg
    if _named(msg, ".".join(str(p) for p in path)):
        return True
    return _named(msg, parent) and bool(re.search(_word(str(path[-1])), msg))


def _same(got: Any, given: Any, where: str) -> None:
    """``got`` (a to_dict() value) is what ``given`` (the loaded value) means, exactly."""
    if isinstance(got, dict):
        assert isinstance(given, dict) and set(got) == set(given), (where, got, given)
        for key in got:
            _same(got[key], given[key], f"{where}.{key}")
    elif isinstance(got, list):
        assert isinstance(given, (list, tuple)) and len(got) == len(given), (where, got, given)
        for i, (a, b) in enumerate(zip(got, given, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif type(got) is float:
        # an int in a float field is stored as the float of the same value, exactly
        assert type(given) in (int, float), (where, got, given)
        assert math.isfinite(got) and got == given, (where, got, given)
        assert math.copysign(1.0, got) == math.copysign(1.0, given), (where, got, given)
        if type(given) is int:
            assert int(got) == given, (where, got, given)
    elif type(got) is str:
        # enum names are case-insensitive; everything else is taken as is
        assert type(given) is str and given.lower() == got, (where, got, given)
    else:
        assert type(got) is type(given) and got == given, (where, got, given)


def _expect_load(cls, data: Any, kind: str, path: tuple, *, load_json: bool = True) -> None:
    """Load ``data`` (and its JSON text): a ValueError naming ``path``, or an exact config."""
    results = []
    loaders = [("dict", lambda: cls.from_dict(data))]
    if load_json:
        loaders.append(("json", lambda: cls.from_json(json.dumps(data))))
    for how, load in loaders:
        try:
            cfg = load()
        except ValueError as err:
            msg = str(err)
            note(f"{how}: {msg}")
            assert _mentions(msg, kind, path), (kind, path, msg)
            assert ": got " in msg and "allowed: " in msg, msg
            results.append("error")
            continue
        results.append("ok")
        out = cfg.to_dict()
        given = copy.deepcopy(data)
        device = given.get("device") if isinstance(given, dict) else None
        if isinstance(device, dict) and device.get("model") == "none" and device["params"] == {}:
            device["params"] = None  # ``{}`` means no params, stored as None
        _same(out, given, cls.__name__)
        assert cls.from_dict(out) == cfg
        if load_json:
            assert cls.from_json(cfg.to_json()).to_json() == cfg.to_json()
    assert len(set(results)) == 1, results  # dict and JSON text agree
    event(f"{kind}: {results[0]}")


# -- mutated dicts ---------------------------------------------------------------------------------

KINDS = ("replace", "replace", "replace", "delete", "add", "element")


@FUZZ
@given(mutations(ANALOG_DICTS, KINDS))
def test_mutated_analog_config_raises_naming_the_field_or_loads_exactly(case):
    data, kind, path = case
    _expect_load(AnalogConfig, data, kind, path)


@FUZZ
@given(mutations(PULSED_DICTS, KINDS))
def test_mutated_pulsed_config_raises_naming_the_field_or_loads_exactly(case):
    data, kind, path = case
    _expect_load(PulsedConfig, data, kind, path)


@SMALL
@given(st.sampled_from(sorted(LENIENT_DICTS)), st.data())
def test_mutated_unversioned_sub_configs(name, data):
    # these take missing keys from their defaults (like the constructor): no deletions
    cls, base = LENIENT_DICTS[name]
    d, kind, path = data.draw(mutations({name: base}, ("replace", "add")))
    _expect_load(cls, d, kind, (name, *path), load_json=False)


@SMALL
@given(st.sampled_from(sorted(DEVICE_PARAMS)), st.data())
def test_mutated_device_params_alone(model, data):
    cls = DEVICE_PARAMS[model]
    d, kind, path = data.draw(mutations({model: cls().to_dict()}, ("replace", "add", "element")))
    _expect_load(cls, d, kind, ("device", "params", *path), load_json=False)


# -- versions --------------------------------------------------------------------------------------


@SMALL
@given(VALUES)
def test_any_version_but_the_current_one_raises(version):
    for cls, current, prefix in (
        (AnalogConfig, CONFIG_VERSION, "config"),
        (PulsedConfig, PULSED_CONFIG_VERSION, "pulsed"),
    ):
        d = cls().to_dict()
        d["version"] = version
        if type(version) is int and version == current:
            assert cls.from_dict(d) == cls()
            continue
        if cls is AnalogConfig and type(version) is int and version in (1, 2):
            continue  # migrated (test_version_1_dict_is_migrated, test_version_2_...)
        with pytest.raises(ValueError) as info:
            cls.from_dict(d)
        msg = str(info.value)
        assert msg.startswith(f"{prefix}.version: got "), msg


@pytest.mark.parametrize(
    "version",
    [1.0, True, "1", 5, 99, 10**400, 0, -1, NAN, None],
    ids=["1.0", "True", "'1'", "5", "99", "10**400", "0", "-1", "nan", "None"],
)
def test_version_messages(version):
    for cls, prefix in ((AnalogConfig, "config"), (PulsedConfig, "pulsed")):
        d = cls().to_dict()
        d["version"] = version
        with pytest.raises(ValueError) as info:
            cls.from_dict(d)
        msg = str(info.value)
        assert msg.startswith(f"{prefix}.version: got "), msg
        assert "allowed: " in msg, msg
        if type(version) is int and version > CONFIG_VERSION:
            assert "newer aimc" in msg and "upgrade" in msg, msg


def test_missing_version_names_it():
    for cls, prefix in ((AnalogConfig, "config"), (PulsedConfig, "pulsed")):
        d = cls().to_dict()
        del d["version"]
        with pytest.raises(ValueError, match=rf"^{prefix}\.version: got None"):
            cls.from_dict(d)


def test_migrations_lead_to_the_current_version():
    # version 1 is the first: nothing to migrate from (no invented version 0); version 2 added
    # hwa.modifier_t_min / modifier_t_max (the chip modifier), version 3 AIHWKIT's input-range
    # learning fields, version 4 hwa.output_bound_mask
    assert sorted(CONFIG_MIGRATIONS) == [1, 2, 3] and PULSED_CONFIG_MIGRATIONS == {}
    assert CONFIG_VERSION == 4 and PULSED_CONFIG_VERSION == 1


def test_version_1_dict_is_migrated():
    """A version-1 dict (no chip-modifier times) loads with their defaults; a version-1 dict
    that already has one is refused, naming it."""
    cfg = AnalogConfig(hwa=HWAConfig(modifier="add_normal", modifier_std=0.02))
    old = cfg.to_dict()
    old["version"] = 1
    for name in ("modifier_t_min", "modifier_t_max", *_V3_FIELDS, "output_bound_mask"):
        del old["hwa"][name]
    snapshot = copy.deepcopy(old)
    assert AnalogConfig.from_dict(old) == cfg
    assert old == snapshot  # the migration does not modify its argument
    bad = {**old, "hwa": {**old["hwa"], "modifier_t_min": 5.0}}
    with pytest.raises(
        ValueError, match=r"^config\.hwa\.modifier_t_min: got 5\.0; allowed: no such"
    ):
        AnalogConfig.from_dict(bad)


_V3_FIELDS = (
    "input_range_gradient_relative",
    "input_range_gradient_scale",
    "input_range_min_inside",
)


def test_version_2_dict_is_migrated():
    """A version-2 dict (no input-range learning fields) loads with their defaults, AIHWKIT's;
    a version-2 dict that already has one is refused, naming it."""
    cfg = aimc.presets.standard_hwa()
    old = cfg.to_dict()
    old["version"] = 2
    for name in (*_V3_FIELDS, "output_bound_mask"):
        del old["hwa"][name]
    snapshot = copy.deepcopy(old)
    back = AnalogConfig.from_dict(old)
    assert back == cfg and back.hwa.input_range_min_inside == 0.95
    assert old == snapshot
    bad = {**old, "hwa": {**old["hwa"], "input_range_min_inside": 0.5}}
    with pytest.raises(
        ValueError, match=r"^config\.hwa\.input_range_min_inside: got 0\.5; allowed: no such"
    ):
        AnalogConfig.from_dict(bad)


def test_version_3_dict_is_migrated():
    """A version-3 dict (no ``hwa.output_bound_mask``) loads with AIHWKIT's rule, which
    version-3 configs trained with; one that already has it is refused, naming it."""
    cfg = aimc.presets.standard_hwa()
    old = cfg.to_dict()
    old["version"] = 3
    del old["hwa"]["output_bound_mask"]
    snapshot = copy.deepcopy(old)
    back = AnalogConfig.from_dict(old)
    assert back == cfg and back.hwa.output_bound_mask == "aihwkit"
    assert old == snapshot
    bad = {**old, "hwa": {**old["hwa"], "output_bound_mask": "none"}}
    with pytest.raises(
        ValueError, match=r"^config\.hwa\.output_bound_mask: got 'none'; allowed: no such"
    ):
        AnalogConfig.from_dict(bad)


def test_a_registered_migration_is_applied(monkeypatch):
    """The migration hook: a dict of version ``v`` is turned into version ``v + 1`` by
    ``CONFIG_MIGRATIONS[v]`` until it is current (simulated: current = 5, migrate 4 -> 5)."""
    import aimc.config as config

    calls = []

    def rename_out_noise(d: dict) -> dict:
        assert "version" not in d
        calls.append(1)
        d = copy.deepcopy(d)
        d["io"]["out_noise"] = d["io"].pop("old_out_noise")
        return d

    old = AnalogConfig().to_dict()
    old["io"]["old_out_noise"] = old["io"].pop("out_noise")
    monkeypatch.setattr(config, "CONFIG_VERSION", 5)
    monkeypatch.setitem(config.CONFIG_MIGRATIONS, 4, rename_out_noise)
    assert AnalogConfig.from_dict(old) == AnalogConfig()
    assert calls == [1]
    with pytest.raises(ValueError, match=r"config\.version: got 0"):
        AnalogConfig.from_dict({**old, "version": 0})


# -- non-dicts, JSON text --------------------------------------------------------------------------


@SMALL
@given(VALUES.filter(lambda v: not isinstance(v, dict)))
def test_top_level_not_a_dict(value):
    for cls, prefix in ((AnalogConfig, "config"), (PulsedConfig, "pulsed")):
        with pytest.raises(ValueError, match=rf"^{prefix}: got "):
            cls.from_dict(value)
        with pytest.raises(ValueError, match=rf"^{prefix}: got "):
            cls.from_json(json.dumps(value))


@SMALL
@given(st.text(max_size=40) | st.sampled_from(["", "{", "[1,", "{'a': 1}", "NaN", "{}", "nul"]))
def test_from_json_garbage_text(text):
    for cls, prefix in ((AnalogConfig, "config"), (PulsedConfig, "pulsed")):
        with pytest.raises(ValueError) as info:
            cls.from_json(text)
        assert str(info.value).startswith(f"{prefix}"), str(info.value)


@pytest.mark.parametrize(
    "text, prefix",
    [
        ("[" * 100_000, ""),  # RecursionError inside json
        ('{"version": 1, "io": ' + "[" * 100_000 + "]" * 100_000 + "}", ""),
        ('{"version": ' + "9" * 5000 + "}", ""),  # int longer than Python's digit limit
        (b"\xff\xfe{", ""),  # undecodable bytes
        ('{"version": 1, "version": 1}', ".version: got 1 and then 1"),
    ],
    ids=["deep", "deep-field", "digits", "bytes", "dup-version"],
)
def test_from_json_pathological_text(text, prefix):
    for cls, top in ((AnalogConfig, "config"), (PulsedConfig, "pulsed")):
        with pytest.raises(ValueError) as info:
            cls.from_json(text)
        assert str(info.value).startswith(top + prefix), str(info.value)


def test_duplicate_json_key_names_the_field():
    text = presets.pcm_inference().to_json()
    text = text.replace('"out_noise": 0.06', '"out_noise": 0.06, "out_noise": 0.6')
    with pytest.raises(ValueError, match=r"^config\.io\.out_noise: got 0\.06 and then 0\.6"):
        AnalogConfig.from_json(text)


@pytest.mark.parametrize("text", [None, 1, 1.5, ["{}"], {"version": 1}])
def test_from_json_not_text(text):
    with pytest.raises(ValueError, match=r"^config: got "):
        AnalogConfig.from_json(text)
    with pytest.raises(ValueError, match=r"^pulsed: got "):
        PulsedConfig.from_json(text)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize(
    "field",
    ["io.out_noise", "io.out_bound", "mapping.weight_scaling_omega", "device.params.g_max"],
)
def test_from_json_non_finite_literals_name_the_field(literal, field):
    text = presets.pcm_inference().to_json()
    section, key = field.rsplit(".", 1)
    d = json.loads(text)
    _get(d, tuple(section.split(".")))[key] = "@@"
    text = json.dumps(d).replace('"@@"', literal)
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_json(text)
    msg = str(info.value)
    assert msg.startswith(f"{field}: got ") and "finite" in msg, msg


def test_deeply_nested_value_in_a_dict():
    deep: Any = 0.5
    for _ in range(100_000):
        deep = [deep]
    d = AnalogConfig().to_dict()
    d["io"]["out_noise"] = deep
    with pytest.raises(ValueError, match=r"^io\.out_noise: got "):
        AnalogConfig.from_dict(d)


def test_huge_values_in_messages_are_shortened():
    d = AnalogConfig().to_dict()
    d["io"]["out_noise"] = "x" * 1_000_000
    with pytest.raises(ValueError) as info:
        AnalogConfig.from_dict(d)
    assert len(str(info.value)) < 1000
    d["io"]["out_noise"] = 10**10_000  # repr() of it raises ValueError in Python >= 3.11
    with pytest.raises(ValueError, match=r"^io\.out_noise: got "):
        AnalogConfig.from_dict(d)


@pytest.mark.parametrize("key", [1, None, 2.5, ("io",), True])
def test_non_string_keys(key):
    d = AnalogConfig().to_dict()
    d["io"][key] = 1
    d["io"]["zzz"] = 1  # keys of mixed types must not break the unknown-key report
    with pytest.raises(ValueError, match=r"^config\.io: got "):
        AnalogConfig.from_dict(d)
    top = AnalogConfig().to_dict()
    top[key] = 1
    with pytest.raises(ValueError, match=r"^config: got "):
        AnalogConfig.from_dict(top)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["device"].update(model="gaussian"), r"device\.model 'gaussian'"),
        (lambda d: d["device"].update(model="none"), r"device\.model is 'none'"),
        (lambda d: d["device"].update(params=None), r"device\.params: got None"),
        (lambda d: d["device"]["params"].pop("g_max"), r"device\.params\.g_max: got no value"),
        (lambda d: d["io"].pop("w_noise_bf16"), r"config\.io\.w_noise_bf16: got no value"),
        (lambda d: d.pop("hwa"), r"config\.hwa: got no value"),
        (lambda d: d["io"].update(out_noise="0.06"), r"io\.out_noise: got '0\.06'"),
        (lambda d: d["mapping"].update(max_input_size=512.0), r"max_input_size: got 512\.0"),
        (lambda d: d["mapping"].update(max_input_size=2**64), r"max_input_size: got 1844"),
        (lambda d: d["io"].update(out_bound=10**400), r"io\.out_bound: got 1000"),
        (lambda d: d["io"].update(out_bound=2**53 + 1), r"io\.out_bound: got 9007199254740993"),
        (lambda d: d["hwa"].update(modifier_coeffs=[1, 2, 10**400]), r"hwa\.modifier_coeffs"),
        (lambda d: d["io"].update(is_perfect=1), r"io\.is_perfect: got 1"),
        (lambda d: d["io"].update(noise_management=0.5), r"io\.noise_management: got 0\.5"),
    ],
)
def test_examples_of_malformed_dicts(mutate, match):
    d = presets.pcm_inference().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        AnalogConfig.from_dict(d)


def test_custom_drift_table_with_huge_int():
    d = AnalogConfig(device=DeviceConfig(model="pcm_custom_drift")).to_dict()
    d["device"]["params"]["nu_mean"] = [0.1, 10**400, 0.05]
    with pytest.raises(ValueError, match=r"device\.params\.nu_mean: got "):
        AnalogConfig.from_dict(d)


def test_partial_dicts_still_allowed_where_documented():
    # constructor and sub-config from_dict: missing keys take the defaults (documented)
    assert DeviceConfig(model="pcm", params={"g_max": 20}).params.g_max == 20.0
    assert aimc.config.IOConfig.from_dict({"out_noise": 0.1}).out_noise == 0.1
    assert PulsedConfig(params={"dw_min": 0.01}).params.dw_min == 0.01


# -- valid configs round-trip bit-exactly ----------------------------------------------------------

POSITIVE_FLOATS = st.floats(min_value=5e-324, max_value=1.7e308)


@st.composite
def valid_analog_dicts(draw):
    """A preset's dict with random (mostly valid) values in every leaf."""
    d = copy.deepcopy(draw(st.sampled_from([ANALOG_DICTS[k] for k in sorted(ANALOG_DICTS)])))
    for path in _paths(d):
        parent, key = _get(d, path[:-1]), path[-1]
        value = parent[key]
        if type(value) is float:
            parent[key] = draw(POSITIVE_FLOATS | st.sampled_from([1.0, 1 / 3, 0.1, 2.0**-1074]))
        elif type(value) is bool:
            parent[key] = draw(st.booleans())
        elif type(value) is int and key != "version":
            parent[key] = draw(st.integers(min_value=1, max_value=2**62))
        elif isinstance(value, list) and key == "modifier_coeffs":
            parent[key] = draw(
                st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=3, max_size=3)
            )
    for enum, section, key in (
        (NoiseManagement, "io", "noise_management"),
        (WeightNoiseType, "io", "w_noise_type"),
        (WeightModifier, "hwa", "modifier"),
        (WeightClip, "hwa", "clip"),
        (DriftCompensation, "device", "drift_compensation"),
    ):
        d[section][key] = draw(st.sampled_from([m.value for m in enum]))
    # the cross-field rules of AnalogConfig
    d["mapping"]["digital_bias"] |= d["hwa"]["learn_input_range"]
    d["mapping"]["learn_out_scaling"] |= d["hwa"]["remap"] != "none"
    hwa = d["hwa"]
    hwa["modifier_t_min"], hwa["modifier_t_max"] = sorted(
        (hwa["modifier_t_min"], hwa["modifier_t_max"])
    )
    if hwa["modifier"] == "chip" and d["device"]["model"] == "none":
        hwa["modifier"] = "none"  # the chip modifier needs a device model
    return d


@settings(max_examples=200, deadline=None, derandomize=True)
@given(valid_analog_dicts())
def test_valid_configs_round_trip_bit_exactly(d):
    try:
        cfg = AnalogConfig.from_dict(d)
    except ValueError as err:  # a valid-looking draw that a rule still refuses: say which
        assert ": got " in str(err)
        event(f"rejected: {str(err).split(':')[0]}")
        return
    text = cfg.to_json()
    back = AnalogConfig.from_json(text)
    assert back == cfg and back.to_json() == text and back.to_dict() == cfg.to_dict()
    _same(cfg.to_dict(), d, "config")  # every float bit-exact (repr round-trips float64)
    assert AnalogConfig.from_json(cfg.to_json(indent=1, sort_keys=True)) == cfg


@SMALL
@given(st.sampled_from(sorted(PULSED_DICTS)), st.data())
def test_valid_pulsed_configs_round_trip_bit_exactly(name, data):
    d = copy.deepcopy(PULSED_DICTS[name])
    for key, value in d["params"].items():
        if type(value) is float and key not in ("w_min", "w_max", "up_down"):
            d["params"][key] = data.draw(POSITIVE_FLOATS)
    d["refresh_upper_thres"] = data.draw(st.floats(min_value=0, max_value=1))
    cfg = PulsedConfig.from_dict(d)
    text = cfg.to_json()
    assert PulsedConfig.from_json(text) == cfg and PulsedConfig.from_json(text).to_json() == text
    _same(cfg.to_dict(), d, "pulsed")
