"""Dynamic int8 and bf16 inference for Linear-heavy models (transformers, MLPs).

* :class:`DynamicInt8Linear`: int8 weights (symmetric, per output channel) and int8
  activations quantized at run time, per tensor (default, fastest) or per token.
  On CPU the GEMM is oneDNN's ``qlinear_pointwise`` (uint8 x int8 -> fp32 with the weight
  scales, and per tensor the bias, fused into the GEMM epilogue); elsewhere ``torch._int_mm``
  (int8 x int8 -> int32, tensor cores on CUDA) followed by a float rescale.
  Why the fusion matters: at MiniLM's shapes one elementwise pass over the (tokens, features)
  activations costs about as much as the int8 GEMM itself, so a path that quantizes, converts
  int32 -> fp32, multiplies by two scales and adds the bias in separate passes is slower than
  fp32 (measured 0.8x); every pass removed is speed.
* Inputs shared by several Linears (BERT's query/key/value all read the same hidden states)
  are quantized once: a one-entry cache keyed by the tensor's identity and version; and on
  CPU the Linears found reading one tensor run as one GEMM over their stacked weights (learned
  from the calls, nothing saved: the state dict is that of separate Linears). On CPU
  the quantization is a native C kernel (:mod:`.act_quant`) that reads fp32 or bf16 as stored
  and writes the uint8 codes (torch's own path takes three passes and fp32 only).
* ``compute_dtype="bfloat16"``: the int8 Linears take and return bf16 (the GEMM writes bf16
  from its epilogue) and everything between them - attention, softmax, LayerNorm, residual
  adds - runs in bf16: int8 GEMMs plus bf16 elementwise passes, each half the bytes.
* A GELU right after a converted Linear (HF ``*Intermediate`` blocks) runs in the GEMM
  epilogue (``post_op``): one fewer pass over the widest activation of the block. The model
  surgery for both (:mod:`.int8_body`) runs in :func:`dynamic_int8`.
* :class:`BF16Linear`: the weight stored in bf16 and the matmul run in bf16; activations are
  cast in and out, so the rest of the model stays fp32. ``BF16Config(scope="model")`` instead
  casts the whole model (every floating parameter and buffer) to bf16.
"""

from __future__ import annotations

import logging
import threading
import weakref
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.artifact_schema import check_layer_tensors, check_positive, loaded
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError, bad_param
from netslim.core.selectors import Selector, select
from netslim.core.serialize import register_module
from netslim.core.surgery import get_module, replace_module
from netslim.measure.counts import linear_macs, register_macs

from .act_quant import QMAX, U8_ZERO, native_ok, quantize_per_row, quantize_u8_per_row, quantize_u8_per_tensor
from .int8_body import cast_body, fuse_activations

