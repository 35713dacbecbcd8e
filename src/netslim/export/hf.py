"""``format: hf``: the compressed model as a Hugging Face directory that plain transformers loads.

``export: {format: hf, filename: NAME}`` writes ``OUT/NAME/`` (``config.json``,
``model.safetensors``, ``generation_config.json`` for generative models, the tokenizer /
processor files); in Python :func:`save_hf`. ``transformers.AutoModelFor...from_pretrained(dir)``
loads it without netslim (quantized models need the ``compressed-tensors`` package, as any
llm-compressor checkpoint does). What each kind of compression becomes:

* **structured pruning** (heads, FFN neurons, blocks): the shrunk tensors with the model config
  netslim already updated (``intermediate_size`` / ``n_inner``, Llama's head counts,
  ``num_hidden_layers``). Pruned heads of BERT-style models (head size ``hidden / heads``, no
  ``pruned_heads`` in transformers 5) are written back as all-zero heads: identical outputs, the
  notes say so, those bytes are not saved. Where the config cannot say it - sizes differing per
  block, GPT-2's fused heads, a block part replaced by Identity - the export is refused (one
  line) before anything is written: ``netslim.load`` / ``format: safetensors`` keep those models.
* **unstructured / N:M sparsity**: masks made permanent and :class:`SparseLinear` decoded,
  so the zeros sit in dense tensors. The sparse compressed-tensors formats (``sparse-bitmask``,
  ``sparse-24-bitmask``) would be smaller on disk, but compressed-tensors 0.20 / transformers 5
  no longer load them (``sparsity_config`` is ignored and the missing weights come up random;
  ``tests/export/test_hf_export.py`` measures both sizes and shows it), so dense is the choice;
  the step's notes say so.
* **weight-only int2/4/8** (RTN, GPTQ, HQQ with integer zeros; :class:`QuantizedLinear` /
  :class:`QuantizedEmbedding`): compressed-tensors ``pack-quantized`` with the very codes,
  fp16 scales and zero points (:mod:`.compressed`); embeddings too (compressed-tensors targets
  nn.Embedding). A tied embedding / LM head holding identical codes is written once.
  transformers loads symmetric Linear schemes on its default path, decoding in the model's fp32:
  the same logits as netslim. Asymmetric zero points and quantized embeddings it loads only when
  decoding at load time (``quantization_config.dequantize``, then set), in fp16 arithmetic:
  logits within fp16 rounding of netslim's (:func:`_loading_route`; the notes say which).
* **dynamic int8** (:class:`DynamicInt8Linear`, per-tensor activations): ``int-quantized`` W8A8
  with dynamic asymmetric per-tensor int8 activations, netslim's CPU scheme. Beside W8A8 layers
  quantized embeddings are written as their dequantized float weights (the notes say so).

Refused, one line each: a model that is not a transformers model (``format: safetensors``),
weight-shared layers (``format: nsz``), HQQ's fractional zero points, per-token dynamic int8
(another activation grid than compressed-tensors'), quantized GPT-2 ``Conv1D`` layers,
any other netslim layer type transformers does not build. The directory is written into a
temporary folder beside the target and renamed into place: never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError
from netslim.core.export import register_exporter
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear

from .compressed import CT_MODULES, Scheme, module_tensors, quantization_config, scheme_of

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
_SAFETENSORS = "format: safetensors (netslim.load reads it)"


@dataclass
class QLayer:
    """A layer written in compressed-tensors form: its scheme, tensors and netslim module."""

    scheme: Scheme
    tensors: dict[str, torch.Tensor]
    module: nn.Module

    @property
    def embedding(self) -> bool:
        return isinstance(self.module, QuantizedEmbedding)


@dataclass
class Plan:
    """Everything the directory will hold, computed (and every refusal raised) before writing."""

    cls_name: str
    config: Any  # the transformers config to write
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    quantized: dict[str, QLayer] = field(default_factory=dict)
    dequantize: list[str] = field(default_factory=list)  # why transformers decodes at load time
    dense_embeddings: list[str] = field(default_factory=list)  # quantized embeddings written dequantized
    dense_mixed: list[str] = field(default_factory=list)  # layers of a second scheme written dequantized
    notes: dict[str, Any] = field(default_factory=dict)
    write_tokenizer: Callable[[Path], None] | None = None
    generation_config: Any = None


def save_hf(model: nn.Module, path: str | os.PathLike, *, info: dict | None = None) -> Path:
    """Write ``model`` as a Hugging Face directory at ``path`` (see the module docstring); ``info``:
    a run's info block, whose ``source`` names the tokenizer (default: the model's own record)."""
    return export_hf(model, Path(path), info)[0]


def export_hf(model: nn.Module, path: Path, info: dict | None = None) -> tuple[Path, dict[str, Any]]:
    """The ``hf`` exporter: ``(directory, notes for the report)``; ``model`` is not changed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NetslimError(f"format: hf writes a directory; {str(path)!r} exists and is a file.")
    plan = plan_hf(model, info)
    _write_atomic(path, lambda tmp: _fill(tmp, plan))
    return path, plan.notes


