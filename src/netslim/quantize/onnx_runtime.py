"""The ONNX Runtime check of an exported graph: its outputs vs the PyTorch model's, on the same inputs.

Stated tolerances (measurements in :mod:`netslim.quantize.onnx_export`):

* static int8 (PTQ / QAT / mixed): mean |diff| <= :data:`STATIC_STEPS` output steps of the
  last int8 layer - ORT's fused integer kernels round the bias to int32 and requantize with a
  fixed-point multiplier, so an output can move by a step per layer;
* float, dynamic int8, weight-only: max |diff| <= :data:`FLOAT_REL` x max |PyTorch output| -
  the same arithmetic in float on both sides (run-time activation codes computed alike);
* a bf16 body (``compute_dtype: bfloat16``) runs in fp32 in the graph (ORT's CPU provider has
  no bf16 kernels): max |diff| <= :data:`BF16_REL` x max |PyTorch output| - bf16 keeps 8
  significant bits, ~0.4 % per rounding, compounding over the layers (tiny BERT, 2 layers: 1.1 %).

Every output of the graph is checked; the first one's figures are reported at the top level.
A KV-cache decoder step (:mod:`netslim.quantize.onnx_io`) is checked by decoding
(:func:`check_decoder`): the logits of a prefill and of cached greedy steps, with the same bounds,
and the greedy tokens. :class:`OrtDecoder` runs such a graph (greedy decoding, teacher forcing);
:func:`ort_dynamic_int8` is ONNX Runtime's own dynamic int8 of any exported graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.models.onnx_model import ort_session

from .int8_modules import _Int8Base
from .onnx_io import PAST_PREFIX, graph_module, reference_outputs, text_example


def onnx_session(path: str | Path | bytes, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session; ``optimize``: full graph optimisation (QDQ pairs fuse into
    integer kernels), else the graph runs op by op as written."""
    return ort_session(path, threads=threads, optimize=optimize)


def _numpy_feed(session, example: Any) -> dict:
    names = [i.name for i in session.get_inputs()]
    if isinstance(example, torch.Tensor):
        return {names[0]: example.detach().cpu().numpy()}
    return {k: v.detach().cpu().numpy() for k, v in example.items() if k in names}


def run_onnx(session, example: Any) -> torch.Tensor:
    """First output of ``session`` on ``example`` (tensor or dict) as a torch tensor."""
    return torch.from_numpy(session.run(None, _numpy_feed(session, example))[0])


# Tolerances of the ONNX Runtime check (see the module docstring for the measurements behind them)
STATIC_STEPS = 2.0  # static int8: mean |diff| <= 2 output steps of the last int8 layer
FLOAT_REL = 1e-3  # float / dynamic int8 / weight-only: max |diff| <= 1e-3 x max |PyTorch output|
BF16_REL = 5e-2  # the same with a bf16 body in PyTorch (fp32 in the graph)


@torch.no_grad()
def check_onnx(
    model: nn.Module, path: str | Path, example_inputs: Any, optimize: bool = True, kv_cache: bool = False
) -> dict[str, Any]:
    """Compare ONNX Runtime on ``path`` with ``model`` in PyTorch on the same inputs
    (``optimize``: ORT's fused integer kernels, else the graph op by op); see :func:`check_graph`
    (``kv_cache``: the file is a decoder step, :func:`check_decoder`)."""
    if kv_cache:
        return check_decoder(model, path, example_inputs, optimize=optimize)
    return check_graph(model, graph_module(model, example_inputs), path, example_inputs, optimize=optimize)


