"""Hidden-size (width) pruning of Hugging Face transformers: a narrower residual stream.

``shrink_width(model, hidden_size=288, batches=...)`` removes the same hidden dimensions
everywhere the residual stream goes: the embeddings' columns (word, position, token type; a
tied LM head with them), every block's output-projection rows and biases, every input
projection's columns (q/k/v, FFN in), every LayerNorm / RMSNorm, the final norm and the head's
input columns. Which tensors those are comes from the generic dependency graph
(:func:`netslim.prune.structured.generic.structured_graph`): the group of the input embedding's
columns. The graph locks it because norm statistics span the features; width pruning accepts
that renormalisation by design (Minitron does the same) and then *checks* what it did: on the
tracing inputs, the shrunk model must equal the model with the removed dimensions zeroed and
every norm taking its statistics over the kept dimensions only (:func:`verify_width`), or the
step refuses, naming the difference. A model whose output is the hidden state itself (a bare
encoder) is refused: its output would change size.

**Ranking** (``criterion``): ``activation`` (default, Minitron, Muralidharan et al. 2024): dim
``j`` scores ``sum over norms n of sqrt(mean over tokens of LN_n(x)_j^2)``, the root mean square
of every LayerNorm / RMSNorm output of the residual stream on calibration batches (padding
tokens excluded); any other group criterion (``l2``, ``taylor``, ``random``, ... or one registered
with :func:`netslim.prune.register_criterion`) as in :mod:`.importance`, over the group's weight
slices.

**Config** (the family's width rule, :data:`WIDTH_RULES`): ``hidden_size`` becomes the new width.
BERT and GPT-2 derive the head size from ``hidden_size / num_heads``, so there the width must be
a multiple of the head size and every block keeps ``width / head_size`` heads (the least
important go with the dims, ranked by the same criterion; 384 -> 288 keeps 9 of MiniLM's 12
heads of 32); BERT's pooler (hidden -> hidden, sized by the same key) is cut to the width too.
Llama-family configs state ``head_dim``, so heads are untouched. The result reloads with
``from_pretrained`` (:func:`config_shapes_match` checks it on the meta device) and with
``netslim.load`` (the plan is replayed).

**Norm correction** (``norm_correction``, default on): a norm over fewer features divides by
another statistic: with the removed dims near zero (what the criterion picks), an RMSNorm over
``D'`` of ``D`` features outputs ``sqrt(D'/D)`` times what it did. Each norm's weight is
multiplied by the mean over calibration tokens of ``stat_kept / stat_full`` (RMS, or the
standard deviation of a LayerNorm) of the input it got in the unpruned model, which makes an
RMSNorm exact when the removed dims are zero (up to its epsilon) and first-order right otherwise.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.graph import DependencyGraph, Group
from netslim.core.hooks import eval_mode
from netslim.measure.counts import count_params
from netslim.prune.criteria import get_criterion

from .generic import _first_tensor, example_inputs_for, is_hf, structured_graph
from .importance import _inputs_of, group_scores
from .plan import PrunePlan, _shrunk, _swap_tensors, apply_plan, plan_from_keep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidthRule:
    """How a family's config says its width: ``heads_key`` names the head count when the head size
    is ``hidden_size / heads`` (then the width moves in whole heads), None when ``head_dim`` is stated."""

    heads_key: str | None
    ffn_key: str | None = None  # an FFN size that defaults to 4 x hidden_size: written out explicitly


WIDTH_RULES = {
    "bert": WidthRule("num_attention_heads"),
    "gpt2": WidthRule("n_head", "n_inner"),
    "llama": WidthRule(None),
    "mistral": WidthRule(None),
    "qwen2": WidthRule(None),
}
_SIZE_ATTRS = ("hidden_size", "embed_dim")  # module attributes that hold the width (informative or used)


# ----------------------------------------------------------------------------- checks
def width_rule(model: nn.Module) -> WidthRule:
    """The width rule of ``model``'s family; one clear error for any other model."""
    if not is_hf(model):
        raise NetslimError(
            f"width: a {type(model).__name__} is not a Hugging Face transformer; hidden-size "
            "pruning is for transformers (use method 'channels' for other models)."
        )
    kind = model.config.model_type
    if kind not in WIDTH_RULES:
        raise NetslimError(
            f"width: no width rule for model_type {kind!r} (netslim knows "
            f"{', '.join(sorted(WIDTH_RULES))}): it cannot say how the config states a new hidden size."
        )
    return WIDTH_RULES[kind]


