"""Dynamic sparse training: SET and RigL train a sparse network at constant sparsity.

Both start from a random sparse mask whose per-layer densities follow the
Erdős–Rényi-Kernel (ERK) rule (or are uniform) and, every ``frequency`` steps (ΔT) until
``end_step`` (default: 75 % of training), move a fraction of each layer's connections:

* **drop** the ``n`` active weights of smallest magnitude;
* **grow** ``n`` inactive connections — by largest dense-gradient magnitude (RigL,
  Evci et al. 2020) or at random (SET, Mocanu et al. 2018). Grown weights start at 0.

``n = floor(alpha_t * active)`` with ``alpha_t = alpha / 2 * (1 + cos(pi * t / T_end))``,
so each layer drops and grows the same count and its sparsity never changes.

```yaml
- method: rigl            # or: set
  sparsity: 0.9
  distribution: erk       # or uniform
  frequency: 100          # ΔT
  alpha: 0.3
  finetune: {epochs: 15, lr: 0.05}   # trains from scratch (from_scratch: true re-initialises first)
```

The dense gradient RigL needs is read only at update steps, from a tensor hook on the
output of the layer's :class:`~netslim.core.masks.Mask` parametrization (the gradient of
the *masked* weight, ``dL/dW'``, which is dense even where the mask is zero; the stored
original's gradient is that times the mask).

Under ``torchrun`` (data-parallel training) the dense gradients are averaged over the ranks
before growing, and every mask update is rank 0's, broadcast before it is applied.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from netslim.api import method_function
from netslim.core import distributed
from netslim.core.config import register
from netslim.core.errors import NetslimError
from netslim.core.masks import Mask, get_mask, make_permanent, set_mask
from netslim.core.selectors import Selector
from netslim.prune._api import check_fraction, need_task, prunable_preflight, total_steps
from netslim.prune.criteria import prunable_layers, sparsity_report
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ERK
def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float, *, power: float = 1.0) -> dict[str, float]:
    """Per-layer densities (fraction kept) of the Erdős–Rényi-Kernel distribution.

    density_l = eps * (sum(shape_l) / prod(shape_l)) ** power, with eps chosen so that the
    kept count over all layers is ``(1 - sparsity) * total``. A layer whose density would
    exceed 1 is made dense and eps is solved again for the rest (Evci et al., Appendix).
    """
    if not 0.0 <= sparsity < 1.0:
        raise NetslimError(f"The 'sparsity' parameter of erk_densities must be a float in [0, 1); got {sparsity!r}.")
    if not shapes:
        raise NetslimError("erk_densities needs at least one layer shape; got none.")
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: (sum(s) / numel[k]) ** power for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        # Kept weights the sparse layers must hold once the dense ones are paid for.
        rhs = sum(numel[k] * (1 - sparsity) for k in shapes if k not in dense)
        rhs -= sum(numel[k] * sparsity for k in dense)
        divisor = sum(raw[k] * numel[k] for k in shapes if k not in dense)
        if divisor == 0:  # every layer dense
            break
        eps = rhs / divisor
        worst = max(raw[k] for k in shapes if k not in dense)
        if eps * worst <= 1.0:
            break
        dense |= {k for k in shapes if k not in dense and raw[k] == worst}
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def layer_densities(shapes: dict[str, tuple[int, ...]], sparsity: float, distribution: str) -> dict[str, float]:
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    return {k: 1.0 - sparsity for k in shapes}


# --------------------------------------------------------------------- dense grads
class DenseGradTap:
    """Captures ``dL/dW'`` (the gradient of each masked weight, dense) while started.

    A forward hook on the layer's Mask parametrization registers a tensor hook on its
    output; several forwards before one backward (weight read twice) are summed.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = layers
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def start(self) -> None:
        self.stop()
        self.grads = {}
        for name, module in self.layers:
            mask_module = _mask_module(module)
            self._handles.append(mask_module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def store(grad: torch.Tensor) -> None:
            prev = self.grads.get(name)
            self.grads[name] = grad.detach() if prev is None else prev + grad.detach()

        def on_forward(_mod, args, out):
            if out.requires_grad:  # not under no_grad (evaluation)
                out.register_hook(store)

        return on_forward

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _mask_module(module: nn.Module) -> nn.Module:
    for p in module.parametrizations["weight"]:
        if isinstance(p, Mask):
            return p
    raise NetslimError(f"{type(module).__name__}.weight carries no netslim Mask.")


def original(module: nn.Module) -> torch.Tensor:
    """The stored (pre-mask) weight parameter of a masked module."""
    return module.parametrizations["weight"].original


def reset_optimizer_entries(opt: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero the optimizer's per-element state (momentum, Adam moments) at ``where``.

    Why: a dropped weight's momentum would otherwise keep moving its stored value, and a
    grown weight must start from a clean state, not from moments of an older life.
    """
    for value in opt.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where, 0)


# ------------------------------------------------------------------------- configs
class _DynamicSparseConfig(TrainingStep):
    """Shared fields of SET and RigL (``grow`` is what tells them apart)."""

    grow: ClassVar[str] = ""
    sparsity: float = Field(0.9, description="fraction of zeros over the selected layers, in [0, 1)")
    distribution: Literal["erk", "uniform"] = "erk"
    include: Selector = None
    exclude: Selector = None
    frequency: int = Field(100, ge=1, description="ΔT: optimizer steps between mask updates")
    alpha: float = Field(0.3, gt=0, le=1, description="initial fraction of active weights moved per update")
    decay: Literal["cosine", "constant"] = "cosine"
    end_step: int | None = Field(None, ge=1, description="no mask updates from this step on (default: 75% of training)")
    from_scratch: bool = Field(
        True,
        description="re-initialise weights and draw a random mask first; "
        "False keeps the weights and starts from a per-layer magnitude mask",
    )
    # Training from scratch: the baseline's budget, not a fine-tune's.
    finetune: FinetuneConfig = finetune_field(
        "the sparse training run; its seed also seeds the masks and the re-initialisation", epochs=10, lr=0.05
    )
    min_epochs: ClassVar[int] = 1

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        return check_fraction(v)

    keeps_modules: ClassVar[bool] = True  # masks only (netslim.recipe.preflight)
    data_parallel: ClassVar[bool] = True  # under torchrun: masks decided on rank 0 and broadcast

    @classmethod
    def example(cls):
        return cls(sparsity=0.5, frequency=2, finetune={"epochs": 1, "max_steps": 6, "batch_size": 64})

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers resolve and mask updates end within the run."""
        prunable_preflight(self, model)
        if task is not None:
            _check_end_step(self, total_steps(task, self.finetune))


class RigLConfig(_DynamicSparseConfig):
    """RigL: drop by magnitude, grow by dense-gradient magnitude."""

    method = "rigl"
    grow = "gradient"


class SETConfig(_DynamicSparseConfig):
    """SET: drop by magnitude, grow at random."""

    method = "set"
    grow = "random"


# ------------------------------------------------------------------------ callback
class DynamicSparsity(Callback):
    """Moves connections every ``frequency`` steps at constant per-layer sparsity."""

    def __init__(self, layers: list[tuple[str, nn.Module]], cfg: _DynamicSparseConfig):
        self.layers, self.cfg = layers, cfg
        self.tap = DenseGradTap(layers)
        self.gen: torch.Generator | None = None
        self.end_step = 0
        self.updates: list[dict[str, Any]] = []

    def on_train_begin(self, state: TrainState) -> None:
        default_end = int(0.75 * state.total_steps)  # RigL's default: stop at 3/4 of training
        self.end_step = self.cfg.end_step if self.cfg.end_step is not None else default_end
        device = original(self.layers[0][1]).device
        self.gen = torch.Generator(device=device).manual_seed(self.cfg.finetune.seed + 1)

    def is_update(self, step: int) -> bool:
        return step > 0 and step % self.cfg.frequency == 0 and step < self.end_step

    def fraction(self, step: int) -> float:
        if self.cfg.decay == "constant":
            return self.cfg.alpha
        return self.cfg.alpha / 2 * (1 + math.cos(math.pi * step / max(self.end_step, 1)))

    def on_step_begin(self, state: TrainState) -> None:
        if self.is_update(state.step) and self.cfg.grow == "gradient":
            self.tap.start()

    def on_after_backward(self, state: TrainState) -> None:
        if not self.is_update(state.step):
            return
        self.tap.stop()
        # Each rank tapped the gradient of its share of the batch: average them (layer order).
        distributed.all_reduce_mean_([self.tap.grads[n] for n, _ in self.layers if n in self.tap.grads])
        frac = self.fraction(state.step)
        moved = sum(self.update_layer(name, module, frac, state.optimizer) for name, module in self.layers)
        self.updates.append({"step": state.step, "fraction": frac, "moved": moved})

    def on_train_end(self, state: TrainState) -> None:
        self.tap.stop()

    @torch.no_grad()
    def update_layer(self, name: str, module: nn.Module, frac: float, opt: torch.optim.Optimizer) -> int:
        w, old = original(module), get_mask(module).clone()
        active = int(old.sum())
        n = int(frac * active)
        if n == 0 or active == old.numel():
            return 0
        flat_w = w.abs().flatten()  # (numel,)
        drop_score = torch.where(old.flatten(), flat_w, torch.full_like(flat_w, -math.inf))
        keep = torch.zeros_like(old.flatten())
        keep[torch.topk(drop_score, active - n, sorted=False).indices] = True
        grow_score = self.grow_scores(name, w)  # (numel,)
        grow_score = torch.where(keep, torch.full_like(grow_score, -math.inf), grow_score)
        new = keep.clone()
        new[torch.topk(grow_score, n, sorted=False).indices] = True
        new = new.view_as(old)
        distributed.broadcast_tensors([new])  # rank 0's decision on every rank
        born, died = new & ~old, old & ~new
        set_mask(module, new)  # zeroes the stored weight where the new mask is 0
        w.masked_fill_(born, 0.0)  # grown connections start at zero
        if w.grad is not None:
            w.grad.mul_(new.to(w.grad.dtype))  # this step's update must not revive dropped weights
        reset_optimizer_entries(opt, w, born | died)
        return int(born.sum())

    def grow_scores(self, name: str, w: torch.Tensor) -> torch.Tensor:
        if self.cfg.grow == "random":
            return torch.rand(w.numel(), generator=self.gen, device=w.device)
        if name not in self.tap.grads:
            raise NetslimError(f"RigL found no gradient for layer {name!r}; is it used in the forward pass?")
        return self.tap.grads[name].abs().flatten().to(w.dtype)


# ---------------------------------------------------------------------- functions
def _reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh weights as the architecture would initialise them (else reset_parameters)."""
    from netslim.core.serialize import build_arch, describe_arch

    make_permanent(model)
    torch.manual_seed(seed)
    try:
        fresh = build_arch(describe_arch(model), device=next(model.parameters()).device)
        model.load_state_dict(fresh.state_dict())
        return
    except (NetslimError, RuntimeError):  # unknown arch or changed structure
        log.info("re-initialising with reset_parameters (architecture not rebuildable as is)")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


@torch.no_grad()
def initial_masks(layers: list[tuple[str, nn.Module]], cfg: _DynamicSparseConfig) -> dict[str, torch.Tensor]:
    """Masks with ERK/uniform densities: random (from scratch) or largest magnitude."""
    shapes = {n: tuple(m.weight.shape) for n, m in layers}
    dens = layer_densities(shapes, cfg.sparsity, cfg.distribution)
    gen = torch.Generator().manual_seed(cfg.finetune.seed)
    masks = {}
    for name, module in layers:
        w = module.weight
        k = round(dens[name] * w.numel())
        score = torch.rand(w.numel(), generator=gen).to(w.device) if cfg.from_scratch else w.abs().flatten()
        mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        mask[torch.topk(score, k, sorted=False).indices] = True
        masks[name] = mask.view_as(w)
    return masks


def dynamic_sparse_train(model: nn.Module, task, *, cfg: _DynamicSparseConfig) -> dict[str, Any]:
    """Train ``model`` sparse (in place) with SET or RigL; returns the fit summary + updates."""
    layers = prunable_layers(model, cfg.include, cfg.exclude)  # validates before touching weights
    train_cfg = cfg.finetune
    _check_end_step(cfg, total_steps(task, train_cfg))
    if cfg.from_scratch:
        _reinitialise(model, train_cfg.seed)
    masks = distributed.from_main(initial_masks(layers, cfg))
    for name, module in layers:
        set_mask(module, masks[name])
    cb = DynamicSparsity(layers, cfg)
    summary = fit(model, task, train_cfg, [cb])
    return summary | {"mask_updates": cb.updates}


def _check_end_step(cfg: _DynamicSparseConfig, steps: int) -> None:
    if cfg.end_step is not None and cfg.end_step > steps:
        raise NetslimError(
            f"The 'end_step' parameter of {type(cfg).__name__} must be <= the number of training "
            f"steps ({steps}); got {cfg.end_step}."
        )


def _train_and_note(model: nn.Module, cfg: _DynamicSparseConfig, ctx) -> nn.Module:
    summary = dynamic_sparse_train(model.to(ctx.device), need_task(ctx, cfg.method), cfg=cfg)
    updates = summary.pop("mask_updates")
    summary.pop("history")
    ctx.notes[cfg.method] = summary | {
        "mask_updates": len(updates),
        "connections_moved": sum(u["moved"] for u in updates),
        **sparsity_report(model),
    }
    return model


@register(RigLConfig)
def run_rigl(model: nn.Module, cfg: RigLConfig, ctx) -> nn.Module:
    return _train_and_note(model, cfg, ctx)


@register(SETConfig)
def run_set(model: nn.Module, cfg: SETConfig, ctx) -> nn.Module:
    return _train_and_note(model, cfg, ctx)


# In Python: rigl_train(model, task, sparsity=0.9, finetune={"epochs": 15}) (netslim.api.method_function)
rigl_train = method_function(RigLConfig, "rigl_train")
set_train = method_function(SETConfig, "set_train")