@torch.no_grad()
def check_graph(
    model: nn.Module, spec, graph: str | Path | bytes, inputs: Any, optimize: bool = True
) -> dict[str, Any]:
    """ONNX Runtime on ``graph`` (a file or serialized model) vs ``model`` in PyTorch on ``inputs``.

    Returns, for the first output, max / mean absolute difference, the fraction of elements
    that differ, max |PyTorch output|, the argmax agreement of logits, the last int8 layer's
    output step (static int8); ``within_tolerance`` against the stated ``tolerance`` (every
    output checked), the ``inputs`` shapes, the ``provider`` and the ORT version.
    """
    import onnxruntime

    model.eval()
    if spec.kind not in ("module", "image_classification"):
        inputs = text_example(inputs, type(model).__name__)
    refs = reference_outputs(spec, inputs)
    session = onnx_session(graph, threads=torch.get_num_threads(), optimize=optimize)
    gots = [torch.from_numpy(v) for v in session.run(None, _numpy_feed(session, inputs))]
    metric, unit, rule = tolerance(model)
    names = list(spec.outputs) if spec.kind != "module" else [o.name for o in session.get_outputs()]
    out: dict[str, Any] = {}
    ok = True
    for i, (name, ref, got) in enumerate(zip(names, refs, gots)):
        diff = (got.float() - ref.float()).abs()
        stats = {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "frac_differ": float((diff > 1e-6).float().mean()),
            "ref_abs_max": float(ref.abs().max()),
        }
        bound = unit if metric == "mean_abs_diff" else unit * max(stats["ref_abs_max"], 1e-12)
        ok = ok and stats[metric] <= bound
        if i == 0:
            out.update(stats, output=name, tolerance={"metric": metric, "bound": bound, "rule": rule})
            if ref.dim() >= 2 and (name == "logits" or spec.kind == "module") and ref.shape[-1] > 1:
                out["argmax_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        elif len(names) > 1:
            out.setdefault("other_outputs", {})[name] = stats
    if metric == "mean_abs_diff":
        out["last_output_step"] = unit / STATIC_STEPS
    feed = inputs.items() if isinstance(inputs, dict) else [(session.get_inputs()[0].name, inputs)]
    out.update(
        within_tolerance=ok,
        inputs={k: list(v.shape) for k, v in feed},
        provider=session.get_providers()[0],
        onnxruntime=onnxruntime.__version__,
        graph_optimization="all" if optimize else "none",
    )
    return out


def tolerance(model: nn.Module) -> tuple[str, float, str]:
    """``(metric, bound, rule)`` of the check for ``model`` (module docstring): static int8 bounds
    ``mean_abs_diff`` by output steps (an absolute bound); the others ``max_abs_diff`` relative to
    max |PyTorch output| (``bound`` is the factor)."""
    steps = [float(m.act_qparams[2]) for m in model.modules() if isinstance(m, _Int8Base)]
    if steps:
        return (
            "mean_abs_diff",
            STATIC_STEPS * steps[-1],
            f"static int8: mean |diff| <= {STATIC_STEPS:g} output steps of the last int8 layer",
        )
    if any(t.dtype == torch.bfloat16 for t in (*model.parameters(), *model.buffers())):
        return (
            "max_abs_diff",
            BF16_REL,
            f"max |diff| <= {BF16_REL:g} x max |PyTorch output| (a bf16 body in PyTorch, fp32 in the graph)",
        )
    return (
        "max_abs_diff",
        FLOAT_REL,
        f"max |diff| <= {FLOAT_REL:g} x max |PyTorch output| (float arithmetic on both sides)",
    )


# ----------------------------------------------------------------------- KV-cache decoder step
class OrtDecoder:
    """An exported KV-cache decoder step (``export_onnx(..., kv_cache=True)``) in ONNX Runtime.

    One :meth:`greedy` call: the prompt ids (B, T) in one prefill (past length 0), then one token
    per call with the previous call's ``present.*`` outputs fed back as ``past_key_values.*``
    (numpy arrays, as a user of ``session.run`` does; no I/O binding), mask of ones, positions
    counted on. ``session``: a file, serialized model or an ONNX Runtime session.
    """

    def __init__(self, session: Any, threads: int | None = None):
        if isinstance(session, (str, Path, bytes)):
            session = onnx_session(session, threads=threads)
        self.session = session
        ins = session.get_inputs()
        self.past = [(i.name, i.shape) for i in ins if i.name.startswith(PAST_PREFIX)]
        if not self.past or "position_ids" not in {i.name for i in ins}:
            raise NetslimError(
                f"ONNX Runtime decoding needs a KV-cache decoder step (inputs input_ids, attention_mask, "
                f"position_ids, {PAST_PREFIX}<i>.key / .value); this graph takes {', '.join(i.name for i in ins)}."
            )

    def greedy(
        self, input_ids: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None, keep_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens (B, new_tokens), logits or None)``: argmax after the prompt and after each fed
        token; ``forced`` (B, >= new_tokens - 1): tokens fed instead of the argmax (teacher forcing).
        ``keep_logits``: the logits of every prompt position and step, (B, T + new_tokens - 1, vocab)."""
        import numpy as np

        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        b, t = ids.shape
        past = [np.zeros((b, shape[1], 0, shape[3]), np.float32) for _, shape in self.past]
        tokens, logits = [], []
        for i in range(new_tokens):
            total = t + i
            feed = {
                "input_ids": ids,
                "attention_mask": np.ones((b, total), np.int64),
                "position_ids": np.repeat(np.arange(total - ids.shape[1], total, dtype=np.int64)[None], b, 0),
                **{name: p for (name, _), p in zip(self.past, past)},
            }
            out = self.session.run(None, feed)
            step_logits, past = out[0][:, -1], out[1:]
            if keep_logits:
                logits.append(torch.from_numpy(out[0]))
            tokens.append(step_logits.argmax(-1))
            if i + 1 < new_tokens:
                fed = tokens[-1] if forced is None else forced[:, i].cpu().numpy()
                ids = np.asarray(fed, np.int64).reshape(b, 1)
        return torch.from_numpy(np.stack(tokens, 1)), torch.cat(logits, 1) if keep_logits else None


@torch.no_grad()
def torch_greedy(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch side of :class:`OrtDecoder`: ``(tokens (B, n), logits (B, T + n - 1, vocab))`` of
    greedy decoding with the model's own KV cache."""
    out = model(input_ids=input_ids, use_cache=True)
    logits, tokens = [out.logits], [out.logits[:, -1].argmax(-1)]
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1), torch.cat(logits, 1)


