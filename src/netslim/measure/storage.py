"""What a module stores, read from its own tensors: the one source of per-layer figures.

Every count here is taken from the tensors a module actually holds (what ``netslim.save``
writes), whatever the kind of layer:

* ``params``: weights as *elements* at their logical shape, plus biases and other
  parameters -- an int4 layer has as many as its fp32 original (never packed bytes);
* ``nonzero``: non-zero elements of the effective weight (a CSR layer: its stored values;
  a masked layer: weight x mask; packed / int8 codes: the dequantized weight);
* ``bits``: width of one stored weight value (fp32 32, bf16 16, packed int4 4, int8 8,
  CSR: its value dtype, shared weights: ``ceil(log2(clusters))``, the fixed-width cluster
  index of Deep Compression -- the safetensors file holds that index in uint8 / int16 and
  ``.nsz`` Huffman-codes it, which ``stored_bytes`` / ``netslim inspect x.nsz`` show);
* ``stored_bytes``: bytes of every tensor the module saves (codes, indices, scales,
  codebooks, masks, biases), a tensor tied to another module's counted once.

Layouts are recognised by the tensors a module stores (CSR ``crow/col_idx/weight_values``,
packed ``weight_packed/scales/zeros``, ...), so ``measure`` needs no import of the method
families; :func:`register_storage` adds a layout for a module type of one's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.masks import get_mask

DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.int32: "int32",
}


@dataclass
class Weight:
    """The main weight of a module as stored; ``tensors``: the state names it consists of."""

    kind: str
    shape: list[int]
    nonzero: int
    bits: float
    tensors: tuple[str, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 0


@dataclass
class Storage:
    kind: str  # "dense fp32", "masked fp32", "sparse CSR fp32", "packed int4", "int8 static", ...
    shape: list[int]  # logical shape of the main weight ([] if none)
    weight_nonzero: int  # non-zeros of the main weight (a tied one too: the row describes the layer)
    bits: float  # bits of one stored weight value (0 without a main weight)
    params: int  # elements of every parameter, weights at their logical shape
    nonzero: int
    stored_bytes: int

    @property
    def sparsity(self) -> float:
        n = math.prod(self.shape) if self.shape else 0
        return 1.0 - self.weight_nonzero / n if n else 0.0


def _nz(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t))


def _dtype(t: torch.Tensor) -> str:
    return DTYPE_NAMES.get(t.dtype, str(t.dtype).replace("torch.", ""))


# ----------------------------------------------------------------------------- layouts
def _csr(m: nn.Module, state: dict) -> Weight:
    values = state["weight_values"]
    rows, cols = state["crow"].numel() - 1, int(m.cols)
    k = getattr(m, "kernel_size", None)
    shape = [rows, cols // math.prod(k), *k] if k else [rows, cols]
    return Weight(
        f"sparse CSR {_dtype(values)}",
        shape,
        _nz(values),
        8 * values.element_size(),
        ("crow", "col_idx", "weight_values"),
    )


def _packed(m: nn.Module, state: dict) -> Weight:
    packed, bits = state["weight_packed"], int(m.bits)
    shape = [packed.shape[0], packed.shape[1] * 8 // bits]
    return Weight(f"packed int{bits}", shape, _nz(m.dequantize_weight()), bits, ("weight_packed", "scales", "zeros"))


def _static_int(m: nn.Module, state: dict) -> Weight:
    codes = "weight_int8" if "weight_int8" in state else "weight_packed"
    return Weight(
        f"int{m.weight_bits} static",
        list(m.weight_shape),
        _nz(m.int_weight()),
        int(m.weight_bits),
        (codes, "weight_scale", "act_qparams"),
    )


def _dynamic_int8(m: nn.Module, state: dict) -> Weight:
    codes = state["weight_int8"]
    return Weight("int8 dynamic", list(codes.shape), _nz(codes), 8, ("weight_int8", "weight_scale"))


def _shared(m: nn.Module, state: dict) -> Weight:
    index, codebook = state["weight_index"], state["codebook"]
    table = torch.cat([codebook.new_zeros(1), codebook.detach()]) != 0  # (k+1,) slot 0: pruned
    nonzero = int(table[index.reshape(-1).long()].sum())
    clusters = codebook.numel()
    return Weight(
        "shared",
        list(index.shape),
        nonzero,
        float(max(1, math.ceil(math.log2(clusters)))),
        ("weight_index", "codebook"),
    )


# (stored tensor names that identify the layout, reader); first match wins. Static int8
# is tested before dynamic (both hold weight_int8; only static has activation parameters).
_LAYOUTS: list[tuple[frozenset[str], Callable[[nn.Module, dict], Weight]]] = [
    (frozenset({"crow", "col_idx", "weight_values"}), _csr),
    (frozenset({"weight_packed", "scales", "zeros"}), _packed),
    (frozenset({"weight_int8", "weight_scale", "act_qparams"}), _static_int),
    (frozenset({"weight_packed", "weight_scale", "act_qparams"}), _static_int),
    (frozenset({"weight_int8", "weight_scale"}), _dynamic_int8),
    (frozenset({"weight_index", "codebook"}), _shared),
]
_BY_TYPE: dict[type, Callable[[nn.Module, dict], Weight]] = {}


def register_storage(cls: type, fn: Callable[[nn.Module, dict], Weight]) -> None:
    """Main-weight reader of a module type: ``fn(module, own_state) -> Weight``; it takes
    precedence over the layouts recognised by tensor names."""
    _BY_TYPE[cls] = fn


def _reader(module: nn.Module, state: dict) -> Callable[[nn.Module, dict], Weight] | None:
    for cls in type(module).__mro__:
        if cls in _BY_TYPE:
            return _BY_TYPE[cls]
    for names, fn in _LAYOUTS:
        if names <= state.keys():
            return fn
    return None


# ------------------------------------------------------------------------ own tensors
def own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers the module itself holds (not its children's);
    a parametrized tensor appears under its own name as its stored original."""
    state: dict[str, torch.Tensor] = {n: p for n, p in module._parameters.items() if p is not None}
    skip = getattr(module, "_non_persistent_buffers_set", set())
    state.update({n: b for n, b in module._buffers.items() if b is not None and n not in skip})
    if parametrize.is_parametrized(module):
        for n in module.parametrizations:
            state[n] = module.parametrizations[n].original
    return state