log = logging.getLogger(__name__)
ACTIVATIONS = ("per_tensor", "per_token")
POST_OPS = {"none": None, "gelu": "none", "gelu_tanh": "tanh"}  # name -> oneDNN's GELU algorithm
_OUT_DTYPES = (torch.float32, torch.bfloat16)  # body dtypes the oneDNN GEMM writes directly
_LEARN_GROUPS = True  # Linears reading one input share one GEMM (tests switch it off for the oracle)


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32.

    ``torch._int_mm`` on CPU takes any shape; on CUDA it needs M > 16 and K, N multiples of
    8, so other shapes fall back to an exact float32 product (exact while K * 127^2 < 2^24,
    i.e. K <= 1040; beyond that the fallback rounds like an fp32 matmul would).
    """
    m, k = a.shape
    n = b_t.shape[1]
    if a.device.type == "cuda" and (m <= 16 or k % 8 or n % 8):
        return (a.float() @ b_t.float()).round().to(torch.int32)
    return torch._int_mm(a, b_t)


@lru_cache(maxsize=1)
def _onednn_ok() -> bool:  # asked on every forward: cached (a build property, fixed for the process)
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


# ------------------------------------------------------------- activation quantization
_CACHE = threading.local()  # one _Shared entry per thread: the last quantized input


class _Shared:
    """One quantized input, the Linears that read it (in call order) and outputs computed for them."""

    __slots__ = ("ref", "key", "codes", "readers", "ready")

    def __init__(self, x: torch.Tensor, key: tuple, codes: tuple):
        self.ref, self.key, self.codes = weakref.ref(x), key, codes
        self.readers: list = []  # DynamicInt8Linear modules that read this input, in order
        self.ready: dict = {}  # id(module) -> its output, from a fused GEMM of its group


def _quantize_input(x: torch.Tensor, mode: str, onednn: bool) -> _Shared:
    """Quantize ``x`` (..., K) once for every Linear that reads this very tensor.

    Reuse needs the same tensor object, storage, shape and (outside inference mode) version;
    an inference tensor modified in place between two Linears that read it would be reused
    stale - no transformer block does that (the residual stream is rebuilt, not updated).

    ``.codes`` is (codes (M, K), scale, zero): oneDNN path uint8 codes, a float scale and int
    zero (per tensor) or (M, 1) scales and zero 128 (per token); ``_int_mm`` path int8 codes,
    (M, 1) or (1, 1) scales and zero 0. The oneDNN path reads fp32 and bf16 as they are.
    """
    version = _version(x)
    entry = getattr(_CACHE, "entry", None)
    key = (mode, onednn, version, x.data_ptr(), x.shape, x.dtype)
    if entry is not None and entry.ref() is x and entry.key == key:
        return entry
    x2 = x.reshape(-1, x.shape[-1])
    x2 = (x2 if onednn and x2.dtype in _OUT_DTYPES else x2.float()).contiguous()
    _CACHE.entry = _Shared(x, key, _quantize_fresh(x2, mode, onednn))
    return _CACHE.entry


def _version(t: torch.Tensor) -> int | None:
    """A tensor's in-place version counter; None for inference tensors (created under
    ``torch.inference_mode``, e.g. weights loaded there), which keep none: identity and storage only."""
    try:
        return t._version
    except RuntimeError:
        return None


def _quantize_fresh(x2: torch.Tensor, mode: str, onednn: bool) -> tuple:  # x2: (M, K) contiguous
    if onednn and mode == "per_tensor":
        return quantize_u8_per_tensor(x2)
    if onednn:
        codes, scale = quantize_u8_per_row(x2)
        return (codes, scale, U8_ZERO)
    if mode == "per_tensor":
        scale = (x2.abs().amax().clamp_min(1e-12) / QMAX).reshape(1, 1)
        return (torch.round(x2 / scale).clamp_(-QMAX, QMAX).to(torch.int8), scale, 0)
    codes, scale = quantize_per_row(x2)
    return (codes, scale, 0)


def _weights_key(group: list) -> tuple:
    """Identity, storage and in-place version of every tensor a packed weight is built from.

    Checked on every forward, so written without generators, ``Module.__getattr__`` or helper
    calls (at batch 1 a Linear's Python is a measurable part of its time)."""
    key = []
    for m in group:
        buffers, bias = m._buffers, m._parameters.get("bias")
        key.append(id(m))
        for t in (buffers["weight_int8"], buffers["weight_scale"], bias):
            if t is not None:
                try:
                    version = t._version
                except RuntimeError:  # an inference tensor keeps no version counter
                    version = None
                key += (t.data_ptr(), version)
    return tuple(key)


class DynamicInt8Linear(nn.Module):
    """Linear with int8 per-channel weights and dynamically quantized int8 activations."""

    weight_bits = 8

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activations: str = "per_tensor",
        post_op: str = "none",
        device=None,
    ):
        super().__init__()
        if activations not in ACTIVATIONS:
            raise bad_param("DynamicInt8Linear", "activations", f"one of {', '.join(ACTIVATIONS)}", activations)
        if post_op not in POST_OPS:
            raise bad_param("DynamicInt8Linear", "post_op", f"one of {', '.join(POST_OPS)}", post_op)
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self.post_op = post_op  # an activation applied to the output (fused into the GEMM epilogue per tensor)
        self._packed = None
        # Siblings reading the same input (BERT's query/key/value), learned from the calls: the
        # first reader (leader) runs one GEMM over all their weights; not saved, relearned on use.
        self._leader, self._followers = None, []
        # (out, in) row-major: passed to _int_mm as its transpose (K, N) column-major,
        # the layout the CPU kernel handles fastest (measured: no copy per call).
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, activations: str = "per_tensor", post_op: str = "none") -> DynamicInt8Linear:
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise NetslimError("Cannot quantize a Linear weight with NaN or Inf values.")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, activations, post_op, device=w.device)
        q, s = quantize_per_row(w)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s.squeeze(1))
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().float().clone())
        return m

    def dequantize_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._packed = None  # weights changed: repack on next use (the key also tracks the siblings')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if loaded(state_dict, prefix, ("weight_int8", "weight_scale")):
            where = prefix[:-1] or type(self).__name__
            check_layer_tensors(
                where,
                {
                    "weight_int8": (self.weight_int8, (self.out_features, self.in_features), torch.int8),
                    "weight_scale": (self.weight_scale, (self.out_features,), None),
                },
            )
            check_positive(where, "weight_scale", self.weight_scale)

    def __getstate__(self):  # copy.deepcopy / pickle: oneDNN's packed weight is opaque (no storage)
        return {**self.__dict__, "_packed": None}  # derived data, rebuilt on first use

    def _group_weights(self, group: list) -> tuple:
        """oneDNN-packed weight, zero points, scales and bias of ``group`` stacked along the outputs."""
        key = _weights_key(group)
        if self._packed is None or self._packed[0] != key:  # derived data, rebuilt after load / new weights
            w = torch.cat([m.weight_int8 for m in group])  # (sum N, K)
            scales = torch.cat([m.weight_scale for m in group])
            bias = (
                None
                if all(m.bias is None for m in group)
                else torch.cat(  # zeros where a member has none
                    [torch.zeros(m.out_features) if m.bias is None else m.bias.detach().float() for m in group]
                )
            )
            self._packed = (
                key,
                torch.ops.onednn.qlinear_prepack(w, None),
                torch.zeros(w.shape[0], dtype=torch.long),
                scales,
                bias,
            )
        return self._packed[1:]

    def _relink(self, entry: _Shared) -> None:
        """Learn (or unlearn) which earlier reader of this input runs this Linear's GEMM."""
        if self._leader is not None:  # a leader's fused output was expected and missed: the pattern changed
            if self in self._leader._followers:
                self._leader._followers.remove(self)
            self._leader = None
        first = entry.readers[0] if entry.readers else None
        if (
            _LEARN_GROUPS
            and first is not None
            and first is not self
            and first._leader is None
            and not self._followers
            and first.activations == self.activations
            and first.post_op == self.post_op
            and self not in first._followers
        ):
            first._followers.append(self)
            object.__setattr__(self, "_leader", first)  # a plain reference, not a submodule
        entry.readers.append(self)

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) fp32 / bf16 -> (M, N) in x's dtype
        entry = _quantize_input(x, self.activations, True)
        done = entry.ready.pop(id(self), None)
        if done is not None:  # computed by this input's first reader, in one GEMM with it
            return done
        self._relink(entry)
        group = [self, *self._followers]
        wpk, wzero, wscale, bias = self._group_weights(group)
        out_dtype = x.dtype if x.dtype in _OUT_DTYPES else torch.float32  # bf16 in, bf16 out: no cast pass
        codes, scale, zero = entry.codes
        if self.activations == "per_tensor":  # dequantization, bias and activation in the GEMM epilogue
            algo = POST_OPS[self.post_op]
            y = torch.ops.onednn.qlinear_pointwise(
                codes,
                scale,
                zero,
                wpk,
                wscale,
                wzero,
                bias,
                1.0,
                0,
                out_dtype,
                "none" if algo is None else "gelu",
                [],
                "" if algo is None else algo,
            )
        else:
            # per token: the GEMM applies the weight scales; the token scale (and bias after it) is one more
            # pass, in fp32 (a bf16 GEMM output would be rounded twice); the activation can't go before it
            y = torch.ops.onednn.qlinear_pointwise(
                codes, 1.0, zero, wpk, wscale, wzero, None, 1.0, 0, torch.float32, "none", [], ""
            )  # (M, N)
            scale = scale.detach()  # the int8 GEMM is not differentiable anyway
            out = y if out_dtype == torch.float32 else torch.empty_like(y, dtype=out_dtype)
            y = self._activation(
                torch.mul(y, scale, out=out) if bias is None else torch.addcmul(bias, y, scale, out=out)
            )
        if len(group) == 1:
            return y
        parts = y.split([m.out_features for m in group], dim=1)  # column views of the fused output
        entry.ready.update((id(m), part) for m, part in zip(group[1:], parts[1:]))
        return parts[0]

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (M, N) fp32
        codes, scale, _ = _quantize_input(x, self.activations, False).codes
        acc = int8_matmul(codes, self.weight_int8.t())  # (M, N) int32
        y = torch.mul(acc, self.weight_scale).mul_(scale)  # int32 * fp32 -> fp32, then in place
        return self._activation(y if self.bias is None else y.add_(self.bias))

    def _activation(self, y: torch.Tensor) -> torch.Tensor:
        algo = POST_OPS[self.post_op]
        return y if algo is None else F.gelu(y, approximate=algo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out), x's dtype
        lead = x.shape[:-1]
        y = self._onednn(x) if x.device.type == "cpu" and _onednn_ok() else self._int_mm(x)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"activations={self.activations}" + ("" if self.post_op == "none" else f", post_op={self.post_op}")
        )


