"""Edge cases of the mapping scales (e3360e4) found by a review, each failing before its fix
(the output-bound mask kernel of 95c4d91, reviewed with it, gave none)."""

from __future__ import annotations

import torch
from torch import nn

import aimc
from aimc import presets


def _config() -> aimc.AnalogConfig:
    """``standard_hwa``'s learned column-wise output scales and column-wise remap, with perfect IO,
    no device model and no learned input range (a deterministic forward)."""
    cfg = presets.standard_hwa()
    return cfg.replace(
        mapping=cfg.mapping.replace(max_input_size=7, max_output_size=4),
        io=cfg.io.replace(is_perfect=True),
        device=cfg.device.replace(model="none", params=None),
        hwa=cfg.hwa.replace(learn_input_range=False),
    )


def test_old_checkpoint_loaded_with_assign_into_a_meta_model_gets_a_cpu_mapping_scale():
    """A checkpoint from before the mapping scales (``out_scale`` is the whole scale, no
    ``mapping_scale`` key) loaded with ``load_state_dict(..., strict=True, assign=True)`` into a
    model built on the meta device and converted there (the no-copy loading path; a checkpoint
    with ``mapping_scale`` loads and runs this way, output equal to 0.0).

    Wrong: ``AnalogLayerMixin._load_from_state_dict`` fills the missing key with
    ``torch.ones_like(self.mapping_scale)``, i.e. on the *layer's* device (meta), not the
    checkpoint's: with ``assign=True`` that meta tensor becomes the buffer. Measured: after the
    load ``weight``, ``bias`` and ``out_scale`` are on cpu, ``mapping_scale`` on meta, and the
    forward raises ``RuntimeError: Tensor on device meta is not on the expected device cpu!``.
    """
    cfg = _config()
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(13, 10))
    aimc.convert(src, cfg, seed=1)
    with torch.no_grad():
        src[0].out_scale.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    src.eval()
    x = torch.randn(3, 13, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = src(x)
    # a checkpoint of the same layer as the old aimc wrote it: the whole scale in out_scale
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("mapping_scale")}
    old["0.out_scale"] = src[0].effective_out_scale().detach().clone()

    with torch.device("meta"):
        dst = nn.Sequential(nn.Linear(13, 10))
    aimc.convert(dst, cfg, seed=1)
    dst.load_state_dict(old, strict=True, assign=True)
    assert dst[0].mapping_scale.device.type == "cpu", dst[0].mapping_scale.device
    dst.eval()
    with torch.no_grad():
        got = dst(x)
    torch.testing.assert_close(got, want)
