"""Model surgery around the dynamic int8 Linears: a GELU into their epilogue, the body's dtype.

* :func:`fuse_activations`: a GELU right after a converted Linear (Hugging Face ``*Intermediate``
  blocks) moves into the Linear's ``post_op`` (the oneDNN GEMM epilogue); the activation module
  becomes Identity, so save / load keeps the fusion.
* :func:`cast_body`: every floating parameter and buffer outside the int8 modules to bf16 (or
  another float dtype); int8 embedding tables emit that dtype. The int8 codes, their fp32
  scales and the Linear biases keep theirs (oneDNN takes fp32 scales and applies the bias in
  fp32 before writing bf16).

:mod:`.dynamic` calls both; this module does not import it (the int8 Linear type to keep is
passed in), so the dependency runs one way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.surgery import get_module

from .weight_only import PackedWeight, QuantizedEmbedding


def gelu_kind(act: nn.Module) -> str | None:
    """ "gelu" / "gelu_tanh" when ``act`` computes that GELU (checked on a probe), else None."""
    probe = torch.linspace(-8, 8, 513)
    try:
        with torch.no_grad():
            y = act(probe)
    except (RuntimeError, TypeError):
        return None
    for kind, algo in (("gelu", "none"), ("gelu_tanh", "tanh")):
        if (
            isinstance(y, torch.Tensor)
            and y.shape == probe.shape
            and torch.allclose(y, F.gelu(probe, approximate=algo), atol=1e-6, rtol=0)
        ):
            return kind
    return None


def fuse_activations(model: nn.Module, names: list[str]) -> list[str]:
    """GELU into the epilogue of the converted Linears that feed it directly (HF '*Intermediate' blocks).

    Such a block holds exactly ``dense`` and ``intermediate_act_fn`` and computes act(dense(x));
    the activation module becomes Identity, the Linear's ``post_op`` the GELU it computed.
    """
    fused = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = get_module(model, parent_name) if parent_name else model
        act = getattr(parent, "intermediate_act_fn", None)
        if (
            child != "dense"
            or not type(parent).__name__.endswith("Intermediate")
            or not isinstance(act, nn.Module)
            or set(dict(parent.named_children())) != {"dense", "intermediate_act_fn"}
        ):
            continue
        kind = gelu_kind(act)
        if kind is not None:
            get_module(model, name).post_op = kind
            parent.intermediate_act_fn = nn.Identity()
            fused.append(name)
    return fused


def cast_body(model: nn.Module, dtype: torch.dtype, *, keep: tuple[type[nn.Module], ...] = ()) -> None:
    """Every floating parameter and buffer outside the int8 modules (packed weights and the
    ``keep`` types: the int8 Linears) to ``dtype``; int8 embeddings emit it."""
    for m in model.modules():
        if isinstance(m, QuantizedEmbedding):
            m.out_dtype = str(dtype).removeprefix("torch.")
        elif not isinstance(m, (*keep, PackedWeight)):  # int8 codes, fp32 scales and biases stay
            m._apply(lambda t: t.to(dtype) if t.is_floating_point() else t, recurse=False)
