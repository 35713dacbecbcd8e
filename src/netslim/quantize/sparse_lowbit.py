"""Pruned *and* quantized layers, stored sparse and low-bit, run sparse where that is faster.

One storage form per quantized layer kind, the codes coded by :mod:`.sparse_codes` (an
index of the kept positions - bitmask, Huffman-coded gaps or N:M slots - plus only their
codes, at their bit width), the scales, bias and activation parameters unchanged:

* :class:`SparseInt8Linear` / :class:`SparseInt8Conv2d` - static int8 (PTQ, QAT, mixed
  precision; weights of 2..8 bits, symmetric per channel: the code of 0.0 is 0). They
  compute exactly what :class:`~netslim.quantize.int8_modules.Int8Linear` /
  :class:`~netslim.quantize.int8_modules.Int8Conv2d` compute (they are subclasses), by one
  of two kernels (``kernel``): ``"dense"`` - the codes decoded once into oneDNN's packed
  int8 weight, the dense int8 path; ``"sparse"`` - the quad-BCSR sparse int8 kernel of
  :mod:`.sparse_int8` (int32 accumulation, requantized to the same output grid). The
  ``sparsify`` step picks ``"sparse"`` per layer only where it was measured faster.
* :class:`SparseQuantizedLinear` - weight-only packed codes (RTN, GPTQ; 2/4/8 bits,
  group-wise or per channel, asymmetric: the code of 0.0 is the group's zero point, which
  must be an integer - HQQ's float zero points cannot keep a pruned weight at 0). Like
  :class:`~netslim.quantize.weight_only.QuantizedLinear` it dequantizes on the fly: only the
  sparse codes stay in memory (so it keeps to the bitmask and N:M layouts, cheap to decode
  on every call; the static layers, decoded once, may also take the Huffman-coded gaps).

**The storage rule** (:func:`compact_form`, registered with
:func:`netslim.core.serialize.register_storage_form`): ``netslim.save`` writes a quantized
layer in its sparse form when the index plus the non-zero codes take strictly fewer bytes
than its dense codes - with a bitmask that needs more than ``1 / bits`` of the codes at
the fill value (12.5 % zeros at 8 bits, 25 % at 4 bits); the index is the smaller of the
bitmask and the coded gaps (static layers below 35 % density), or an N:M layout when every
group fits one and it costs at most 10 % more. ``netslim.load`` rebuilds the sparse module
with identical codes, validated first (byte counts; the bitmask's population or the decoded
gaps against ``nnz``; N:M slot positions increasing within each group).

Masks survive quantization: a pruned weight is 0.0 before quantization and every netslim
quantizer maps 0.0 to the fill code (symmetric schemes to 0; asymmetric ones to an integer
zero point), so ``zeros stay zeros``; :func:`fill_violations` checks it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from netslim.core.derived import DerivedState
from netslim.core.errors import NetslimError
from netslim.core.serialize import register_module, register_storage_form
from netslim.measure.counts import linear_macs, register_macs
from netslim.measure.storage import Weight, register_storage

from . import sparse_codes as sc
from . import sparse_int8
from .int8_modules import Int8Conv2d, Int8Linear, _Int8Base, int8_kwargs
from .onnx_export import register_onnx_twin
from .packing import PARAM_DTYPE
from .weight_only import QuantizedLinear, quantized_linear_kwargs

KERNELS = ("dense", "sparse")


def _check_kernel(kernel: str, owner: str) -> str:
    if kernel not in KERNELS:
        raise NetslimError(f"The 'kernel' parameter of {owner} must be one of {', '.join(KERNELS)}; got {kernel!r}.")
    return kernel


FIELDS = ("weight_sparse (index)", "weight_sparse (codes)")


class _SparseCodes:
    """One uint8 buffer ``weight_sparse``: the index (bitmask or N:M slots) then the non-zero codes,
    coding a weight of ``_shape()`` (see :mod:`.sparse_codes`). One tensor, not two: every tensor
    costs ~140 bytes of file header (entry and checksum), a tenth of a small sparse layer."""

    def _init_sparse(self, nnz: int, layout: str, n: int, m: int, device, index_bytes: int = 0) -> None:
        owner = type(self).__name__
        self.layout = sc.check_layout(layout, n, m, owner, index_bytes)
        shape = self._shape()
        if isinstance(nnz, bool) or not isinstance(nnz, int) or not 0 <= nnz <= math.prod(shape):
            raise NetslimError(
                f"The 'nnz' parameter of {owner} must be an int in [0, {math.prod(shape)}]; got {nnz!r}."
            )
        if self.layout.kind == "nm" and not sc.nm_fits(shape, self.layout.m):
            raise NetslimError(
                f"{owner}: a {self.layout.describe()} layout needs an input dim divisible by "
                f"{self.layout.m}; the weight is {list(shape)}."
            )
        self.nnz = nnz
        self._index_bytes = sc.index_bytes(self.layout, shape, nnz)
        self.register_buffer("weight_sparse", torch.zeros(self._sparse_bytes(), dtype=torch.uint8, device=device))

    def _sparse_bytes(self) -> int:
        return self._index_bytes + sc.value_bytes(self.layout, self._shape(), self.nnz, self._bits())

    @property
    def weight_index(self) -> torch.Tensor:
        return self.weight_sparse[: self._index_bytes]

    @property
    def weight_nz(self) -> torch.Tensor:
        return self.weight_sparse[self._index_bytes :]

    def _set_sparse(self, codes: torch.Tensor) -> None:
        """Fill from unsigned codes of ``_shape()`` (the layout and nnz are the constructor's)."""
        index, values, nnz = sc.encode(codes, self._fill(), self.layout, self._bits())
        if nnz != self.nnz:
            raise NetslimError(f"{type(self).__name__}: {nnz} non-zero codes for a layer built for {self.nnz}.")
        self.weight_sparse.copy_(torch.cat([index, values]).to(self.weight_sparse.device))

    def unsigned_codes(self) -> torch.Tensor:
        return sc.decode(
            self.weight_index, self.weight_nz, self._fill(), self.layout, self._bits(), self._shape(), self.nnz
        )

    def _check_sparse(self, where: str) -> None:
        t = self.weight_sparse
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != self._sparse_bytes():
            raise NetslimError(
                f"{where}: field 'weight_sparse' must be uint8 of {self._sparse_bytes()} bytes; "
                f"got {t.dtype} {list(t.shape)}."
            )
        sc.check_stored(
            where, self.weight_index, self.weight_nz, self.layout, self._bits(), self._shape(), self.nnz, FIELDS
        )

    def _sparse_kwargs(self) -> dict:
        """Constructor arguments of the storage (defaults left out: every byte of the header counts)."""
        extra = {
            "nm": {"layout": "nm", "n": self.layout.n, "m": self.layout.m},
            "gaps": {"layout": "gaps", "index_bytes": self.layout.size},
        }.get(self.layout.kind, {})
        return {"nnz": self.nnz} | extra

    @property
    def index_layout(self) -> str:
        return self.layout.describe()


# ------------------------------------------------------------------------- static int8
class _SparseStatic(_SparseCodes, DerivedState):
    """What SparseInt8Linear and SparseInt8Conv2d share (mixed in before the Int8 module)."""

    def _init_codes(self, device) -> None:
        """Registered by :meth:`_init_sparse` once the layout is known (nothing dense, ever)."""

    def _shape(self) -> tuple[int, ...]:
        return self.weight_shape

    def _bits(self) -> int:
        return self.weight_bits

    def _fill(self) -> torch.Tensor:
        return torch.tensor(2 ** (self.weight_bits - 1), dtype=torch.uint8, device=self.weight_sparse.device)

    def _code_names(self) -> tuple[str, ...]:
        return ("weight_sparse",)

    def _check_codes(self, where: str) -> None:
        self._check_sparse(where)

    def int_weight(self) -> torch.Tensor:
        """The signed codes as int8, shape ``weight_shape`` (decoded from the sparse storage)."""
        return (self.unsigned_codes().to(torch.int16) - 2 ** (self.weight_bits - 1)).to(torch.int8)

    def _store_codes(self, codes: torch.Tensor) -> None:
        raise NetslimError(
            f"{type(self).__name__}: codes are set at construction (from_int8); build a new layer to change them."
        )

    def _reset_derived(self) -> None:
        self._packed, self._quads, self._rq = None, None, None

    def __getstate__(self):  # deepcopy / pickle: the oneDNN packed weight is opaque, the rest derived
        return {**self.__dict__, "_packed": None, "_quads": None, "_rq": None}

    def _requant(self) -> sparse_int8.Requant:
        if self._rq is None:
            s_in, z_in, s_out, z_out = (float(v) for v in self.act_qparams)
            self._rq = sparse_int8.Requant(
                s_in,
                int(z_in),
                self.weight_scale.detach().float().contiguous(),
                self.bias.detach().float().contiguous(),
                s_out,
                int(z_out),
                self.relu,
            )
        return self._rq

    def _sparse_ok(self, x: torch.Tensor) -> bool:
        return (
            self.kernel == "sparse"
            and x.device.type == "cpu"
            and sparse_int8.kernel_available()
            and not (torch.is_grad_enabled() and x.requires_grad)
            and self._geometry_ok()
        )

    def _result(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.quant_out:
            return torch._make_per_tensor_quantized_tensor(y, float(self.act_qparams[2]), int(self.act_qparams[3]))
        return y if x.is_quantized else y.to(x.dtype)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.weight_numel)
        return (
            f"{super().extra_repr()}weight_bits={self.weight_bits}, nnz={self.nnz} ({density:.1%}), "
            f"layout={self.layout.describe()}, kernel={self.kernel}"
        )


class SparseInt8Linear(_SparseStatic, Int8Linear):
    """An :class:`Int8Linear` whose weight codes are stored sparse (``kernel``: "dense" or "sparse")."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        relu: bool = False,
        weight_bits: int = 8,
        quant_out: bool = False,
        nnz: int = 0,
        layout: str = "mask",
        n: int = 0,
        m: int = 0,
        index_bytes: int = 0,
        kernel: str = "dense",
        device=None,
    ):
        super().__init__(in_features, out_features, relu, weight_bits, quant_out, device)
        self.kernel = _check_kernel(kernel, type(self).__name__)
        self._init_sparse(nnz, layout, n, m, device, index_bytes)
        self._reset_derived()

    def _geometry_ok(self) -> bool:
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) float or quint8 -> (..., out)
        if not self._sparse_ok(x):
            return super().forward(x)
        if self._quads is None:
            self._quads = sparse_int8.prepare_linear(self.int_weight())
        lead = x.shape[:-1]
        y = sparse_int8.linear(
            x.reshape(-1, self.in_features), self._quads, self._requant(), "uint8" if self.quant_out else "float"
        )
        return self._result(y.reshape(*lead, self.out_features), x)


class SparseInt8Conv2d(_SparseStatic, Int8Conv2d):
    """An :class:`Int8Conv2d` whose weight codes are stored sparse; the sparse kernel takes groups 1
    with equal strides and dilations along both axes (else the layer runs dense)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list[int],
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int = 1,
        relu: bool = False,
        weight_bits: int = 8,
        quant_out: bool = False,
        nnz: int = 0,
        layout: str = "mask",
        n: int = 0,
        m: int = 0,
        index_bytes: int = 0,
        kernel: str = "dense",
        device=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            relu,
            weight_bits,
            quant_out,
            device,
        )
        self.kernel = _check_kernel(kernel, type(self).__name__)
        self._init_sparse(nnz, layout, n, m, device, index_bytes)
        self._reset_derived()

    def _geometry_ok(self) -> bool:
        return self.groups == 1 and self.stride[0] == self.stride[1] and self.dilation[0] == self.dilation[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float or quint8 -> (B, O, H', W')
        if not self._sparse_ok(x):
            return super().forward(x)
        if self._quads is None:
            self._quads = sparse_int8.prepare_conv(self.int_weight())
        geometry = sparse_int8.ConvGeometry(self.stride[0], tuple(self.padding), self.dilation[0])
        y = sparse_int8.conv2d(x, self._quads, self._requant(), geometry, "uint8" if self.quant_out else "float")
        return self._result(y, x)


def sparse_static(layer: _Int8Base, kernel: str = "dense", layout: sc.Layout | None = None) -> _Int8Base:
    """The sparse form of a static int8 layer (``layout``: the smallest, chosen when None)."""
    codes = (layer.int_weight().to(torch.int16) + 2 ** (layer.weight_bits - 1)).to(torch.uint8)
    fill = torch.tensor(2 ** (layer.weight_bits - 1), dtype=torch.uint8)
    keep = codes != fill
    layout = layout or sc.choose_layout(keep.cpu(), layer.weight_bits, 1 << 62)
    cls = SparseInt8Conv2d if isinstance(layer, Int8Conv2d) else SparseInt8Linear
    kw = int8_kwargs(layer) | {
        "nnz": int(keep.sum()),
        "layout": layout.kind,
        "n": layout.n,
        "m": layout.m,
        "index_bytes": layout.size,
        "kernel": kernel,
    }
    new = cls(**kw, device=layer.weight_scale.device)
    new._set_sparse(codes)
    with torch.no_grad():
        new.weight_scale.copy_(layer.weight_scale)
        new.act_qparams.copy_(layer.act_qparams)
        new.bias.copy_(layer.bias)
    return new


def dense_static(layer: _Int8Base) -> _Int8Base:
    """The dense Int8Linear / Int8Conv2d holding the same codes as a sparse one."""
    cls = Int8Conv2d if isinstance(layer, Int8Conv2d) else Int8Linear
    new = cls(**int8_kwargs(layer), device=layer.weight_scale.device)
    new.set_quantized(
        layer.int_weight(), layer.weight_scale.detach(), layer.bias.detach(), tuple(float(v) for v in layer.act_qparams)
    )
    return new


def dense_layer(m: nn.Module) -> nn.Module:
    """The dense layer holding the same codes as the sparse layer ``m`` (``m`` itself otherwise)."""
    if isinstance(m, _SparseStatic):
        return dense_static(m)
    if isinstance(m, SparseQuantizedLinear):
        return QuantizedLinear.from_codes(
            m.codes(), m.scales, m.zeros, bits=m.bits, group_size=m.group_size, bias=m.bias
        )
    return m


def densify(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every sparse layer replaced by its dense equivalent (same codes):
    for comparisons of the two storage forms (the benchmark's dense int4 file)."""
    from netslim.core.surgery import replace_module

    for name, m in list(model.named_modules()):
        if isinstance(m, (_SparseStatic, SparseQuantizedLinear)):
            replace_module(model, name, dense_layer(m))
    return model


# --------------------------------------------------------------------- weight-only packed
class SparseQuantizedLinear(_SparseCodes, QuantizedLinear):
    """A :class:`QuantizedLinear` whose packed codes are stored sparse (fill: each group's zero point)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = 128,
        bias: bool = True,
        nnz: int = 0,
        layout: str = "mask",
        n: int = 0,
        m: int = 0,
        index_bytes: int = 0,
        device=None,
    ):
        super().__init__(in_features, out_features, bits, group_size, bias, device)
        self._init_sparse(nnz, layout, n, m, device, index_bytes)

    def _init_codes(self, device) -> None:
        """Registered by :meth:`_init_sparse` once the layout is known."""

    def _shape(self) -> tuple[int, ...]:
        return self._declared[:2]

    def _bits(self) -> int:
        return self.bits

    def _fill(self) -> torch.Tensor:
        g = self._declared[2]
        return self.zeros.round().to(torch.uint8).repeat_interleave(g, dim=1)  # (R, C)

    def _code_fields(self) -> dict:
        return {"weight_sparse": (self.weight_sparse, (self._sparse_bytes(),), torch.uint8)}

    def _check_loaded_codes(self, where: str) -> None:
        z = self.zeros.float()
        if not bool(((z == z.round()) & (z >= 0) & (z < 2**self.bits)).all()):
            raise NetslimError(
                f"{where}: field 'zeros' must hold integer zero points in [0, {2**self.bits - 1}] "
                "for a sparse layout (the code of a pruned weight)."
            )
        self._check_sparse(where)

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        with torch.no_grad():
            self.scales.copy_(scale.to(PARAM_DTYPE))
            self.zeros.copy_(zero.to(PARAM_DTYPE))
        self._set_sparse(codes.to(torch.uint8))

    def codes(self) -> torch.Tensor:
        return self.unsigned_codes()  # (R, C) uint8

    @property
    def storage_bits(self) -> float:
        n = math.prod(self._shape())
        stored = self.weight_sparse.numel()
        return (stored * 8 + (self.scales.numel() + self.zeros.numel()) * 16) / n

    def extra_repr(self) -> str:
        density = self.nnz / max(1, math.prod(self._shape()))
        return f"{super().extra_repr()}, nnz={self.nnz} ({density:.1%}), layout={self.layout.describe()}"


def integral_zeros(layer: QuantizedLinear) -> bool:
    z = layer.zeros.float()
    return bool((z == z.round()).all())


def sparse_weight_only(layer: QuantizedLinear, layout: sc.Layout | None = None) -> SparseQuantizedLinear:
    """The sparse form of a packed weight-only Linear (its zero points must be integers)."""
    if not integral_zeros(layer):
        raise NetslimError(
            f"A {layer.bits}-bit layer with non-integer zero points (HQQ rounding) has no code for "
            "0.0; its pruned weights cannot be stored sparse. Use rounding 'rtn' (or GPTQ)."
        )
    rows, cols, g = layer._declared
    codes = layer.codes()
    fill = layer.zeros.round().to(torch.uint8).repeat_interleave(g, dim=1)
    keep = codes != fill
    layout = layout or sc.choose_layout(keep.cpu(), layer.bits, 1 << 62, gaps=False)
    new = SparseQuantizedLinear(
        cols,
        rows,
        layer.bits,
        layer.group_size,
        layer.bias is not None,
        int(keep.sum()),
        layout.kind,
        layout.n,
        layout.m,
        layout.size,
        device=codes.device,
    )
    new.set_codes(codes, layer.scales, layer.zeros)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach().clone())
    return new


# ------------------------------------------------------------------------ storage rule
def _static_dense_bytes(layer: _Int8Base) -> int:
    return layer.weight_numel if layer.weight_bits == 8 else -(-layer.weight_numel // 8) * layer.weight_bits


def compact_form(layer: nn.Module) -> nn.Module | None:
    """The sparse form of a quantized layer when it takes fewer bytes than its dense codes, else None."""
    if isinstance(layer, (_Int8Base,)) and not isinstance(layer, _SparseStatic):
        codes = layer.int_weight()
        layout = sc.choose_layout((codes != 0).cpu(), layer.weight_bits, _static_dense_bytes(layer))
        return None if layout is None else sparse_static(layer, "dense", layout)
    if type(layer) is QuantizedLinear and integral_zeros(layer):
        g = layer._declared[2]
        keep = layer.codes() != layer.zeros.round().to(torch.uint8).repeat_interleave(g, dim=1)
        layout = sc.choose_layout(keep.cpu(), layer.bits, layer.weight_packed.numel(), gaps=False)
        return None if layout is None else sparse_weight_only(layer, layout)
    return None


def fill_violations(layer: nn.Module, keep: torch.Tensor) -> int:
    """Pruned positions (``keep`` False, the weight's shape) whose code is not the code of 0.0."""
    if isinstance(layer, _Int8Base):
        return int(((layer.int_weight() != 0) & ~keep.to(layer.weight_scale.device)).sum())
    if isinstance(layer, QuantizedLinear):
        w = layer.dequantize_weight()
        return int(((w != 0) & ~keep.reshape(w.shape).to(w.device)).sum())
    raise NetslimError(f"fill_violations: {type(layer).__name__} is not a quantized layer.")


def _sparse_static_kwargs(m: _SparseStatic) -> dict:
    return int8_kwargs(m) | m._sparse_kwargs() | ({"kernel": m.kernel} if m.kernel != "dense" else {})


register_module(SparseInt8Linear, _sparse_static_kwargs)
register_module(SparseInt8Conv2d, _sparse_static_kwargs)
register_module(SparseQuantizedLinear, lambda m: quantized_linear_kwargs(m) | m._sparse_kwargs())
for _cls in (Int8Linear, Int8Conv2d, QuantizedLinear):
    register_storage_form(_cls, compact_form)
register_macs(
    SparseInt8Linear,
    lambda m, inputs, out: (
        int(out.numel() // out.shape[-1]) * (m.nnz if m.kernel == "sparse" else m.in_features * m.out_features)
    ),
)
register_macs(
    SparseInt8Conv2d,
    lambda m, inputs, out: (
        int(out.numel() // out.shape[1] if out.dim() == 4 else 0) * (m.nnz if m.kernel == "sparse" else m.weight_numel)
    ),
)
register_macs(SparseQuantizedLinear, linear_macs)


def _weight_row(m: nn.Module, state: dict) -> Weight:
    bits = m._bits()
    what = (
        "static" if isinstance(m, _SparseStatic) else ("packed" if m.group_size is None else f"packed g{m.group_size}")
    )
    return Weight(f"sparse int{bits} {what} ({m.layout.describe()})", list(m._shape()), m.nnz, bits, ("weight_sparse",))


for _cls in (SparseInt8Linear, SparseInt8Conv2d, SparseQuantizedLinear):
    register_storage(_cls, _weight_row)


def _onnx_twin(m: nn.Module) -> nn.Module:
    """ONNX: the export twin of the dense layer with the same codes (QDQ / packed; ONNX has no sparse int8)."""
    from .onnx_export import _TWINS

    dense = dense_layer(m)
    return _TWINS[type(dense)](dense)


for _cls in (SparseInt8Linear, SparseInt8Conv2d, SparseQuantizedLinear):
    register_onnx_twin(_cls, _onnx_twin)
