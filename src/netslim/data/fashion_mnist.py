"""Fashion-MNIST from the IDX .gz files of Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from netslim.core.errors import NetslimError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Mean/std of the training images, used to normalise inputs.
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def data_dir() -> Path:
    return Path(os.environ.get("NETSLIM_DATA", DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip'd): magic (0,0,dtype,ndim), big-endian dims, data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NetslimError(
            f"Fashion-MNIST file {str(path)!r} not found. Install Debian package dataset-fashion-mnist "
            "(`make setup` as root does it) or set NETSLIM_DATA to a folder with the IDX .gz files."
        ) from None
    except (OSError, EOFError) as e:
        raise NetslimError(f"{path} is not a readable gzip'd IDX file: {e}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise NetslimError(f"{path} is not an unsigned-byte IDX file (bad magic).")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise NetslimError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}.")
    return data.reshape(dims)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,) for split 'train' or 'test'."""
    if split not in FILES:
        raise NetslimError(f"Fashion-MNIST split must be one of {', '.join(FILES)}; got {split!r}.")
    img, lab = (data_dir() / f for f in FILES[split])
    x, y = read_idx(img), read_idx(lab)
    if len(x) != len(y):
        raise NetslimError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels.")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), standardised."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def train_val_split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible index split of the official training set."""
    if not 0 < val_size < n:
        raise NetslimError(f"The 'val_size' parameter must be in (0, {n}); got {val_size}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop with zero padding, vectorised over the batch."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=float(-MEAN / STD))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, x.shape[1], h, w)
    return out.gather(3, cols)
