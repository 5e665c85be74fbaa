"""The in-situ training optimizers (``aimc.pulsed.AnalogSGD``, ``TikiTaka``, ``MixedPrecision``)
on converted models, and the validation of the pulsed configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.pulsed import (
    AnalogSGD,
    MixedPrecision,
    MixedPrecisionConfig,
    PulsedConfig,
    TikiTaka,
    TikiTakaConfig,
    UpdateConfig,
    presets,
)

IDEAL = {
    "dw_min": 0.001,
    "dw_min_dtod": 0.0,
    "dw_min_std": 0.0,
    "up_down_dtod": 0.0,
    "w_max_dtod": 0.0,
    "w_min_dtod": 0.0,
}


def mlp(seed: int = 0, analog: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    if analog:
        aimc.convert(model, aimc.AnalogConfig(), seed=seed)
    return model


def data(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model, opt, steps: int = 5, seed: int = 0) -> list[float]:
    losses = []
    for i in range(steps):
        x, y = data(seed + i)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


OPTIMIZERS = [
    ("analog_sgd", lambda m, s: AnalogSGD(m, lr=0.1, config=presets.reram_soft_bounds(), seed=s)),
    ("tiki_taka", lambda m, s: TikiTaka(m, lr=0.1, seed=s)),
    ("mixed_precision", lambda m, s: MixedPrecision(m, lr=0.1, config=presets.pcm_pair(), seed=s)),
]


@pytest.mark.parametrize("name,make", OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_same_seed_same_trajectory(name, make):
    weights = []
    for seed in (1, 1, 2):
        model = mlp()
        train(model, make(model, seed))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("name,make", OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_state_dict_holds_the_devices(name, make):
    model = mlp()
    opt = make(model, 3)
    train(model, opt, 2)
    state = model.state_dict()
    assert any(".pulsed." in k and "d2d_dw_up" in k for k in state)
    twin = mlp(seed=5)
    make(twin, 9)  # a different seed draws different devices ...
    twin.load_state_dict(state)  # ... the checkpoint restores them
    for k, v in twin.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k


def test_trained_weights_load_into_a_fresh_model_for_inference():
    model = mlp()
    train(model, AnalogSGD(model, lr=0.1, seed=3), 2)
    state = model.state_dict()
    fresh = mlp(seed=5)
    result = fresh.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".pulsed." in k for k in result.unexpected_keys)
    x = torch.randn(
        4, next(fresh.parameters()).shape[1], generator=torch.Generator().manual_seed(0)
    )
    aimc.manual_seed(fresh, 7)
    aimc.manual_seed(model, 7)  # the same IO noise on both: only the weights could differ
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_analog_sgd_learns_a_linear_teacher():
    """Pulsed SGD on an idealized device fits y = W* x (loss falls by > 5x)."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 8, generator=g) * 0.2
    model = nn.Linear(8, 4, bias=False)
    nn.init.zeros_(model.weight)
    opt = AnalogSGD(model, lr=0.1, config=presets.idealized(), seed=0)
    losses = []
    for _ in range(150):
        x = torch.randn(16, 8, generator=g)
        opt.zero_grad()
        loss = F.mse_loss(model(x), x @ teacher.t())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10]) / 5


def test_bias_gets_digital_sgd_and_weight_stays_a_parameter():
    model = mlp()
    opt = AnalogSGD(model, lr=0.05, seed=0)
    x, y = data()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    bias_before, grad = model[0].bias.detach().clone(), model[0].bias.grad.clone()
    opt.step()
    torch.testing.assert_close(model[0].bias.detach(), bias_before - 0.05 * grad)
    assert type(model[0].weight) is nn.Parameter
    assert torch.equal(model[0].weight.detach(), model[0].pulsed.weight())


def test_weights_start_clipped_to_the_device_bounds():
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.fill_(5.0)
    AnalogSGD(model, lr=0.1, config=PulsedConfig(params={"w_max_dtod": 0.0}))
    torch.testing.assert_close(model.weight.detach(), torch.full((4, 6), 0.6))


def test_tiki_taka_transfers_columns_from_a_into_c():
    """With an ideal device and expected-step updates, each transfer adds ``transfer_lr * lr``
    times the read column of ``A`` to the same column of ``C``; other columns of ``C`` keep
    their value and the column pointer advances."""
    cfg = PulsedConfig(params=IDEAL, update=UpdateConfig(mode="expected"))
    tt = TikiTakaConfig(transfer_every=2, transfer_lr=0.5, columns_per_transfer=2)
    model = nn.Linear(5, 3, bias=False)
    opt = TikiTaka(model, lr=0.1, config=cfg, tiki_taka=tt, seed=0)
    arrays = model.pulsed
    c_start = arrays.slow.weight().clone()
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(4, 5, generator=g)
    # step 1: A gets the gradient, no transfer yet
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    a1 = arrays.fast.weight().clone()
    assert a1.abs().sum() > 0
    assert torch.equal(arrays.slow.weight(), c_start) and int(arrays.next_column) == 0
    # step 2: A updated again, then columns 0 and 1 of A move into C
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    a2 = arrays.fast.weight()
    c2 = arrays.slow.weight()
    assert int(arrays.next_column) == 2
    torch.testing.assert_close(c2[:, :2] - c_start[:, :2], 0.5 * 0.1 * a2[:, :2], atol=2e-4, rtol=0)
    assert torch.equal(c2[:, 2:], c_start[:, 2:])
    assert torch.equal(model.weight.detach(), c2)  # gamma = 0: the weight is C


