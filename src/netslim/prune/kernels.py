"""CSR x dense products on CPU: a small C kernel when a compiler is available, torch otherwise.

The C source (``csrc/spmm.c``) is compiled once per machine by
:func:`netslim.core.native.c_library` and called through ctypes. Without a compiler, with
``NETSLIM_NO_EXT=1``, or for non-CPU / non-fp32 tensors, :func:`csr_matmul` falls back to
``torch.sparse`` (correct everywhere, slower on CPU at batch 1).
"""
from __future__ import annotations

import ctypes
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from netslim.core.native import c_library

_SOURCE = Path(__file__).with_name("csrc") / "spmm.c"
_PARALLEL_WORK = 8_000_000  # multiply-adds from which the kernel uses all torch threads


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    lib = c_library(_SOURCE, "netslim_spmm")  # None: no compiler, NETSLIM_NO_EXT=1 or a failed build
    if lib is None:
        return None
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("netslim_spmv_u16", "netslim_spmv_i32"):
        getattr(lib, name).argtypes = [i64, p, p, p, p, p, p, c_int]
        getattr(lib, name).restype = None
    for name in ("netslim_spmm_u16", "netslim_spmm_i32"):
        getattr(lib, name).argtypes = [i64, i64, p, p, p, p, p, p, c_int]
        getattr(lib, name).restype = None
    return lib


def kernel_available() -> bool:
    """True when the compiled CPU kernel is in use (else the torch.sparse fallback)."""
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _use_kernel(x: torch.Tensor, values: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and values.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad) and _library() is not None)


def csr_matmul(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               shape: tuple[int, int], bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for W (rows, cols) given in CSR; x (..., cols) -> (..., rows).

    ``col`` is int16 (read as unsigned: cols <= 65536) or int32; ``crow`` int32.
    """
    rows, cols = shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)                                   # (B, cols)
    if not _use_kernel(x2, values):
        return _torch_csr_matmul(x2, crow, col, values, shape, bias).reshape(*lead, rows)
    lib, batch = _library(), x2.shape[0]
    bias_c = None if bias is None else bias.detach().contiguous()
    # Small products (batch-1 SpMV is memory-bound) run on one thread: a fork/join costs more
    # than it saves there, and on a shared machine a descheduled helper thread stalls the barrier.
    threads = torch.get_num_threads() if batch * values.numel() >= _PARALLEL_WORK else 1
    kind = "u16" if col.dtype == torch.int16 else "i32"
    if batch == 1:
        xc = x2.detach().contiguous()
        y = torch.empty(1, rows, dtype=torch.float32)
        getattr(lib, f"netslim_spmv_{kind}")(rows, crow.data_ptr(), col.data_ptr(), values.data_ptr(),
                                             xc.data_ptr(), _ptr(bias_c), y.data_ptr(), threads)
    else:
        xt = x2.detach().t().contiguous()                      # (cols, B): a weight's batch slice is contiguous
        y = torch.empty(batch, rows, dtype=torch.float32)
        getattr(lib, f"netslim_spmm_{kind}")(rows, batch, crow.data_ptr(), col.data_ptr(), values.data_ptr(),
                                             xt.data_ptr(), _ptr(bias_c), y.data_ptr(), threads)
    return y.reshape(*lead, rows)


class PreparedCSR:
    """A CSR weight bound to the compiled kernel: pointers resolved once, so a batch-1 call
    costs one ctypes call plus an output allocation (small layers are overhead-bound).

    Holds references to the tensors it points into; rebuild it when they change.
    """

    def __init__(self, crow, col, values, shape, bias, lib):
        self.tensors = (crow, col, values, bias)  # keep the memory alive
        kind = "u16" if col.dtype == torch.int16 else "i32"
        self.spmv, self.spmm = getattr(lib, f"netslim_spmv_{kind}"), getattr(lib, f"netslim_spmm_{kind}")
        self.rows, self.cols = shape
        self.ptrs = (crow.data_ptr(), col.data_ptr(), values.data_ptr())
        self.bias_ptr = None if bias is None else bias.data_ptr()
        self.nnz = values.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, cols) contiguous fp32 on CPU, no autograd -> (B, rows)."""
        batch = x.shape[0]
        threads = torch.get_num_threads() if batch * self.nnz >= _PARALLEL_WORK else 1
        y = torch.empty(batch, self.rows)
        if batch == 1:
            self.spmv(self.rows, *self.ptrs, x.data_ptr(), self.bias_ptr, y.data_ptr(), threads)
        else:
            xt = x.t().contiguous()                              # (cols, B): a weight's batch slice is contiguous
            self.spmm(self.rows, batch, *self.ptrs, xt.data_ptr(), self.bias_ptr, y.data_ptr(), threads)
        return y


def prepare_csr(crow, col, values, shape, bias=None) -> PreparedCSR | None:
    """A :class:`PreparedCSR` when the compiled kernel applies to these tensors, else None."""
    lib = _library()
    cpu = all(t is None or t.device.type == "cpu" for t in (crow, col, values, bias))
    fp32 = values.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    contiguous = all(t is None or t.is_contiguous() for t in (crow, col, values, bias))
    if lib is None or not (cpu and fp32 and contiguous):
        return None
    return PreparedCSR(crow, col, values, shape, None if bias is None else bias.detach(), lib)


def fast_path_ok(x: torch.Tensor) -> bool:
    """Inputs the prepared kernel takes directly (else :func:`csr_matmul` handles them)."""
    return (x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and not (x.requires_grad and torch.is_grad_enabled()))


def _torch_csr_matmul(x2, crow, col, values, shape, bias):
    """Device-agnostic fallback through torch.sparse (also used for autograd w.r.t. x)."""
    col64 = col.to(torch.int64) & 0xFFFF if col.dtype == torch.int16 else col.to(torch.int64)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and only the fallback
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(crow.to(torch.int64), col64, values.to(x2.dtype), size=shape,
                                    check_invariants=False)
    y = (w @ x2.t()).t()                                       # (B, rows)
    return y + bias.to(y.dtype) if bias is not None else y
