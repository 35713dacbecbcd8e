"""Artifacts against corruption and crafted descriptions (issue 23): checksums, schema, bounds.

The invariant for every damaged file: ``netslim.load`` raises NetslimError or returns a model
whose state dict is bit-identical to the original - never another exception type, a crash
or silently different weights. Loads that reach native code (the sparse CSR kernel) run in a
subprocess, so that a segfault fails a test instead of killing pytest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import netslim
from netslim.core import serialize
from netslim.core.artifact_schema import INTEGRITY_KEY, integrity_record
from netslim.core.errors import NetslimError
from netslim.core.masks import make_permanent
from netslim.prune import SparseLinear, magnitude_prune
from netslim.quantize import dynamic_int8
from netslim.quantize.weight_only import QuantizedLinear, quantize_weights

KINDS = ("lenet300", "sparse", "int4", "dyn8")
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NETSLIM_PROGRESS": "0"}


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = netslim.build_model("lenet300").eval()
    if kind == "sparse":  # the demo recipe's steps: global magnitude 90 %, masks baked, CSR layers
        magnitude_prune(m, sparsity=0.9, scope="global")
        make_permanent(m)
        m.fc1 = SparseLinear.from_dense(m.fc1, "sparse")
        m.fc2 = SparseLinear.from_dense(m.fc2, "sparse")
        m.fc3 = SparseLinear.from_dense(m.fc3, "dense")
    elif kind == "int4":
        quantize_weights(m, bits=4, group_size=None)
    elif kind == "dyn8":
        dynamic_int8(m)
    return m


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("artifacts")
    return {k: netslim.save(_model(k), d / f"{k}.safetensors") for k in KINDS}


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _craft(src: Path, dst: Path, mutate_desc=None, mutate_tensors=None, checksums: bool = True) -> Path:
    """A file with a changed description / tensors and *valid* checksums: only the structural
    checks can reject it (what a crafted file, not a corrupted one, looks like)."""
    desc = serialize.read_description(src)
    tensors = load_file(str(src))
    if mutate_desc:
        mutate_desc(desc)
    if mutate_tensors:
        mutate_tensors(tensors)
    meta = {"netslim": json.dumps({**desc, "checksums": "sha256"} if checksums else desc)}
    if checksums:
        meta[INTEGRITY_KEY] = integrity_record(meta["netslim"], tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _run_child(code: str, *args: str, stdin: str = "", timeout: int = 120) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True, env=CHILD_ENV, timeout=timeout
    )
    assert r.returncode == 0, f"child died with rc {r.returncode} (a crash?): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact_and_carries_checksums(artifacts, kind):
    path = artifacts[kind]
    from netslim.core.artifact_schema import read_header, read_integrity

    header = read_header(path)
    assert read_integrity(header) is not None and "checksums" not in serialize.read_description(path)
    for verify in (True, False):
        assert _same_state(netslim.load(path, verify=verify), _model(kind))


def test_file_without_checksums_loads_with_one_warning(artifacts, tmp_path, monkeypatch, caplog):
    old = _craft(artifacts["lenet300"], tmp_path / "old.safetensors", checksums=False)
    monkeypatch.setattr(serialize, "_warned_unverified", False)
    with caplog.at_level(logging.WARNING, logger="netslim.core.serialize"):
        for _ in range(2):
            assert _same_state(netslim.load(old), _model("lenet300"))
    warnings = [r for r in caplog.records if "no checksums" in r.getMessage()]
    assert len(warnings) == 1 and "old.safetensors" in warnings[0].getMessage()


def test_verify_false_skips_only_the_hashes(artifacts, tmp_path):
    from netslim.core.artifact_schema import read_header

    header = read_header(artifacts["lenet300"])
    e = header.tensors["fc2.weight"]
    data = bytearray(artifacts["lenet300"].read_bytes())
    data[header.data_start + e.begin + 3] ^= 0x40  # one byte of fc2.weight[0, 0]
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(NetslimError, match=r"flip\.safetensors.*checksum mismatch in tensor 'fc2\.weight'"):
        netslim.load(bad)
    loaded = netslim.load(bad, verify=False)  # documented: trusted files only
    ref = _model("lenet300")
    assert not torch.equal(loaded.fc2.weight, ref.fc2.weight) and torch.equal(loaded.fc1.weight, ref.fc1.weight)


@pytest.mark.parametrize("threads", [1, 4])
def test_tensors_hash_the_same_in_parallel(artifacts, tmp_path, threads):
    from netslim.core.artifact_schema import parse_description, read_header, read_integrity, verify_integrity

    header = read_header(artifacts["dyn8"])
    text, _ = parse_description(header)
    verify_integrity(header, read_integrity(header), text, threads)
    data = bytearray(artifacts["dyn8"].read_bytes())
    data[-1] ^= 1  # the last byte of the data: the last tensor by offset
    bad = tmp_path / "last.safetensors"
    bad.write_bytes(bytes(data))
    header = read_header(bad)
    with pytest.raises(NetslimError, match="checksum mismatch in tensor"):
        verify_integrity(header, read_integrity(header), text, threads)


# ------------------------------------------------------------------ random flips and cuts
def _corrupt(data: bytes, op: str, pos: int, xor: int) -> bytes:
    header_end = 8 + int.from_bytes(data[:8], "little")
    if op == "cut":
        return data[: pos % len(data)]
    b = bytearray(data)
    b[pos % (header_end if op == "flip_header" else len(b))] ^= xor
    return bytes(b)


@pytest.mark.parametrize("kind", ["lenet300", "int4", "dyn8"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["flip_header", "flip_any", "cut"]), pos=st.integers(0, 2**31), xor=st.integers(1, 255))
def test_flipped_or_cut_artifact_is_rejected_or_identical(artifacts, tmp_path, kind, op, pos, xor):
    bad = tmp_path / f"{kind}.bad.safetensors"
    bad.write_bytes(_corrupt(artifacts[kind].read_bytes(), op, pos, xor))
    try:
        loaded = netslim.load(bad)
    except NetslimError as e:
        assert str(bad) in str(e)
        return
    assert _same_state(loaded, _model(kind)), f"{op} at {pos} (xor {xor}) loaded different weights"


_LOAD_MANY = r"""
import json, logging, sys, torch, netslim
from netslim.core.errors import NetslimError
logging.disable(logging.WARNING)
ref = netslim.load(sys.argv[1]).state_dict()
x = torch.randn(64, 1, 28, 28)
out = {"same": 0, "different": 0, "rejected": 0, "other": []}
for path, verify in json.loads(sys.stdin.read()):
    try:
        m = netslim.load(path, verify=verify)
        with torch.inference_mode():
            m(x[:1]), m(x)  # batch 1 (SpMV) and 64 (SpMM) kernels on what was loaded
        sd = m.state_dict()
        same = sd.keys() == ref.keys() and all(sd[k].dtype == ref[k].dtype and torch.equal(sd[k], ref[k]) for k in ref)
        if not same and verify:
            out["other"].append(f"{path}: loaded different weights with verify=True")
        out["same" if same else "different"] += 1
    except NetslimError:
        out["rejected"] += 1
    except Exception as e:
        out["other"].append(f"{path}: {type(e).__name__}: {str(e)[:200]}")
