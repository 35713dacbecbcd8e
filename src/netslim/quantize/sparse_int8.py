"""Sparse int8 products on CPU: int8 weights with unstructured or N:M zeros, uint8 activations, int32 sums.

The C kernels (``csrc/sparse_int8.c``, built by :func:`netslim.core.native.c_library`) keep
each output row's *quads* - 4 consecutive input channels with at least one non-zero weight -
and multiply them with one AVX512-VNNI ``vpdpbusd`` per 16 output positions (portable C
without VNNI). The activations are laid out once per call so that a quad's 4 channels are 4
contiguous bytes and consecutive positions (batch rows for a Linear, output pixels for a
convolution) are consecutive words. Accumulation is exact (int32); requantization follows
the static int8 modules: ``q = clamp(rne(y / s_out) + z_out)`` with ``y`` the float result.

What pays: a quad is skipped only when all 4 of its weights are zero, so the work is the
share of non-empty quads - about ``1 - sparsity^4`` for unstructured zeros (34 % at 90 %,
76 % at 70 %) and 100 % for 2:4 along the channels. Whether that beats oneDNN's dense int8
is measured per layer by ``sparsify`` (:mod:`netslim.prune.sparsify`), never assumed.

* :func:`prepare_linear` / :func:`prepare_conv`: :class:`Quads` from dense int8 codes;
* :func:`linear` / :func:`conv2d`: the products, output as exact int32 (``mode="int32"``),
  requantized uint8 codes (``"uint8"``) or their dequantized float values (``"float"``).

Memory safety: Python checks dtypes, devices, contiguity and lengths (O(1)); the C entry
points check row pointers and quad indices before computing and return non-zero (raised
here as a :class:`NetslimError`) instead of reading out of bounds.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from netslim.core.errors import NetslimError
from netslim.core.native import c_library

_SOURCE = Path(__file__).with_name("csrc") / "sparse_int8.c"
MODES = {"int32": 0, "uint8": 1, "float": 2}
_OUT_DTYPES = {0: torch.int32, 1: torch.uint8, 2: torch.float32}
_PARALLEL_WORK = 4_000_000  # quad-position products from which all torch threads are used


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = c_library(_SOURCE, "netslim_sparse_int8")
    return None if lib is None else bind(lib)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures on a loaded build of ``csrc/sparse_int8.c``."""
    i64, p, f32, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    lib.netslim_sq8_pack_linear_u8.argtypes = [i64, i64, p, i64, c_int, p, c_int]
    lib.netslim_sq8_pack_linear_f32.argtypes = [i64, i64, p, i64, f32, c_int, p, c_int]
    for name in ("netslim_sq8_pack_conv_u8", "netslim_sq8_pack_conv_f32"):
        getattr(lib, name).argtypes = [i64] * 4 + [p] + [i64] * 10 + [f32, c_int, p, c_int]
    for name in (
        "netslim_sq8_pack_linear_u8",
        "netslim_sq8_pack_linear_f32",
        "netslim_sq8_pack_conv_u8",
        "netslim_sq8_pack_conv_f32",
    ):
        getattr(lib, name).restype = None
    # x4, zin, sin, wscale, bias, sout, zout, relu, mode, out, threads
    requant = [p, c_int, f32, p, p, f32, c_int, c_int, c_int, p, c_int]
    lib.netslim_sq8_linear.argtypes = [i64] * 4 + [p] * 4 + requant
    lib.netslim_sq8_conv.argtypes = [i64] * 12 + [p] * 4 + requant
    lib.netslim_sq8_linear.restype = lib.netslim_sq8_conv.restype = i64
    return lib


def kernel_available() -> bool:
    """True when the compiled sparse int8 kernels are in use (no compiler / NETSLIM_NO_EXT=1: False)."""
    return _lib() is not None


@dataclass
class Quads:
    """An int8 weight in quad BCSR (see the module docstring), ready for the kernels."""

    rowptr: torch.Tensor  # (rows + 1,) int32
    qidx: torch.Tensor  # (nq,) int32: k4 (linear) or (c4 * kh + ky) * kw + kx (conv)
    qw: torch.Tensor  # (nq,) int32: 4 int8 weights
    rowsum: torch.Tensor  # (rows,) int32
    rows: int
    groups4: int  # K4 (linear) or C4 (conv): quads along the input channels
    kernel: tuple[int, int] = (1, 1)

    @property
    def density(self) -> float:
        """Share of the dense quads kept: the fraction of a dense product's work done."""
        return self.qw.numel() / max(1, self.rows * self.groups4 * self.kernel[0] * self.kernel[1])