class BF16Linear(nn.Module):
    """Linear whose weight is stored in bf16 and whose matmul runs in bf16."""

    weight_bits = 16

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.bfloat16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> BF16Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        m.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16))
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().to(torch.bfloat16))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _kw(m) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


register_module(
    DynamicInt8Linear,
    lambda m: {**_kw(m), "activations": m.activations, **({} if m.post_op == "none" else {"post_op": m.post_op})},
)
register_module(BF16Linear, _kw)
for _cls in (DynamicInt8Linear, BF16Linear):
    register_macs(_cls, linear_macs)


class DynamicInt8Config(MethodConfig):
    """Dynamic int8: int8 weights per channel, activations quantized at run time."""

    method = "dynamic_int8"
    freezes = True
    activations: Literal["per_tensor", "per_token"] = Field(
        "per_tensor",
        description="per_tensor: one scale per call, fully fused GEMM (fastest); per_token: one "
        "scale per row, robust to outlier tokens, one extra elementwise pass",
    )
    embeddings: bool = Field(
        False,
        description="also store nn.Embedding tables as int8 per row (weight-only: looked-up rows are "
        "dequantized); for BERT-style models the word table is most of the file",
    )
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype of everything between the int8 Linears (attention, softmax, LayerNorm, "
        "GELU, residual adds) and of the Linears' inputs and outputs. bfloat16 halves the bytes of those "
        "passes and runs attention's matmuls in bf16 (AVX512-BF16 / AMX); int8 weights, their scales and "
        "the Linear biases keep their dtype; the model's outputs are bf16",
    )
    fuse_activations: bool = Field(
        True,
        description="a GELU that directly follows a converted Linear (Hugging Face '*Intermediate' "
        "blocks: dense -> intermediate_act_fn) runs in the int8 GEMM's epilogue (per_tensor; per_token "
        "applies it after the token scale) and its module becomes Identity",
    )
    include: Selector = None
    exclude: Selector = None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: some nn.Linear layer is selected."""
        if model is not None:
            _linear_names(model, self)


class BF16Config(MethodConfig):
    """bf16 weights and matmuls (half the bytes; bf16 dot products on AVX512-BF16 / AMX CPUs)."""

    method = "bf16"
    freezes = True
    scope: Literal["linear", "model"] = Field(
        "linear",
        description="linear: the selected Linear layers, fp32 in and out; model: every floating "
        "parameter and buffer, so the whole forward runs in bf16 (outputs are bf16)",
    )
    include: Selector = None
    exclude: Selector = None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: include / exclude fit the scope; some nn.Linear layer is selected."""
        _check_scope(self)
        if model is not None and self.scope == "linear":
            _linear_names(model, self)