print(json.dumps(out))
"""


def test_corrupted_sparse_artifact_never_crashes(artifacts, tmp_path):
    """Flips and cuts of a CSR artifact, loaded and run (kernels at batch 1 and 64) in a child
    process; with verify=False too, where only the index checks stand between a flipped index
    byte and the kernel."""
    data, rng = artifacts["sparse"].read_bytes(), random.Random(23)
    jobs = []
    for i in range(240):
        op = ("flip_header", "flip_any", "flip_any", "cut")[i % 4]
        path = tmp_path / f"s{i}.safetensors"
        path.write_bytes(_corrupt(data, op, rng.randrange(2**31), rng.randrange(1, 256)))
        jobs.append((str(path), i % 2 == 0))
    out = _run_child(_LOAD_MANY, str(artifacts["sparse"]), stdin=json.dumps(jobs))
    assert out["other"] == []
    assert out["rejected"] > 100 and out["same"] + out["different"] + out["rejected"] == len(jobs)


# ---------------------------------------------------------------- crafted descriptions
def _set(path: str, value):
    def mutate(d):
        keys = path.split("/")
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return mutate


def _nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


@pytest.mark.parametrize(
    "mutate, field",
    [
        (_set("aliases", {"fc9.weight": "nope"}), "aliases"),
        (_set("masks", ["fc1.nothing"]), "masks[0]"),
        (_set("masks", ["fc1.weight", "fc1.weight"]), "masks"),
        (_set("modules", {"fc1": {"type": "torch.nn.modules.linear.Linear", "kwargs": {"in_features": "784"}}}), "fc1"),
        (_set("modules", {"fc1": {"type": "os.system", "kwargs": {}}}), "fc1"),
        (_set("modules", {"fc1": {"type": "torch.nn.modules.linear.Linear"}}), "modules.fc1"),
        (_set("arch/kind", ["zoo"]), "arch"),
        (_set("arch/kwargs", {"num_classes": 10**15}), "arch.kwargs.num_classes"),
        (_set("info", {"a": _nested(70)}), "info.a"),
        (_set("version", "1"), "version"),
        (_set("format", "other"), "format"),
    ],
)
def test_crafted_description_is_a_netslim_error_naming_file_and_field(artifacts, tmp_path, mutate, field):
    bad = _craft(artifacts["lenet300"], tmp_path / "crafted.safetensors", mutate)
    with pytest.raises(NetslimError) as e:
        netslim.load(bad)
    assert str(bad) in str(e.value) and field in str(e.value)


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in a parser
        b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}',
        b'{"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}',
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "v": {"dtype": "F32", "shape": [1], '
        b'"data_offsets": [4, 8]}}',
        b'{"__metadata__": {"netslim": 5}}',
        b'{"__metadata__": {"netslim": "{\\"format\\": \\"netslim\\""}}',  # description cut short
        b"\xff\xfe{}",
        b"{" + b'"' * 5000,
    ],
)
def test_corrupt_safetensors_header_is_one_netslim_error(tmp_path, header):
    bad = tmp_path / "h.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(NetslimError, match=str(bad)):
        netslim.load(bad)


_MEMORY = r"""
import json, resource, sys, time, netslim
from netslim.core.errors import NetslimError
from netslim.core.registry import load_sources
load_sources()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"results": [], "seconds": 0.0}
for path in sys.argv[1:]:
    t = time.perf_counter()
    try:
        netslim.load(path)
        out["results"].append("loaded")
    except NetslimError as e:
        out["results"].append("NetslimError: " + str(e)[:300])
    out["seconds"] = max(out["seconds"], time.perf_counter() - t)
