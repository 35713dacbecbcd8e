"""An ``.onnx`` file as a model: ``netslim eval / bench / inspect`` run it in ONNX Runtime (CPU).

:class:`OnnxModel` is an ``nn.Module`` whose ``forward`` feeds its tensors to an ONNX Runtime
session and returns torch tensors, so every task scores it as it scores a PyTorch model:

* inputs by the graph's names (``input_ids``, ``attention_mask``, ``pixel_values``, or one
  positional tensor); a missing ``attention_mask`` is ones, a missing ``token_type_ids``
  zeros; ``use_cache`` / ``return_dict`` / ``output_hidden_states`` are ignored (the model
  runs without a cache); a KV-cache decoder step (``export_onnx(..., kv_cache=True)``) runs
  as a whole-sequence model: missing ``past_key_values.*`` are empty (past length 0) and
  ``position_ids`` count from 0; ``labels`` (training) are refused: an ONNX file runs inference only;
* outputs: one tensor for a plain module; for a Hugging Face kind an :class:`OnnxOutput`,
  a tuple whose items are also attributes by name (``out.logits``, ``out.last_hidden_state``);
* ONNX Runtime's intra-op threads follow ``torch.get_num_threads()`` at each call (a session
  per thread count, the last one kept), so ``--threads`` pins both runtimes alike; graph
  optimisations are on (ORT fuses QDQ pairs into integer kernels).

The file's weights are also held as tensors of :class:`OnnxLayer` children named like the
PyTorch modules they came from (:mod:`netslim.models.onnx_graph`), so ``measure`` counts
params, non-zeros, bits and stored bytes from what the file stores. MACs: when a MAC counter
hooks the layers (``measure.macs_per_layer``), a forward also runs the graph op by op once
per input shape, with the operands of every Conv / MatMul / Gemm exposed, and hands each
layer its MACs.

Reading a file trusts nothing before it is checked (:func:`load_onnx`): size (protobuf's 2 GiB),
protobuf parse, ``onnx.checker``, no external data (a file naming other files to read is
refused), netslim's description (metadata ``netslim``: JSON, pydantic-validated, matching
the graph's inputs and outputs), then ONNX Runtime's own load. Every failure is one
:class:`NetslimError` naming the file. A file without a description (made elsewhere) opens
too, as a plain module whose data comes from ``--data`` / ``--dataset``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, StrictStr, ValidationError
from torch import nn

from netslim.core.errors import NetslimError, clip, shown
from netslim.measure.counts import register_macs
from netslim.measure.storage import DTYPE_NAMES, Weight, register_storage

from .onnx_graph import ACTIVATION_MATMULS, analyse, node_macs, op_counts

log = logging.getLogger(__name__)
META_KEY = "netslim"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 2**31 - 1  # protobuf's limit: larger models need external data (refused)
MAX_META_CHARS = 1 << 20
MAX_DEPTH = 32
IGNORED_KWARGS = ("use_cache", "return_dict", "output_hidden_states", "output_attentions")
KINDS = ("causal_lm", "text_classification", "image_classification", "embedding", "module")
_NP_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}
_TORCH = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
    "int8": torch.int8,
    "uint8": torch.uint8,
}


# ------------------------------------------------------------------------- description
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputSpec(_Strict):
    shape: list[StrictInt] = Field(min_length=1, max_length=16)  # the example's shape at batch 1
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "bool", "int8", "uint8"]


class OnnxDescription(_Strict):
    """Metadata ``netslim`` of an exported file: what eval / bench / inspect need beside the graph."""

    format: Literal["netslim-onnx"]
    version: StrictInt = Field(ge=1, le=FORMAT_VERSION)
    model_kind: Literal[KINDS]
    # a KV-cache decoder step has 2 past inputs and 2 present outputs per layer
    inputs: dict[StrictStr, InputSpec] = Field(min_length=1, max_length=1024)
    outputs: list[StrictStr] = Field(min_length=1, max_length=1024)
    config: dict[str, JsonValue] = {}  # num_labels / id2label / label2id / num_channels
    packed_bits: dict[StrictStr, StrictInt] = {}  # packed weight initializer -> bits per code
    info: dict[str, JsonValue] = {}  # model, dataset / data spec, source, recipe, reference
    ort_check: dict[str, JsonValue] | None = None


def onnx_description(
    kind: str,
    example: Any,
    outputs: list[str],
    *,
    config: dict | None = None,
    info: dict | None = None,
    packed_bits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The description an exporter stores (``example``: the traced inputs, a tensor or dict)."""
    items = example.items() if isinstance(example, dict) else [("input", example)]
    inputs = {k: {"shape": [1, *v.shape[1:]], "dtype": str(v.dtype).replace("torch.", "")} for k, v in items}
    desc = {
        "format": "netslim-onnx",
        "version": FORMAT_VERSION,
        "model_kind": kind,
        "inputs": inputs,
        "outputs": list(outputs),
        "config": dict(config or {}),
        "packed_bits": dict(packed_bits or {}),
        "info": json.loads(json.dumps(info or {}, default=str)),
    }
    OnnxDescription.model_validate(desc)
    return desc


