"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzipped).

The four files live under ``/usr/share/datasets/fashion-mnist`` (``VISIONSAE_FASHION_MNIST``
overrides the folder). ``load_fashion_mnist("train")`` returns uint8 images ``(N, 28, 28)``
and int64 labels ``(N,)`` as torch tensors; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from ..errors import InputNotFoundError, UsageError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX type code -> numpy dtype (big-endian where it matters)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def dataset_dir() -> Path:
    """The folder holding the Fashion-MNIST IDX files."""
    return Path(os.environ.get("VISIONSAE_FASHION_MNIST", DEFAULT_DIR))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UsageError(f"{path} is not an IDX file (expected two zero bytes, a type code and a rank)")
    type_code, rank = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise UsageError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    shape = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    array = np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=4 + 4 * rank)
    if array.size != int(np.prod(shape)):
        raise UsageError(f"{path}: header says shape {shape} but the file holds {array.size} values")
    return array.reshape(shape)


def load_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of the ``"train"`` or ``"test"`` split."""
    if split not in _FILES:
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    folder = dataset_dir()
    image_file, label_file = (folder / name for name in _FILES[split])
    for path in (image_file, label_file):
        if not path.exists():
            raise InputNotFoundError(
                f"{path} not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                "or point VISIONSAE_FASHION_MNIST at a folder with the four IDX .gz files"
            )
    images = torch.from_numpy(read_idx(image_file).copy())
    labels = torch.from_numpy(read_idx(label_file).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise UsageError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels")
    return images, labels
