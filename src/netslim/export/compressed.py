"""compressed-tensors <-> netslim's integer layers, both ways (issue 18).

compressed-tensors is the checkpoint format of llm-compressor, read by transformers (with the
``compressed-tensors`` package installed) and vLLM: a ``quantization_config`` in config.json
(``quant_method: compressed-tensors``, ``config_groups`` of schemes with their ``targets``)
and per quantized layer a few tensors beside the usual ones. Its conventions, as
compressed-tensors 0.20.1 implements them (``tests/export/test_compressed_tensors.py``
checks this module against the package's own packing and dequantization):

* codes are signed, ``q in [-2^(b-1), 2^(b-1) - 1]``, and ``w = (q - zp) * scale`` per group
  of ``group_size`` consecutive input columns (``strategy: group``), per output row
  (``channel``) or per tensor (``tensor``); symmetric schemes store no zero point (zp = 0).
  netslim's packed format (:mod:`netslim.quantize.packing`) stores unsigned codes
  ``c = q + 2^(b-1)`` and zeros ``z = zp + 2^(b-1)`` (symmetric: every ``z == 2^(b-1)``),
  so ``(c - z) * scale`` is the same number: the mapping is exact.
* ``pack-quantized`` (weight-only, 1..8 bits): ``weight_packed`` int32 ``(R, ceil(C b / 32))``,
  one little-endian bit stream per row (element ``j`` at bits ``[j b, (j+1) b)``) of
  ``q + 2^(b-1)`` - netslim's unsigned codes; an asymmetric zero point is packed the same
  way along dim 0 (``weight_zero_point`` int32 ``(ceil(R b / 32), G)``); ``weight_shape``
  ``[R, C]``; ``weight_scale`` ``(R, G)``. compressed-tensors infers this format for every
  weight-only integer scheme, int8 included (``int-quantized`` requires input activations).
* ``int-quantized`` / ``naive-quantized``: ``weight`` int8 ``(R, C)`` signed codes, zero
  points int8 ``(R, G)``; netslim writes it for W8A8 (:class:`DynamicInt8Linear`).

netslim -> compressed-tensors (:func:`scheme_of`, :func:`module_tensors`,
:func:`quantization_config`); compressed-tensors -> netslim (:func:`parse_config`,
:func:`read_layer`; a whole directory: :mod:`.compressed_dir`): netslim's own
:class:`QuantizedLinear` / :class:`QuantizedEmbedding` / :class:`DynamicInt8Linear` layers
holding the very codes, scales and zero points of the file; a scheme netslim cannot hold
exactly is a :class:`NetslimError` naming it. Neither direction needs the
``compressed-tensors`` package (only transformers' loading of the result does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, shown
from netslim.quantize.dynamic import DynamicInt8Linear
from netslim.quantize.packing import PARAM_DTYPE, pack, unpack
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear

QUANT_METHOD = "compressed-tensors"
PACK, INT, NAIVE = "pack-quantized", "int-quantized", "naive-quantized"
READ_FORMATS = (PACK, INT, NAIVE, "mixed-precision")
CT_MODULES = (QuantizedLinear, QuantizedEmbedding, DynamicInt8Linear)
SUFFIXES = (
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_shape",
    "weight_g_idx",
    "weight_global_scale",
    "input_scale",
    "input_zero_point",
    "output_scale",
    "output_zero_point",
)


# ------------------------------------------------------------------------ int32 packing
def ct_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``(R, C)`` in ``[0, 2^bits)`` -> int32 ``(R, ceil(C bits / 32))``, as
    compressed-tensors' ``pack_to_int32`` lays them out (for any host byte order)."""
    rows, cols = codes.shape
    padded = torch.zeros(rows, -(-cols // 32) * 32, dtype=torch.uint8, device=codes.device)
    padded[:, :cols] = codes
    octets = pack(padded, bits).to(torch.int64).view(rows, -1, 4)  # (R, words, 4) bytes
    words = octets[..., 0] | octets[..., 1] << 8 | octets[..., 2] << 16 | octets[..., 3] << 24
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words[:, : -(-cols * bits // 32)].contiguous()


def ct_unpack(words: torch.Tensor, bits: int, *, cols: int) -> torch.Tensor:
    """Inverse of :func:`ct_pack`: int32 ``(R, W)`` -> uint8 codes ``(R, cols)``."""
    rows = words.shape[0]
    w = words.to(torch.int64) & 0xFFFFFFFF
    octets = torch.stack([(w >> s) & 0xFF for s in (0, 8, 16, 24)], dim=-1).reshape(rows, -1).to(torch.uint8)
    whole = -(-octets.shape[1] // bits) * bits  # whole groups of `bits` bytes (= 8 codes) for the stream
    if whole != octets.shape[1]:
        octets = torch.cat([octets, octets.new_zeros(rows, whole - octets.shape[1])], dim=1)
    return unpack(octets, bits)[:, :cols]


# ----------------------------------------------------------------------------- schemes
@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors quantization scheme, in netslim's words.

    ``bits``: the file's ``num_bits``; ``group_size`` None: one scale per output row
    (``strategy: channel``); ``activations``: None (weight-only) or ``"dynamic_per_tensor"``
    (int8, asymmetric, one scale per call: netslim's :class:`DynamicInt8Linear` per_tensor).
    """

    bits: int
    group_size: int | None
    symmetric: bool
    activations: str | None = None

    @property
    def format(self) -> str:
        return INT if self.activations else PACK

    @property
    def label(self) -> str:
        g = "per channel" if self.group_size is None else f"g{self.group_size}"
        act = " + int8 dynamic per-tensor activations" if self.activations else ""
        return f"int{self.bits} {g} {'sym' if self.symmetric else 'asym'}{act} ({self.format})"

    def to_json(self, targets: list[str]) -> dict[str, Any]:
        weights = {
            "num_bits": self.bits,
            "type": "int",
            "symmetric": self.symmetric,
            "dynamic": False,
            "strategy": "channel" if self.group_size is None else "group",
            "group_size": self.group_size,
        }
        acts = None
        if self.activations:
            acts = {
                "num_bits": 8,
                "type": "int",
                "symmetric": False,
                "strategy": "tensor",
                "dynamic": True,
                "group_size": None,
            }
        return {
            "targets": targets,
            "weights": weights,
            "input_activations": acts,
            "output_activations": None,
            "format": self.format,
        }


def scheme_of(module: nn.Module, name: str) -> Scheme:
    """The compressed-tensors scheme that holds ``module`` exactly, or a NetslimError saying why none does."""
    if isinstance(module, DynamicInt8Linear):
        if module.activations != "per_tensor":
            raise NetslimError(
                f"format: hf cannot write {name!r} (dynamic int8, activations {module.activations}): netslim scales a "
                "token by absmax/127, compressed-tensors' dynamic per-token scheme by absmax/127.5, so transformers "
                "would compute other activations; use activations: per_tensor, or format: safetensors (netslim.load)."
            )
        return Scheme(8, None, True, "dynamic_per_tensor")
    zeros = module.zeros.float()
    top = 2**module.bits - 1
    if not bool(((zeros == zeros.round()) & (zeros >= 0) & (zeros <= top)).all()):
        raise NetslimError(
            f"format: hf cannot write {name!r}: its zero points are not integers in [0, {top}] (HQQ rounding), and "
            "compressed-tensors stores integer zero points; use format: safetensors (netslim.load reads it), or "
            "quantize with rounding: rtn or gptq."
        )
    symmetric = bool((zeros == 2 ** (module.bits - 1)).all())
    return Scheme(module.bits, module.group_size, symmetric)


def module_tensors(module: nn.Module, scheme: Scheme) -> dict[str, torch.Tensor]:
    """The tensors compressed-tensors stores for ``module`` (names local to the module)."""
    if isinstance(module, DynamicInt8Linear):
        out = {
            "weight": module.weight_int8.detach().cpu().clone(),
            "weight_scale": module.weight_scale.detach().float().cpu().reshape(-1, 1).clone(),
        }
    else:
        codes = module.codes().cpu()  # (R, C) unsigned
        out = {
            "weight_packed": ct_pack(codes, scheme.bits),
            "weight_scale": module.scales.detach().cpu().clone(),  # fp16 (R, G): netslim's own values
            "weight_shape": torch.tensor(list(codes.shape), dtype=torch.int64),
        }
        if not scheme.symmetric:
            zeros = module.zeros.detach().cpu().to(torch.uint8)  # integers, checked by scheme_of
            out["weight_zero_point"] = ct_pack(zeros.t(), scheme.bits).t().contiguous()
    bias = getattr(module, "bias", None)
    if bias is not None:
        out["bias"] = bias.detach().float().cpu().clone()
    return out


def quantization_config(groups: dict[Scheme, list[str]], dequantize: bool = False) -> dict[str, Any]:
    """config.json's ``quantization_config`` for layers grouped by scheme (targets: module names).

    ``dequantize``: add ``"dequantize": true``, transformers' ``CompressedTensorsConfig`` option
    to decode the weights while loading (see :func:`netslim.export.hf._loading_route` for when
    its default path cannot load a checkpoint); compressed-tensors' own config and other readers
    ignore the key.
    """
    formats = {s.format for s in groups}
    cfg: dict[str, Any] = {
        "quant_method": QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": s.to_json(sorted(names)) for i, (s, names) in enumerate(groups.items())},
        "ignore": [],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }
    if dequantize:
        cfg["dequantize"] = True
    return cfg


# ============================================================================== reading
@dataclass(frozen=True)
class Group:
    name: str
    scheme: Scheme
    format: str
    targets: tuple[str, ...]
    strategy: str  # group, channel or tensor (one scale for the whole weight)


def parse_config(qcfg: dict, where: str) -> tuple[list[Group], list[str]]:
    """The config groups of a compressed-tensors ``quantization_config``; one NetslimError line
    for anything netslim cannot hold exactly (listing what it reads)."""
    fmt = qcfg.get("format", "dense")
    if fmt not in READ_FORMATS:
        raise _unreadable(where, f"format {shown(fmt, 60)}")
    for key in ("sparsity_config", "transform_config", "kv_cache_scheme"):
        if qcfg.get(key):
            raise _unreadable(where, f"a {key}")
    if qcfg.get("quantization_status", "compressed") != "compressed":
        raise _unreadable(
            where, f"quantization_status {shown(qcfg.get('quantization_status'), 40)} (weights not compressed)"
        )
    groups_raw = qcfg.get("config_groups")
    if not isinstance(groups_raw, dict) or not groups_raw:
        raise NetslimError(f"{where}: quantization_config has no config_groups.")
    groups = [_group(str(k), v, fmt, where) for k, v in list(groups_raw.items())[:256]]
    ignore = qcfg.get("ignore") or []
    if not (isinstance(ignore, list) and all(isinstance(t, str) for t in ignore)):
        raise NetslimError(f"{where}: quantization_config 'ignore' must be a list of strings.")
    for t in (*ignore, *(t for g in groups for t in g.targets)):
        _check_pattern(t, where)
    return groups, ignore


def _group(key: str, raw: Any, fmt: str, where: str) -> Group:
    what = f"config group {shown(key, 40)}"
    if not isinstance(raw, dict):
        raise NetslimError(f"{where}: {what} must be an object.")
    gfmt = raw.get("format") or fmt
    if gfmt not in (PACK, INT, NAIVE):
        raise _unreadable(where, f"{what} in format {shown(gfmt, 60)}")
    targets = raw.get("targets")
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        raise NetslimError(f"{where}: {what} needs 'targets', a non-empty list of strings.")
    if raw.get("output_activations"):
        raise _unreadable(where, f"{what} with output activation quantization")
    w = raw.get("weights")
    if not isinstance(w, dict):
        raise _unreadable(where, f"{what} without weight quantization")
    bits, sym = w.get("num_bits"), w.get("symmetric", True)
    strategy = w.get("strategy") or (
        "group" if (w.get("group_size") or 0) > 0 else "channel" if w.get("group_size") == -1 else "tensor"
    )
    if w.get("type", "int") != "int" or not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise _unreadable(where, f"{what}: {shown(w.get('type'), 20)} weights of {shown(bits, 20)} bits")
    if strategy not in ("group", "channel", "tensor") or w.get("block_structure") or w.get("dynamic"):
        raise _unreadable(where, f"{what}: weight strategy {shown(strategy, 30)}")
    if w.get("actorder") not in (None, False, "weight", "static"):
        raise _unreadable(where, f"{what}: actorder {shown(w.get('actorder'), 30)} (a column permutation)")
    g = w.get("group_size") if strategy == "group" else None
    if strategy == "group" and not (isinstance(g, int) and not isinstance(g, bool) and g > 0):
        raise NetslimError(f"{where}: {what}: group strategy needs a positive group_size; got {shown(g, 30)}.")
    if not isinstance(sym, bool):
        raise NetslimError(f"{where}: {what}: 'symmetric' must be true or false.")
    acts = _activations(raw.get("input_activations"), bits, sym, strategy, what, where)
    return Group(key, Scheme(bits, g, sym, acts), gfmt, tuple(targets), strategy)


def _activations(a: Any, bits: int, sym: bool, strategy: str, what: str, where: str) -> str | None:
    if not a:
        return None
    if not isinstance(a, dict):
        raise NetslimError(f"{where}: {what}: 'input_activations' must be an object.")
    dynamic_tensor = (
        a.get("type", "int") == "int"
        and a.get("num_bits") == 8
        and a.get("dynamic") is True
        and a.get("strategy", "tensor") == "tensor"
        and a.get("symmetric", True) is False
    )
    if not (dynamic_tensor and bits == 8 and sym and strategy == "channel"):
        raise _unreadable(
            where,
            f"{what}: input activations {shown(a, 120)} with int{bits} "
            f"{strategy} weights (netslim's W8A8 is int8 symmetric per-channel weights with "
            "dynamic asymmetric per-tensor int8 activations)",
        )
    return "dynamic_per_tensor"


def _unreadable(where: str, what: str) -> NetslimError:
    return NetslimError(
        f"{where}: netslim cannot read compressed-tensors {what}; it reads integer weight-only schemes "
        f"({PACK}, {INT}, {NAIVE}; group, channel or tensor strategy, 1..8 bits) and W8A8 with dynamic "
        "per-tensor activations."
    )


_QUANTIFIED_GROUP = re.compile(r"\)(\*|\+|\?|\{)")


def _check_pattern(target: str, where: str) -> None:
    """``re:`` patterns come from a file: bounded, so none can backtrack for long on a module name
    (no quantified group, at most 4 unbounded repeats)."""
    if not target.startswith("re:"):
        return
    pat = target[3:]
    bad = len(pat) > 300 or _QUANTIFIED_GROUP.search(pat) or pat.count("*") + pat.count("+") > 4
    try:
        re.compile(pat)
    except re.error:
        bad = True
    if bad:
        raise NetslimError(
            f"{where}: target {shown(target, 80)} is not a pattern netslim evaluates (at most 300 "
            "characters, 4 '*'/'+' repeats, no repeated group)."
        )


# --------------------------------------------------------------- one layer from a file
def _slot(bits: int) -> int:
    """netslim's storage width for ``bits``-bit codes (2, 4 or 8 bits per code)."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def _tensor(get, key: str, shape: tuple, dtypes: tuple, where: str) -> torch.Tensor:
    t = get(key)
    if t is None:
        raise NetslimError(f"{where}: no tensor {key!r}.")
    if tuple(t.shape) != tuple(shape) or (dtypes and t.dtype not in dtypes):
        want = "/".join(str(d).replace("torch.", "") for d in dtypes) or "float"
        raise NetslimError(
            f"{where}: tensor {key!r} must be {want} of shape {list(shape)}; got "
            f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}."
        )
    if not dtypes and not t.is_floating_point():
        raise NetslimError(f"{where}: tensor {key!r} must hold floats; got {t.dtype}.")
    return t


def _fp16_exact(scale: torch.Tensor, key: str, where: str) -> torch.Tensor | None:
    """``scale`` in fp16, or None when fp16 cannot hold its values exactly (e.g. llm-compressor's
    fp32 scales of an fp32 model); non-finite scales are an error."""
    if not bool(torch.isfinite(scale).all()):
        raise NetslimError(f"{where}: {key!r} holds non-finite values.")
    s16 = scale.to(PARAM_DTYPE)
    return s16 if bool((s16.to(scale.dtype) == scale).all()) else None


def _dense_layer(
    module: nn.Module,
    signed: torch.Tensor,
    zp: torch.Tensor,
    scale: torch.Tensor,
    n_groups: int,
    bias: torch.Tensor | None,
    where: str,
) -> nn.Module:
    """The float layer of codes whose scales fp16 cannot hold: ``(q - zero) * scale`` computed in
    the scales' own precision (as compressed-tensors decompresses), stored as fp32 weights."""
    rows, cols = signed.shape
    q = signed.to(torch.float64).view(rows, n_groups, -1)
    z = zp.to(torch.float64).expand(rows, n_groups).unsqueeze(-1)
    w = ((q - z).to(scale.dtype) * scale.expand(rows, n_groups).unsqueeze(-1)).reshape(rows, cols).float()
    if isinstance(module, nn.Embedding):
        new = nn.Embedding(rows, cols, module.padding_idx)
    else:
        new = nn.Linear(cols, rows, bias is not None)
        if bias is not None:
            new.bias = nn.Parameter(_tensor(lambda k: bias, "bias", (rows,), (), where).float().clone())
    new.weight = nn.Parameter(w)
    new.netslim_float_scales = str(scale.dtype).replace("torch.", "")  # open_compressed_dir warns once
    return new


def read_layer(module: nn.Module, group: Group, *, get, where: str) -> nn.Module:
    """netslim's layer for the skeleton ``module`` (an nn.Linear / nn.Embedding) from its
    compressed-tensors tensors (``get(local_name) -> Tensor | None``)."""
    s, fmt = group.scheme, group.format
    emb = isinstance(module, nn.Embedding)
    rows, cols = (module.num_embeddings, module.embedding_dim) if emb else (module.out_features, module.in_features)
    if s.group_size is not None and cols % s.group_size:
        raise NetslimError(f"{where}: group_size {s.group_size} does not divide its {cols} input columns.")
    n_groups = 1 if s.group_size is None else cols // s.group_size
    pshape = (1,) if group.strategy == "tensor" else (rows, n_groups)  # tensor: one scale (and zero) in all
    scale = _tensor(get, "weight_scale", pshape, (), where).reshape(-1, n_groups)
    if s.activations:
        return _read_w8a8(module, get, scale, where)
    half, slot = 2 ** (s.bits - 1), _slot(s.bits)
    if fmt == PACK:
        shape = _tensor(get, "weight_shape", (2,), (torch.int64, torch.int32), where)
        if shape.tolist() != [rows, cols]:
            raise NetslimError(f"{where}: 'weight_shape' is {shape.tolist()}; the model has {[rows, cols]}.")
        words = _tensor(get, "weight_packed", (rows, -(-cols * s.bits // 32)), (torch.int32,), where)
        signed = ct_unpack(words, s.bits, cols=cols).to(torch.int16) - half  # (R, C)
    else:
        signed = _tensor(get, "weight", (rows, cols), (torch.int8,), where).to(torch.int16)
        if int(signed.min()) < -half or int(signed.max()) >= half:
            raise NetslimError(f"{where}: 'weight' holds codes outside the {s.bits}-bit range [{-half}, {half - 1}].")
    zp = torch.zeros(1, 1, dtype=torch.int16)
    if not s.symmetric:
        zp = _zero_points(get, fmt, s.bits, pshape, where).reshape(-1, n_groups)
    expand = (rows, n_groups)
    bias = get("bias")
    if (bias is None) != (getattr(module, "bias", None) is None):
        raise NetslimError(f"{where}: the bias is {'missing' if bias is None else 'unexpected'}.")
    scales = _fp16_exact(scale, "weight_scale", where)
    if scales is None:
        return _dense_layer(module, signed, zp, scale, n_groups, bias, where)
    scales = scales.expand(expand).contiguous()
    codes = (signed + 2 ** (slot - 1)).to(torch.uint8)
    zeros = (zp + 2 ** (slot - 1)).expand(expand).to(PARAM_DTYPE)
    if emb:
        new = QuantizedEmbedding(rows, cols, slot, s.group_size, module.padding_idx)
    else:
        new = QuantizedLinear(cols, rows, slot, s.group_size, bias is not None)
        if bias is not None:
            new.bias = nn.Parameter(_tensor(get, "bias", (rows,), (), where).float().clone())
    new.set_codes(codes, scales, zeros)
    return new


def _zero_points(get, fmt: str, bits: int, shape: tuple, where: str) -> torch.Tensor:
    """Signed zero points: packed int32 along dim 0 (pack-quantized, group / channel), else as stored."""
    half = 2 ** (bits - 1)
    if fmt == PACK and len(shape) == 2:
        words = _tensor(get, "weight_zero_point", (-(-shape[0] * bits // 32), shape[1]), (torch.int32,), where)
        return ct_unpack(words.t(), bits, cols=shape[0]).t().to(torch.int16) - half
    zp = get("weight_zero_point")
    zp = _tensor(get, "weight_zero_point", shape, (zp.dtype,) if zp is not None else (), where)
    zf = zp.double()
    if not bool(((zf == zf.round()) & (zf >= -half) & (zf < half)).all()):
        raise NetslimError(f"{where}: 'weight_zero_point' must hold integers in [{-half}, {half - 1}].")
    return zf.to(torch.int16)


def _read_w8a8(module: nn.Module, get, scale: torch.Tensor, where: str) -> DynamicInt8Linear:
    if not isinstance(module, nn.Linear):
        raise NetslimError(f"{where}: W8A8 applies to Linear layers; this is a {type(module).__name__}.")
    rows, cols = module.out_features, module.in_features
    w = _tensor(get, "weight", (rows, cols), (torch.int8,), where)
    if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all())):
        raise NetslimError(f"{where}: 'weight_scale' must hold finite scales > 0.")
    bias = get("bias")
    new = DynamicInt8Linear(cols, rows, bias is not None, activations="per_tensor")
    new.weight_int8.copy_(w)
    new.weight_scale.copy_(scale.float().expand(rows, 1).reshape(-1))
    if bias is not None:
        new.bias = nn.Parameter(_tensor(get, "bias", (rows,), (), where).float().clone())
    return new