def _check_scope(cfg: BF16Config) -> None:
    if cfg.scope == "model" and (cfg.include is not None or cfg.exclude):
        raise NetslimError(
            "bf16: include/exclude select Linear layers and apply to scope 'linear' only; got them with scope 'model'."
        )


def _linear_names(model: nn.Module, cfg) -> list[str]:
    names = select(model, cfg.include, cfg.exclude, types=(nn.Linear,))
    if not names:
        raise NetslimError(f"{cfg.method}: the model has no nn.Linear layer to convert.")
    return names


def _swap_linears(model: nn.Module, cfg, cls, **kwargs) -> list[str]:
    names = _linear_names(model, cfg)
    with torch.no_grad():
        for name in names:
            replace_module(model, name, cls.from_float(get_module(model, name), **kwargs))
    return names


def _int8_embeddings(model: nn.Module, cfg: DynamicInt8Config) -> int:
    from .weight_only import QuantizedEmbedding  # the packed weight-only format, 8 bits, one group per row

    names = select(model, cfg.include, cfg.exclude, types=(nn.Embedding,))
    with torch.no_grad():
        for name in names:
            emb = get_module(model, name)
            replace_module(model, name, QuantizedEmbedding.from_float(emb, bits=8, group_size=None, symmetric=True))
    return len(names)