@torch.no_grad()
def check_decoder(
    model: nn.Module, graph: str | Path | bytes, inputs: Any, steps: int = 4, optimize: bool = True
) -> dict[str, Any]:
    """ONNX Runtime on a KV-cache decoder step vs ``model`` in PyTorch: the prompt ids of
    ``inputs`` (B, T) decoded greedily in PyTorch (its own cache) for ``steps`` cached steps,
    and the graph fed the same tokens (teacher forcing, so every step's logits compare).

    Returns max / mean |diff| over the prefill's and the steps' logits (and of the steps alone),
    max |PyTorch logits|, the argmax agreement, ``greedy_tokens_equal`` (the graph's argmax is
    PyTorch's token at every step: its own greedy decoding is then the same), ``within_tolerance``
    against :func:`tolerance`'s bound, the shapes, the provider and the ORT version.
    """
    import onnxruntime

    model.eval()
    ids = text_example(inputs, type(model).__name__)["input_ids"]
    ref_tokens, ref = torch_greedy(model, ids, steps + 1)
    session = onnx_session(graph, threads=torch.get_num_threads(), optimize=optimize)
    tokens, got = OrtDecoder(session).greedy(ids, steps + 1, forced=ref_tokens, keep_logits=True)
    diff = (got.float() - ref.float()).abs()
    metric, unit, rule = tolerance(model)
    stats = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "steps_max_abs_diff": float(diff[:, ids.shape[1] :].max()),
        "frac_differ": float((diff > 1e-6).float().mean()),
        "ref_abs_max": float(ref.abs().max()),
    }
    bound = unit if metric == "mean_abs_diff" else unit * max(stats["ref_abs_max"], 1e-12)
    return stats | {
        "output": "logits",
        "tolerance": {"metric": metric, "bound": bound, "rule": rule},
        "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        "greedy_tokens_equal": bool((tokens == ref_tokens).all()),
        "within_tolerance": stats[metric] <= bound,
        "inputs": {"input_ids": list(ids.shape), "cached_steps": steps},
        "provider": session.get_providers()[0],
        "onnxruntime": onnxruntime.__version__,
        "graph_optimization": "all" if optimize else "none",
    }


def ort_dynamic_int8(src: str | Path, dst: str | Path, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic int8 of an exported graph (``quantize_dynamic``): int8 weights of
    the MatMul / Gemm initializers (``per_channel``: a scale per output column, else one per
    tensor, ORT's default), uint8 activations quantized at run time. Returns ``dst``."""
    import logging

    import onnx
    from onnxruntime.quantization import quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs "consider pre-processing" per file
    try:  # contrib ops of ORT's transformer optimizer defeat its shape inference: their outputs are float
        quantize_dynamic(
            Path(src), Path(dst), per_channel=per_channel, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}
        )
    finally:
        root.setLevel(level)
    return Path(dst)
