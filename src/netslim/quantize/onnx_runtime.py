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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.models.onnx_model import ort_session

from .int8_modules import _Int8Base
from .onnx_io import graph_module, reference_outputs, text_example


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
def check_onnx(model: nn.Module, path: str | Path, example_inputs: Any, optimize: bool = True) -> dict[str, Any]:
    """Compare ONNX Runtime on ``path`` with ``model`` in PyTorch on the same inputs
    (``optimize``: ORT's fused integer kernels, else the graph op by op); see :func:`check_graph`."""
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