def _convert_dynamic(model: nn.Module, cfg: DynamicInt8Config) -> dict:
    names = _swap_linears(model, cfg, DynamicInt8Linear, activations=cfg.activations)
    fused = fuse_activations(model, names) if cfg.fuse_activations else []
    n_emb = _int8_embeddings(model, cfg) if cfg.embeddings else 0
    if cfg.compute_dtype != "float32":
        cast_body(model, getattr(torch, cfg.compute_dtype), keep=(DynamicInt8Linear,))
    return {
        "layers": len(names),
        "embeddings": n_emb,
        "activations": cfg.activations,
        "compute_dtype": cfg.compute_dtype,
        "fused_activations": len(fused),
        "cpu_kernel": "onednn qlinear" if _onednn_ok() else "torch._int_mm",
        "activation_quantizer": "native C" if native_ok(torch.empty(1)) else "torch",
    }


def _bf16(model: nn.Module, cfg: BF16Config) -> int:
    if cfg.scope == "linear":
        return len(_swap_linears(model, cfg, BF16Linear))
    _check_scope(cfg)
    model.to(torch.bfloat16)  # floating parameters and buffers only; integer buffers keep their dtype
    return sum(1 for m in model.modules() if isinstance(m, nn.Linear))


def _conv1d_layers(model: nn.Module, cfg) -> list[str]:
    """Selected transformers Conv1D layers (GPT-2): Linears in function, left as they are here."""
    from netslim.core.layerwise import is_conv1d

    return [n for n in select(model, cfg.include, cfg.exclude, required=False) if is_conv1d(get_module(model, n))]


@register(DynamicInt8Config)
def run_dynamic_int8(model: nn.Module, cfg: DynamicInt8Config, ctx) -> nn.Module:
    """Replace the selected Linear layers by :class:`DynamicInt8Linear` (in place)."""
    for name in _conv1d_layers(model, cfg):  # no silent partial conversion: the report lists them
        ctx.skip(
            name,
            "dynamic_int8: a transformers Conv1D (GPT-2's Linear, weight stored (in, out)) is not "
            "converted, only nn.Linear layers are; it stays fp32",
        )
    ctx.notes[cfg.method] = _convert_dynamic(model, cfg)
    return model


@register(BF16Config)
def run_bf16(model: nn.Module, cfg: BF16Config, ctx) -> nn.Module:
    """bf16 for the selected Linear layers (``scope="linear"``) or the whole model (in place)."""
    ctx.notes[cfg.method] = {"scope": cfg.scope, "linear_layers": _bf16(model, cfg)}
    return model


dynamic_int8 = method_function(DynamicInt8Config, "dynamic_int8")
bf16_linears = method_function(BF16Config, "bf16_linears")
