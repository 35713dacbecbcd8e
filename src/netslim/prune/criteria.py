"""What can be pruned, how important each weight is, and which weights survive.

The pieces every unstructured method shares (magnitude, N:M, schedules, lottery tickets,
RigL/SET, movement, OBD):

* :func:`prunable_layers` -- the Linear/Conv weights a step may touch (selectors);
* importance criteria -- :class:`Criterion` objects in one registry per unit they score
  (``weights``: one score per weight, for the unstructured steps; ``groups``: one per channel,
  head or neuron of a coupled group, for structured pruning), built-ins and a user's own
  registered alike with :func:`register_criterion`, looked up by name (:func:`get_criterion`);
  a config's ``criterion`` field is checked against them (:data:`WeightCriterion`,
  :func:`criterion_field`);
* score functions -- one tensor per layer, higher = more important;
* :func:`masks_from_scores` -- exact top-k masks, layer-wise or global, with per-layer
  minimum/maximum sparsity;
* :func:`apply_masks` -- attach them as :class:`~netslim.core.masks.Mask`
  parametrizations, all or nothing;
* :func:`sparsity_report` -- zeros per layer and in total.

Masks are keyed by the qualified module name and always apply to ``module.weight``;
``True`` means *keep*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args

import torch
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError, bad_param, shown
from netslim.core.masks import get_mask, set_mask
from netslim.core.registry import Registry
from netslim.core.selectors import select
from netslim.core.surgery import get_module

PRUNABLE_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
Scope = Literal["global", "layer"]
Unit = Literal["weights", "groups"]
Needs = Literal["weights", "activations", "gradients"]
F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------- criteria
@dataclass(frozen=True)
class Criterion:
    """An importance criterion: higher scores are more important, the lowest are pruned.

    ``unit`` is what it scores, and fixes how ``score`` is called:

    * ``"weights"``: ``score(layers, *, seed) -> {layer name: tensor of the weight's shape}``,
      ``layers`` the ``[(name, module)]`` of :func:`prunable_layers` (steps magnitude, nm, imp,
      gradual, lottery, sparsify);
    * ``"groups"``: ``score(model, graph, *, batches, loss_fn, seed) -> {group id: (units,)}`` for
      every group of ``graph.prunable()`` (a :class:`~netslim.core.graph.DependencyGraph`; steps
      channels, heads, ffn, width, and the channel search).

    ``needs`` says what the step must hand it: ``"weights"`` (the model alone), ``"activations"``
    (calibration ``batches``) or ``"gradients"`` (``batches`` and ``loss_fn(model, batch)``); the
    structured steps draw calibration batches only for a criterion that needs them. Unstructured
    steps have no calibration data: a weight criterion needs the weights only."""

    name: str
    unit: Unit
    score: Callable[..., Mapping[Any, torch.Tensor]]
    needs: Needs = "weights"
    description: str = ""


_CRITERIA: dict[str, Registry[Criterion]] = {
    "weights": Registry("weight criterion"),
    "groups": Registry("group criterion"),
}


def _registry(unit: Any) -> Registry[Criterion]:
    if unit not in _CRITERIA:
        raise bad_param("register_criterion", "unit", f"one of {', '.join(_CRITERIA)}", unit)
    return _CRITERIA[unit]


def register_criterion(name: str, unit: Unit, *, needs: Needs = "weights", description: str = "") -> Callable[[F], F]:
    """Decorator, the one way an importance criterion joins netslim (``netslim.prune.register_criterion``)::

        @register_criterion("last_first", "groups")
        def last_first(model, graph, *, batches, loss_fn, seed):
            return {g.id: torch.arange(g.size, dtype=torch.float) for g in graph.prunable()}

    after which ``criterion: last_first`` works in a recipe step and in the Python call. The
    built-ins (weights: magnitude, random; groups: l1, l2, l2_bn, bn_scale, taylor, activation,
    random) are registered the same way. ``description`` defaults to the docstring's first line. A
    name already taken (per unit) by another function is a NetslimError naming both."""
    if not isinstance(name, str) or not name.isidentifier():
        raise bad_param("register_criterion", "name", "an identifier-like string (e.g. 'my_criterion')", name)
    registry = _registry(unit)
    if needs not in get_args(Needs):
        raise bad_param("register_criterion", "needs", f"one of {', '.join(get_args(Needs))}", needs)
    if unit == "weights" and needs != "weights":
        raise bad_param(
            "register_criterion",
            "needs",
            "'weights' for a weight criterion (unstructured steps have no calibration data)",
            needs,
        )

    def deco(fn: F) -> F:
        if not callable(fn):
            raise NetslimError(f"register_criterion({name!r}): expected a score function; got {shown(fn)}.")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        registry.add(name, Criterion(name, unit, fn, needs, doc), fn)
        return fn

    return deco


def get_criterion(name: str, unit: Unit) -> Criterion:
    """The criterion registered as ``name`` for ``unit``; an unknown name is one error listing them."""
    return _registry(unit).get(name)


def registered_criteria(unit: Unit) -> dict[str, Criterion]:
    """Every registered criterion of ``unit``: name -> :class:`Criterion` (built-ins first)."""
    return _registry(unit).entries()


def criterion_field(unit: Unit, needs: Collection[str] = get_args(Needs)) -> Any:
    """The type of a config's ``criterion`` field: a name registered for ``unit`` (and, where a step
    cannot give calibration data, one that ``needs`` only what is listed); checked when the config
    is built, the message listing the names allowed."""

    def check(name: str) -> str:
        try:
            ok = get_criterion(name, unit).needs in needs
        except NetslimError:
            ok = False
        if not ok:
            allowed = sorted(n for n, c in registered_criteria(unit).items() if c.needs in needs)
            some = not set(needs) >= set(get_args(Needs))
            what = f"{unit[:-1]} criterion" + (f" needing only {' or '.join(needs)}" if some else "")
            raise PydanticCustomError(
                "criterion",
                "must be a registered {what} ({allowed}; netslim.prune.register_criterion adds one)",
                {"what": what, "allowed": ", ".join(allowed)},
            )
        return name

    return Annotated[str, AfterValidator(check)]


WeightCriterion = criterion_field("weights")
"""A config field naming a weight criterion (``magnitude``, ``random`` or a registered one)."""


def checked_scores(crit: Criterion, scores: Any, expected: Mapping[Any, tuple[int, ...]]) -> dict[Any, torch.Tensor]:
    """``scores`` as ``crit`` returned them, checked: a tensor of the expected shape (numel, for a
    group) for every key of ``expected`` (layer names or group ids); else one NetslimError."""
    if not isinstance(scores, Mapping):
        raise NetslimError(
            f"Criterion {crit.name!r} returned {shown(scores)}; expected a dict of score tensors "
            f"({'layer name' if crit.unit == 'weights' else 'group id'} -> tensor)."
        )
    for key, shape in expected.items():
        s = scores.get(key)
        if not isinstance(s, torch.Tensor) or (
            tuple(s.shape) != shape if crit.unit == "weights" else s.numel() != math.prod(shape)
        ):
            got = f"shape {tuple(s.shape)}" if isinstance(s, torch.Tensor) else shown(s)
            raise NetslimError(
                f"Criterion {crit.name!r} gave {key!r} {got}; expected a tensor of shape {shape} (one score per "
                f"{'weight' if crit.unit == 'weights' else 'unit'})."
            )
    return dict(scores)


# ----------------------------------------------------------------------- layers
def prunable_layers(
    model: nn.Module, include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """``[(qualified name, module)]`` of the Linear/Conv1d/Conv2d layers selected.

    Raises NetslimError when the model has none, when an ``include`` selector matches no
    prunable layer, or when ``exclude`` leaves nothing.
    """
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()):
        raise NetslimError(
            f"The model ({type(model).__name__}) has no prunable layers; supported types: "
            f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)}."
        )
    names = select(model, include, exclude, types=PRUNABLE_TYPES)
    if not names:
        raise NetslimError(
            f"The 'include'/'exclude' selectors leave no prunable layer (include={include!r}, exclude={exclude!r})."
        )
    return [(n, get_module(model, n)) for n in names]


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the forward pass sees it (masked entries are zero), detached."""
    return module.weight.detach()


