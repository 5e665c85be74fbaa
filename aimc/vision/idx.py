"""Reader for the IDX files of MNIST and Fashion-MNIST (LeCun's format, optionally gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor

_DTYPES = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}
_SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> Tensor:
    """One IDX file (``.gz`` or raw) as a tensor of its stored dtype and shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"--data: {path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = 1
    for d in shape:
        count *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) - offset != count * itemsize:
        raise ValueError(
            f"--data: {path}: {len(raw) - offset} data bytes, expected "
            f"{count * itemsize} for shape {shape}"
        )
    data = torch.frombuffer(bytearray(raw[offset:]), dtype=dtype)
    if itemsize > 1:
        data = data.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype)
    return data.reshape(shape)


def load_idx_split(directory: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of ``train`` or ``test`` from a directory of the four IDX files
    (``train-images-idx3-ubyte[.gz]`` etc.): images float32 ``(N, 1, 28, 28)`` in [0, 1],
    labels int64."""
    if split not in _SPLITS:
        raise ValueError(f"split: got {split!r}; allowed: 'train' or 'test'")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data: directory not found: {directory}")
    prefix = _SPLITS[split]

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
            if (directory / name).is_file():
                return directory / name
        raise FileNotFoundError(f"--data: {directory} has no {prefix}-{kind}[.gz]")

    images = read_idx(find("images-idx3-ubyte"))
    labels = read_idx(find("labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"--data: {directory}: {split} images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)} do not match"
        )
    return images.unsqueeze(1).float().div_(255.0), labels.long()