# ------------------------------------------------------------------------------ planning
def plan_hf(model: nn.Module, info: dict | None = None) -> Plan:
    """The tensors, config and notes of the export, or a NetslimError saying why there is none."""
    _check_hf_model(model)
    from netslim.models.hf_arch import build_hf, register_hf_types, safe_attn_config

    cls = parametrize.type_before_parametrizations(model)
    register_hf_types(model.config.model_type)
    cfg = safe_attn_config({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    cfg["architectures"] = [cls.__name__]
    tied, out_name = _tied_output(model, cfg)
    cfg["tie_word_embeddings"] = tied if out_name is not None else cfg.get("tie_word_embeddings", False)
    with torch.device("meta"):
        fresh = build_hf({"class": cls.__name__, "config": cfg})
    plan = Plan(cls.__name__, fresh.config)
    walker = _Walker(model, plan)
    walker.visit("", model, fresh)
    _loading_route(plan)
    if tied and out_name is not None:
        plan.dense.pop(f"{out_name}.weight", None)
        plan.quantized.pop(out_name, None)
    padded = _pad_pruned_heads(fresh, plan)
    _check_against(fresh, plan, skip={f"{out_name}.weight"} if tied else set())
    dtype = _body_dtype(plan)
    fresh.config.dtype = dtype
    plan.notes = _notes(plan, tied, out_name, dtype, walker.sparse)
    if padded:
        plan.notes["pruned_heads"] = {
            "heads_kept": padded,
            "written_as": "zero heads",
            "why": f"{plan.cls_name}'s config derives the head size from hidden_size / num_attention_heads and "
            "transformers 5 has no pruned_heads, so the removed heads are written back as all-zero query / "
            "key / value rows and output columns: the same outputs, but those bytes are not saved (format: "
            "safetensors keeps the smaller model)",
        }
    plan.write_tokenizer, plan.notes["tokenizer"] = _tokenizer(model, info)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        plan.generation_config = model.generation_config
    return plan


def _check_hf_model(model: nn.Module) -> None:
    ok = False
    if "transformers" in sys.modules:
        from transformers import PreTrainedModel

        ok = isinstance(model, PreTrainedModel)
    if not ok:
        raise NetslimError(
            f"format: hf writes Hugging Face transformers models; a {type(model).__name__} is not one "
            f"(a zoo model or your own class): use {_SAFETENSORS}."
        )


def _tied_output(model: nn.Module, cfg: dict) -> tuple[bool, str | None]:
    """``(still tied, name of the output embedding)``: tied when the config ties them and the
    compressed model holds the same values (the same codes, for quantized ones) in both."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None:
        return False, None
    name = next((n for n, m in model.named_modules() if m is out), None)
    if not cfg.get("tie_word_embeddings", False):
        return False, name
    inp = model.get_input_embeddings()
    if isinstance(inp, CT_MODULES) or isinstance(out, CT_MODULES):
        same = (
            isinstance(inp, QuantizedEmbedding)
            and isinstance(out, QuantizedLinear)
            and all(torch.equal(getattr(inp, b), getattr(out, b)) for b in ("weight_packed", "scales", "zeros"))
            and (inp.bits, inp.group_size) == (out.bits, out.group_size)
            and out.bias is None
        )
    else:
        w_in, w_out = getattr(inp, "weight", None), getattr(out, "weight", None)
        same = (
            isinstance(w_in, torch.Tensor)
            and isinstance(w_out, torch.Tensor)
            and (w_in is w_out or (w_in.shape == w_out.shape and torch.equal(w_in, w_out)))
        )
    return bool(same), name


class _Walker:
    """Pairs every module of the compressed model with the module transformers builds at that
    path from the exported config, and collects the tensors to write."""

    def __init__(self, model: nn.Module, plan: Plan):
        self.model, self.plan = model, plan
        self.sparse = [0, 0, 0]  # masked / CSR layers, their zeros, their weights

    def visit(self, prefix: str, m: nn.Module, f: nn.Module | None) -> None:
        from netslim.codec.modules import SharedWeight
        from netslim.prune.sparse import SparseLinear

        where = prefix[:-1] or "(model)"
        if isinstance(m, SharedWeight):
            raise NetslimError(
                f"format: hf cannot write {where!r}: its weights are shared values from a codebook "
                "(weight sharing), which no Hugging Face format holds; use format: nsz."
            )
        if isinstance(m, CT_MODULES):
            return self._quantized(prefix[:-1], m, f)
        if isinstance(m, SparseLinear):
            self._shape(where, f, nn.Linear, (m.out_features, m.in_features))
            self._count(m.dense_2d())
            self.plan.dense[f"{prefix}weight"] = m.dense_2d()
            if m.bias is not None:
                self.plan.dense[f"{prefix}bias"] = m.bias
            return
        cls = parametrize.type_before_parametrizations(m)
        if f is None or cls is not type(f):
            if isinstance(m, nn.Identity) and self._fused_gelu(prefix[:-1], f):
                return
            built = "nothing" if f is None else f"a {type(f).__name__}"
            raise NetslimError(
                f"format: hf cannot write {where!r}: it is a {cls.__name__} where transformers builds {built} from "
                f"the config, so from_pretrained could not load it; use {_SAFETENSORS}."
            )
        names = list(m._parameters)
        if parametrize.is_parametrized(m):
            names += list(m.parametrizations)
            for pname in m.parametrizations:
                self._count(getattr(m, pname))
        for pname in names:
            t = getattr(m, pname)
            if t is not None:
                self.plan.dense[prefix + pname] = t
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                self.plan.dense[prefix + bname] = b
        for cname, child in m.named_children():
            if cname != "parametrizations":
                self.visit(f"{prefix}{cname}.", child, getattr(f, cname, None))

    def _count(self, w: torch.Tensor) -> None:
        self.sparse[0] += 1
        self.sparse[1] += int((w == 0).sum())
        self.sparse[2] += w.numel()

    def _quantized(self, name: str, m: nn.Module, f: nn.Module | None) -> None:
        emb = isinstance(m, QuantizedEmbedding)
        want = nn.Embedding if emb else nn.Linear
        if f is not None and type(f).__name__ == "Conv1D":
            raise NetslimError(
                f"format: hf cannot write {name!r}: it is a quantized transformers Conv1D (GPT-2's linear layers), "
                f"and compressed-tensors quantizes nn.Linear / nn.Embedding only; use {_SAFETENSORS}."
            )
        shape = (m.num_embeddings, m.embedding_dim) if emb else (m.out_features, m.in_features)
        self._shape(name, f, want, shape)
        scheme = scheme_of(m, name)
        self.plan.quantized[name] = QLayer(scheme, module_tensors(m, scheme), m)

    def _shape(self, where: str, f: nn.Module | None, want: type, shape: tuple[int, int]) -> None:
        built = None
        if isinstance(f, nn.Embedding):
            built = (f.num_embeddings, f.embedding_dim)
        elif isinstance(f, nn.Linear):
            built = (f.out_features, f.in_features)
        if not isinstance(f, want) or built != shape:
            what = "nothing" if f is None else f"a {type(f).__name__}" + (f" {list(built)}" if built else "")
            raise NetslimError(
                f"format: hf cannot write {where!r} ({want.__name__} {list(shape)}): transformers builds {what} there "
                f"from the exported config, which cannot express this model; use {_SAFETENSORS}."
            )

    def _fused_gelu(self, name: str, f: nn.Module | None) -> bool:
        """dynamic_int8 moved this GELU into the int8 ``dense`` beside it (``post_op``); the
        transformers module computes the same GELU after that Linear."""
        from netslim.quantize.dynamic import DynamicInt8Linear
        from netslim.quantize.int8_body import gelu_kind

        parent, _, _ = name.rpartition(".")
        dense = getattr(self.model.get_submodule(parent), "dense", None) if parent else None
        return (
            isinstance(dense, DynamicInt8Linear)
            and f is not None
            and dense.post_op != "none"
            and gelu_kind(f) == dense.post_op
        )


def _loading_route(plan: Plan) -> None:
    """How transformers will load the quantized layers. Its default path (weights decoded on the
    first forward pass) takes symmetric Linear schemes only: transformers 5 + compressed-tensors
    0.20 allocate a packed zero point unpacked, then fail to unpack it, and find no ``weight`` on
    a quantized nn.Embedding. Asymmetric or embedding layers therefore set ``dequantize`` (decode
    while loading), which also drops activation quantization - so next to W8A8 layers quantized
    embeddings are written as their dequantized float weights, and asymmetric layers are refused."""
    if any(q.scheme.activations for q in plan.quantized.values()):
        for name, q in list(plan.quantized.items()):
            if q.embedding:
                plan.dense[f"{name}.weight"] = q.module.dequantize_weight(torch.float32)
                plan.dense_embeddings.append(name)
                del plan.quantized[name]
        asym = next((n for n, q in plan.quantized.items() if not q.scheme.symmetric), None)
        if asym is not None:
            raise NetslimError(
                f"format: hf cannot write W8A8 layers beside the asymmetric weight-only layer {asym!r}: transformers "
                f"loads the latter only by decoding every layer at load time, which drops the activation "
                f"quantization of the former; use {_SAFETENSORS}."
            )
        return
    if any(not q.scheme.symmetric for q in plan.quantized.values()):
        plan.dequantize.append("asymmetric zero points")
    if any(q.embedding for q in plan.quantized.values()):
        plan.dequantize.append("quantized embeddings")
    schemes = Counter()
    for q in plan.quantized.values():
        m = q.module
        schemes[q.scheme] += m.num_embeddings * m.embedding_dim if q.embedding else m.out_features * m.in_features
    if plan.dequantize and len(schemes) > 1:
        # transformers 5.23 decodes every dense layer with ONE scheme (its get_dense_scheme: the first
        # config group), so a second scheme would be decoded on the wrong grid: keep the scheme that
        # holds the most weights quantized, write the others as their exact dequantized weights.
        keep = schemes.most_common(1)[0][0]
        for name, q in list(plan.quantized.items()):
            if q.scheme != keep:
                plan.dense[f"{name}.weight"] = q.module.dequantize_weight(torch.float32)
                if getattr(q.module, "bias", None) is not None:
                    plan.dense[f"{name}.bias"] = q.module.bias
                plan.dense_mixed.append(name)
                del plan.quantized[name]
        if not any(q.embedding for q in plan.quantized.values()) and "quantized embeddings" in plan.dequantize:
            plan.dequantize.remove("quantized embeddings")


_HEAD_ROWS = ("query", "key", "value", "q_lin", "k_lin", "v_lin")  # projections whose rows are heads
_HEAD_COLS = ("output.dense", "out_lin")  # projections whose columns are heads


def _pad_pruned_heads(fresh: nn.Module, plan: Plan) -> dict[str, int]:
    """Pruned heads of a model whose config cannot hold them (BERT-style: head size =
    hidden / heads, no ``head_dim``): append all-zero heads to the float query / key / value rows
    and attention-output columns until each block has the config's head count. A zero head's
    scores are constant, its values zero, and its output columns zero, so the outputs are those of
    the pruned model. Applied only when every projection of a block lost the same whole number of
    heads; anything else is left to :func:`_check_against` to refuse. ``{block: heads kept}``."""
    cfg = fresh.config
    if getattr(cfg, "head_dim", None) is not None or not getattr(cfg, "num_attention_heads", None):
        return {}
    size = cfg.hidden_size // cfg.num_attention_heads
    expected = {k: tuple(t.shape) for k, t in fresh.state_dict().items()}
    pads: dict[str, list[tuple[str, int, int]]] = {}  # block -> (tensor, dim, zero units to add)
    for k, t in plan.dense.items():
        want = expected.get(k)
        if want is None or tuple(t.shape) == want or t.dim() != len(want) or "attention." not in k:
            continue
        module, leaf = k.rsplit(".", 1)
        rows = module.endswith(_HEAD_ROWS) and leaf in ("weight", "bias")
        cols = module.endswith(_HEAD_COLS) and leaf == "weight" and t.dim() == 2
        dim = 0 if rows else 1 if cols else None
        if dim is None or any(a != b for i, (a, b) in enumerate(zip(t.shape, want)) if i != dim):
            return {}
        missing = want[dim] - t.shape[dim]
        if missing <= 0 or missing % size:
            return {}
        pads.setdefault(k.split("attention.", 1)[0], []).append((k, dim, missing))
    kept = {}
    for block, items in pads.items():
        if len({m for _, _, m in items}) != 1 or len(items) < 7:  # q, k, v (weight + bias) and output
            return {}
        kept[block.rstrip(".")] = cfg.num_attention_heads - items[0][2] // size
    for items in pads.values():
        for k, dim, missing in items:
            t = plan.dense[k].detach()
            shape = list(t.shape)
            shape[dim] = missing
            plan.dense[k] = torch.cat([t, t.new_zeros(shape)], dim=dim)
    return kept


def _check_against(fresh: nn.Module, plan: Plan, skip: set[str]) -> None:
    """Every tensor transformers builds from the config is written, with the same shape."""
    expected = {k: tuple(t.shape) for k, t in fresh.state_dict().items() if k not in skip}
    owned = {f"{n}.{p}" for n in plan.quantized for p in ("weight", "bias")}
    for k, t in plan.dense.items():
        if k not in expected:
            raise NetslimError(
                f"format: hf: tensor {k!r} has no place in the transformers model the config builds; "
                f"use {_SAFETENSORS}."
            )
        if tuple(t.shape) != expected[k]:
            raise NetslimError(
                f"format: hf: {k!r} is {list(t.shape)} but the config builds {list(expected[k])}: the config cannot "
                f"express this model (sizes differing per block, or pruned heads of a model whose head size is "
                f"hidden / heads); use {_SAFETENSORS}."
            )
    missing = sorted(k for k in expected if k not in plan.dense and k not in owned)
    if missing:
        raise NetslimError(
            f"format: hf: the model has no tensor for {missing[0]!r}, which the config builds; use {_SAFETENSORS}."
        )


def _body_dtype(plan: Plan) -> torch.dtype:
    counts: Counter = Counter()
    for t in plan.dense.values():
        if t.is_floating_point():
            counts[t.dtype] += t.numel()
    if len(counts) > 1:
        kinds = ", ".join(str(d).replace("torch.", "") for d in counts)
        raise NetslimError(
            f"format: hf: the model mixes float dtypes ({kinds}), which one transformers config "
            f"dtype cannot say; use {_SAFETENSORS}."
        )
    dtype = next(iter(counts), torch.float32)
    if plan.quantized and dtype != torch.float32:
        raise NetslimError(
            f"format: hf: a quantized model with a {str(dtype).replace('torch.', '')} body: "
            "compressed-tensors would hold its scales in that dtype (rounded); export the float32 "
            f"model, or use {_SAFETENSORS}."
        )
    return dtype


def _notes(plan: Plan, tied: bool, out_name: str | None, dtype: torch.dtype, sparse: list[int]) -> dict[str, Any]:
    notes: dict[str, Any] = {
        "class": plan.cls_name,
        "loads_with": f"transformers.{plan.cls_name}.from_pretrained(dir)",
        "dtype": str(dtype).replace("torch.", ""),
    }
    if out_name is not None:
        notes["tied_embeddings"] = tied
    if plan.quantized:
        schemes = Counter(("embedding " if q.embedding else "") + q.scheme.label for q in plan.quantized.values())
        notes["quantization"] = {
            "format": "compressed-tensors",
            "requires": "pip install compressed-tensors",
            "layers": len(plan.quantized),
            "schemes": dict(schemes),
            "dequantize_on_load": bool(plan.dequantize),
        }
        if plan.dequantize:
            notes["quantization"]["why_dequantize"] = (
                f"{' and '.join(plan.dequantize)}: transformers 5 + compressed-tensors 0.20 load them only when "
                "decoding the weights at load time (quantization_config.dequantize), in fp16 arithmetic, so logits "
                "match netslim's within fp16 rounding"
            )
    if plan.dense_embeddings:
        notes["dequantized_embeddings"] = {
            "layers": plan.dense_embeddings,
            "why": "written as dense float weights (their exact dequantized values): transformers loads quantized "
            "embeddings only by decoding every layer at load time, which would drop the W8A8 layers' "
            "activation quantization",
        }
    if plan.dense_mixed:
        notes["dequantized_layers"] = {
            "layers": plan.dense_mixed,
            "why": "transformers 5 decodes every layer of a dequantize-on-load checkpoint with one scheme (its first "
            "config group), so the layers of the other quantization scheme(s) are written as their exact "
            "dequantized float weights; netslim.load / format: safetensors keep them quantized",
        }
    if sparse[0]:
        notes["sparsity"] = {
            "layers": sparse[0],
            "zeros": round(sparse[1] / max(sparse[2], 1), 4),
            "format": "dense",
            "why": "compressed-tensors 0.20 / transformers 5 no longer load sparse-bitmask (sparsity_config is "
            "ignored and the weights would load random), so the zeros are kept in dense tensors",
        }
    return notes


def _tokenizer(model: nn.Module, info: dict | None) -> tuple[Callable[[Path], None] | None, str | None]:
    """How to put the model's tokenizer / processor into the directory, and what the notes say."""
    from netslim.models.sources import module_source

    source = (info or {}).get("source") or module_source(model)
    if not source:
        return None, None
    src = Path(str(source))
    if src.is_dir():  # a model directory: its tokenizer / processor files as they are
        files = [src / f for f in TOKENIZER_FILES if (src / f).is_file()]

        def copy(d: Path) -> None:
            for f in files:
                shutil.copyfile(f, d / f.name)

        return (copy, f"copied from {src}") if files else (None, None)
    from netslim.models.hf_tokenizers import load_tokenizer

    tok = load_tokenizer(str(source))  # a built-in name (smollm2, minilm, tiny-*): read now, before writing
    return (lambda d: tok.save_pretrained(str(d))), f"{source} (saved with save_pretrained)"


# ------------------------------------------------------------------------------- writing
def _fill(tmp: Path, plan: Plan) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for k, t in plan.dense.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        t = t.contiguous() if key not in seen else t.clone()  # a tensor stored under two names: two copies
        seen.add(key)
        tensors[k] = t
    for name, q in plan.quantized.items():
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in q.tensors.items()})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "netslim"})
    config = json.loads(plan.config.to_json_string(use_diff=False))
    config["dtype"] = str(plan.config.dtype).replace("torch.", "")
    config.pop("quantization_config", None)
    if plan.quantized:
        groups: dict[Scheme, list[str]] = {}
        for name, q in plan.quantized.items():
            groups.setdefault(q.scheme, []).append(name)
        config["quantization_config"] = quantization_config(groups, dequantize=bool(plan.dequantize))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if plan.generation_config is not None:
        plan.generation_config.save_pretrained(str(tmp))
    if plan.write_tokenizer is not None:
        plan.write_tokenizer(tmp)


def _write_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """``fill`` a temporary directory beside ``path``, then rename it to ``path`` (an existing
    directory there is replaced only once the new one is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        fill(tmp)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / path.name).is_dir() and not path.exists():
            os.replace(old / path.name, path)  # put the previous export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


register_exporter("hf", export_hf, "")
