"""Run-time activation quantization to the uint8 codes oneDNN's int8 GEMM reads.

Two schemes, each a native C kernel (``csrc/dynq.c``, built once by
:func:`netslim.core.native.c_library`) that reads fp32 or bf16 as stored, with a torch
fallback (other devices, no compiler, ``NETSLIM_NO_EXT=1``):

* :func:`quantize_u8_per_tensor`: asymmetric uint8 over [min(x, 0), max(x, 0)] (torch's
  dynamic scheme): one native call (a min/max pass, the scale and zero point, a quantize
  pass; on the calling thread for small inputs). The torch fallback takes three passes
  (``aminmax``, ``quantize_per_tensor`` and the ``int_repr`` copy) and, for bf16, a cast first.
* :func:`quantize_u8_per_row`: symmetric per row, codes shifted by 128 (oneDNN wants uint8
  activations): one pass, each row quantized while it sits in L1.

Both return codes of shape (M, K) for an (M, K) input.

Per-call overhead matters as much as the passes: at batch 1 an activation is a few thousand
elements (MiniLM: 22 tokens x 384), scanned in about a microsecond, while a parallel region's
wake-up and barrier, each extra ctypes call and each small tensor allocated around it cost
several. So the per-tensor kernel is one ctypes call that returns the scale and zero point
itself, small inputs never enter a parallel region (``GRAIN`` in ``csrc/dynq.c``), and the
``torch.profiler`` label around it is only pushed while a profiler is recording.
"""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from netslim.core.native import c_library

# torch 2.13 flags quantized-tensor creation as deprecated; quantize_per_* is used here only
# as a fused float -> int8 kernel, so silence exactly that message.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
QMAX = 127  # symmetric int8 without -128: |q| <= 127 keeps x and -x symmetric
U8_ZERO = 128  # oneDNN takes uint8 activations: symmetric int8 codes shifted by 128
_SOURCE = Path(__file__).with_name("csrc") / "dynq.c"
_KINDS = {torch.float32: "f32", torch.bfloat16: "bf16"}
_NO_LABEL = contextlib.nullcontext()


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = c_library(_SOURCE, "netslim_dynq")
    if lib is None:
        return None
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for k in _KINDS.values():
        getattr(lib, f"netslim_dynq_u8_{k}").argtypes = [i64, p, p, p, c_int]
        getattr(lib, f"netslim_rows_u8_{k}").argtypes = [i64, i64, p, p, p, c_int]
        for f in ("dynq_u8", "rows_u8"):
            getattr(lib, f"netslim_{f}_{k}").restype = None
    return lib


def native_ok(x: torch.Tensor) -> bool:
    """True when the C kernels take ``x`` as is (CPU, fp32 / bf16, contiguous)."""
    return x.device.type == "cpu" and x.dtype in _KINDS and x.is_contiguous() and _lib() is not None


def u8_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 (scale, zero point) of [lo, hi] widened to include 0 (so 0 is exact).

    The same scheme as torch's ``quantize_per_tensor_dynamic``; the scale's floor keeps its
    reciprocal finite in float32 kernels (an all-zero input gets any valid scale).
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(max(round(-lo / scale), 0), 255))


def _profiling() -> bool:
    """True while a torch.profiler records (ctypes calls are invisible to it without a label)."""
    return torch._C._autograd._profiler_enabled()


def quantize_u8_per_tensor(x2: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """(M, K) fp32 / bf16 -> (uint8 codes (M, K), scale, zero point). Not differentiable."""
    x2 = x2.detach()
    if native_ok(x2):
        if _profiling():
            with torch.profiler.record_function("netslim::quantize_u8_per_tensor"):
                return _native_per_tensor(x2)
        return _native_per_tensor(x2)
    x2 = x2.float()
    scale, zero = u8_qparams(*torch.aminmax(x2))
    return torch.quantize_per_tensor(x2, scale, zero, torch.quint8).int_repr(), scale, zero


def _native_per_tensor(x2: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    codes = torch.empty(x2.shape, dtype=torch.uint8)
    qp = (ctypes.c_double * 2)()  # the kernel writes (scale, zero point): u8_qparams of x's range
    getattr(_lib(), f"netslim_dynq_u8_{_KINDS[x2.dtype]}")(
        x2.numel(), x2.data_ptr(), codes.data_ptr(), qp, torch.get_num_threads()
    )
    return codes, qp[0], int(qp[1])


def quantize_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per row: (M, K) float -> (M, K) int8, (M, 1) float32 scale."""
    x = x.float()
    lo, hi = torch.aminmax(x, dim=1, keepdim=True)  # one pass for both ends
    scale = torch.maximum(-lo, hi).clamp_min(1e-12) / QMAX  # (M, 1)
    if x.device.type == "cpu":
        # One fused pass (scale, round half to even, saturate); |x / scale| <= 127 by construction.
        zeros = torch.zeros(x.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(x, scale.squeeze(1).double(), zeros, 0, torch.qint8).int_repr()
    else:
        q = torch.round(x * (1.0 / scale)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_u8_per_row(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) fp32 / bf16 -> (uint8 codes (M, K) = symmetric int8 + 128, fp32 scales (M, 1)). Not differentiable."""
    x2 = x2.detach()
    if native_ok(x2):
        m, k = x2.shape
        codes = torch.empty(m, k, dtype=torch.uint8)
        scales = torch.empty(m, 1)
        with torch.profiler.record_function("netslim::quantize_u8_per_row") if _profiling() else _NO_LABEL:
            getattr(_lib(), f"netslim_rows_u8_{_KINDS[x2.dtype]}")(
                m, k, x2.data_ptr(), codes.data_ptr(), scales.data_ptr(), torch.get_num_threads()
            )
        return codes, scales
    q, scale = quantize_per_row(x2)
    return (q.to(torch.int16) + U8_ZERO).to(torch.uint8), scale
