"""The code examples in the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import aimc

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_device_plugin_example_registers_and_runs():
    block = next(
        b for b in _python_blocks("howto/add-device-model.md") if "register(DeviceModel(" in b
    )
    exec(compile(block, "docs/howto/add-device-model.md", "exec"), {})
    try:
        cfg = aimc.AnalogConfig(
            io=aimc.IOConfig(is_perfect=True),
            device=aimc.DeviceConfig(model="lognormal", params={"sigma": 0.1}),
        )
        assert cfg.device.params.sigma == 0.1
        assert aimc.AnalogConfig.from_json(cfg.to_json()) == cfg
        model = torch.nn.Sequential(torch.nn.Linear(8, 4))
        aimc.convert(model, cfg).eval()
        aimc.drift(aimc.program(model, seed=0), 3600.0, seed=1)
        with torch.no_grad():
            y = model(torch.ones(2, 8))
        assert torch.isfinite(y).all()
    finally:
        aimc.devices.DEVICE_MODELS.pop("lognormal", None)
        aimc.config.DEVICE_PARAMS.pop("lognormal", None)


def test_quickstart_example_runs(capsys):
    block = _python_blocks("quickstart.md")[0]
    exec(compile(block, "docs/quickstart.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("relative error" in line for line in lines)


def test_hwa_training_loop_example_runs(capsys):
    block = _python_blocks("howto/hwa-finetune.md")[0]
    exec(compile(block, "docs/howto/hwa-finetune.md", "exec"), {})
    assert "accuracy on the chip after a day" in capsys.readouterr().out


def test_lm_calibration_example_runs(capsys):
    block = _python_blocks("lm.md")[0]
    exec(compile(block, "docs/lm.md", "exec"), {})
    ranges, error = capsys.readouterr().out.splitlines()
    assert ranges.startswith("{'0': ") and "'2': " in ranges
    assert 0 < float(error.rsplit(" ", 1)[1]) < 0.5


def test_analog_lora_example_runs(capsys, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)  # it writes adapter/
    block = next(b for b in _python_blocks("finetune.md") if "attach_lora" in b)
    with torch.random.fork_rng():
        exec(compile(block, "docs/finetune.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([4, 16])"
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
