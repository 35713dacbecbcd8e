"""Post-training static int8 for CNNs: BN folding, ReLU fusion, calibration, conversion.

1. Trace one calibration batch with hooks to find, by tensor identity, each Conv2d whose
   output feeds straight into a BatchNorm2d (folded into the conv) and each Conv/Linear
   (or folded pair) whose output feeds straight into an ``nn.ReLU`` (fused into the kernel).
   Registration order is never trusted: only what the forward pass really does.
2. Observe every selected layer's input and (post-ReLU) output over the calibration set.
3. Replace the layers by :class:`Int8Conv2d` / :class:`Int8Linear` (per-channel symmetric
   int8 weights, per-tensor uint8 activations); folded BNs and fused ReLUs become Identity.
4. Registered residual blocks become :class:`Int8Residual` (quantized add + ReLU), and every
   output whose only reader takes quantized input is handed over quantized
   (:mod:`netslim.quantize.int8_blocks`): int8 from the first layer to the classifier.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.core.masks import baked_copy
from netslim.core.selectors import Selector, select, settings_for
from netslim.core.surgery import get_module, replace_module

from .core import QScheme
from .int8_blocks import Int8Residual, find_handoffs, find_residuals
from .int8_modules import int8_twin
from .observers import OBSERVERS, make_observer

log = logging.getLogger(__name__)


class PTQInt8Config(MethodConfig):
    """Static int8 (weights and activations) with calibration; real int8 kernels on CPU."""

    method = "ptq_int8"
    freezes = True
    observer: Literal[tuple(OBSERVERS)] = "minmax"  # type: ignore[valid-type]
    calibration_samples: int = Field(512, ge=1)
    batch_size: int = Field(64, ge=1)
    weight_bits: dict[str, int] = Field(
        default_factory=dict, description="selector -> weight bits (2..8, default 8; e.g. from mixed precision)"
    )
    include: Selector = None
    exclude: Selector = None

    @field_validator("weight_bits")
    @classmethod
    def _bits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: b for k, b in v.items() if b not in range(2, 9)}
        if bad:
            raise ValueError(f"bits must be ints in [2, 8]; got {bad}")
        return v

    def preflight(self, model, task) -> None:
        """Before a recipe runs: see :func:`static_int8_preflight`."""
        static_int8_preflight(self, model, task)


def static_int8_preflight(cfg: MethodConfig, model: nn.Module | None, task) -> None:
    """Recipe preflight of the static int8 steps (ptq_int8, qat, mixed_precision): they calibrate
    on a tensor of model inputs and convert the selected Conv2d / Linear layers (zero padding)."""
    if task is not None:
        sample = task.calibration_inputs(1, seed=0)
        if not isinstance(sample, torch.Tensor):
            keys = f" ({', '.join(map(str, sample))})" if isinstance(sample, dict) else ""
            raise NetslimError(
                f"{cfg.method} calibrates static int8 activations on one tensor of model inputs "
                f"(images, token ids); this task's inputs are a {type(sample).__name__}{keys}. "
                "For a transformer, use dynamic_int8 (activations quantized at run time) or "
                "weight_only."
            )
    if model is None:
        return
    names = select(model, cfg.include, cfg.exclude, types=(nn.Conv2d, nn.Linear))
    if not names:
        raise NetslimError(f"{cfg.method}: the model has no Conv2d or Linear layer to quantize.")
    for name in names:
        why = padding_problem(get_module(model, name))
        if why:
            raise NetslimError(f"{cfg.method}: layer {name!r}: {why}; exclude it (exclude: [{name!r}]).")


def padding_problem(layer: nn.Module) -> str | None:
    """Why the int8 kernels cannot run ``layer`` (a Conv2d without numeric zero padding), or None."""
    if isinstance(layer, nn.Conv2d) and (not isinstance(layer.padding, tuple) or layer.padding_mode != "zeros"):
        return f"int8 convolutions support numeric zero padding only; got {layer.padding!r}/{layer.padding_mode}"
    return None


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor id, every torch function call that takes the tensor (methods too)."""

    def __init__(self):
        super().__init__()
        self.uses: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.uses[id(leaf)] += 1
        return func(*args, **kwargs)


