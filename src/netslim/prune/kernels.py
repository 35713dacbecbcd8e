"""CSR x dense products on CPU: a small C kernel when a compiler is available, torch otherwise.

The C source (``csrc/spmm.c``) is compiled once per machine by
:func:`netslim.core.native.c_library` and called through ctypes. Without a compiler, with
``NETSLIM_NO_EXT=1``, or for non-CPU / non-fp32 tensors, :func:`csr_matmul` falls back to
``torch.sparse`` (correct everywhere, slower on CPU at batch 1).

Memory safety, in two layers: (1) every call checks, in O(1), what the C code cannot -
dtypes, devices, contiguity and that the array lengths agree with ``shape`` and the input;
(2) the C kernels check the index *values* (row pointers monotone within [0, nnz], column
indices in [0, cols)) before computing and return non-zero instead of reading out of bounds,
raised here as a :class:`NetslimError`. The torch fallback builds its ``torch.sparse`` tensor
with ``check_invariants=True`` (torch's native check of the same rules). Layers loaded from
a file are validated with :func:`validate_csr` as they are loaded (:mod:`netslim.prune.sparse`).
"""

from __future__ import annotations

import ctypes
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from netslim.core.errors import NetslimError
from netslim.core.native import c_library

_SOURCE = Path(__file__).with_name("csrc") / "spmm.c"
_PARALLEL_WORK = 8_000_000  # multiply-adds from which the kernel uses all torch threads
U16_LIMIT = 65536  # column indices are stored as int16 and read as unsigned


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    lib = c_library(_SOURCE, "netslim_spmm")  # None: no compiler, NETSLIM_NO_EXT=1 or a failed build
    if lib is None:
        return None
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("netslim_spmv_u16", "netslim_spmv_i32"):  # rows, cols, nnz, crow, col, val, x, bias, y, threads
        getattr(lib, name).argtypes = [i64, i64, i64, p, p, p, p, p, p, c_int]
        getattr(lib, name).restype = i64  # 0, or non-zero for an invalid CSR structure (nothing computed)
    for name in ("netslim_spmm_u16", "netslim_spmm_i32"):  # rows, cols, nnz, B, crow, col, val, xt, bias, y, threads
        getattr(lib, name).argtypes = [i64, i64, i64, i64, p, p, p, p, p, p, c_int]
        getattr(lib, name).restype = i64
    return lib


def kernel_available() -> bool:
    """True when the compiled CPU kernel is in use (else the torch.sparse fallback)."""
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _use_kernel(x: torch.Tensor, values: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and values.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and _library() is not None
    )