def test_mixed_precision_accumulates_below_threshold():
    cfg = PulsedConfig(params=IDEAL)
    model = nn.Linear(5, 3, bias=False)
    nn.init.zeros_(model.weight)
    opt = MixedPrecision(model, lr=1e-4, config=cfg, seed=0)
    x = torch.ones(2, 5)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()  # -lr * d^T x = -2e-4 per device: below dw_min = 1e-3, nothing programmed
    assert torch.equal(model.weight.detach(), torch.zeros(3, 5))
    torch.testing.assert_close(model.pulsed.chi, torch.full((3, 5), -2e-4))
    for _ in range(5):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    # 6 steps: chi reached -1.2e-3: one down pulse of dw_min, remainder -2e-4
    torch.testing.assert_close(model.weight.detach(), torch.full((3, 5), -1e-3))
    torch.testing.assert_close(model.pulsed.chi, torch.full((3, 5), -2e-4), atol=1e-7, rtol=0)


def test_conv_layer_is_named_in_the_error_and_can_be_excluded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="layer '0' \\(Conv2d\\)"):
        AnalogSGD(model, lr=0.1)
    opt = AnalogSGD(model, lr=0.1, exclude=["0"])
    opt.zero_grad()
    model(torch.randn(3, 1, 4, 4)).sum().backward()
    opt.step()


def test_forward_without_backward_is_a_clear_error():
    model = mlp()
    opt = AnalogSGD(model, lr=0.1)
    x, y = data()
    model(x)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="2 training forward"):
        opt.step()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: AnalogSGD(mlp(), lr=-1.0), "lr: got -1.0"),
        (lambda: AnalogSGD(mlp(), lr=0.1, config={"device": "x"}), "config: got dict"),
        (lambda: AnalogSGD(nn.ReLU(), lr=0.1), "no nn.Linear"),
        (lambda: AnalogSGD("model", lr=0.1), "model: got str"),
        (lambda: TikiTaka(mlp(), lr=0.1, tiki_taka={"transfer_every": 1}), "tiki_taka: got"),
        (lambda: MixedPrecision(mlp(), lr=0.1, mixed_precision=1), "mixed_precision: got"),
    ],
)
def test_bad_optimizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_second_optimizer_on_the_same_model_is_refused():
    model = mlp()
    AnalogSGD(model, lr=0.1)
    with pytest.raises(ValueError, match="already has pulsed arrays"):
        AnalogSGD(model, lr=0.1)


# -- config validation and round trip ---------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PulsedConfig(device="memristor"), "pulsed.device: got 'memristor'"),
        (lambda: PulsedConfig(params={"dw_min": 0.0}), r"pulsed.params.dw_min: got 0.0"),
        (lambda: PulsedConfig(params={"dw_min_std": -1}), "pulsed.params.dw_min_std: got -1"),
        (lambda: PulsedConfig(params={"w_max": -1.0}), "pulsed.params.w_max: got -1.0"),
        (lambda: PulsedConfig(params={"up_down": 1.5}), "pulsed.params.up_down"),
        (lambda: PulsedConfig(params={"w_min": float("nan")}), "pulsed.params.w_min: got nan"),
        (lambda: PulsedConfig(params={"mult_noise": 1}), "pulsed.params.mult_noise: got 1"),
        (lambda: PulsedConfig(params={"bogus": 1}), "pulsed.params: got 'bogus'"),
        (lambda: PulsedConfig(params=[1]), "pulsed.params: got"),
        (lambda: PulsedConfig(update=UpdateConfig(desired_bl=0)), "pulsed.update.desired_bl"),
        (lambda: UpdateConfig(mode="exact"), "pulsed.update.mode: got 'exact'"),
        (lambda: PulsedConfig(one_sided_pair=True), "pulsed.params.w_min: got -0.6"),
        (lambda: PulsedConfig(refresh_upper_thres=2.0), "pulsed.refresh_upper_thres: got 2.0"),
        (
            lambda: PulsedConfig(device="linear_step", params={"gamma_up": -1}),
            "pulsed.params.gamma_up: got -1",
        ),
        (
            lambda: PulsedConfig(device="piecewise_step", params={"piecewise_up": [1.0]}),
            "pulsed.params.piecewise_up: got",
        ),
        (lambda: TikiTakaConfig(transfer_every=0), "tiki_taka.transfer_every: got 0"),
        (lambda: TikiTakaConfig(transfer_lr=-0.1), "tiki_taka.transfer_lr: got -0.1"),
        (lambda: MixedPrecisionConfig(granularity=0), "mixed_precision.granularity: got 0"),
        (lambda: PulsedConfig.from_dict({"device": "constant_step"}), "pulsed.version: got None"),
    ],
)
def test_bad_config_values_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_config_round_trips():
    for make in presets.PRESETS.values():
        cfg = make()
        assert PulsedConfig.from_json(cfg.to_json()) == cfg
    cfg = PulsedConfig(update=UpdateConfig(mode="expected", desired_bl=15))
    assert PulsedConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["update"]["mode"] == "expected"
    for cls in (TikiTakaConfig, MixedPrecisionConfig, UpdateConfig):
        assert cls.from_dict(cls().to_dict()) == cls()


def test_docs_usage_example_runs():
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "insitu.md"
    block = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[0]
    scope: dict = {}
    exec(compile(block, "docs/insitu.md", "exec"), scope)
    model = scope["model"]
    assert torch.equal(model[0].weight.detach(), model[0].pulsed.weight())