@torch.no_grad()
def _trace_pairs(model: nn.Module, names: list[str], batch: torch.Tensor) -> tuple[dict, dict, dict]:
    """{conv: bn} to fold, {layer: relu} to fuse and {producer: consumer} int8 chains, from one forward.

    A chain: the producer's final output (after its folded BN and fused ReLU) is used by
    exactly one torch call in the whole forward, and that call is the consumer layer's
    own op - then the tensor may stay quantized between the two. Every use counts
    (functional adds, ``.dim()`` checks, ...), so any doubt means no chain.
    """
    produced: dict[int, str] = {}  # id(output tensor) -> producing module name
    consumers: dict[str, str] = {}  # module name -> name of the module that produced its input
    outputs: dict[str, torch.Tensor] = {}
    alive: list[torch.Tensor] = []  # why: a freed output's id can be reused by a later tensor

    def hook(n):
        def fn(mod, inp, out):
            if inp and isinstance(inp[0], torch.Tensor):
                alive.append(inp[0])
                if id(inp[0]) in produced:
                    consumers[n] = produced[id(inp[0])]
            produced[id(out)] = n
            outputs[n] = out
            alive.append(out)

        return fn

    hooks = {m: hook(n) for n, m in model.named_modules() if n in names or isinstance(m, (nn.BatchNorm2d, nn.ReLU))}
    counter = _UseCounter()
    with hooked(hooks), counter:
        model(batch)
    mods = dict(model.named_modules())
    fold = {
        src: n
        for n, src in consumers.items()
        if isinstance(mods[n], nn.BatchNorm2d) and isinstance(mods.get(src), nn.Conv2d)
    }
    after = {bn: conv for conv, bn in fold.items()}
    fuse = {}
    for n, src in consumers.items():
        if isinstance(mods[n], nn.ReLU):
            layer = after.get(src, src)
            if layer in names:
                fuse[layer] = n
    chain = {}
    for n in names:
        last = fuse.get(n, fold.get(n, n))  # the module whose output leaves the fused unit
        users = [c for c, src in consumers.items() if src == last and c in names]
        if n in outputs and len(users) == 1 and counter.uses[id(outputs[last])] == 1:
            chain[n] = users[0]
    return fold, fuse, chain


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv): w' = w * g / sqrt(v + eps), b' = (b - mu) * g / sqrt(v + eps) + beta."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std  # (out,)
    b = conv.bias if conv.bias is not None else torch.zeros_like(std)
    # a masked conv: scale the stored original (its pruned entries are zeros and stay zeros);
    # ``conv.weight`` is then a product recomputed on every access, scaling it would be lost
    weight = conv.parametrizations.weight.original if parametrize.is_parametrized(conv, "weight") else conv.weight
    weight.mul_(factor.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((b - bn.running_mean) * factor + beta)


def _calibrate(model, names, fuse, batches, observer: str, outputs: list[str] = ()) -> tuple[dict, dict]:
    """(in s, in z, out s, z) per layer, and (s, z) of the output of each module in ``outputs``."""
    scheme = QScheme(8, symmetric=False)
    obs = {n: (make_observer(observer, scheme), make_observer(observer, scheme)) for n in names}
    outs = {n: make_observer(observer, scheme) for n in outputs}

    def hook(n):
        def fn(mod, inp, out):
            obs[n][0].observe(inp[0])
            obs[n][1].observe(torch.relu(out) if n in fuse else out)

        return fn

    hooks = [(n, hook(n)) for n in names] + [(n, lambda mod, inp, out, n=n: outs[n].observe(out)) for n in outputs]
    with hooked(hooks, root=model), torch.no_grad():
        for b in batches:
            model(b)
    out = {}
    for n, (i, o) in obs.items():
        qi, qo = i.qparams(), o.qparams()
        out[n] = (float(qi.scale), float(qi.zero_point), float(qo.scale), float(qo.zero_point))
    grids = {n: (float(o.qparams().scale), float(o.qparams().zero_point)) for n, o in outs.items()}
    return out, grids


def quantize_weight_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel codes in [-(2^(b-1)-1), 2^(b-1)-1]: (O, ...) -> int8 (O, ...), scale (O,)."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.detach().float().reshape(w.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(rows / scale[:, None]), -qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), scale


def bake_masks(model: nn.Module, names: list[str]) -> None:
    """Masks of the layers about to be frozen to int8 become plain zeros in their weights: the
    symmetric weight grid maps them to code 0, so the pruned entries stay pruned in the int8 layer.

    Each masked layer is replaced by a plain copy (:func:`~netslim.core.masks.baked_copy`, which
    says why not ``remove_parametrizations``)."""
    for name in names:
        layer = get_module(model, name)
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        replace_module(model, name, baked_copy(layer).train(layer.training))


def _convert(layer: nn.Module, relu: bool, act: tuple, bits: int = 8, quant_out: bool = False) -> nn.Module:
    w = layer.weight.detach().float()
    q, s = quantize_weight_rows(w, bits)
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0])
    if isinstance(layer, nn.Conv2d) and padding_problem(layer):
        raise NetslimError(f"ptq_int8: {padding_problem(layer)}.")
    new = int8_twin(layer, relu=relu, weight_bits=bits, quant_out=quant_out)
    new.set_quantized(q, s, bias, act)
    return new