def csr_matmul(
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` for W (rows, cols) given in CSR; x (..., cols) -> (..., rows).

    ``col`` is int16 (read as unsigned: cols <= 65536) or int32; ``crow`` int32.
    """
    rows, cols = shape
    if x.shape[-1] != cols:
        raise NetslimError(f"A CSR weight of shape ({rows}, {cols}) takes inputs of width {cols}; got {list(x.shape)}.")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)  # (B, cols)
    if not _use_kernel(x2, values):
        return _torch_csr_matmul(x2, crow, col, values, shape, bias).reshape(*lead, rows)
    lib, batch = _library(), x2.shape[0]
    crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
    bias_c = None if bias is None else bias.detach().contiguous()
    check_lengths(crow, col, values, shape, bias_c)
    # Small products (batch-1 SpMV is memory-bound) run on one thread: a fork/join costs more
    # than it saves there, and on a shared machine a descheduled helper thread stalls the barrier.
    threads = torch.get_num_threads() if batch * values.numel() >= _PARALLEL_WORK else 1
    kind = "u16" if col.dtype == torch.int16 else "i32"
    csr = (rows, cols, values.numel())
    if batch == 1:
        xc = x2.detach().contiguous()
        y = torch.empty(1, rows, dtype=torch.float32)
        bad = getattr(lib, f"netslim_spmv_{kind}")(
            *csr, crow.data_ptr(), col.data_ptr(), values.data_ptr(), xc.data_ptr(), _ptr(bias_c), y.data_ptr(), threads
        )
    else:
        xt = x2.detach().t().contiguous()  # (cols, B): a weight's batch slice is contiguous
        y = torch.empty(batch, rows, dtype=torch.float32)
        bad = getattr(lib, f"netslim_spmm_{kind}")(
            *csr,
            batch,
            crow.data_ptr(),
            col.data_ptr(),
            values.data_ptr(),
            xt.data_ptr(),
            _ptr(bias_c),
            y.data_ptr(),
            threads,
        )
    _raise_if_bad(bad, shape)
    return y.reshape(*lead, rows)


def _raise_if_bad(bad: int, shape: tuple[int, int]) -> None:
    if bad:
        raise NetslimError(
            f"Invalid CSR weight of shape {tuple(shape)}: row pointers or column indices out of "
            "range (the kernel computed nothing)."
        )


def check_lengths(
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> None:
    """What the C kernels take on trust, in O(1): 1-D CPU contiguous arrays of the right dtypes
    and lengths (crow rows + 1, col and values nnz, bias rows). Index values are the kernel's check."""
    rows, cols = shape
    arrays = [crow, col, values] + ([] if bias is None else [bias])
    ok = (
        crow.dtype == torch.int32
        and col.dtype in (torch.int16, torch.int32)
        and values.dtype == torch.float32
        and all(t.dim() == 1 and t.device.type == "cpu" and t.is_contiguous() for t in arrays)
        and crow.numel() == rows + 1
        and col.numel() == values.numel()
        and (col.dtype == torch.int32 or cols <= U16_LIMIT)
        and (bias is None or (bias.numel() == rows and bias.dtype == torch.float32))
    )
    if not ok:
        raise NetslimError(
            f"CSR arrays do not fit a ({rows}, {cols}) weight: crow {crow.dtype} {list(crow.shape)}, "
            f"col {col.dtype} {list(col.shape)}, values {values.dtype} {list(values.shape)}"
            + ("" if bias is None else f", bias {bias.dtype} {list(bias.shape)}")
            + "."
        )


def validate_csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], where: str = "CSR weight"
) -> None:
    """NetslimError unless (crow, col, values) is the canonical CSR form of a (rows, cols)
    matrix, as :func:`netslim.prune.sparse.to_csr` writes it: int32 row pointers of length
    rows + 1 from 0 to nnz, non-decreasing; int16 (read unsigned, cols <= 65536) or int32
    column indices in [0, cols), strictly increasing within each row; nnz float values."""
    rows, cols = shape
    if crow.dtype != torch.int32 or crow.dim() != 1 or crow.numel() != rows + 1:
        raise NetslimError(
            f"{where}: field 'crow' must be int32 of length rows + 1 = {rows + 1}; got {crow.dtype} {list(crow.shape)}."
        )
    if col.dtype not in (torch.int16, torch.int32) or col.dim() != 1 or (col.dtype == torch.int16 and cols > U16_LIMIT):
        raise NetslimError(
            f"{where}: field 'col_idx' must be 1-D int16 (<= {U16_LIMIT} columns) or int32; "
            f"got {col.dtype} {list(col.shape)} for {cols} columns."
        )
    if values.dim() != 1 or values.numel() != col.numel() or not values.is_floating_point():
        raise NetslimError(
            f"{where}: field 'weight_values' must be 1-D floats as long as 'col_idx' "
            f"({col.numel()}); got {values.dtype} {list(values.shape)}."
        )
    nnz, ptr = values.numel(), crow.to(torch.int64)
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnz:
        raise NetslimError(
            f"{where}: field 'crow' must run from 0 to nnz = {nnz}; got {int(ptr[0])} .. {int(ptr[-1])}."
        )
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise NetslimError(f"{where}: field 'crow' (row pointers) must be non-decreasing.")
    if nnz == 0:
        return
    c = col.to(torch.int64) & 0xFFFF if col.dtype == torch.int16 else col.to(torch.int64)
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= cols:
        raise NetslimError(f"{where}: field 'col_idx' must lie in [0, {cols}); got [{lo}, {hi}].")
    new_row = torch.zeros(nnz, dtype=torch.bool)
    new_row[ptr[:-1][ptr[:-1] < nnz]] = True  # first entry of each non-empty row
    if not bool(((c[1:] > c[:-1]) | new_row[1:]).all()):
        raise NetslimError(f"{where}: field 'col_idx' must increase strictly within each row.")


class PreparedCSR:
    """A CSR weight bound to the compiled kernel: pointers resolved once, so a batch-1 call
    costs one ctypes call plus an output allocation (small layers are overhead-bound).

    Holds references to the tensors it points into; rebuild it when they change.
    """

    def __init__(self, crow, col, values, shape, bias, lib):
        check_lengths(crow, col, values, shape, bias)
        self.tensors = (crow, col, values, bias)  # keep the memory alive
        kind = "u16" if col.dtype == torch.int16 else "i32"
        self.spmv, self.spmm = getattr(lib, f"netslim_spmv_{kind}"), getattr(lib, f"netslim_spmm_{kind}")
        self.rows, self.cols = shape
        self.nnz = values.numel()
        self.csr = (self.rows, self.cols, self.nnz)
        self.ptrs = (crow.data_ptr(), col.data_ptr(), values.data_ptr())
        self.bias_ptr = None if bias is None else bias.data_ptr()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, cols) contiguous fp32 on CPU, no autograd -> (B, rows)."""
        batch = x.shape[0]
        if x.shape[1] != self.cols:
            raise NetslimError(
                f"A CSR weight of shape ({self.rows}, {self.cols}) takes inputs of width {self.cols}; "
                f"got {list(x.shape)}."
            )
        threads = torch.get_num_threads() if batch * self.nnz >= _PARALLEL_WORK else 1
        y = torch.empty(batch, self.rows)
        if batch == 1:
            bad = self.spmv(*self.csr, *self.ptrs, x.data_ptr(), self.bias_ptr, y.data_ptr(), threads)
        else:
            xt = x.t().contiguous()  # (cols, B): a weight's batch slice is contiguous
            bad = self.spmm(*self.csr, batch, *self.ptrs, xt.data_ptr(), self.bias_ptr, y.data_ptr(), threads)
        _raise_if_bad(bad, (self.rows, self.cols))
        return y


def prepare_csr(crow, col, values, shape, bias=None) -> PreparedCSR | None:
    """A :class:`PreparedCSR` when the compiled kernel applies to these tensors, else None."""
    lib = _library()
    cpu = all(t is None or t.device.type == "cpu" for t in (crow, col, values, bias))
    fp32 = values.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    contiguous = all(t is None or t.is_contiguous() for t in (crow, col, values, bias))
    if lib is None or not (cpu and fp32 and contiguous and crow.dtype == torch.int32):
        return None
    return PreparedCSR(crow, col, values, shape, None if bias is None else bias.detach(), lib)


def fast_path_ok(x: torch.Tensor) -> bool:
    """Inputs the prepared kernel takes directly (else :func:`csr_matmul` handles them)."""
    return (
        x.dim() == 2
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.is_contiguous()
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def _torch_csr_matmul(x2, crow, col, values, shape, bias):
    """Device-agnostic fallback through torch.sparse (also used for autograd w.r.t. x)."""
    col64 = col.to(torch.int64) & 0xFFFF if col.dtype == torch.int16 else col.to(torch.int64)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and only the fallback
        warnings.simplefilter("ignore", UserWarning)
        try:  # torch's own (native) invariant check: row pointers, index ranges, sorted rows
            w = torch.sparse_csr_tensor(
                crow.to(torch.int64), col64, values.to(x2.dtype), size=shape, check_invariants=True
            )
        except RuntimeError as e:
            raise NetslimError(f"Invalid CSR weight of shape {tuple(shape)}: {str(e).splitlines()[0][:200]}") from None
    y = (w @ x2.t()).t()  # (B, rows)
    return y + bias.to(y.dtype) if bias is not None else y