def current_mask(module: nn.Module) -> torch.Tensor:
    """The module's mask, or all-True when it has none."""
    mask = get_mask(module)
    return mask if mask is not None else torch.ones_like(module.weight, dtype=torch.bool)


# ----------------------------------------------------------------------- scores
def magnitude_scores(layers: Sequence[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """|w| per layer (already masked weights are zero, so they are pruned first)."""
    return {n: effective_weight(m).abs().float() for n, m in layers}


def random_scores(layers: Sequence[tuple[str, nn.Module]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores (the control); masked entries score -1 so they stay pruned."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in layers:
        # Drawn on CPU so the same seed gives the same mask on every device.
        s = torch.rand(m.weight.shape, generator=gen).to(m.weight.device)
        out[n] = torch.where(current_mask(m), s, torch.full_like(s, -1.0))
    return out


@register_criterion("magnitude", "weights")
def _magnitude(layers: Sequence[tuple[str, nn.Module]], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """|w|: the smallest weights go first (already masked ones are zero)."""
    return magnitude_scores(layers)


@register_criterion("random", "weights")
def _random(layers: Sequence[tuple[str, nn.Module]], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores from ``seed`` (the control); masked weights stay pruned."""
    return random_scores(layers, seed)


def weight_scores(layers: Sequence[tuple[str, nn.Module]], criterion: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores of ``layers`` by the weight criterion registered as ``criterion``, checked."""
    crit = get_criterion(criterion, "weights")
    expected = {n: tuple(m.weight.shape) for n, m in layers}
    return checked_scores(crit, crit.score(layers, seed=seed), expected)


# ------------------------------------------------------------------------ masks
def _check_fraction(field: str, value: float, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
        raise bad_param("masks_from_scores", field, "a float in [0, 1)" if upper_open else "a float in [0, 1]", value)


def _bounds(numel: int, min_sparsity: float, max_sparsity: float | None) -> tuple[int, int]:
    """Allowed number of pruned entries in a layer of ``numel`` weights."""
    lo = math.ceil(min_sparsity * numel - 1e-9)
    hi = numel if max_sparsity is None else math.floor(max_sparsity * numel + 1e-9)
    return lo, max(lo, hi)


def masks_from_counts(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Prune exactly ``counts[name]`` lowest-scored entries of each layer (ties: lower index first)."""
    out = {}
    for name, s in scores.items():
        flat = s.reshape(-1)
        k = int(counts[name])
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            order = torch.sort(flat, stable=True).indices  # ascending: least important first
            keep[order[:k]] = False
        out[name] = keep.view_as(s)
    return out


def _global_counts(
    scores: Mapping[str, torch.Tensor], target: int, bounds: Mapping[str, tuple[int, int]]
) -> dict[str, int]:
    """Per-layer prune counts summing to ``target``: the globally lowest scores, within bounds.

    Each layer first gives up its ``lo`` lowest; the rest of the budget goes to the lowest
    of the remaining candidates (each layer's next ``hi - lo`` scores). A stable sort of
    per-layer ascending runs picks a prefix of every run, so counts are exact.
    """
    names = list(scores)
    runs, owners = [], []
    for i, n in enumerate(names):
        lo, hi = bounds[n]
        sorted_s = torch.sort(scores[n].reshape(-1).float()).values
        runs.append(sorted_s[lo:hi])
        owners.append(torch.full((hi - lo,), i, dtype=torch.long, device=sorted_s.device))
    counts = {n: bounds[n][0] for n in names}
    budget = target - sum(counts.values())
    if budget > 0:
        allv, allo = torch.cat(runs), torch.cat(owners)
        picked = allo[torch.sort(allv, stable=True).indices[:budget]]
        extra = torch.bincount(picked, minlength=len(names)).tolist()
        for i, n in enumerate(names):
            counts[n] += int(extra[i])
    return counts


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: Scope = "global",
    min_sparsity: float = 0.0,
    max_sparsity: float | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that prune the lowest scores.

    ``scope="layer"``: each layer prunes round(sparsity * n) entries (clamped to its
    bounds). ``scope="global"``: round(sparsity * total) entries are pruned across all
    layers, lowest first, while every layer stays within [min_sparsity, max_sparsity].
    Scores must be comparable across layers for a meaningful global ranking.
    """
    _check_fraction("sparsity", sparsity)
    _check_fraction("min_sparsity", min_sparsity)
    if max_sparsity is not None:
        _check_fraction("max_sparsity", max_sparsity, upper_open=False)
        if max_sparsity < min_sparsity:
            raise bad_param("masks_from_scores", "max_sparsity", f">= min_sparsity ({min_sparsity})", max_sparsity)
    if scope not in ("global", "layer"):
        raise bad_param("masks_from_scores", "scope", "one of 'global', 'layer'", scope)
    if not scores:
        raise NetslimError("masks_from_scores got no layers to prune.")
    bounds = {n: _bounds(s.numel(), min_sparsity, max_sparsity) for n, s in scores.items()}
    if scope == "layer":
        counts = {n: min(max(round(sparsity * s.numel()), bounds[n][0]), bounds[n][1]) for n, s in scores.items()}
        return masks_from_counts(scores, counts)
    total = sum(s.numel() for s in scores.values())
    target = round(sparsity * total)
    lo_sum, hi_sum = sum(b[0] for b in bounds.values()), sum(b[1] for b in bounds.values())
    if not lo_sum <= target <= hi_sum:
        raise NetslimError(
            f"Global sparsity {sparsity} cannot be reached within the per-layer bounds "
            f"min_sparsity={min_sparsity}, max_sparsity={max_sparsity} (reachable: "
            f"[{lo_sum / total:.4f}, {hi_sum / total:.4f}])."
        )
    return masks_from_counts(scores, _global_counts(scores, target, bounds))


def threshold_counts(
    scores: Mapping[str, torch.Tensor],
    threshold: float,
    *,
    min_sparsity: float = 0.0,
    max_sparsity: float | None = None,
) -> dict[str, int]:
    """Per-layer prune counts for ``score < threshold``, clamped to the per-layer bounds."""
    out = {}
    for n, s in scores.items():
        lo, hi = _bounds(s.numel(), min_sparsity, max_sparsity)
        out[n] = min(max(int((s < threshold).sum()), lo), hi)
    return out


# ---------------------------------------------------------------------- apply
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` (module name -> keep-mask of its weight) to ``model``, in place.

    All or nothing: every name and shape is checked first, and if attaching fails midway
    the layers already touched get their previous weights and masks back (as
    ``torch.nn.utils.prune`` does).
    """
    targets = []
    for name, mask in masks.items():
        module = get_module(model, name)
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise NetslimError(f"Cannot mask module {name!r} ({type(module).__name__}): it has no weight tensor.")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise NetslimError(
                f"Mask for {name!r} has shape {tuple(mask.shape)}; its weight has {tuple(module.weight.shape)}."
            )
        targets.append((name, module, mask))
    undo = []
    try:
        for _name, module, mask in targets:
            undo.append(_snapshot(module))
            set_mask(module, mask)
    except BaseException:
        for module, state in reversed(list(zip((t[1] for t in targets), undo))):
            _restore(module, state)
        raise
    return model


def _snapshot(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    orig = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
    mask = get_mask(module)
    return orig.detach().clone(), None if mask is None else mask.clone()


def _restore(module: nn.Module, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    weight, mask = state
    if mask is None and get_mask(module) is not None:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    elif mask is not None:
        get_mask(module).copy_(mask)
    orig = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
    with torch.no_grad():
        orig.copy_(weight)


# --------------------------------------------------------------------- report
def sparsity_report(model: nn.Module) -> dict:
    """``{"layers": {name: {params, zeros, sparsity, masked}}, "global": {params, zeros, sparsity}}``.

    Counts the effective weights of every Linear/Conv layer (biases excluded, as in the
    pruning literature).
    """
    layers, params, zeros = {}, 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        w = effective_weight(module)
        z = int(w.numel() - torch.count_nonzero(w))
        layers[name] = {
            "params": w.numel(),
            "zeros": z,
            "sparsity": z / max(1, w.numel()),
            "masked": get_mask(module) is not None,
        }
        params, zeros = params + w.numel(), zeros + z
    return {"layers": layers, "global": {"params": params, "zeros": zeros, "sparsity": zeros / max(1, params)}}