def _extra_bytes(module: nn.Module, name: str) -> int:
    """Bytes a parametrization stores besides its original (a mask)."""
    if not (parametrize.is_parametrized(module) and name in module.parametrizations):
        return 0
    return sum(b.numel() * b.element_size() for p in module.parametrizations[name] for b in p.buffers())


def _effective(module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
    if parametrize.is_parametrized(module) and name in module.parametrizations:
        return getattr(module, name).detach()
    return t.detach()


def _generic_weight(module: nn.Module, state: dict) -> Weight | None:
    """A plain ``weight`` parameter (or buffer), masked or not: its dtype is what is stored."""
    w = state.get("weight")
    if w is None:
        return None
    masked = get_mask(module) is not None
    bits = 8 * w.element_size()
    kind = f"{'masked' if masked else 'dense'} {_dtype(w)}"
    fake = getattr(module, "weight_bits", None)
    if isinstance(fake, int) and fake != bits:  # QAT: trained for `fake` bits, stored in float
        kind += f" (fake-quant int{fake})"
    return Weight(kind, list(w.shape), _nz(_effective(module, "weight", w)), bits, ("weight",))


def module_storage(module: nn.Module, seen: set[int] | None = None) -> Storage:
    """What ``module`` stores of its own. ``seen``: ids of tensors counted elsewhere
    (tied weights count once: the later owner gets neither their elements nor bytes)."""
    seen = set() if seen is None else seen
    state = own_state(module)
    fn = _reader(module, state) or _generic_weight
    weight = fn(module, state)
    main = set(weight.tensors) if weight else set()
    tied = any(id(state[n]) in seen for n in main)
    params = nonzero = nbytes = 0
    if weight is not None and not tied:
        params, nonzero = weight.numel, weight.nonzero
        nbytes = sum(state[n].numel() * state[n].element_size() + _extra_bytes(module, n) for n in main)
    for n in main:
        seen.add(id(state[n]))
    for n, t in state.items():
        if n in main or id(t) in seen:
            continue
        seen.add(id(t))
        nbytes += t.numel() * t.element_size() + _extra_bytes(module, n)
        if n in module._parameters or (parametrize.is_parametrized(module) and n in module.parametrizations):
            params += t.numel()
            nonzero += _nz(_effective(module, n, t))
    if weight is None:
        return Storage("", [], 0, 0.0, params, nonzero, nbytes)
    kind = f"tied ({weight.kind})" if tied else weight.kind
    return Storage(kind, weight.shape, weight.nonzero, float(weight.bits), params, nonzero, nbytes)


def stored_modules(model: nn.Module):
    """``(name, module, Storage)`` for every module, tied tensors counted at their first owner;
    the internals of a parametrization are counted through their owner."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        yield name, module, module_storage(module, seen)
