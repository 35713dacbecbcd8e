import gzip
import struct

import numpy as np
import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.data import fashion_mnist as fm


def test_real_files_shapes_and_labels():
    x, y = fm.load_split("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10  # the test set is balanced


def test_train_val_split_is_reproducible_and_disjoint():
    tr, va = fm.train_val_split(60000, 5000, seed=3)
    tr2, va2 = fm.train_val_split(60000, 5000, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 5000 and len(tr) == 55000
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert not torch.equal(va, fm.train_val_split(60000, 5000, seed=4)[1])


def _write_idx(path, arr):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_read_idx_round_trip_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(fm.read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "t.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 2]) + struct.pack(">2I", 5, 5) + b"\x00" * 3)
    with pytest.raises(NetslimError, match="truncated"):
        fm.read_idx(tmp_path / "t.gz")
    with gzip.open(tmp_path / "m.gz", "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(NetslimError, match="bad magic"):
        fm.read_idx(tmp_path / "m.gz")


def test_missing_data_dir_message(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSLIM_DATA", str(tmp_path))
    with pytest.raises(NetslimError, match="dataset-fashion-mnist.*NETSLIM_DATA"):
        fm.load_split("train")


def test_augment_keeps_shape_and_content_statistics():
    x = fm.normalize(fm.load_split("test")[0][:64])
    out = fm.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # a crop shifted by at most 2 px: every output row exists in the (flipped) padded input
    same = fm.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert not torch.equal(out, x)
