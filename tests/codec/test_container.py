"""The .nsz container: bit-exact round trips, corruption and version handling, inspect."""

import zlib

import pytest
import torch

import netslim
from netslim.codec import (
    MAGIC,
    ShareConfig,
    SharedConv2d,
    SharedLinear,
    cluster_weights,
    encode_model,
    export_nsz,
    model_from_bytes,
    nsz_breakdown,
    round_codebooks,
)
from netslim.codec.container import VERSION
from netslim.codec.inspect import breakdown_table
from netslim.core.errors import NetslimError
from netslim.core.export import exporter
from netslim.core.masks import set_mask
from netslim.core.serialize import read_info
from netslim.models import build_model
from netslim.models.sources import open_model
from netslim.prune import magnitude_prune


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        if not k.endswith("codebook"):  # unused centroids are not stored
            assert torch.equal(sa[k], sb[k]), k
    for (n, m), (_, m2) in zip(a.named_modules(), b.named_modules()):
        if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor):
            assert torch.equal(m.weight, m2.weight), n


@pytest.fixture
def shared_cnn():
    torch.manual_seed(0)
    m = build_model("lenet5")
    magnitude_prune(m, sparsity=0.85, exclude="conv1")
    cluster_weights(
        m, ShareConfig(bits={"conv1": 3, "conv2": 4, "fc1": 3, "fc2": 5}, algorithm="lloyd")
    )  # conv1: dense
    round_codebooks(m)
    return m.eval()


def test_round_trip_is_bit_exact_for_shared_sparse_and_dense_tensors(shared_cnn, tmp_path):
    path = export_nsz(shared_cnn, tmp_path / "m.nsz", {"model": "lenet5", "dataset": "fashion-mnist"})
    loaded = netslim.load(path)
    assert isinstance(loaded.conv2, SharedConv2d) and isinstance(loaded.fc2, SharedLinear)
    _same_tensors(shared_cnn, loaded)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), shared_cnn(x))
    assert exporter("nsz")[1] == ".nsz"


def test_info_block_is_read_through_the_format_registered_by_its_magic(shared_cnn, tmp_path):
    """core.serialize.read_info finds the codec's reader by the file's first bytes, so opening an
    .nsz (netslim.models.sources) needs no import of the codec; a safetensors artifact's info
    comes from its description."""
    info = {"model": "lenet5", "dataset": "fashion-mnist"}
    nsz = export_nsz(shared_cnn, tmp_path / "m.nsz", info)
    assert read_info(nsz) == info
    opened = open_model(str(nsz))
    assert (opened.name, opened.dataset, opened.info) == ("lenet5", "fashion-mnist", info)
    dense = netslim.save(build_model("lenet300"), tmp_path / "d.safetensors", {"model": "lenet300"})
    assert read_info(dense) == {"model": "lenet300"}


def test_masked_unshared_model_is_stored_sparse_and_loads_plain(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet20").eval()
    for conv in (m.layer1[0].conv1, m.layer3[2].conv2, m.fc):
        set_mask(conv, torch.rand_like(conv.weight) < 0.1)
    data, stats = encode_model(m)
    kinds = {s.name: s.kind for s in stats}
    assert kinds["layer1.0.conv1.weight"] == "sparse" and kinds["layer1.0.bn1.running_var"] == "raw"
    loaded = model_from_bytes(data)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), m(x))
    assert stats[[s.name for s in stats].index("layer3.2.conv2.weight")].record_bytes < 0.2 * 4 * 64 * 64 * 9


def test_breakdown_reports_bits_per_layer(shared_cnn, tmp_path):
    path = export_nsz(shared_cnn, tmp_path / "m.nsz")
    rows = {r["name"]: r for r in nsz_breakdown(path)}
    fc1 = rows["fc1"]
    assert (
        fc1["kind"] == "shared" and fc1["clusters"] == 8 and fc1["nonzero"] == int((shared_cnn.fc1.weight != 0).sum())
    )
    assert fc1["weight_entropy_bits"] <= fc1["weight_bits"] <= fc1["weight_entropy_bits"] + fc1["nonzero"]
    assert 0 < fc1["huffman_saving"] < 1 and fc1["index_bits"] > 0
    assert rows["conv1"]["index_bits"] == 0  # dense: no positions stored
    assert sum(r["record_bytes"] for r in rows.values()) < path.stat().st_size


def test_inspect_table_totals_match_the_breakdown(shared_cnn, tmp_path):
    path = export_nsz(shared_cnn, tmp_path / "m.nsz")
    header, rows = breakdown_table(path)
    assert all(len(r) == len(header) for r in rows)
    records = nsz_breakdown(path)
    assert [r[0] for r in rows[:-1]] == [r["name"] for r in records] and rows[-1][0] == "(total)"
    col = header.index("weight bits")
    assert rows[-1][col] == f"{sum(r['weight_bits'] for r in records):,}"
    assert rows[-1][header.index("record B")].endswith(f"of {path.stat().st_size:,} file")


@pytest.fixture(scope="module")
def small_file():
    """A ~2 KB .nsz (LeNet-300-100 at 99.95 % sparsity, 1-bit sharing)."""
    torch.manual_seed(0)
    m = build_model("lenet300")
    magnitude_prune(m, sparsity=0.9995)
    cluster_weights(m, ShareConfig(bits=1))
    round_codebooks(m)
    data, _ = encode_model(m.eval())
    return data


def test_every_flipped_byte_is_rejected(small_file):
    assert len(small_file) < 4000
    for i in range(len(small_file)):
        bad = bytearray(small_file)
        bad[i] ^= 0xFF if i % 2 else 0x01
        with pytest.raises(NetslimError):
            model_from_bytes(bytes(bad))


def test_every_cut_is_rejected(small_file):
    for n in range(len(small_file)):
        with pytest.raises(NetslimError):
            model_from_bytes(small_file[:n])
    with pytest.raises(NetslimError):
        model_from_bytes(small_file + b"\0")


def _recrc(data: bytes) -> bytes:
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")


def test_parser_survives_corruption_behind_a_valid_file_checksum(small_file):
    """Even with the file CRC recomputed, the record CRCs and bounds checks reject it."""
    for i in range(len(MAGIC) + 1, len(small_file) - 4, 11):
        bad = bytearray(small_file)
        bad[i] ^= 0x10
        with pytest.raises(NetslimError):
            model_from_bytes(_recrc(bytes(bad)))


def test_version_mismatch_is_explained(small_file, tmp_path):
    newer = bytearray(small_file)
    newer[len(MAGIC)] = VERSION + 1
    path = tmp_path / "new.nsz"
    path.write_bytes(_recrc(bytes(newer)))
    with pytest.raises(NetslimError, match=f"version {VERSION + 1}; this netslim reads version {VERSION}"):
        netslim.load(path)


def test_not_an_nsz_file(tmp_path):
    with pytest.raises(NetslimError, match="bad magic"):
        model_from_bytes(b"hello world, not a model")