def head_size(model: nn.Module, rule: WidthRule) -> int | None:
    """The head size the config derives from the width (None where ``head_dim`` is stated)."""
    if rule.heads_key is None:
        return None
    return int(model.config.hidden_size) // int(getattr(model.config, rule.heads_key))


def target_width(model: nn.Module, hidden_size: int | None = None, ratio: float | None = None) -> int:
    """The new width from ``hidden_size`` or ``ratio`` (share of dims removed), checked before any work."""
    rule = width_rule(model)
    d = int(model.config.hidden_size)
    if (hidden_size is None) == (ratio is None):
        raise NetslimError("width: give exactly one of 'hidden_size' or 'ratio'.")
    if ratio is not None:
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
            raise bad_param("width", "ratio", "a float in [0, 1) (the share of hidden dims removed)", ratio)
        hidden_size = int(round(d * (1 - ratio)))
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or not 1 <= hidden_size < d:
        raise bad_param("width", "hidden_size", f"an int in [1, {d - 1}] (the model's width is {d})", hidden_size)
    hd = head_size(model, rule)
    if hd is not None and hidden_size % hd:
        lo, hi = hidden_size // hd * hd, (hidden_size // hd + 1) * hd
        raise bad_param(
            "width",
            "hidden_size",
            f"a multiple of the head size {hd} ({type(model).__name__} derives "
            f"the head size from hidden_size / {rule.heads_key}), e.g. {lo or hd} or {hi}",
            hidden_size,
        )
    return hidden_size


# ----------------------------------------------------------------------------- groups
def residual_group(model: nn.Module, graph: DependencyGraph) -> Group:
    """The group of the residual stream: the input embedding's columns (or, where that tensor is
    tied and has no slot, the hidden-size group that holds the most norms)."""
    d = int(model.config.hidden_size)
    emb = model.get_input_embeddings()
    emb_name = next((n for n, m in model.named_modules() if m is emb), None)
    for g in graph.groups:
        if any(s.module == emb_name and s.param == "weight" and s.dim == 1 for s, _ in g.slots):
            return g
    candidates = [g for g in graph.groups if g.size == d and any(_is_norm(model, s.module) for s, _ in g.slots)]
    if not candidates:
        raise NetslimError(
            f"width: no residual stream of {d} features found in {type(model).__name__}'s graph "
            f"({'; '.join(s['reason'] for s in graph.skipped[:3]) or 'nothing traced'})."
        )
    return max(candidates, key=lambda g: len(g.slots))


def _is_norm(model: nn.Module, name: str) -> bool:
    m = model.get_submodule(name)
    w = getattr(m, "weight", None)
    return (
        (isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("Norm"))
        and isinstance(w, torch.Tensor)
        and w.ndim == 1
    )


def norm_names(model: nn.Module, group: Group) -> list[str]:
    return sorted({s.module for s, _ in group.slots if _is_norm(model, s.module)})


def on_device(model: nn.Module, inputs: Any) -> Any:
    """Model inputs (a tensor, a dict of them, or a batch whose first item they are) on ``model``'s device."""
    x = _inputs_of(inputs)
    dev = next(model.parameters()).device
    return (
        {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in x.items()} if isinstance(x, dict) else x.to(dev)
    )


def _run(model: nn.Module, batch: Any) -> None:
    x = on_device(model, batch)
    model(**x) if isinstance(x, dict) else model(x)


