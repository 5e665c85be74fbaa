"""How much of the input gradient the output-bound mask drops on the shared MiniLM QA model.

One training forward and backward of the shared ``minilm-l6-squad`` model converted under
``bert_squad(0.0175)`` (4 copies of a 128-token passage), with ``hwa.output_bound_mask`` as given;
prints, per analog layer in backward order, the fraction of tile outputs whose input gradient
the mask leaves out (AIHWKIT's rule compares the tile output in the input's units under abs-max
noise management; ``saturated`` only outputs the ADC clipped). Offline, CPU, about a minute.

    python benchmarks/bound_mask_fraction.py [--mask aihwkit|saturated]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import aimc
from aimc import mvm

MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "minilm-l6-squad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", default="aihwkit", choices=["aihwkit", "saturated"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["AIMC_MASK_NATIVE"] = "0"  # the tensor code builds the masks counted below
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    model = AutoModelForQuestionAnswering.from_pretrained(str(MODEL))
    cfg = aimc.presets.bert_squad(0.0175)
    cfg = cfg.replace(hwa=cfg.hwa.replace(output_bound_mask=args.mask))
    aimc.convert(model, cfg, seed=0)
    model.train()
    text = "The Normans were the people who in the 10th and 11th centuries gave their name to "
    text = (text + "Normandy, a region in France. ") * 3
    enc = tok([text] * 4, return_tensors="pt", truncation=True, max_length=128)
    seen: list[float] = []
    real = mvm.TileOutputs.bound_mask

    def spy(self, unit, bound):
        m = real(self, unit, bound)
        seen.append(0.0 if m is None else float(m.float().mean()))
        return m

    mvm.TileOutputs.bound_mask = spy
    out = model(**enc)
    (out.start_logits.sum() + out.end_logits.sum()).backward()
    print(f"mask {args.mask}: {len(seen)} layers, masked fraction mean {sum(seen) / len(seen):.3f}")
    print("per layer, backward order (the QA head first):", [round(v, 3) for v in seen])


if __name__ == "__main__":
    main()
