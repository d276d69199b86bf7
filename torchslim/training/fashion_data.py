"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (gzipped idx files under
/usr/share/datasets/fashion-mnist, or $TORCHSLIM_FASHION_MNIST_DIR), normalized."""
from __future__ import annotations

import gzip
import math
import os

import numpy as np
import torch

from ..errors import SlimError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (of pixels / 255)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_FILES = {True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

def data_dir() -> str:
    """Where the idx files live: $TORCHSLIM_FASHION_MNIST_DIR, else the Debian package's folder."""
    return os.environ.get("TORCHSLIM_FASHION_MNIST_DIR") or DEFAULT_DIR


def _read_idx(path: str, magic: int) -> np.ndarray:
    """Read one gzipped idx file (big-endian header: magic, then one uint32 per dimension)."""
    if not os.path.isfile(path):
        raise SlimError(f"Fashion-MNIST file '{path}' is missing",
                        "apt-get install -y dataset-fashion-mnist (or set TORCHSLIM_FASHION_MNIST_DIR)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise SlimError(f"'{path}' is not an idx file", "reinstall dataset-fashion-mnist")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise SlimError(f"'{path}' is truncated", "reinstall dataset-fashion-mnist")
    return data.reshape(dims)


def load_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training (60000) or test (10000) split: float32 images [N,1,28,28] normalized, int64 labels."""
    folder = data_dir()
    images_file, labels_file = _FILES[train]
    images = _read_idx(os.path.join(folder, images_file), 0x0803)
    labels = _read_idx(os.path.join(folder, labels_file), 0x0801)
    if len(images) != len(labels):
        raise SlimError(f"Fashion-MNIST in '{folder}' has {len(images)} images but {len(labels)} labels",
                        "reinstall dataset-fashion-mnist")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(MEAN).div_(STD)
    return x.unsqueeze(1).contiguous(), torch.from_numpy(labels.astype(np.int64))
