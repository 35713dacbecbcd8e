"""Sparse low-bit storage of integer weight codes: an index of the kept positions plus only their codes.

A quantized layer's weight is a matrix of integer codes; one code per position stands for
the weight 0 (the *fill*: the signed code 0 of a symmetric scheme, the group's zero point of
an asymmetric one). A pruned and quantized layer holds the fill code at every pruned
position (masks survive quantization: :mod:`netslim.quantize.sparse_lowbit`), so storing
only the other codes and where they are loses nothing. Two index layouts:

* ``mask``: one bit per position (row-major over the weight as stored, least significant
  bit first), ``ceil(numel / 8)`` bytes; the kept codes follow in the same order.
* ``gaps``: the positions as Huffman-coded gaps between kept positions (the compact index
  coding of :mod:`netslim.codec.indices`: escape symbols for long runs, the width and the
  row- or column-major scan chosen per layer); the kept codes follow in scan order. Below
  ~30 % density it takes fewer bytes than a bitmask (about 0.6 bit per position at 15 %);
  decoding it costs a Huffman pass at load, once.
* ``nm`` (n, m): the positions run in groups of ``m`` consecutive inputs (for a convolution:
  ``m`` consecutive input channels at one kernel position, :func:`netslim.prune.nm.to_groups`)
  and every group has exactly ``n`` slots; each slot stores its position in the group in
  ``ceil(log2 m)`` bits (2 bits for 2:4), strictly increasing within the group; a group with
  fewer than ``n`` non-fill codes fills its spare slots with the fill code (lossless). The
  kept codes are stored slot by slot.

Codes are stored unsigned (a signed ``b``-bit code plus ``2^(b-1)``) and packed as one bit
stream of ``bits`` per code (:func:`netslim.quantize.packing.pack`), zero-padded to whole
groups of 8 codes. ``decode(encode(codes)) == codes`` bit for bit, whatever the codes.

:func:`choose_layout` picks the bitmask or the gap coding, whichever is smaller, or an N:M
layout every group fits when that costs at most 10 % more (the pattern a kernel can rely on),
or None when the dense codes are no larger. :func:`check_stored`
validates stored tensors before anything decodes them: byte counts, the bitmask's
population count against the declared number of kept codes, N:M slot positions in range and
increasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from netslim.core.errors import NetslimError

from .packing import pack, unpack

NM_GROUPS = (4, 8, 16)  # m values tried by choose_layout (index widths 2, 3, 4 bits)
LAYOUTS = ("mask", "gaps", "nm")
GAPS_BELOW = 0.35  # densities from which the gap coding is tried (above it a bitmask is smaller)


@dataclass(frozen=True)
class Layout:
    kind: str  # "mask", "gaps" or "nm"
    n: int = 0  # nm: slots per group
    m: int = 0  # nm: positions per group
    size: int = 0  # gaps: bytes of the coded index

    @property
    def index_bits(self) -> int:
        return max(2, math.ceil(math.log2(self.m))) if self.kind == "nm" else 1

    def describe(self) -> str:
        return {"nm": f"{self.n}:{self.m}", "gaps": "coded gaps"}.get(self.kind, "bitmask")


def check_layout(kind: str, n: int, m: int, owner: str, size: int = 0) -> Layout:
    """A valid :class:`Layout` from constructor arguments (e.g. read from a file)."""
    if kind not in LAYOUTS:
        raise NetslimError(f"The 'layout' parameter of {owner} must be one of {', '.join(LAYOUTS)}; got {kind!r}.")
    if kind == "nm" and not (m in NM_GROUPS and isinstance(n, int) and 1 <= n < m):
        raise NetslimError(
            f"The 'n'/'m' parameters of {owner} must satisfy m in {NM_GROUPS} and 1 <= n < m; got n={n!r}, m={m!r}."
        )
    if kind == "gaps" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise NetslimError(
            f"The 'index_bytes' parameter of {owner} must be a positive int for layout 'gaps'; got {size!r}."
        )
    return {"nm": Layout("nm", n, m), "gaps": Layout("gaps", size=size)}.get(kind, Layout("mask"))


def _stream_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` packed as one stream, padded to whole groups of 8."""
    return -(-count // 8) * bits


def slots(layout: Layout, shape: tuple[int, ...], nnz: int) -> int:
    """Stored codes: the kept ones (mask) or n per group (N:M)."""
    return math.prod(shape) // layout.m * layout.n if layout.kind == "nm" else nnz


def index_bytes(layout: Layout, shape: tuple[int, ...], nnz: int) -> int:
    if layout.kind == "gaps":
        return layout.size
    numel = math.prod(shape)
    return -(-numel // 8) if layout.kind == "mask" else _stream_bytes(slots(layout, shape, nnz), layout.index_bits)


def value_bytes(layout: Layout, shape: tuple[int, ...], nnz: int, bits: int) -> int:
    return _stream_bytes(slots(layout, shape, nnz), bits)


def stored_bytes(layout: Layout, shape: tuple[int, ...], nnz: int, bits: int) -> int:
    return index_bytes(layout, shape, nnz) + value_bytes(layout, shape, nnz, bits)


# ------------------------------------------------------------------------ N:M grouping
def group_view(t: torch.Tensor, m: int) -> torch.Tensor:
    """(out, in[, k...]) -> (groups, m): runs of m along the input dim (channels for a conv)."""
    if t.dim() > 2:
        t = t.movedim(1, -1)
    return t.reshape(-1, m)


def ungroup(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) > 2:
        return g.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
    return g.reshape(shape)


def nm_fits(shape: tuple[int, ...], m: int) -> bool:
    return len(shape) >= 2 and shape[1] % m == 0


NM_PREFERENCE = 1.1  # an N:M layout within 10 % of the bitmask's bytes is kept: its pattern is a guarantee


def choose_layout(keep: torch.Tensor, bits: int, dense_bytes: int, gaps: bool = True) -> Layout | None:
    """The index layout for the kept positions ``keep`` (bool, the weight's shape): the smallest
    N:M layout every group fits when it takes at most :data:`NM_PREFERENCE` x the bytes of the
    bitmask or gap coding (a 2:4 layer whose kept weights partly round to code 0 stays 2:4: fixed
    slots per row, the layout an N:M kernel reads), else the smaller of those two; None unless
    fewer bytes than ``dense_bytes``. ``gaps``: consider the gap coding (a layer that decodes its
    codes on every call - weight-only - keeps to the bitmask's cheap decode)."""
    shape, nnz = tuple(keep.shape), int(keep.sum())
    mask = Layout("mask")
    best, cost = mask, stored_bytes(mask, shape, nnz, bits)
    if gaps and keep.numel() and nnz / keep.numel() < GAPS_BELOW:
        gaps = Layout("gaps", size=len(_gap_index(keep)[0]))
        if stored_bytes(gaps, shape, nnz, bits) < cost:
            best, cost = gaps, stored_bytes(gaps, shape, nnz, bits)
    nm_best = None
    for m in NM_GROUPS:
        if not nm_fits(shape, m) or not keep.numel():
            continue
        n = max(1, int(group_view(keep, m).sum(1).max()))
        if n < m:
            layout = Layout("nm", n, m)
            c = stored_bytes(layout, shape, nnz, bits)
            if nm_best is None or c < nm_best[0]:
                nm_best = (c, layout)
    if nm_best is not None and nm_best[0] <= NM_PREFERENCE * cost:
        best, cost = nm_best[1], nm_best[0]
    return best if cost < dense_bytes else None


# ------------------------------------------------------------------------- gap coding
def _gap_index(keep: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """(coded index bytes, flat row-major positions in the order their codes are stored)."""
    import numpy as np

    from netslim.codec.bitio import Writer
    from netslim.codec.indices import write_positions

    w = Writer()
    _, order = write_positions(w, keep.reshape(-1).cpu().numpy(), shape=tuple(keep.shape))
    return w.getvalue(), torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))


def _gap_positions(index: torch.Tensor, shape: tuple[int, ...], where: str = "weight") -> torch.Tensor:
    """Flat positions (in stored order) decoded from a gap index; CorruptError (a NetslimError) if invalid."""
    from netslim.codec.bitio import Reader
    from netslim.codec.indices import read_positions

    r = Reader(bytes(index.cpu().numpy()), where)
    positions, _ = read_positions(r, numel=math.prod(shape), shape=shape)
    if r.remaining():
        raise r.fail(f"{r.remaining()} bytes follow the coded positions")
    return torch.from_numpy(positions.astype("int64"))


# ------------------------------------------------------------------------- bit helpers
def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """bool (N,) -> uint8 (ceil(N / 8),), least significant bit first."""
    flat = flags.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).reshape(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat * weights).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` flags (bool). One byte per flag, made
    once and viewed as bool (no second and third copy: a layer decodes its bitmask per call)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    flags = packed.reshape(-1, 1) >> shifts
    flags &= 1
    return flags.view(torch.bool).reshape(-1)[:count]


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def count_bits(packed: torch.Tensor, count: int) -> int:
    """Set flags among the first ``count`` of :func:`pack_bits`' stream (``packed`` holds at least
    ``ceil(count / 8)`` bytes), from a histogram of its bytes: nothing unpacked (the check on load
    would otherwise allocate a byte per weight, then a bool per weight, for every layer)."""
    whole, rest = divmod(count, 8)
    n = int((torch.bincount(packed[:whole].cpu(), minlength=256) * _POPCOUNT).sum()) if whole else 0
    if rest:
        n += bin(int(packed[whole]) & ((1 << rest) - 1)).count("1")
    return n


def _pack_stream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    flat = codes.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return pack(flat.reshape(1, -1), bits)[0] if flat.numel() else flat


def _unpack_stream(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if count == 0:
        return packed.new_zeros(0)
    return unpack(packed.reshape(1, -1), bits)[0, :count]


# ------------------------------------------------------------------------ encode / decode
def encode(
    codes: torch.Tensor, fill: torch.Tensor, layout: Layout, bits: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Unsigned ``codes`` (uint8, the weight's shape, < 2^bits) without the positions equal to
    ``fill`` (uint8, broadcast to the shape) -> (index uint8 (I,), values uint8 (V,), nnz)."""
    fill = fill.expand_as(codes)
    keep = codes != fill
    nnz = int(keep.sum())
    if layout.kind == "mask":
        return pack_bits(keep), _pack_stream(codes[keep], bits), nnz
    if layout.kind == "gaps":
        data, order = _gap_index(keep)
        index = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return index, _pack_stream(codes.reshape(-1)[order.to(codes.device)], bits), nnz
    g, keep_g = group_view(codes, layout.m), group_view(keep, layout.m)  # (G, m)
    if keep_g.numel() and int(keep_g.sum(1).max()) > layout.n:
        raise NetslimError(
            f"The codes do not fit the {layout.describe()} layout: a group of {layout.m} holds "
            f"{int(keep_g.sum(1).max())} non-zero codes (at most {layout.n})."
        )
    # kept positions first (in order), then the lowest unkept ones as fill slots; sorted per group
    rank = torch.where(keep_g, 0, 1) * layout.m + torch.arange(layout.m, device=codes.device)
    pos = torch.sort(torch.topk(rank, layout.n, dim=1, largest=False).indices, dim=1).values  # (G, n)
    values = torch.gather(g, 1, pos)
    return _pack_stream(pos.to(torch.uint8), layout.index_bits), _pack_stream(values, bits), nnz


def decode(
    index: torch.Tensor,
    values: torch.Tensor,
    fill: torch.Tensor,
    layout: Layout,
    bits: int,
    shape: tuple[int, ...],
    nnz: int,
) -> torch.Tensor:
    """Inverse of :func:`encode`: the unsigned codes (uint8, ``shape``). Validate first (:func:`check_stored`)."""
    out = torch.empty(shape, dtype=torch.uint8, device=fill.device)
    out.copy_(fill.expand(shape))  # contiguous whatever fill's strides (viewed flat below)
    count = slots(layout, shape, nnz)
    vals = _unpack_stream(values, bits, count)
    if layout.kind == "mask":  # masked_scatter_: no int64 index of the kept positions (index_put makes one)
        out.view(-1).masked_scatter_(unpack_bits(index, math.prod(shape)), vals)
        return out
    if layout.kind == "gaps":
        out.view(-1)[_gap_positions(index, shape).to(out.device)] = vals
        return out
    pos = _unpack_stream(index, layout.index_bits, count).long().reshape(-1, layout.n)  # (G, n)
    g = group_view(out, layout.m).clone()
    g.scatter_(1, pos, vals.reshape(-1, layout.n))
    return ungroup(g, shape)


def check_stored(
    where: str,
    index: torch.Tensor,
    values: torch.Tensor,
    layout: Layout,
    bits: int,
    shape: tuple[int, ...],
    nnz: int,
    fields: tuple[str, str] = ("weight_index", "weight_nz"),
) -> None:
    """NetslimError (naming ``where`` and the field) unless the stored tensors are a valid
    encoding of a ``shape`` weight with ``nnz`` kept codes of ``bits``: run on load."""
    numel = math.prod(shape)
    if not 0 <= nnz <= numel:
        raise NetslimError(f"{where}: field 'nnz' must lie in [0, {numel}]; got {nnz}.")
    for field, t, want in (
        (fields[0], index, index_bytes(layout, shape, nnz)),
        (fields[1], values, value_bytes(layout, shape, nnz, bits)),
    ):
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != want:
            raise NetslimError(
                f"{where}: field {field!r} must be uint8 of {want} bytes; got {t.dtype} {list(t.shape)}."
            )
    if layout.kind in ("mask", "gaps"):
        kept = (
            count_bits(index, numel)
            if layout.kind == "mask"
            else len(_gap_positions(index, shape, f"{where}: field {fields[0]!r}"))
        )
        if kept != nnz:
            raise NetslimError(f"{where}: field {fields[0]!r} marks {kept} kept positions; the layer stores {nnz}.")
        return
    if not nm_fits(shape, layout.m):
        raise NetslimError(
            f"{where}: a {layout.describe()} layout needs an input dim divisible by {layout.m}; "
            f"the weight is {list(shape)}."
        )
    if nnz > slots(layout, shape, nnz):
        raise NetslimError(f"{where}: field 'nnz' ({nnz}) exceeds the {layout.describe()} slots.")
    pos = _unpack_stream(index, layout.index_bits, slots(layout, shape, nnz)).reshape(-1, layout.n)  # uint8
    if pos.numel() and (int(pos.max()) >= layout.m or (layout.n > 1 and not bool((pos[:, 1:] > pos[:, :-1]).all()))):
        raise NetslimError(
            f"{where}: field {fields[0]!r} must hold positions in [0, {layout.m}) increasing "
            f"within each group of {layout.m}."
        )


def kept_mask(
    index: torch.Tensor,
    values: torch.Tensor,
    fill: torch.Tensor,
    layout: Layout,
    bits: int,
    shape: tuple[int, ...],
    nnz: int,
) -> torch.Tensor:
    """Positions whose code differs from the fill (bool, ``shape``)."""
    if layout.kind == "mask":
        return unpack_bits(index, math.prod(shape)).reshape(shape)
    if layout.kind == "gaps":
        keep = torch.zeros(math.prod(shape), dtype=torch.bool)
        keep[_gap_positions(index, shape)] = True
        return keep.reshape(shape)
    return decode(index, values, fill, layout, bits, shape, nnz) != fill.expand(shape)