def _quads(w4: torch.Tensor, rowsum: torch.Tensor, kernel: tuple[int, int]) -> Quads:
    """``w4`` (rows, Q, 4) int8, Q enumerating the quad index -> Quads (empty quads dropped)."""
    rows, q = w4.shape[:2]
    packed = w4.contiguous().view(torch.int32).reshape(rows, q)  # 4 bytes -> one int32 (little-endian)
    keep = (w4 != 0).any(-1)  # (rows, Q)
    rowptr = torch.zeros(rows + 1, dtype=torch.int32)
    rowptr[1:] = torch.cumsum(keep.sum(1), 0)
    qidx = keep.nonzero()[:, 1].to(torch.int32)  # row-major: ascending per row
    return Quads(
        rowptr,
        qidx.contiguous(),
        packed[keep].contiguous(),
        rowsum.to(torch.int32).contiguous(),
        rows,
        w4.shape[1] // (kernel[0] * kernel[1]),
        kernel,
    )


def prepare_linear(codes: torch.Tensor) -> Quads:
    """(rows, K) int8 codes -> :class:`Quads` (K padded to a multiple of 4 with zero weights)."""
    rows, k = codes.shape
    w = torch.nn.functional.pad(codes.detach().cpu().to(torch.int8), (0, -k % 4))
    return _quads(w.reshape(rows, -1, 4), codes.detach().cpu().to(torch.int32).sum(1), (1, 1))


def prepare_conv(codes: torch.Tensor) -> Quads:
    """(rows, C, kh, kw) int8 codes (groups 1) -> :class:`Quads`; quad index (c4 * kh + ky) * kw + kx."""
    rows, c, kh, kw = codes.shape
    w = torch.nn.functional.pad(codes.detach().cpu().to(torch.int8), (0, 0, 0, 0, 0, -c % 4))  # (rows, C4*4, kh, kw)
    w4 = w.reshape(rows, -1, 4, kh, kw).permute(0, 1, 3, 4, 2).reshape(rows, -1, 4)  # (rows, C4*kh*kw, 4)
    return _quads(w4, codes.detach().cpu().to(torch.int32).reshape(rows, -1).sum(1), (kh, kw))


@dataclass(frozen=True)
class Requant:
    """The affine parameters around the integer product (static int8 modules' ``act_qparams``)."""

    in_scale: float
    in_zero: int
    weight_scale: torch.Tensor  # (rows,) fp32
    bias: torch.Tensor | None  # (rows,) fp32
    out_scale: float = 1.0
    out_zero: int = 0
    relu: bool = False


def _threads(work: int) -> int:
    return torch.get_num_threads() if work >= _PARALLEL_WORK else 1


def _check(q: Quads, rq: Requant) -> None:
    arrays = (q.rowptr, q.qidx, q.qw, q.rowsum)
    ok = (
        all(t.dtype == torch.int32 and t.dim() == 1 and t.is_contiguous() and t.device.type == "cpu" for t in arrays)
        and q.rowptr.numel() == q.rows + 1
        and q.qidx.numel() == q.qw.numel()
        and q.rowsum.numel() == q.rows
        and rq.weight_scale.dtype == torch.float32
        and rq.weight_scale.numel() == q.rows
        and rq.weight_scale.is_contiguous()
        and (
            rq.bias is None
            or (rq.bias.dtype == torch.float32 and rq.bias.numel() == q.rows and rq.bias.is_contiguous())
        )
    )
    if not ok:
        raise NetslimError(f"sparse int8: quad arrays or scales do not fit a weight of {q.rows} rows.")
    if not (0 <= rq.in_zero <= 255 and 0 <= rq.out_zero <= 255 and rq.in_scale > 0 and rq.out_scale > 0):
        raise NetslimError("sparse int8: activation scales must be > 0 and zero points in [0, 255].")


def _requant_args(rq: Requant, x4: torch.Tensor, mode: int, out: torch.Tensor, threads: int) -> list:
    bias = None if rq.bias is None else rq.bias.data_ptr()
    return [
        x4.data_ptr(),
        rq.in_zero,
        rq.in_scale,
        rq.weight_scale.data_ptr(),
        bias,
        rq.out_scale,
        rq.out_zero,
        int(rq.relu),
        mode,
        out.data_ptr(),
        threads,
    ]


def _raise_if_bad(bad: int, what: str) -> None:
    if bad == 1:
        raise NetslimError(
            f"Invalid sparse int8 {what} weight: row pointers or quad indices out of range "
            "(the kernel computed nothing)."
        )
    if bad:
        raise NetslimError(f"sparse int8 {what}: out of memory for the accumulators.")


def _inverse(scale: float) -> float:
    """1 / scale in float32, as torch's quantize kernel computes it (the codes must match its)."""
    return float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32))


def _activations(x: torch.Tensor, rq: Requant) -> tuple[torch.Tensor, float, int]:
    """(uint8 codes or fp32 values, in scale, in zero): a quantized input keeps its own grid."""
    if x.is_quantized:
        return x.int_repr(), float(x.q_scale()), int(x.q_zero_point())
    return x.detach().float(), rq.in_scale, rq.in_zero