@torch.no_grad()
def _norm_stats(
    model: nn.Module,
    names: list[str],
    batches: list[Any],
    fn: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
    pre: bool,
) -> dict[str, torch.Tensor]:
    """Sum over calibration tokens of ``fn(name, x, weights)`` for each norm's input (``pre``) or output."""
    out: dict[str, torch.Tensor] = {}
    current: dict[str, Any] = {}

    def hook(name):
        def record(module, args, output=None):
            x = (args[0] if pre else output).detach().float()  # (B, T, D)
            mask = current.get("mask")
            w = (
                mask.to(x.device, x.dtype)
                if mask is not None and mask.shape == x.shape[:2]
                else torch.ones(x.shape[:-1], device=x.device)
            )
            v = fn(name, x.reshape(-1, x.shape[-1]), w.reshape(-1)).cpu()
            out[name] = out.get(name, 0) + v

        return record

    with eval_mode(model, {n: hook(n) for n in names}, kind="pre" if pre else "forward"):
        for batch in batches:
            first = _inputs_of(batch)
            current["mask"] = first.get("attention_mask") if isinstance(first, dict) else None
            _run(model, batch)
    return out


def activation_scores(model: nn.Module, group: Group, batches: list[Any]) -> torch.Tensor:
    """Minitron's width importance: sum over norms of the RMS over tokens of each output feature."""
    names = norm_names(model, group)
    if not names:
        raise NetslimError(
            "width: criterion 'activation' reads the norm outputs, and this model's residual "
            "stream has no LayerNorm / RMSNorm; use criterion 'l2'."
        )
    sq = _norm_stats(
        model, names, batches, lambda n, x, w: torch.cat([(x.pow(2) * w[:, None]).sum(0), w.sum().view(1)]), pre=False
    )
    total = torch.zeros(group.size)
    for v in sq.values():
        total += (v[:-1] / v[-1].clamp_min(1)).sqrt()
    return total


def _scores(
    model: nn.Module, graph: DependencyGraph, group: Group, criterion: str, batches, loss_fn, seed: int
) -> torch.Tensor:
    if criterion == "activation":
        if not batches:
            raise bad_param("width", "batches", "calibration batches for criterion 'activation'", None)
        return activation_scores(model, group, list(batches))
    free = replace(group, locked=None)
    sub = DependencyGraph([free], graph.slots, [], graph.kind)
    return group_scores(model, sub, criterion, batches=batches, loss_fn=loss_fn, seed=seed)[free.id]


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    return torch.argsort(scores.float(), descending=True, stable=True)[:n].sort().values


# ------------------------------------------------------------------------------ plan
def plan_width(
    model: nn.Module,
    hidden_size: int,
    *,
    criterion: str = "activation",
    batches: Iterable[Any] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    example_inputs: Any = None,
    graph: DependencyGraph | None = None,
    keep: torch.Tensor | None = None,
    coupled: bool = True,
) -> tuple[PrunePlan, dict[str, Any]]:
    """The prune plan of a width ``hidden_size`` (see the module docstring). ``keep``: the hidden
    dims to keep, instead of ranking them (CoFi's learned masks). ``coupled=False``: cut only the
    residual stream, not what the config sizes with it (BERT / GPT-2 heads, BERT's pooler): CoFi's
    per-block head counts reload with ``netslim.load`` only anyway; the config states the width."""
    get_criterion(criterion, "groups")  # an unknown name fails here, listing the registered ones
    rule = width_rule(model)
    d = int(model.config.hidden_size)
    batches = list(batches) if batches is not None else None
    graph = graph or structured_graph(model, None if example_inputs is None else on_device(model, example_inputs))
    g = residual_group(model, graph)
    if keep is None:
        keep = _top(_scores(model, graph, g, criterion, batches, loss_fn, seed), hidden_size)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if len(keep) != hidden_size:
        raise NetslimError(f"width: {len(keep)} kept dims for a width of {hidden_size}.")
    keeps = {g.id: keep}
    for h in graph.groups if coupled else ():  # other spaces the config sizes by hidden_size (BERT's pooler)
        if h is not g and h.kind == "channel" and h.size == d and h.prunable:
            crit = "activation" if criterion == "activation" else criterion
            keeps[h.id] = _top(
                group_scores(
                    model,
                    DependencyGraph([h], graph.slots, [], graph.kind),
                    crit,
                    batches=batches,
                    loss_fn=loss_fn,
                    seed=seed,
                )[h.id],
                hidden_size,
            )
    if coupled:
        keeps.update(_head_keeps(model, graph, rule, hidden_size, criterion, batches, loss_fn, seed))
    else:
        rule = replace(rule, heads_key=None)
    saved = {gid: graph.groups[gid].locked for gid in keeps}
    for gid in keeps:  # width accepts the renormalisation the lock protects; verify_width checks the rest
        graph.groups[gid].locked = None
    try:
        plan = plan_from_keep(graph, keeps)
    finally:
        for gid, reason in saved.items():
            graph.groups[gid].locked = reason
    plan.entries += _tied_entries(model, g, keep)
    for rec in plan.groups:
        if rec["name"] == g.name and rec["size"] == d:
            rec.update(kind="hidden", keep=keep.tolist())
    plan.config, attrs = _config(model, rule, hidden_size)
    plan.attrs += attrs
    return plan, {"residual": g, "graph": graph, "keep": keep}


