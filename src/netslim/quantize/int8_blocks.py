"""Int8 end to end between layers: residual blocks and quantized hand-offs (static PTQ).

At CIFAR-sized shapes the int8 convolutions are cheap and what costs is everything around
them: dequantize, a float residual add, a float ReLU and the next layer's quantize took half
of the int8 ResNet-20's time (profile: 13 dequantize + 9 float add + 9 float ReLU + 13
quantize per forward). Two things remove them:

* :class:`Int8Residual` - a registered residual block (``relu?(body(x) + shortcut(x))``)
  becomes one unit: its input is quantized once (or arrives quantized), the body's last conv
  and the shortcut conv return quantized tensors, and ``quantized.add_relu`` adds them into
  the block's calibrated output grid. Blocks are registered by type
  (:func:`register_residual`; the zoo's ``BasicBlock`` is), never guessed.
* **hand-offs** (:func:`find_handoffs`): a unit's output stays quantized when every torch
  call that reads it happens inside one consumer unit that takes quantized input - an int8
  layer, an :class:`Int8Residual`, or a pass-through (max/avg pool, flatten, identity)
  whose own output again qualifies. Found by tracing one float forward with a
  ``TorchFunctionMode`` that attributes every use of every tensor to the outermost unit
  running at the time, so a tensor also read by anything else (a functional op in the
  parent's forward, a second branch) stays float. The consumer's input grid is set to the
  producer's output grid, so no value is rounded twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from netslim.core.hooks import hooked
from netslim.core.serialize import build_module, module_spec, register_module
from netslim.core.surgery import get_module

from .int8_modules import _engine

PASS_THROUGH = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class ResidualSpec:
    body: tuple[str, ...]  # child names of the main path's Conv2d layers, in order
    shortcut: str  # child holding the shortcut (an empty Sequential / Identity, or conv [+ BN])
    relu: bool  # ReLU after the add


_RESIDUALS: dict[type, ResidualSpec] = {}


def register_residual(cls: type, body: tuple[str, ...], shortcut: str, relu: bool = True) -> None:
    """Declare ``cls`` a residual block computing ``relu?(body(x) + shortcut(x))``."""
    _RESIDUALS[cls] = ResidualSpec(tuple(body), shortcut, relu)


def residual_spec(module: nn.Module) -> ResidualSpec | None:
    from netslim.models.cnn import BasicBlock  # the zoo's block: conv1 -> conv2, shortcut, ReLU

    # why setdefault here, not at import: models imports nothing from quantize; a user's own
    # registration (before or after) must not hide the zoo's block
    _RESIDUALS.setdefault(BasicBlock, ResidualSpec(("conv1", "conv2"), "shortcut", True))
    return _RESIDUALS.get(type(module))


class Int8Residual(nn.Module):
    """``relu?(body(x) + shortcut(x))`` on quantized tensors, one requantization at the add."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, relu: bool = True, quant_out: bool = False):
        super().__init__()
        self.body, self.shortcut = body, shortcut
        self.relu, self.quant_out = relu, quant_out
        self.register_buffer("act_qparams", torch.tensor([1.0, 0.0, 1.0, 0.0]))  # in s, z, out s, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float or quint8
        s_in, z_in, s_out, z_out = (float(v) for v in self.act_qparams)
        if x.device.type != "cpu":  # float emulation of the same arithmetic
            x = torch.fake_quantize_per_tensor_affine(x.float(), s_in, int(z_in), 0, 255)
            y = self.body(x) + self.shortcut(x)
            y = torch.relu(y) if self.relu else y
            return torch.fake_quantize_per_tensor_affine(y, s_out, int(z_out), 0, 255)
        xq = x if x.is_quantized else torch.quantize_per_tensor(x.float(), s_in, int(z_in), torch.quint8)
        body, short = self.body(xq), self.shortcut(xq)  # both quantized (their convs hand over)
        op = torch.ops.quantized.add_relu if self.relu else torch.ops.quantized.add
        with _engine():
            y = op(body, short, s_out, int(z_out))
        return y if self.quant_out else y.dequantize()


register_module(
    Int8Residual,
    lambda m: {
        "body": module_spec(m.body),
        "shortcut": module_spec(m.shortcut),
        "relu": m.relu,
        "quant_out": m.quant_out,
    },
    lambda kw: Int8Residual(
        build_module(kw["body"], "body"), build_module(kw["shortcut"], "shortcut"), kw["relu"], kw["quant_out"]
    ),
)


def find_residuals(model: nn.Module, names: list[str]) -> dict[str, ResidualSpec]:
    """Registered residual blocks whose convolutions are all selected for int8."""
    chosen = set(names)
    out = {}
    for n, m in model.named_modules():
        spec = residual_spec(m)
        if spec is None:
            continue
        convs = [f"{n}.{c}" for c in spec.body] + [
            f"{n}.{spec.shortcut}.{c}"
            for c, sub in get_module(m, spec.shortcut).named_modules()
            if isinstance(sub, nn.Conv2d)
        ]
        if all(c in chosen for c in convs):
            out[n] = spec
    return out


class _UseTracer(TorchFunctionMode):
    """Attributes every torch call's tensor arguments to the outermost unit running."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.uses: dict[int, set] = {}
        self.seen: list[torch.Tensor] = []  # why: a freed temporary's id could be reused by a later tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = self.stack[0] if self.stack else "<outside>"
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.uses.setdefault(id(leaf), set()).add(where)
                self.seen.append(leaf)
        out = func(*args, **kwargs)
        self.seen.extend(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@torch.no_grad()
def find_handoffs(model: nn.Module, producers: dict[str, str], int8_units: set[str], batch: torch.Tensor) -> dict:
    """``{producer: final int8 consumer}`` for outputs that may stay quantized (module docstring).

    ``producers``: unit name -> name of the module whose output leaves the unit (a fused
    ReLU, or the unit itself); ``int8_units``: top-level int8 layers and residual blocks.
    Every tensor of the traced forward is kept alive until the end: use a small batch.
    """
    mods = dict(model.named_modules())
    units = int8_units | {
        n
        for n, m in mods.items()
        if n and isinstance(m, PASS_THROUGH) and not any(n.startswith(u + ".") for u in int8_units)
    }
    tracer = _UseTracer()
    inputs, outputs, alive, hooks = {}, {}, [], []  # hooks: (module, hook, kind)
    for n in units | set(producers.values()):
        m = mods[n]

        def pre(mod, inp, n=n):
            if n in units:
                tracer.stack.append(n)
            if inp and isinstance(inp[0], torch.Tensor):
                inputs[n] = id(inp[0])
                alive.append(inp[0])

        def post(mod, inp, out, n=n):
            if n in units:
                tracer.stack.pop()
            outputs[n] = out
            alive.append(out)  # why: a freed tensor's id could be reused by a later one

        hooks += [(m, pre, "pre"), (m, post, "forward")]
    with hooked(hooks), tracer:
        model(batch)

    def consumer(out_module: str, depth: int = 0) -> str | None:
        t = outputs.get(out_module)
        if not isinstance(t, torch.Tensor) or depth > 16:
            return None
        users = tracer.uses.get(id(t), set())
        if len(users) != 1:
            return None
        (u,) = users
        if u not in units or inputs.get(u) != id(t):
            return None
        if u in int8_units:
            return u
        return consumer(u, depth + 1)  # a pass-through: follow its output

    found = {}
    for unit, out_module in producers.items():
        c = consumer(out_module)
        if c is not None:
            found[unit] = c
    return found