def linear(x: torch.Tensor, q: Quads, rq: Requant, mode: str = "float") -> torch.Tensor:
    """(B, K) fp32 (quantized on the ``rq`` input grid) or quint8 -> (B, rows) per ``mode``."""
    lib = _lib()
    if lib is None:
        raise NetslimError("sparse int8: the compiled kernel is not available (no C compiler or NETSLIM_NO_EXT=1).")
    _check(q, rq)
    xa, s_in, z_in = _activations(x, rq)
    if xa.dim() != 2 or -(-xa.shape[1] // 4) != q.groups4:
        raise NetslimError(
            f"sparse int8 linear: input {list(x.shape)} does not fit {q.groups4 * 4} (padded) input features."
        )
    batch, k = xa.shape
    xa = xa if xa.stride(1) == 1 else xa.contiguous()
    x4 = torch.empty(q.groups4 * batch * 4, dtype=torch.uint8)
    threads = _threads(batch * q.qw.numel())
    if xa.dtype == torch.uint8:
        lib.netslim_sq8_pack_linear_u8(batch, k, xa.data_ptr(), xa.stride(0), z_in, x4.data_ptr(), threads)
    else:
        lib.netslim_sq8_pack_linear_f32(
            batch, k, xa.data_ptr(), xa.stride(0), _inverse(s_in), z_in, x4.data_ptr(), threads
        )
    m = MODES[mode]
    out = torch.empty(batch, q.rows, dtype=_OUT_DTYPES[m])
    rq = Requant(s_in, z_in, rq.weight_scale, rq.bias, rq.out_scale, rq.out_zero, rq.relu)
    bad = lib.netslim_sq8_linear(
        q.rows,
        q.groups4,
        q.qw.numel(),
        batch,
        q.rowptr.data_ptr(),
        q.qidx.data_ptr(),
        q.qw.data_ptr(),
        q.rowsum.data_ptr(),
        *_requant_args(rq, x4, m, out, threads),
    )
    _raise_if_bad(bad, "linear")
    return out


@dataclass(frozen=True)
class ConvGeometry:
    stride: int
    padding: tuple[int, int]
    dilation: int


def conv_output_size(h: int, w: int, q: Quads, g: ConvGeometry) -> tuple[int, int]:
    kh, kw = q.kernel
    return (
        (h + 2 * g.padding[0] - g.dilation * (kh - 1) - 1) // g.stride + 1,
        (w + 2 * g.padding[1] - g.dilation * (kw - 1) - 1) // g.stride + 1,
    )


def conv2d(x: torch.Tensor, q: Quads, rq: Requant, g: ConvGeometry, mode: str = "float") -> torch.Tensor:
    """(B, C, H, W) fp32 or quint8 (any memory format) -> (B, rows, Ho, Wo) per ``mode`` (NCHW)."""
    lib = _lib()
    if lib is None:
        raise NetslimError("sparse int8: the compiled kernel is not available (no C compiler or NETSLIM_NO_EXT=1).")
    _check(q, rq)
    xa, s_in, z_in = _activations(x, rq)
    if xa.dim() != 4 or -(-xa.shape[1] // 4) != q.groups4:
        raise NetslimError(f"sparse int8 conv: input {list(x.shape)} does not fit {q.groups4 * 4} (padded) channels.")
    batch, c, h, w = xa.shape
    ho, wo = conv_output_size(h, w, q, g)
    if ho < 1 or wo < 1:
        raise NetslimError(f"sparse int8 conv: input {list(x.shape)} is smaller than the kernel.")
    s, (ph, pw), d = g.stride, g.padding, g.dilation
    hph, wph = -(-(h + 2 * ph) // s), -(-(w + 2 * pw) // s)
    kh, kw = q.kernel
    plane = hph * wph + ((kw - 1) * d) // s + ((kh - 1) * d) // s * wph + 1  # words per phase plane (with slack)
    x4 = torch.empty(batch * q.groups4 * s * s * plane * 4, dtype=torch.uint8)
    threads = _threads(batch * ho * wph * q.qw.numel())
    strides = xa.stride()
    fn = lib.netslim_sq8_pack_conv_u8 if xa.dtype == torch.uint8 else lib.netslim_sq8_pack_conv_f32
    fn(
        batch,
        c,
        h,
        w,
        xa.data_ptr(),
        *strides,
        ph,
        pw,
        s,
        hph,
        wph,
        plane,
        _inverse(s_in),
        z_in,
        x4.data_ptr(),
        threads,
    )
    m = MODES[mode]
    out = torch.empty(batch, q.rows, ho, wo, dtype=_OUT_DTYPES[m])
    rq = Requant(s_in, z_in, rq.weight_scale, rq.bias, rq.out_scale, rq.out_zero, rq.relu)
    bad = lib.netslim_sq8_conv(
        q.rows,
        q.groups4,
        kh,
        kw,
        q.qw.numel(),
        batch,
        s,
        d,
        wph,
        plane,
        ho,
        wo,
        q.rowptr.data_ptr(),
        q.qidx.data_ptr(),
        q.qw.data_ptr(),
        q.rowsum.data_ptr(),
        *_requant_args(rq, x4, m, out, threads),
    )
    _raise_if_bad(bad, "conv")
    return out