def _head_keeps(
    model, graph, rule: WidthRule, width: int, criterion: str, batches, loss_fn, seed: int
) -> dict[int, torch.Tensor]:
    """BERT / GPT-2: every block keeps ``width / head_size`` heads, the most important ones."""
    hd = head_size(model, rule)
    if hd is None:
        return {}
    n = width // hd
    heads = [h for h in graph.groups if h.kind == "head"]
    if not heads:
        raise NetslimError(
            f"width: {type(model).__name__} derives its head size from the width, but netslim found "
            "no attention heads to cut with it."
        )
    locked = [h for h in heads if not h.prunable]
    if locked:
        raise NetslimError(
            f"width: the heads of {locked[0].name} cannot be removed ({locked[0].locked}), and a "
            f"width of {width} needs {n} heads of {hd} per block."
        )
    few = [h for h in heads if h.size < n]
    if few:
        raise NetslimError(
            f"width: {few[0].name} has {few[0].size} heads, fewer than the {n} of {hd} a width of "
            f"{width} needs; choose a width of at most {few[0].size * hd}."
        )
    crit = "activation" if criterion == "activation" else criterion
    sub = DependencyGraph([h for h in heads if h.size > n], graph.slots, [], graph.kind)
    scores = group_scores(model, sub, crit, batches=batches, loss_fn=loss_fn, seed=seed) if sub.groups else {}
    return {gid: _top(s, n) for gid, s in scores.items()}


def _tied_entries(model: nn.Module, g: Group, keep: torch.Tensor) -> list[dict[str, Any]]:
    """The input embedding when it is tied (its slot is locked out of the graph): its columns."""
    emb = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is emb), None)
    if name is None or any(s.module == name and s.param == "weight" for s, _ in g.slots):
        return []
    return [{"module": name, "param": "weight", "dim": 1, "keep": keep.tolist()}]