def set_description(proto, desc: dict) -> None:
    """Write ``desc`` into ``proto``'s metadata (replacing an earlier one)."""
    keep = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(desc, separators=(",", ":"))


# ------------------------------------------------------------------------------ loading
def _onnx():
    try:
        import onnx
    except ImportError:
        raise NetslimError("Reading .onnx files needs onnx and onnxruntime: pip install 'netslim[export]'.") from None
    return onnx


def load_onnx(path: str | Path):
    """``(ModelProto, description or None)`` of ``path``, checked (module docstring)."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"ONNX file {str(path)!r} does not exist.")
    size = path.stat().st_size
    if size == 0 or size > MAX_FILE_BYTES:
        raise NetslimError(f"{path}: not a readable ONNX model ({'empty' if size == 0 else 'over 2 GiB'}).")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError, UnicodeDecodeError) as e:
        raise NetslimError(f"{path}: not a readable ONNX model (protobuf: {_first_line(e)}).") from None
    if not proto.graph.node or not proto.opset_import:
        raise NetslimError(f"{path}: not a readable ONNX model (no graph nodes or no opset: truncated or not ONNX).")
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer):
        raise NetslimError(
            f"{path}: its weights are in external data files, which netslim does not read; "
            "save the model as one .onnx file (under 2 GiB)."
        )
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise NetslimError(f"{path}: invalid ONNX model (onnx.checker: {_first_line(e)}).") from None
    return proto, _description(proto, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return clip(text.splitlines()[0] if text else type(e).__name__, 300)


def _description(proto, path: Path) -> dict | None:
    text = next((p.value for p in proto.metadata_props if p.key == META_KEY), None)
    if text is None:
        return None
    where = f"{path}: invalid netslim description (metadata {META_KEY!r})"
    if len(text) > MAX_META_CHARS:
        raise NetslimError(f"{where}: {len(text):,} characters, more than {MAX_META_CHARS:,}.")
    try:
        raw = json.loads(text)
        OnnxDescription.model_validate(raw)
    except RecursionError:
        raise NetslimError(f"{where}: nested too deeply.") from None
    except ValueError as e:  # JSON errors and pydantic's ValidationError
        raise NetslimError(f"{where}: {_schema_error(e)}.") from None
    from netslim.core.artifact_schema import too_deep

    if too_deep(raw, MAX_DEPTH) is not None:
        raise NetslimError(f"{where}: nested deeper than {MAX_DEPTH} levels.")
    graph_inputs = _graph_inputs(proto)
    if set(raw["inputs"]) != set(graph_inputs) or len(raw["outputs"]) != len(proto.graph.output):
        raise NetslimError(
            f"{where}: it names inputs {sorted(raw['inputs'])} and {len(raw['outputs'])} output(s); "
            f"the graph has inputs {sorted(graph_inputs)} and {len(proto.graph.output)} output(s)."
        )
    for name, spec in raw["inputs"].items():
        if not all(1 <= d <= 1 << 20 for d in spec["shape"]) or len(spec["shape"]) != graph_inputs[name]:
            raise NetslimError(f"{where}: input {shown(name)} shape {spec['shape']} does not fit the graph.")
    return raw


def _schema_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        return f"field {shown(loc)}: {clip(err['msg'])}"
    return f"{type(e).__name__}: {clip(str(e))}"


def _graph_inputs(proto) -> dict[str, int]:
    """Graph inputs that are not initializers -> their rank."""
    inits = {i.name for i in proto.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input if i.name not in inits}


def ort_session(model: str | Path | bytes, *, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session on a file or serialized model; ``optimize``: all graph
    optimisations (QDQ pairs fuse into integer kernels), else op by op as written. Load errors
    are a NetslimError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise NetslimError("Running .onnx files needs onnxruntime: pip install 'netslim[export]'.") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3  # errors only: ORT's warnings would go straight to stderr
    if threads:
        opts.intra_op_num_threads = threads
    target = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(target, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors derive from Exception only (Fail, InvalidGraph, ...)
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        what = "the exported model" if isinstance(model, bytes) else str(model)
        raise NetslimError(f"{what}: ONNX Runtime cannot load it ({type(e).__name__}: {_first_line(e)}).") from None


# ------------------------------------------------------------------------------- model
class OnnxOutput(tuple):
    """The graph's outputs in order, each also an attribute by its name (``out.logits``)."""

    def __new__(cls, names: list[str], values: list[torch.Tensor]) -> OnnxOutput:
        obj = super().__new__(cls, values)
        obj._names = list(names)
        return obj

    def __getattr__(self, name: str) -> torch.Tensor:
        names = self.__dict__.get("_names", [])
        if name in names:
            return self[names.index(name)]
        raise AttributeError(name)