def _block_flows_as_declared(block: str, spec, fuse: dict, chain: dict) -> bool:
    """The traced forward matches the registered ``relu?(body(x) + shortcut(x))``: each body conv
    feeds only the next one (after its folded BN / fused ReLU) and the last one's output is not
    fused with a ReLU (it goes to the add). Otherwise the block stays plain int8 layers."""
    body = [f"{block}.{c}" for c in spec.body]
    ok = all(chain.get(a) == b for a, b in zip(body, body[1:])) and body[-1] not in fuse
    if not ok:
        log.info("ptq_int8: %s does not run as its registered residual form; kept as separate int8 layers", block)
    return ok


def static_int8(model: nn.Module, calibration: torch.Tensor, cfg: PTQInt8Config) -> dict[str, Any]:
    """Static int8 PTQ of ``model`` in place on ``calibration`` (a (N, ...) input tensor); returns
    the step's notes. The building block of the ``ptq_int8`` and ``mixed_precision`` methods."""
    model.eval()
    names = select(model, cfg.include, cfg.exclude, types=(nn.Conv2d, nn.Linear))
    if not names:
        raise NetslimError("ptq_int8: the model has no Conv2d or Linear layer to quantize.")
    bake_masks(model, names)
    batches = list(calibration.split(cfg.batch_size))
    fold, fuse, chain = _trace_pairs(model, names, batches[0])
    for conv, bn in fold.items():
        fold_bn(get_module(model, conv), get_module(model, bn))
        replace_module(model, bn, nn.Identity())
    blocks = {
        b: spec for b, spec in find_residuals(model, names).items() if _block_flows_as_declared(b, spec, fuse, chain)
    }
    body = {b: [f"{b}.{c}" for c in spec.body] for b, spec in blocks.items()}
    shortcut = {b: [c for c in names if c.startswith(f"{b}.{spec.shortcut}.")] for b, spec in blocks.items()}
    in_block = {c for b in blocks for c in body[b] + shortcut[b]}
    top = [n for n in names if n not in in_block]
    producers = {n: fuse.get(n, fold.get(n, n)) for n in top} | {b: b for b in blocks}
    handoff = find_handoffs(model, producers, set(top) | set(blocks), batches[0][:8])
    acts, block_out = _calibrate(model, names, fuse, batches, cfg.observer, outputs=list(blocks))
    for producer, consumer in chain.items():  # the consumer reads the producer's output grid as is
        acts[consumer] = acts[producer][2:] + acts[consumer][2:]
    for b in blocks:  # the shortcut conv reads the block input on the body's grid
        for c in shortcut[b]:
            acts[c] = acts[body[b][0]][:2] + acts[c][2:]
    for producer, consumer in handoff.items():
        grid = block_out[producer] if producer in blocks else acts[producer][2:]
        for r in [body[consumer][0], *shortcut[consumer]] if consumer in blocks else [consumer]:
            acts[r] = grid + acts[r][2:]
    # the add takes quantized operands: the body's last conv and the shortcut conv hand over
    quantized_out = set(chain) | set(handoff) | {c for b in blocks for c in [body[b][-1], *shortcut[b]]}
    for n in names:
        mod = get_module(model, n)
        bits = settings_for(n, mod, cfg.weight_bits) or 8
        replace_module(model, n, _convert(mod, n in fuse, acts[n], bits, quant_out=n in quantized_out))
    for relu in fuse.values():
        replace_module(model, relu, nn.Identity())
    for b, spec in blocks.items():
        block = get_module(model, b)
        main = nn.Sequential(OrderedDict((c, getattr(block, c)) for c in spec.body))
        new = Int8Residual(main, getattr(block, spec.shortcut), spec.relu, quant_out=b in handoff)
        new.act_qparams.copy_(torch.tensor(acts[body[b][0]][:2] + block_out[b]))
        replace_module(model, b, new)
    return {
        "layers": len(names),
        "folded_bn": len(fold),
        "fused_relu": len(fuse),
        "int8_chains": len(chain),
        "int8_residual_blocks": len(blocks),
        "quantized_handoffs": len(handoff),
        "observer": cfg.observer,
        "engine": "onednn",
    }


@register(PTQInt8Config)
def run_ptq_int8(model: nn.Module, cfg: PTQInt8Config, ctx) -> nn.Module:
    calib = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
    ctx.notes[cfg.method] = static_int8(model, calib.to(next(model.parameters()).device), cfg)
    return model


ptq_int8 = method_function(PTQInt8Config, "ptq_int8")