def _config(model: nn.Module, rule: WidthRule, width: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = model.config
    d = int(cfg.hidden_size)
    config: dict[str, Any] = {"hidden_size": width}
    attrs = []
    if rule.ffn_key is not None and getattr(cfg, rule.ffn_key, None) is None:
        config[rule.ffn_key] = 4 * d  # GPT-2's n_inner=None means 4 x n_embd: the FFN keeps its size
    hd = head_size(model, rule)
    if hd is not None:
        config[rule.heads_key] = width // hd
        for name, m in model.named_modules():
            if hasattr(m, "attention_head_size") and hasattr(m, "all_head_size"):  # BERT: informative
                attrs += [
                    {"module": name, "attr": "num_attention_heads", "value": width // hd},
                    {"module": name, "attr": "all_head_size", "value": width},
                ]
    elif WIDTH_RULES[cfg.model_type].heads_key is not None:
        pass  # coupled=False: BERT / GPT-2 heads keep their own size, which their config cannot state
    elif getattr(cfg, "head_dim", None) is None:
        config["head_dim"] = d // int(cfg.num_attention_heads)
    else:
        config["head_dim"] = int(cfg.head_dim)  # stated explicitly: it no longer follows hidden_size
    for name, m in model.named_modules():
        for a in _SIZE_ATTRS:
            if isinstance(getattr(m, a, None), int) and getattr(m, a) == d and name:
                attrs.append({"module": name, "attr": a, "value": width})
    return config, attrs


# ---------------------------------------------------------------------------- checks
class KeptStatsNorm(nn.Module):
    """A norm over the kept features only, zeros elsewhere: the reference of :func:`verify_width`."""

    def __init__(self, norm: nn.Module, keep: torch.Tensor, size: int):
        super().__init__()
        self.norm, self.size = norm, size
        self.register_buffer("keep", keep.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x[..., self.keep])
        out = y.new_zeros(*y.shape[:-1], self.size)
        out[..., self.keep] = y
        return out


def _kept_norm(norm: nn.Module, name: str, plan: PrunePlan) -> nn.Module:
    entries = [e for e in plan.entries if e["module"] == name]
    new = _shrunk(norm, entries, name)
    if isinstance(new, dict):  # no shape attributes (an RMSNorm): sliced in place on a copy
        new, state = copy.deepcopy(norm), new
        _swap_tensors(new, state)
    return new


def width_reference(model: nn.Module, plan: PrunePlan, *, keep: torch.Tensor, norms: list[str]) -> nn.Module:
    """A copy of ``model`` with the plan's slices zeroed and every norm over the kept features only:
    what the shrunk model must compute (its removed dims read as zeros)."""
    ref = apply_plan(copy.deepcopy(model), PrunePlan(plan.entries), "mask")
    d = int(model.config.hidden_size)
    for name in norms:
        parent, _, child = name.rpartition(".")
        setattr(
            ref.get_submodule(parent) if parent else ref,
            child,
            KeptStatsNorm(_kept_norm(model.get_submodule(name), name, plan), keep, d),
        )
    return ref


@torch.no_grad()
def verify_width(
    model: nn.Module, plan: PrunePlan, *, keep: torch.Tensor, norms: list[str], example_inputs: Any, atol: float = 1e-4
) -> float:
    """Raise unless the shrunk model equals :func:`width_reference` on ``example_inputs``; returns the max diff."""
    ref = width_reference(model, plan, keep=keep, norms=norms).eval()
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink").eval()
    x = on_device(model, example_inputs)
    y0 = _first_tensor(ref(**x) if isinstance(x, dict) else ref(x))
    y1 = _first_tensor(shrunk(**x) if isinstance(x, dict) else shrunk(x))
    if y0 is None or y1 is None or y0.shape != y1.shape:
        got = None if y1 is None else tuple(y1.shape)
        raise NetslimError(
            f"width: the output of {type(model).__name__} changes shape ({got} instead of "
            f"{None if y0 is None else tuple(y0.shape)}): its hidden states are its output; prune the "
            "width of a model with a head (e.g. a *ForSequenceClassification or *ForCausalLM)."
        )
    diff = float((y0.float() - y1.float()).abs().max())
    scale = float(y0.float().abs().max()) or 1.0
    if not diff <= atol * max(1.0, scale):
        raise NetslimError(
            f"width: removing hidden dims of {type(model).__name__} does not equal zeroing them "
            f"(max output difference {diff:.3g}): some op reads the hidden features in a way netslim "
            "cannot slice; nothing was changed."
        )
    return diff


# ------------------------------------------------------------------------ correction
def _stat(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per row of ``x`` (N, F): the statistic ``module`` divides by (None: a norm netslim does not know)."""
    if isinstance(module, nn.LayerNorm):
        return (x.var(-1, unbiased=False) + module.eps).sqrt()
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if type(module).__name__.endswith("RMSNorm") and isinstance(eps, float) and getattr(module, "bias", None) is None:
        return (x.pow(2).mean(-1) + eps).sqrt()
    return None


def norm_corrections(model: nn.Module, norms: list[str], *, keep: torch.Tensor, batches: list[Any]) -> dict[str, float]:
    """Per norm: mean over calibration tokens of stat(kept features) / stat(all features), measured
    on the inputs it gets in ``model`` (unpruned); norms of an unknown kind are left out."""
    known = [n for n in norms if _stat(model.get_submodule(n), torch.ones(1, 2)) is not None]
    kept = keep.tolist()

    def ratio(name: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = model.get_submodule(name)
        r = _stat(m, x[:, kept]) / _stat(m, x).clamp_min(1e-12)  # (N,)
        return torch.stack([(r * w).sum(), w.sum()])

    sums = _norm_stats(model, known, batches, ratio, pre=True)
    return {n: float(v[0] / v[1].clamp_min(1)) for n, v in sums.items()}


@torch.no_grad()
def apply_corrections(model: nn.Module, factors: dict[str, float]) -> None:
    for name, c in factors.items():
        model.get_submodule(name).weight.mul_(c)


# ------------------------------------------------------------------------------ prune
def shrink_width(
    model: nn.Module,
    hidden_size: int | None = None,
    *,
    ratio: float | None = None,
    criterion: str = "activation",
    batches: Iterable[Any] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    norm_correction: bool = True,
    example_inputs: Any = None,
    keep: torch.Tensor | None = None,
    coupled: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Make the residual stream ``hidden_size`` wide (or ``ratio`` narrower), in place; returns
    ``(model, report)`` with the plan, the kept dims and the norm factors."""
    width = target_width(model, hidden_size, ratio) if coupled else _free_width(model, hidden_size)
    batches = list(batches) if batches is not None else None
    if example_inputs is None:
        example_inputs = _inputs_of(batches[0]) if batches else example_inputs_for(model)
    before = count_params(model)
    plan, info = plan_width(
        model,
        width,
        criterion=criterion,
        batches=batches,
        loss_fn=loss_fn,
        seed=seed,
        example_inputs=example_inputs,
        keep=keep,
        coupled=coupled,
    )
    norms = norm_names(model, info["residual"])
    diff = verify_width(model, plan, keep=info["keep"], norms=norms, example_inputs=example_inputs)
    factors = norm_corrections(model, norms, keep=info["keep"], batches=batches) if norm_correction and batches else {}
    apply_plan(model, plan, "shrink")
    apply_corrections(model, factors)
    skipped = list(info["graph"].skipped)
    if norm_correction and not batches:
        skipped.append({"name": "(norms)", "reason": "width: norm correction needs calibration batches; not applied"})
    return model, {
        "params_before": before,
        "params_after": count_params(model),
        "hidden_size": width,
        "groups": plan.groups,
        "config": plan.config,
        "plan": plan.to_dict(),
        "skipped": skipped,
        "verified_max_diff": diff,
        "norm_factors": factors,
        "from_pretrained": coupled and config_shapes_match(model),
    }


def _free_width(model: nn.Module, hidden_size: int | None) -> int:
    width_rule(model)
    d = int(model.config.hidden_size)
    if not isinstance(hidden_size, int) or not 1 <= hidden_size < d:
        raise bad_param("width", "hidden_size", f"an int in [1, {d - 1}]", hidden_size)
    return hidden_size


def config_shapes_match(model: nn.Module) -> bool:
    """Whether ``type(model)(model.config)`` (what ``from_pretrained`` builds) has the model's shapes:
    built on the meta device, compared parameter by parameter."""
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception as e:  # noqa: BLE001 - a config the class rejects: it does not reload
        log.warning("width: %s does not build from its config (%s)", type(model).__name__, e)
        return False
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return all(theirs.get(k, shape) == shape for k, shape in mine.items())
