"""Sparse weights that are really smaller on disk and faster on CPU.

* :class:`SparseLinear` -- a Linear whose weight is stored in CSR with narrow indices
  (int32 row pointers, 16-bit column indices when ``in_features <= 65536``, the layer's
  float values). ``kernel="sparse"`` runs the CSR kernel of :mod:`netslim.prune.kernels`;
  ``kernel="dense"`` only stores it that way and decodes a dense weight once for F.linear
  (for layers where dense was measured faster).
* :class:`SparseConv2d` -- the same storage for a Conv2d weight viewed as
  (out, in/groups * kh * kw); it always runs dense (decoded once): no sparse conv kernel
  beats oneDNN at the sparsities we reach.
* The ``sparse`` export format: masks made permanent, every Linear/Conv2d whose CSR form
  is smaller than its dense weight stored as above, in an ordinary netslim safetensors
  artifact -- ``netslim.load`` rebuilds the modules (``register_module``), bit-exactly.
* Loading a layer validates its CSR arrays (:func:`~netslim.prune.kernels.validate_csr`:
  row pointers from 0 to nnz, non-decreasing; column indices in range and sorted per row)
  before any kernel or decode sees them; the C kernel checks them again on every call.

Both modules hold buffers, not parameters: they are for inference, after training.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.artifact_schema import loaded
from netslim.core.conv import Conv2dGeometry, conv_kwargs
from netslim.core.derived import DerivedState
from netslim.core.errors import NetslimError
from netslim.core.export import register_exporter
from netslim.core.masks import baked_copy, get_mask
from netslim.core.serialize import register_module, save
from netslim.core.surgery import replace_module
from netslim.measure.counts import register_macs
from netslim.prune.kernels import U16_LIMIT, csr_matmul, fast_path_ok, prepare_csr, validate_csr


# ------------------------------------------------------------------------- CSR encoding
def to_csr(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols) dense -> (crow int32 (rows+1,), col int16|int32 (nnz,), values (nnz,)).

    Exactly the non-zero entries are kept, in row-major order, so decoding is lossless.
    """
    if w.dim() != 2:
        raise NetslimError(f"to_csr expects a 2-D weight; got shape {tuple(w.shape)}.")
    nz = w != 0  # (rows, cols)
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int32, device=w.device)
    crow[1:] = torch.cumsum(nz.sum(1), 0)
    col = nz.nonzero()[:, 1]  # (nnz,) int64, row-major
    if w.shape[1] <= U16_LIMIT:
        col = torch.where(col >= 32768, col - 65536, col).to(torch.int16)
    else:
        col = col.to(torch.int32)
    return crow, col, w[nz].detach().clone()


