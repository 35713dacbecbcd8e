"""The search space of per-group channel ratios, its exact cost and a separable surrogate.

A *policy* is ``{group name: share of channels removed}`` over the prunable coupled-channel
groups of :func:`netslim.core.graph.trace_graph` (a group is named after its first producer
module, so the policy is also a valid ``ratios:`` table of the ``channels`` recipe step).
Policies are applied with :func:`netslim.prune.structured.plan_channels`, the very call the
``channels`` step makes, so an emitted recipe reproduces the searched model exactly.

Costs (``metric``): ``macs`` and ``params`` are computed exactly from the prune plan without
building the model; ``bytes`` is the fp32 tensor bytes (4 x params); ``latency`` sums a
per-layer-shape lookup table (:class:`~netslim.search.latency.LatencyTable`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.graph import trace_graph
from netslim.measure.counts import macs_per_layer
from netslim.prune.structured import apply_plan, choose_keep, plan_channels, plan_from_keep
from netslim.prune.structured.channels import estimate_macs, excluded_groups

METRICS = ("macs", "params", "bytes", "latency")


def check_options(options: Sequence[float], field: str = "ratios") -> tuple[float, ...]:
    opts = tuple(sorted(float(r) for r in options))
    if not opts:
        raise NetslimError(f"The {field!r} search range is empty: give at least one value in [0, 1).")
    bad = [r for r in opts if not 0 <= r < 1]
    if bad:
        raise bad_param("channel search space", field, "values in [0, 1)", bad)
    return opts


class ChannelSpace:
    """Per-group channel ratios of a traceable CNN (``options``: the ratios each group may take)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        options: Sequence[float],
        criterion: str = "l2",
        min_keep_ratio: float = 0.1,
        round_to: int = 1,
        exclude: Iterable[str] = (),
        metric: str = "macs",
        latency=None,
        calibrate: bool = True,
    ):
        if metric not in METRICS:
            raise bad_param("ChannelSpace", "metric", f"one of {', '.join(METRICS)}", metric)
        if metric == "latency" and latency is None:
            raise NetslimError("metric 'latency' needs a LatencyTable (latency=...).")
        self.model, self.example = model, example_inputs
        self.options = check_options(options)
        self.criterion, self.min_keep_ratio, self.round_to = criterion, min_keep_ratio, round_to
        self.exclude = tuple(exclude)
        self.metric, self.latency = metric, latency
        self.graph = trace_graph(model, example_inputs)
        skip = excluded_groups(model, self.graph, self.exclude)
        self.groups = [g for g in self.graph.prunable() if g.id not in skip]
        if not self.groups:
            raise NetslimError(
                f"The channel search space is empty: no prunable group is left (excluded: {list(self.exclude)})."
            )
        self.names = [g.name for g in self.groups]
        if len(set(self.names)) != len(self.names):
            raise NetslimError("Two channel groups share a name; the policy cannot address them.")
        self.layer_macs = macs_per_layer(model, example_inputs)
        self._zeros = {g.id: torch.zeros(g.size) for g in self.groups}
        self._cost = lru_cache(maxsize=65536)(self._cost_uncached)
        self.calibration: dict[str, Any] | None = None
        if metric == "latency" and calibrate:
            # Calibrate the lookup table on the dense model and the uniform policies, timed for real.
            samples = [
                (self.shapes(plan_from_keep(self.graph, self._keep(u))), self.apply(u))
                for u in ({n: r for n in self.names} for r in self.options if r > 0)
            ]
            self.calibration = latency.calibrate(model, example_inputs, samples)

    def __getstate__(self) -> dict:  # trials ship the space to Ray workers: drop the cache
        state = dict(self.__dict__)
        state.pop("_cost", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cost = lru_cache(maxsize=65536)(self._cost_uncached)

    # ------------------------------------------------------------------ policies
    def policy(self, choice: Mapping[str, int]) -> dict[str, float]:
        """Option indices per group -> ratios (groups at ratio 0 are left out)."""
        return {n: self.options[k] for n, k in choice.items() if self.options[k] > 0}

    def indices(self, policy: Mapping[str, float]) -> dict[str, int]:
        return {
            n: self.options.index(float(policy.get(n, 0.0)))
            if float(policy.get(n, 0.0)) in self.options
            else _nearest(self.options, float(policy.get(n, 0.0)))
            for n in self.names
        }

    def _keep(self, policy: Mapping[str, float]):
        return choose_keep(
            self.model,
            self.graph,
            self._zeros,
            0.0,
            scope="uniform",
            ratios=dict(policy),
            min_keep_ratio=self.min_keep_ratio,
            round_to=self.round_to,
            only={g.id for g in self.groups},
        )

    def plan(self, policy: Mapping[str, float]):
        """The plan of ``policy`` ranked by the real criterion (what ``apply`` uses)."""
        plan, _, _ = plan_channels(
            self.model,
            self.example,
            ratios=dict(policy) or {self.names[0]: 0.0},
            criterion=self.criterion,
            min_keep_ratio=self.min_keep_ratio,
            round_to=self.round_to,
            exclude=self.exclude,
        )
        return plan

    def apply(self, policy: Mapping[str, float], model: nn.Module | None = None) -> nn.Module:
        """A shrunk copy of the model under ``policy`` (weights of the kept channels)."""
        plan = self.plan(policy)
        return apply_plan(copy.deepcopy(model if model is not None else self.model), plan, "shrink")

    # ---------------------------------------------------------------------- cost
    def cost(self, policy: Mapping[str, float]) -> float:
        return self._cost(tuple(sorted((n, float(r)) for n, r in policy.items() if r > 0)))

    def dense_cost(self) -> float:
        return self.cost({})

    def _cost_uncached(self, key: tuple) -> float:
        plan = plan_from_keep(self.graph, self._keep(dict(key)))
        if self.metric == "macs":
            return float(estimate_macs(self.model, self.layer_macs, plan))
        if self.metric == "latency":
            return self.latency.predict(self.model, self.example, shapes=self.shapes(plan))
        params = float(self._params(plan))
        return 4.0 * params if self.metric == "bytes" else params

    def _params(self, plan) -> int:
        share: dict[tuple[str, str], float] = {}
        for e in plan.entries:
            t = getattr(self.model.get_submodule(e["module"]), e["param"])
            key = (e["module"], e["param"])
            share[key] = share.get(key, 1.0) * len(e["keep"]) / t.shape[e["dim"]]
        total = 0.0
        for mname, module in self.model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                total += p.numel() * share.get((mname, pname), 1.0)
        return int(round(total))

    def shapes(self, plan) -> dict[str, tuple[int, int]]:
        """(in_channels, out_channels) of every Conv2d / Linear after ``plan``."""
        out: dict[str, tuple[int, int]] = {}
        kept = {(e["module"], e["dim"]): len(e["keep"]) for e in plan.entries if e["param"] == "weight"}
        for name, m in self.model.named_modules():
            if isinstance(m, nn.Conv2d):
                depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                cout = kept.get((name, 0), m.out_channels)
                cin = cout if depthwise else kept.get((name, 1), m.weight.shape[1]) * m.groups
                out[name] = (cin, cout)
            elif isinstance(m, nn.Linear):
                out[name] = (kept.get((name, 1), m.in_features), kept.get((name, 0), m.out_features))
        return out

    def separable_options(self) -> tuple[dict[str, list[tuple[float, float]]], float]:
        """Per-group costs that add up to an *upper bound* of the exact MACs / params.

        A layer between groups a and b costs ``C * k_a * k_b`` (k: kept share); by AM-GM
        ``k_a * k_b <= (k_a^2 + k_b^2) / 2``, so charging ``C * k^2 / 2`` to each group gives
        a separable bound, tight when neighbours keep the same share. Returns
        ``({group: [surrogate cost per option]}, fixed cost)``; losses are filled in by the caller.
        """
        if self.metric not in ("macs", "params", "bytes"):
            raise NetslimError(f"metric {self.metric!r} has no separable cost; use the greedy allocation.")
        by_gid = {g.id: g.name for g in self.groups}
        per = {n: [0.0] * len(self.options) for n in self.names}
        fixed = 0.0
        keep_share = {n: [self._share(n, r) for r in self.options] for n in self.names}
        for cost, gids in self._terms():
            names = [by_gid[g] for g in gids if g in by_gid]
            if not names:
                fixed += cost
                continue
            p = len(names)
            for n in names:  # prod_i k_i <= sum_i k_i^p / p
                for j in range(len(self.options)):
                    per[n][j] += cost * keep_share[n][j] ** p / p
        scale = 4.0 if self.metric == "bytes" else 1.0
        return {n: [scale * c for c in per[n]] for n in self.names}, scale * fixed

    def _share(self, name: str, ratio: float) -> float:
        g = next(g for g in self.groups if g.name == name)
        kept = self._keep({name: ratio}).get(g.id)
        return 1.0 if kept is None else len(kept) / g.size

    def _terms(self) -> list[tuple[float, list[int]]]:
        """(cost, groups whose share multiplies it) per layer (MACs) or tensor (params)."""
        dims: dict[tuple[str, str], set[int]] = {}
        for g in self.groups:
            for slot, _ in g.slots:
                dims.setdefault((slot.module, slot.param), set()).add(g.id)
        terms = []
        if self.metric == "macs":
            for name, macs in self.layer_macs.items():
                terms.append((float(macs), sorted(dims.get((name, "weight"), ()))))
            return terms
        for mname, module in self.model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                terms.append((float(p.numel()), sorted(dims.get((mname, pname), ()))))
        return terms


def _nearest(options: Sequence[float], r: float) -> int:
    return min(range(len(options)), key=lambda k: abs(options[k] - r))