class OnnxLayer(nn.Module):
    """The tensors of one ONNX layer (:mod:`netslim.models.onnx_graph`); called only to report MACs."""

    def __init__(self):
        super().__init__()
        self.main: str | None = None  # attribute of the main weight
        self.quant: list[str] = []  # attributes of its scales / zero points
        self.packed_bits: int | None = None
        self.qdq = False
        self.nodes: list[int] = []

    def forward(self, macs: torch.Tensor) -> torch.Tensor:
        return macs


def _onnx_weight(m: OnnxLayer, state: dict) -> Weight | None:
    if m.main is None or m.main not in state:
        return None
    w = state[m.main]
    dtype = DTYPE_NAMES.get(w.dtype, str(w.dtype).replace("torch.", ""))
    tensors = (m.main, *m.quant)
    if m.packed_bits:
        shape = [w.shape[0], w.shape[1] * 8 // m.packed_bits]
        return Weight(f"packed int{m.packed_bits} (ONNX)", shape, _packed_nonzero(m, state, w), m.packed_bits, tensors)
    nz = int(torch.count_nonzero(w))
    kind = f"{dtype} {'QDQ' if m.qdq else 'dense'} (ONNX)"
    return Weight(kind, list(w.shape), nz, 8 * w.element_size(), tensors)


def _packed_nonzero(m: OnnxLayer, state: dict, packed: torch.Tensor) -> int:
    """Non-zeros of ``(code - zero) * scale`` (codes low bits first, as the packed layers store
    them); every element when the scales / zero points were renamed by an ONNX tool."""
    bits, scales, zeros = m.packed_bits, state.get("scales"), state.get("zeros")
    rows = packed.shape[0]
    if scales is None or zeros is None or scales.shape[0] != rows:
        return rows * packed.shape[1] * 8 // bits
    p = packed.to(torch.int32)
    codes = torch.stack([(p >> (bits * i)) & ((1 << bits) - 1) for i in range(8 // bits)], -1).reshape(rows, -1)
    g = codes.shape[-1] // max(1, scales.reshape(rows, -1).shape[-1])
    w = (codes.float().reshape(rows, -1, g) - zeros.float().reshape(rows, -1, 1)) * scales.float().reshape(rows, -1, 1)
    return int(torch.count_nonzero(w))


register_storage(OnnxLayer, _onnx_weight)
register_macs(OnnxLayer, lambda m, inputs, out: int(out))
_LAYER_TYPES: dict[str, type] = {}


def _layer_type(op: str) -> type:
    """``OnnxConv``, ``OnnxMatMul``, ...: the op a layer feeds, as its type name in tables."""
    if op not in _LAYER_TYPES:
        _LAYER_TYPES[op] = type(f"Onnx{op}", (OnnxLayer,), {"__module__": __name__})
    return _LAYER_TYPES[op]


class OnnxModel(nn.Module):
    """An ``.onnx`` file run by ONNX Runtime (module docstring). ``optimize``: ORT's graph optimisations."""

    def __init__(self, path: str | Path, *, optimize: bool = True):
        super().__init__()
        proto, desc = load_onnx(path)
        self.path, self.optimize = Path(path), optimize
        graph_inputs = _graph_inputs(proto)
        types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
        self.input_names = list(graph_inputs)
        self.input_dtypes = {n: _TORCH.get(_NP_DTYPES.get(types[n], ""), torch.float32) for n in graph_inputs}
        self.output_names = [o.name for o in proto.graph.output]
        self.description = desc or {
            "model_kind": "module",
            "inputs": _foreign_inputs(proto),
            "config": {},
            "info": {},
            "packed_bits": {},
        }
        self.netslim_model_kind = self.description["model_kind"]  # read by train.object_tasks.model_kind
        self.config = SimpleNamespace(**{k: v for k, v in self.description["config"].items() if isinstance(k, str)})
        self.info = dict(self.description.get("info") or {})
        self._sessions: dict[int, Any] = {}
        self._macs_cache: dict[tuple, dict[int, int]] = {}
        self.ops = op_counts(proto.graph)
        self._build_layers(proto)
        del proto
        self._session()  # ONNX Runtime's own load checks, now

    # -- structure
    def _build_layers(self, proto) -> None:
        from onnx import numpy_helper

        found = analyse(proto.graph)
        inits = {i.name: i for i in proto.graph.initializer}
        packed = self.description.get("packed_bits", {})

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

        self._mac_layers: list[OnnxLayer] = []
        for layer in found.layers.values():
            mod = self._attach(layer.name, _layer_type(layer.op))
            main = tensor(layer.main)
            mod.main = _put(mod, _main_attr(main, layer.main in packed), main, param=main.is_floating_point())
            mod.packed_bits, mod.qdq, mod.nodes = packed.get(layer.main), layer.qdq, layer.nodes
            for name in layer.tensors[1:]:
                t = tensor(name)
                quant = name not in layer.bias and (layer.qdq or mod.packed_bits or not main.is_floating_point())
                attr = _put(mod, name.rsplit(".", 1)[-1], t, param=t.is_floating_point() and not quant)
                if quant:
                    mod.quant.append(attr)
            if layer.nodes:
                self._mac_layers.append(mod)
        if found.activation_nodes:
            acts = self._attach(ACTIVATION_MATMULS, _layer_type("MatMul"))
            acts.nodes = found.activation_nodes
            self._mac_layers.append(acts)
        consts = self._attach("constants", OnnxLayer)
        for name in found.constants:
            _put(consts, name.rsplit(".", 1)[-1], tensor(name), param=False)

    def _attach(self, dotted: str, cls: type) -> OnnxLayer:
        parent: nn.Module = self
        parts = [p or "_" for p in dotted.split(".")]
        for i, part in enumerate(parts):
            child = parent._modules.get(part)
            if child is None:
                child = cls() if i == len(parts) - 1 else OnnxLayer()
                if hasattr(parent, part):  # a name nn.Module already uses (e.g. "training")
                    part = part + "_"
                parent.add_module(part, child)
            parent = child
        return parent

    # -- running
    def _session(self):
        threads = torch.get_num_threads()
        if threads not in self._sessions:
            self._sessions = {threads: ort_session(self.path, threads=threads, optimize=self.optimize)}
        return self._sessions[threads]

    def feed(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The numpy feed for the graph from a call's arguments (module docstring)."""
        kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_KWARGS}
        if kwargs.get("labels") is not None:
            raise NetslimError(
                f"{self.path}: an ONNX model runs inference only (no loss from labels); train or "
                "fine-tune the PyTorch model, then export it again."
            )
        kwargs.pop("labels", None)
        if len(args) > len(self.input_names):
            raise NetslimError(
                f"{self.path}: the graph takes {len(self.input_names)} input(s) "
                f"({', '.join(self.input_names)}); got {len(args)} positional tensors."
            )
        given = dict(zip(self.input_names, args))
        unknown = [k for k in kwargs if k not in self.input_names]
        if unknown:
            raise NetslimError(
                f"{self.path}: the graph has no input {shown(unknown[0])}; its inputs: {', '.join(self.input_names)}."
            )
        given.update(kwargs)
        ids = given.get("input_ids")
        if ids is not None:
            if "attention_mask" in self.input_names and given.get("attention_mask") is None:
                given["attention_mask"] = torch.ones_like(ids)
            if "token_type_ids" in self.input_names and given.get("token_type_ids") is None:
                given["token_type_ids"] = torch.zeros_like(ids)
            if "position_ids" in self.input_names and given.get("position_ids") is None and self._past():
                given["position_ids"] = torch.arange(ids.shape[-1]).expand(ids.shape)
            for name in self._past():  # a decoder step run on whole sequences: an empty past
                shape = self.description["inputs"][name]["shape"]
                given.setdefault(name, torch.zeros(ids.shape[0], shape[1], 0, *shape[3:]))
        missing = [n for n in self.input_names if given.get(n) is None]
        if missing:
            raise NetslimError(f"{self.path}: the graph needs input(s) {', '.join(missing)}.")
        return {n: given[n].detach().to("cpu", self.input_dtypes[n]).contiguous().numpy() for n in self.input_names}

    def _past(self) -> list[str]:
        """The past key / value inputs of a KV-cache decoder step (none for other graphs)."""
        return [n for n in self.input_names if n.startswith("past_key_values.") and n in self.description["inputs"]]

    def forward(self, *args: Any, **kwargs: Any):
        feed = self.feed(*args, **kwargs)
        values = [torch.from_numpy(v) for v in self._session().run(None, feed)]
        if any(layer._forward_hooks for layer in self._mac_layers):  # someone counts MACs
            macs = self.node_macs(feed)
            for layer in self._mac_layers:
                layer(torch.tensor(sum(macs[k] for k in layer.nodes)))
        if self.netslim_model_kind == "module":
            return values[0] if len(values) == 1 else tuple(values)
        return OnnxOutput(self.description.get("outputs", self.output_names), values)

    def node_macs(self, feed: dict[str, Any]) -> dict[int, int]:
        """MACs of every compute node for the shapes of ``feed`` (cached per shape)."""
        key = tuple((k, tuple(v.shape)) for k, v in sorted(feed.items()))
        if key not in self._macs_cache:
            proto, _ = load_onnx(self.path)
            nodes = sorted({k for layer in self._mac_layers for k in layer.nodes})
            self._macs_cache[key] = node_macs(proto, feed, nodes)
        return self._macs_cache[key]

    def example_inputs(self, batch_size: int = 1) -> Any:
        """Inputs of the stored example's shape (ids 1, mask 1, pixels 0) with batch ``batch_size``;
        of a KV-cache decoder step the ids only (:meth:`feed` completes a whole-sequence call)."""
        out = {}
        for name in self.input_names if not self._past() else ["input_ids"]:
            spec = self.description["inputs"].get(name, {"shape": [1], "dtype": "float32"})
            dtype = self.input_dtypes[name]
            out[name] = torch.ones if dtype != torch.float32 else torch.zeros
            out[name] = out[name](batch_size, *spec["shape"][1:], dtype=dtype)
        return out if len(out) > 1 or self.netslim_model_kind != "module" else next(iter(out.values()))

    def __getstate__(self) -> dict:  # deepcopy / pickle: sessions are rebuilt on first use
        return {**self.__dict__, "_sessions": {}}


def onnx_overview(model: OnnxModel) -> list[list[str]]:
    """``[quantity, value]`` rows of ``netslim inspect x.onnx``: what the file holds and computes."""
    from netslim.measure.storage import stored_modules

    d = model.description
    by_kind: dict[str, list[int]] = {}
    for _, _, st in stored_modules(model):
        k = by_kind.setdefault(st.kind or "(constants)", [0, 0])
        k[0] += 1 if st.kind else 0
        k[1] += st.stored_bytes
    qdq = sum(1 for m in model.modules() if isinstance(m, OnnxLayer) and m.qdq)
    rows = [
        ["file bytes", f"{model.path.stat().st_size:,}"],
        ["model kind", d["model_kind"]],
        ["inputs", ", ".join(f"{k} {'x'.join(map(str, v['shape']))} {v['dtype']}" for k, v in d["inputs"].items())],
        ["outputs", ", ".join(d.get("outputs") or model.output_names)],
        ["QDQ layers (int8 weights dequantized in the graph)", str(qdq)],
        [
            "QuantizeLinear / DequantizeLinear nodes",
            f"{model.ops.get('QuantizeLinear', 0)} / {model.ops.get('DequantizeLinear', 0)}",
        ],
        ["ops", ", ".join(f"{op} {n}" for op, n in model.ops.items())],
    ]
    rows += [[f"stored bytes: {kind}" + (f" ({n} layers)" if n else ""), f"{b:,}"] for kind, (n, b) in by_kind.items()]
    info = d.get("info") or {}
    for key in ("model", "dataset", "recipe"):
        if info.get(key):
            rows.append([key, str(info[key])])
    check = d.get("ort_check")
    if isinstance(check, dict) and "max_abs_diff" in check:
        verdict = "within" if check.get("within_tolerance") else "ABOVE"
        rows.append(
            [
                "ONNX Runtime check at export",
                f"max |diff| {check['max_abs_diff']:.3g} on inputs "
                f"{check.get('inputs')}; {verdict} tolerance ({(check.get('tolerance') or {}).get('rule', '?')})",
            ]
        )
    elif not d.get("format"):
        rows.append(["description", "none (not written by netslim): give --data / --dataset to eval or bench it"])
    return rows


def _main_attr(t: torch.Tensor, packed: bool) -> str:
    if packed:
        return "weight_packed"
    return "weight" if t.is_floating_point() else f"weight_{str(t.dtype).replace('torch.', '')}"


def _put(mod: nn.Module, name: str, t: torch.Tensor, param: bool) -> str:
    """Register ``t`` on ``mod`` under a free, valid attribute name; returns the name."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "t"
    base = base if not base[0].isdigit() else f"t_{base}"
    attr, i = base, 1
    while hasattr(mod, attr):
        attr, i = f"{base}_{i}", i + 1
    if param:
        mod.register_parameter(attr, nn.Parameter(t, requires_grad=False))
    else:
        mod.register_buffer(attr, t)
    return attr


def _foreign_inputs(proto) -> dict[str, dict]:
    """Input specs of a file without a netslim description: symbolic dims taken as 1."""
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for i in proto.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
        out[i.name] = {"shape": dims or [1], "dtype": _NP_DTYPES.get(i.type.tensor_type.elem_type, "float32")}
    return out


def open_onnx(path: Path, base: Any = None):
    """:class:`netslim.models.sources.OpenedModel` of an ``.onnx`` file (``base``: rebuilds the
    run's original model of a user class, for fidelity)."""
    from .sources import OpenedModel

    model = OnnxModel(path)
    info = model.info
    name = info.get("model") if isinstance(info.get("model"), str) else path.stem
    dataset = info.get("dataset") if isinstance(info.get("dataset"), str) else None
    source = info.get("source") if isinstance(info.get("source"), str) else None
    return OpenedModel(model.eval(), name, dataset, source, base, info)