def from_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_csr`."""
    rows, cols = shape
    col64 = col.to(torch.int64) & 0xFFFF if col.dtype == torch.int16 else col.to(torch.int64)
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    row = torch.repeat_interleave(torch.arange(rows, device=values.device), counts)
    out = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
    out[row, col64] = values
    return out


def csr_bytes(rows: int, cols: int, nnz: int, value_bytes: int = 4) -> int:
    """Stored size of a CSR weight: row pointers + indices + values."""
    return 4 * (rows + 1) + (2 if cols <= U16_LIMIT else 4) * nnz + value_bytes * nnz


class _CSRWeight(DerivedState):
    """Storage shared by the sparse modules: buffers ``crow``, ``col_idx``, ``weight_values``.

    The values buffer's name contains "weight" so netslim's parameter counts see the
    stored non-zeros. ``_dense`` caches the decoded weight (not saved; reset on moves/loads).
    """

    def _init_storage(self, rows: int, cols: int, nnz: int, index_bits: int) -> None:
        if index_bits not in (16, 32):
            raise NetslimError(
                f"The 'index_bits' parameter of {type(self).__name__} must be 16 or 32; got {index_bits!r}."
            )
        if index_bits == 16 and cols > U16_LIMIT:
            raise NetslimError(f"16-bit column indices need <= {U16_LIMIT} columns; got {cols}.")
        self.rows, self.cols, self.index_bits = rows, cols, index_bits
        self.register_buffer("crow", torch.zeros(rows + 1, dtype=torch.int32))
        self.register_buffer("col_idx", torch.zeros(nnz, dtype=torch.int16 if index_bits == 16 else torch.int32))
        self.register_buffer("weight_values", torch.zeros(nnz))
        self._dense: torch.Tensor | None = None
        self._prepared = None  # PreparedCSR, False (kernel not applicable) or None (not built yet)

    def _set_csr(self, w2d: torch.Tensor) -> None:
        crow, col, values = to_csr(w2d)
        self.crow, self.col_idx, self.weight_values = crow, col, values
        self._reset_derived()

    def _reset_derived(self) -> None:
        self._dense, self._prepared = None, None

    @property
    def nnz(self) -> int:
        return self.weight_values.numel()

    def dense_2d(self) -> torch.Tensor:
        """The (rows, cols) weight, decoded (and cached)."""
        if self._dense is None:
            self._dense = from_csr(self.crow, self.col_idx, self.weight_values, (self.rows, self.cols))
        return self._dense

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # drops _dense, _prepared
        if loaded(state_dict, prefix, ("crow", "col_idx", "weight_values")):
            self.check_storage(prefix[:-1] or type(self).__name__)

    def check_storage(self, where: str) -> None:
        """NetslimError (naming ``where`` and the field) unless the buffers are a valid CSR form
        of this layer's (rows, cols) weight - run on load, before any kernel sees them."""
        want = torch.int16 if self.index_bits == 16 else torch.int32
        if self.col_idx.dtype != want:
            raise NetslimError(
                f"{where}: field 'col_idx' must be {want} for index_bits={self.index_bits}; got {self.col_idx.dtype}."
            )
        validate_csr(self.crow, self.col_idx, self.weight_values, (self.rows, self.cols), where)


# --------------------------------------------------------------------------- SparseLinear
class SparseLinear(_CSRWeight):
    """``y = x W^T + b`` with W in CSR. ``kernel``: "sparse" (CSR kernel) or "dense" (decoded)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nnz: int = 0,
        bias: bool = True,
        kernel: str = "sparse",
        index_bits: int | None = None,
    ):
        super().__init__()
        if kernel not in ("sparse", "dense"):
            raise NetslimError(f"The 'kernel' parameter of SparseLinear must be 'sparse' or 'dense'; got {kernel!r}.")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self._init_storage(out_features, in_features, nnz, index_bits or (16 if in_features <= U16_LIMIT else 32))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Module, kernel: str = "sparse") -> SparseLinear:
        """From an nn.Linear (masked or not): its effective weight, zeros dropped."""
        w = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, 0, linear.bias is not None, kernel)
        out._set_csr(w)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return out.to(w.device)

    @property
    def weight(self) -> torch.Tensor:  # (out, in): for reports and code that reads .weight
        return self.dense_2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        if self.kernel == "dense":
            return F.linear(x, self.dense_2d(), self.bias)
        if self._prepared is None:
            self._prepared = (
                prepare_csr(self.crow, self.col_idx, self.weight_values, (self.rows, self.cols), self.bias) or False
            )
        if self._prepared and fast_path_ok(x):
            return self._prepared(x)
        return csr_matmul(x, self.crow, self.col_idx, self.weight_values, (self.rows, self.cols), self.bias)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.rows * self.cols)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz} "
            f"({density:.1%}), kernel={self.kernel}"
        )


def _sparse_linear_kwargs(m: SparseLinear) -> dict:
    return {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "nnz": m.nnz,
        "bias": m.bias is not None,
        "kernel": m.kernel,
        "index_bits": m.index_bits,
    }


# --------------------------------------------------------------------------- SparseConv2d
class SparseConv2d(_CSRWeight, Conv2dGeometry):
    """A Conv2d whose weight is stored in CSR over (out, in/groups*kh*kw); runs dense."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        nnz: int = 0,
        index_bits: int | None = None,
    ):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        cols = in_channels // groups * math.prod(self.kernel_size)
        self._init_storage(out_channels, cols, nnz, index_bits or (16 if cols <= U16_LIMIT else 32))
        self.bias = nn.Parameter(torch.zeros(out_channels), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        if conv.padding_mode != "zeros":
            raise NetslimError(f"SparseConv2d supports padding_mode 'zeros' only; got {conv.padding_mode!r}.")
        w = conv.weight.detach()
        out = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        out._set_csr(w.reshape(w.shape[0], -1))
        if conv.bias is not None:
            out.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        return out.to(w.device)

    @property
    def weight(self) -> torch.Tensor:  # (out, in/groups, kh, kw)
        return self.dense_2d().view(self.out_channels, self.in_channels // self.groups, *self.kernel_size)


def _sparse_conv_kwargs(m: SparseConv2d) -> dict:
    return conv_kwargs(m) | {"nnz": m.nnz, "index_bits": m.index_bits}


register_module(SparseLinear, _sparse_linear_kwargs)
register_module(SparseConv2d, _sparse_conv_kwargs)
register_macs(
    SparseLinear,
    lambda m, inputs, out: int(out.numel() // out.shape[-1]) * (m.nnz if m.kernel == "sparse" else m.rows * m.cols),
)
register_macs(SparseConv2d, lambda m, inputs, out: int(out.numel()) * m.cols)


# ------------------------------------------------------------------------------- export
def sparse_storage_plan(model: nn.Module) -> dict[str, nn.Module]:
    """Replacements for the file: CSR storage for every Linear/Conv2d where it is smaller
    than dense; a plain copy with the mask baked in for other masked layers."""
    plan = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        w = m.weight.detach()
        rows, cols = w.shape[0], w[0].numel()
        smaller = csr_bytes(rows, cols, int(torch.count_nonzero(w)), w.element_size()) < w.numel() * w.element_size()
        if smaller and isinstance(m, nn.Linear):
            plan[name] = SparseLinear.from_dense(m, "dense")
        elif smaller and m.padding_mode == "zeros":
            plan[name] = SparseConv2d.from_dense(m)
        elif get_mask(m) is not None:
            plan[name] = baked_copy(m)
    return plan


def save_sparse(model: nn.Module, path: str | Path, info: dict | None = None) -> Path:
    """Write ``model`` with sparse weights stored compactly; ``model`` itself is unchanged
    (layers are swapped for the write and put back).

    Masks are baked in for the file. Layers where CSR would not be smaller stay dense.
    """
    plan = sparse_storage_plan(model)
    originals = {}
    try:
        for name, new in plan.items():
            originals[name] = replace_module(model, name, new)
        stored = sorted(n for n, m in plan.items() if isinstance(m, _CSRWeight))
        return save(model, path, {**(info or {}), "sparse_layers": stored})
    finally:
        for name, old in originals.items():
            replace_module(model, name, old)


register_exporter("sparse", lambda model, path, info: save_sparse(model, path, info), ".sparse.safetensors")