out["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def test_huge_sizes_in_a_small_file_fail_fast_without_allocating(artifacts, tmp_path):
    lin = "torch.nn.modules.linear.Linear"
    crafted = [
        # 1.25 GB (allocatable, so a missing check would show in the peak memory) and 4 TB
        _set("modules", {"fc1": {"type": lin, "kwargs": {"in_features": 784, "out_features": 400_000}}}),
        _set("modules", {"fc1": {"type": lin, "kwargs": {"in_features": 10**6, "out_features": 10**6}}}),
        _set(
            "modules",
            {
                "fc1": {
                    "type": "netslim.prune.sparse.SparseLinear",
                    "kwargs": {"in_features": 784, "out_features": 300, "nnz": 200_000_000},
                }
            },
        ),
        _set("arch/kwargs", {"in_features": 784 * 500}),
    ]
    paths = [str(_craft(artifacts["lenet300"], tmp_path / f"big{i}.safetensors", m)) for i, m in enumerate(crafted)]
    resnet = _craft(
        netslim.save(netslim.build_model("resnet20"), tmp_path / "r.safetensors"),
        tmp_path / "deep.safetensors",
        _set("arch/kwargs", {"depth": 6 * 2_000_000 + 2}),
    )
    out = _run_child(_MEMORY, *paths, str(resnet))
    assert all(r.startswith("NetslimError") for r in out["results"]), out["results"]
    assert out["grew_mb"] < 200 and out["seconds"] < 10, out


# ---------------------------------------------------------------------- layer checks
@pytest.mark.parametrize(
    "field, change",
    [
        ("fc1.col_idx", lambda t: t.index_fill_(0, torch.tensor([5]), 999)),  # column >= in_features
        ("fc1.col_idx", lambda t: t.index_fill_(0, torch.tensor([5]), -1)),  # 65535 read unsigned
        ("fc1.crow", lambda t: t.index_fill_(0, torch.tensor([7]), 10**6)),  # beyond nnz
        ("fc1.crow", lambda t: t.index_fill_(0, torch.tensor([7]), 0)),  # decreasing
        ("fc2.col_idx", lambda t: t.copy_(t.flip(0))),  # unsorted rows
    ],
)
def test_sparse_index_arrays_are_checked_on_load(artifacts, tmp_path, field, change):
    bad = _craft(artifacts["sparse"], tmp_path / "idx.safetensors", mutate_tensors=lambda ts: change(ts[field]))
    layer, _, name = field.partition(".")
    with pytest.raises(NetslimError, match=rf"idx\.safetensors: {layer}: field '{name}'"):
        netslim.load(bad)


_KERNEL = r"""
import json, torch
from netslim.core.errors import NetslimError
from netslim.prune import kernels
crow = torch.tensor([0, 2, 3], dtype=torch.int32)
col = torch.tensor([1, 3, 0], dtype=torch.int16)
vals = torch.ones(3)
bad = {
    "column": (crow, torch.tensor([1, 30000, 0], dtype=torch.int16)),
    "negative column": (crow, torch.tensor([1, -5, 0], dtype=torch.int32)),
    "row pointer": (torch.tensor([0, 2, 1 << 30], dtype=torch.int32), col),
    "decreasing": (torch.tensor([0, 3, 2], dtype=torch.int32), col),
    "start": (torch.tensor([-4, 2, 3], dtype=torch.int32), col),
}
out = {"ok": kernels.kernel_available()}
for name, (c, k) in bad.items():
    for batch in (1, 64):
        x = torch.randn(batch, 4)
        for how in ("csr_matmul", "prepared"):
            try:
                if how == "prepared":
                    kernels.prepare_csr(c, k, vals, (2, 4))(x)
                else:
                    kernels.csr_matmul(x, c, k, vals, (2, 4))
                out[f"{name}/{batch}/{how}"] = "computed"
            except NetslimError:
                out[f"{name}/{batch}/{how}"] = "NetslimError"
print(json.dumps(out))
"""


def test_csr_kernel_refuses_bad_indices_instead_of_reading_out_of_bounds():
    out = _run_child(_KERNEL)
    if not out.pop("ok"):
        pytest.skip("no C compiler: the kernel is not built")
    assert set(out.values()) == {"NetslimError"}, out


def test_packed_layers_check_what_they_load():
    q = QuantizedLinear(64, 8, bits=4, group_size=32)
    state = q.state_dict()
    with pytest.raises(NetslimError, match=r"field 'weight_packed' must be torch\.uint8"):
        QuantizedLinear(64, 8, bits=4, group_size=32).load_state_dict(
            {**state, "weight_packed": state["weight_packed"].float()}, assign=True
        )

    from netslim.quantize.int8_modules import Int8Linear

    int8 = Int8Linear(16, 4)
    state = int8.state_dict()
    with pytest.raises(NetslimError, match="zero points"):
        Int8Linear(16, 4).load_state_dict({**state, "act_qparams": torch.tensor([0.1, 300.0, 0.1, 0.0])})
    with pytest.raises(NetslimError, match="weight_scale"):
        Int8Linear(16, 4).load_state_dict({**state, "weight_scale": torch.zeros(4)})
    with pytest.raises(NetslimError, match=r"field 'weight_int8' must be torch\.int8"):
        Int8Linear(16, 4).load_state_dict({**state, "weight_int8": state["weight_int8"].to(torch.uint8)}, assign=True)


def test_packed_artifact_with_a_wrong_code_shape_is_rejected_before_building(artifacts, tmp_path):
    def shrink(ts):
        ts["fc1.weight_packed"] = ts["fc1.weight_packed"][:, :-1].contiguous()

    bad = _craft(artifacts["int4"], tmp_path / "int4.safetensors", mutate_tensors=shrink)
    with pytest.raises(NetslimError, match=r"int4\.safetensors does not match its architecture.*fc1\.weight_packed"):
        netslim.load(bad)
