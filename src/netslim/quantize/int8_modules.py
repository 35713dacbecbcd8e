"""Static int8 Conv2d / Linear with real int8 execution (CPU, oneDNN quantized kernels).

Each module takes a float input, quantizes it with its calibrated per-tensor scale (uint8,
asymmetric), runs the int8 kernel with per-channel int8 weights and an int32 bias
accumulator, requantizes to its calibrated output scale (optionally with a fused ReLU)
and returns float - or, with ``quant_out`` (set by PTQ when the output's only consumer is
another int8 layer), returns the quantized tensor itself, which the next layer takes as is:
at CIFAR-sized shapes a float round trip (dequantize, quantize) costs more than the conv.
Activations stay in the layout the kernel produces (channels-last): forcing NCHW between
layers costs two copies per layer. Stored: the weight codes, fp32 per-channel weight scales, fp32 bias and
the four activation parameters - plain tensors, no pickled packed objects. 8-bit weights are
an int8 tensor ``weight_int8``; narrower ones (``weight_bits`` 2..7, from QAT or mixed
precision) are stored **packed** in ``weight_packed`` - the codes offset by ``2^(bits-1)`` to
``[0, 2^bits)``, flattened, padded to a multiple of 8 codes and packed as one bit stream with
:func:`netslim.quantize.packing.pack` (two 4-bit codes per byte), so a 4-bit layer takes half
the bytes of an 8-bit one. They are unpacked into int8 when the kernel's weight is built:
compute is int8 whatever the stored width. The oneDNN packed weight is rebuilt lazily on
first use (derived data, not saved).

The int8 kernels are CPU-only; on other devices the module runs the same arithmetic as
fake quantization in float (same results up to rounding, no speed-up).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.artifact_schema import check_layer_tensors, check_positive, loaded
from netslim.core.errors import NetslimError
from netslim.core.serialize import register_module
from netslim.measure.counts import conv_macs, linear_macs, register_macs

from .packing import check_stream_bits, pack, unpack

# torch 2.13 flags quantized-tensor creation as deprecated; those tensors are the int8
# kernels' calling convention here, so silence exactly that message (once, not per call).
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
ENGINE = "onednn"  # measured ~3x faster than the default "x86" engine on this CPU (AVX-512 VNNI, no AMX)


@contextlib.contextmanager
def _engine(name: str = ENGINE):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class _Int8Base(nn.Module):
    def _init_qparams(
        self, out_ch: int, wshape: tuple, relu: bool, weight_bits: int, device, quant_out: bool = False
    ) -> None:
        check_stream_bits(weight_bits, f"{type(self).__name__}.weight_bits")
        self.relu, self.weight_bits, self.quant_out = relu, weight_bits, quant_out
        self.weight_shape = tuple(wshape)
        self._init_codes(device)
        self.register_buffer("weight_scale", torch.ones(out_ch, device=device))
        self.register_buffer("act_qparams", torch.tensor([1.0, 0.0, 1.0, 0.0], device=device))  # in s, z, out s, z
        self.bias = nn.Parameter(torch.zeros(out_ch, device=device))
        self._packed = None

    def _init_codes(self, device) -> None:
        """The weight-code buffers (a sparse subclass registers its own: :mod:`.sparse_lowbit`)."""
        if self.weight_bits == 8:
            self.register_buffer("weight_int8", torch.zeros(self.weight_shape, dtype=torch.int8, device=device))
        else:  # packed bit stream of (code + 2^(bits-1)), padded to whole groups of 8 codes
            nbytes = -(-self.weight_numel // 8) * self.weight_bits
            self.register_buffer("weight_packed", torch.zeros(nbytes, dtype=torch.uint8, device=device))

    def _code_names(self) -> tuple[str, ...]:
        return ("weight_int8",) if self.weight_bits == 8 else ("weight_packed",)

    @property
    def weight_numel(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    def int_weight(self) -> torch.Tensor:
        """The signed weight codes as int8, shape ``weight_shape`` (unpacked when stored packed)."""
        if self.weight_bits == 8:
            return self.weight_int8
        codes = unpack(self.weight_packed.reshape(1, -1), self.weight_bits)[0, : self.weight_numel]
        return (codes.to(torch.int16) - 2 ** (self.weight_bits - 1)).to(torch.int8).reshape(self.weight_shape)

    def _store_codes(self, codes: torch.Tensor) -> None:
        if tuple(codes.shape) != self.weight_shape:
            raise NetslimError(
                f"{type(self).__name__}: weight codes of shape {tuple(codes.shape)} do not fit {self.weight_shape}."
            )
        lo, hi = -(2 ** (self.weight_bits - 1)), 2 ** (self.weight_bits - 1) - 1
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise NetslimError(
                f"{type(self).__name__}: {self.weight_bits}-bit weight codes must lie in "
                f"[{lo}, {hi}]; got [{int(codes.min())}, {int(codes.max())}]."
            )
        if self.weight_bits == 8:
            self.weight_int8.copy_(codes)
            return
        flat = codes.reshape(-1).to(torch.int16) + 2 ** (self.weight_bits - 1)  # [0, 2^bits)
        pad = self.weight_packed.numel() * 8 // self.weight_bits - flat.numel()
        flat = torch.cat([flat, flat.new_zeros(pad)]).to(torch.uint8)
        self.weight_packed.copy_(pack(flat.reshape(1, -1), self.weight_bits)[0])

    def set_quantized(
        self, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor, act: tuple[float, float, float, float]
    ) -> None:
        self._store_codes(w_int8)
        self.weight_scale.copy_(w_scale)
        self.bias.data.copy_(bias)
        self.act_qparams.copy_(torch.tensor(act))
        self._packed = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._packed = None  # weights changed: repack on next use
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if loaded(state_dict, prefix, (*self._code_names(), "weight_scale", "act_qparams")):
            self._check_loaded(prefix[:-1] or type(self).__name__)

    def _check_loaded(self, where: str) -> None:
        """Loaded tensors against the constructor's shapes; scales > 0, zero points in [0, 255]."""
        self._check_codes(where)
        check_layer_tensors(
            where,
            {
                "weight_scale": (self.weight_scale, (self.weight_shape[0],), None),
                "act_qparams": (self.act_qparams, (4,), None),
            },
        )
        check_positive(where, "weight_scale", self.weight_scale)
        check_positive(where, "act_qparams", self.act_qparams[0::2])  # input, output scales
        zeros = self.act_qparams[1::2]
        if not bool(((zeros >= 0) & (zeros <= 255) & (zeros == zeros.round())).all()):
            raise NetslimError(
                f"{where}: field 'act_qparams' zero points must be integers in [0, 255]; got {zeros.tolist()}."
            )

    def _check_codes(self, where: str) -> None:
        if self.weight_bits == 8:
            codes = {"weight_int8": (self.weight_int8, self.weight_shape, torch.int8)}
        else:
            nbytes = -(-self.weight_numel // 8) * self.weight_bits
            codes = {"weight_packed": (self.weight_packed, (nbytes,), torch.uint8)}
        check_layer_tensors(where, codes)

    def _qweight(self) -> torch.Tensor:
        zeros = torch.zeros(self.weight_scale.numel(), dtype=torch.long)
        with warnings.catch_warnings():  # torch marks quantized tensors as deprecated; they are the kernel's API
            warnings.simplefilter("ignore")
            return torch._make_per_channel_quantized_tensor(
                self.int_weight().cpu(), self.weight_scale.double().cpu(), zeros, 0
            )

    def dequantize_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (len(self.weight_shape) - 1)
        return self.int_weight().float() * self.weight_scale.reshape(shape)

    def _quant_in(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_quantized:  # from a chained int8 producer: already on this layer's input grid
            return x
        s, z = float(self.act_qparams[0]), int(self.act_qparams[1])
        return torch.quantize_per_tensor(x.float(), s, z, torch.quint8)  # keeps the memory format

    def _out(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return y if self.quant_out else y.dequantize().to(dtype)

    def _float_in(self, x: torch.Tensor) -> torch.Tensor:
        return x.dequantize() if x.is_quantized else x

    def _fake(self, y: torch.Tensor) -> torch.Tensor:
        """Float emulation of the output requantization (non-CPU devices)."""
        s, z = float(self.act_qparams[2]), int(self.act_qparams[3])
        y = torch.fake_quantize_per_tensor_affine(y, s, z, 0, 255)
        return torch.relu(y) if self.relu else y

    def _fake_input(self, x: torch.Tensor) -> torch.Tensor:
        s, z = float(self.act_qparams[0]), int(self.act_qparams[1])
        return torch.fake_quantize_per_tensor_affine(x.float(), s, z, 0, 255)


class Int8Conv2d(_Int8Base):
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
        device=None,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.padding, self.dilation = list(padding), list(dilation)
        self._init_qparams(
            out_channels, (out_channels, in_channels // groups, *kernel_size), relu, weight_bits, device, quant_out
        )

    def _pack(self):
        if self._packed is None:
            with _engine():
                self._packed = torch.ops.quantized.conv2d_prepack(
                    self._qweight(),
                    self.bias.detach().float().cpu(),
                    self.stride,
                    self.padding,
                    self.dilation,
                    self.groups,
                )
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float -> (B, O, H', W') float
        if x.device.type != "cpu":
            y = F.conv2d(
                self._fake_input(self._float_in(x)),
                self.dequantize_weight(),
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            return self._fake(y).to(x.dtype)
        op = torch.ops.quantized.conv2d_relu if self.relu else torch.ops.quantized.conv2d
        with _engine():
            y = op(self._quant_in(x), self._pack(), float(self.act_qparams[2]), int(self.act_qparams[3]))
        return self._out(y, torch.float32 if x.is_quantized else x.dtype)


class Int8Linear(_Int8Base):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        relu: bool = False,
        weight_bits: int = 8,
        quant_out: bool = False,
        device=None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_qparams(out_features, (out_features, in_features), relu, weight_bits, device, quant_out)

    def _pack(self):
        if self._packed is None:
            with _engine():
                self._packed = torch.ops.quantized.linear_prepack(self._qweight(), self.bias.detach().float().cpu())
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) float -> (..., out) float
        if x.device.type != "cpu":
            y = F.linear(self._fake_input(self._float_in(x)), self.dequantize_weight(), self.bias)
            return self._fake(y).to(x.dtype)
        op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
        with _engine():
            y = op(self._quant_in(x), self._pack(), float(self.act_qparams[2]), int(self.act_qparams[3]))
        return self._out(y, torch.float32 if x.is_quantized else x.dtype)


def int8_twin(layer: nn.Module, *, relu: bool, weight_bits: int, quant_out: bool = False) -> _Int8Base:
    """An empty Int8Conv2d / Int8Linear with the geometry of ``layer`` (a float or QAT Conv2d /
    Linear); its codes come with :meth:`~_Int8Base.set_quantized`."""
    if isinstance(layer, nn.Conv2d):
        return Int8Conv2d(
            layer.in_channels,
            layer.out_channels,
            list(layer.kernel_size),
            list(layer.stride),
            list(layer.padding),
            list(layer.dilation),
            layer.groups,
            relu,
            weight_bits,
            quant_out,
        )
    return Int8Linear(layer.in_features, layer.out_features, relu, weight_bits, quant_out)


def int8_kwargs(m: _Int8Base) -> dict:
    """The constructor arguments (JSON) of an Int8Linear / Int8Conv2d, or of a subclass's int8 part."""
    if isinstance(m, Int8Conv2d):
        kw = {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "dilation": m.dilation,
            "groups": m.groups,
        }
    else:
        kw = {"in_features": m.in_features, "out_features": m.out_features}
    return kw | {"relu": m.relu, "weight_bits": m.weight_bits, "quant_out": m.quant_out}


register_module(Int8Conv2d, int8_kwargs)
register_module(Int8Linear, int8_kwargs)
register_macs(Int8Linear, linear_macs)
register_macs(Int8Conv2d, conv_macs)
