"""The ``svd`` recipe step; in Python :func:`svd_compress` (``fn(model, data=None, **options) ->
model``: the example input is the data's first row, calibration inputs are drawn from it) and
its building block :func:`svd_layers` (separate ``example`` / ``calibration`` inputs, returns
the notes).

```yaml
- method: svd
  select: budget          # rank | energy | budget
  target: 0.5             # keep 50 % of the model's params (target_metric: params | macs)
  data_aware: true        # whiten with calibration inputs (SVD-LLM) instead of plain SVD
  output_aware: false     # also weight by the model output's sensitivity (two-sided, K-FAC style)
  exclude: [fc3]
```

Linear layers and ordinary convs are candidates (``conv_scheme``: channel, spatial or
tucker). A layer stays dense, with the reason in the report, when its chosen rank would
not reduce both its parameters and its MACs.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.selectors import Selector, select, settings_for
from netslim.core.surgery import replace_module

from .calib import input_grams, layer_geometry, model_outputs, output_distortion, output_gradient_grams, paired_grams
from .conv import conv_matrix, factorize_conv, supported, tucker2, tucker_energy_ranks
from .rank import LayerBudget, allocate_ranks, break_even_rank, energy_rank, energy_share
from .svd import check_rank, damped_cholesky, factorize_linear, linalg_threads, spectrum, whitening_factor


class SVDConfig(MethodConfig):
    """Factorize Linear and Conv2d layers by truncated SVD (or Tucker-2)."""

    method = "svd"
    select: Literal["rank", "energy", "budget"] = "energy"
    rank: int | None = Field(None, ge=1, description="select=rank: the rank of every layer")
    ranks: dict[str, int] = Field(default_factory=dict, description="select=rank: per-layer ranks by selector")
    energy: float = Field(0.9, gt=0, le=1, description="select=energy: share of Σσ² to keep")
    target: float | None = Field(None, gt=0, lt=1, description="select=budget: share of the model to keep")
    target_metric: Literal["params", "macs"] = "params"
    target_scope: Literal["model", "selected"] = Field(
        "model", description="'target' is a share of the whole model, or of the selected layers only"
    )
    conv_scheme: Literal["channel", "spatial", "tucker"] = "channel"
    tucker_iters: int = Field(0, ge=0, le=50, description="HOOI sweeps after HOSVD")
    data_aware: bool = False
    calibration_samples: int = Field(256, ge=1)
    damping: float = Field(0.01, ge=0, description="whitening: λ = damping × mean diag(XXᵀ)")
    allocation: Literal["spectrum", "output"] = Field(
        "spectrum",
        description="select=budget: compare layers by the share of their own output energy a rank "
        "loses ('spectrum'), or by that share scaled by the layer's measured effect on the model's output "
        "('output': one probe per layer on calibration inputs)",
    )
    probe_samples: int = Field(64, ge=1, description="allocation=output: calibration samples per probe")
    sequential: bool = Field(
        False,
        description="data_aware: factorize layers in forward order, each refit to "
        "reproduce the original layer's outputs from the inputs the already-factorized "
        "model gives it",
    )
    output_aware: bool = Field(
        False,
        description="data_aware: also weight each layer's output error by the "
        "model output's sensitivity to it (Gram of output gradients along random "
        "directions, one backward pass per calibration batch); ranks are then "
        "allocated by estimated model-output error",
    )
    include: Selector = None
    exclude: Selector = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.select == "rank" and self.rank is None and not self.ranks:
            raise ValueError("select 'rank' needs 'rank' or 'ranks'")
        if self.select == "budget" and self.target is None:
            raise ValueError("select 'budget' needs 'target' (share of the model to keep, in (0, 1))")
        if self.select == "budget" and self.conv_scheme == "tucker":
            raise ValueError("select 'budget' works with conv_scheme 'channel' or 'spatial', not 'tucker'")
        if self.data_aware and self.conv_scheme != "channel":
            raise ValueError("data_aware needs conv_scheme 'channel'")
        if self.sequential and not self.data_aware:
            raise ValueError("sequential needs data_aware: true")
        if self.output_aware and not self.data_aware:
            raise ValueError("output_aware needs data_aware: true")
        if self.allocation == "output" and self.select != "budget":
            raise ValueError("allocation 'output' needs select 'budget'")
        bad = {k: v for k, v in self.ranks.items() if v < 1}
        if bad:
            raise ValueError(f"'ranks' must be >= 1; got {bad}")
        return self

    @classmethod
    def example(cls) -> SVDConfig:
        return cls(select="energy", energy=0.9)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the selectors resolve to Linear / Conv2d layers."""
        if model is not None:
            select(model, self.include, self.exclude, types=(nn.Linear, nn.Conv2d))


@dataclass
class Candidate:
    name: str
    module: nn.Module
    kind: str  # "linear" | "channel" | "spatial" | "tucker"
    matrix: Any = None  # (m, n) weight view for the SVD kinds
    whitening: Any = None
    out_whitening: Any = None  # output_aware: R, R Rᵀ = output-gradient Gram + λI
    sigma: Any = None
    costs: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (per_rank, dense)
    geometry: dict[str, int] = field(default_factory=dict)
    sensitivity: float = 1.0  # allocation=output: model-output distortion per unit of layer error

    @property
    def top(self) -> int:
        return min(self.matrix.shape)


def _kind(module: nn.Module, scheme: str) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if scheme == "spatial" and tuple(module.kernel_size) == (1, 1):
        return "channel"  # a 1×1 conv has no spatial axes to split
    return scheme


def _costs(c: Candidate, geo: dict[str, int]) -> dict[str, tuple[float, float]]:
    m, n = c.matrix.shape
    pos = geo["positions"]
    params = (m + n, m * n)
    if c.kind != "spatial":
        return {"params": params, "macs": (pos * (m + n), pos * m * n)}
    # spatial: the kh×1 conv runs on h_out × w_in positions, the 1×kw conv on h_out × w_out.
    out_c, in_c, kh, kw = c.module.weight.shape
    per = geo["h_out"] * geo["w_in"] * in_c * kh + pos * out_c * kw
    return {"params": params, "macs": (per, pos * m * n)}


def _candidates(model: nn.Module, cfg: SVDConfig, skip) -> list[Candidate]:
    out = []
    for name in select(model, cfg.include, cfg.exclude, types=(nn.Linear, nn.Conv2d)):
        module = model.get_submodule(name)
        why = supported(module) if isinstance(module, nn.Conv2d) else None
        if why:
            skip(name, why)
            continue
        kind = _kind(module, cfg.conv_scheme)
        w = module.weight.detach()
        matrix = w if kind == "linear" else (None if kind == "tucker" else conv_matrix(w, kind))
        out.append(Candidate(name, module, kind, matrix))
    return out


def _break_even(c: Candidate) -> int:
    return min(break_even_rank(*c.costs[k], c.top) for k in ("params", "macs"))


def _fixed_ranks(c: Candidate, cfg: SVDConfig) -> int | None:
    """select=rank: explicit per-layer ranks must fit the matrix; the global rank may not."""
    explicit = settings_for(c.name, c.module, cfg.ranks) if cfg.ranks else None
    if explicit is not None:
        check_rank(explicit, tuple(c.matrix.shape), repr(c.name))
        return explicit
    return cfg.rank


def _choose_ranks(cands: list[Candidate], cfg: SVDConfig, totals: dict[str, float]) -> dict[str, int | None]:
    if cfg.select == "budget":
        layers = {
            c.name: LayerBudget(
                tuple(c.sensitivity * e for e in energy_share(c.sigma)),
                *c.costs[cfg.target_metric],
                max_rank=_break_even(c),
            )
            for c in cands
            if _break_even(c) >= 1
        }
        dense = sum(lay.dense for lay in layers.values())
        total = totals[cfg.target_metric] if cfg.target_scope == "model" else dense
        budget = cfg.target * total - (total - dense)
        try:
            chosen = allocate_ranks(layers, budget)
        except NetslimError as e:
            raise NetslimError(
                f"svd target={cfg.target} of {total:,.0f} {cfg.target_metric} ({cfg.target_scope}): {e}"
            ) from None
        return {c.name: chosen.get(c.name) for c in cands}
    if cfg.select == "energy":
        return {c.name: energy_rank(c.sigma, cfg.energy) for c in cands}
    return {c.name: _fixed_ranks(c, cfg) for c in cands}


def _prepare(model: nn.Module, cands: list[Candidate], cfg: SVDConfig, example, calibration) -> None:
    geo = layer_geometry(model, [c.name for c in cands], example)
    missing = [c.name for c in cands if c.name not in geo]
    if missing:  # a layer the forward pass never calls cannot be costed or calibrated
        raise NetslimError(f"svd: layers {', '.join(missing)} are not called in a forward pass; exclude them.")
    order = {name: i for i, name in enumerate(geo)}  # hooks fire in forward order
    cands.sort(key=lambda c: order[c.name])
    grams = {}
    if cfg.data_aware:
        if calibration is None:
            raise NetslimError("svd with data_aware=true needs calibration inputs (a task or `calibration=`).")
        grams = input_grams(model, [c.name for c in cands if c.kind != "tucker"], calibration)
    out_grams = (
        output_gradient_grams(model, [c.name for c in cands if c.kind != "tucker"], calibration)
        if cfg.output_aware
        else {}
    )
    for c in cands:
        c.geometry = geo[c.name]
        if c.kind == "tucker":
            continue
        c.costs = _costs(c, geo[c.name])
        if c.name in grams:
            c.whitening = whitening_factor(grams[c.name], cfg.damping)
        if c.name in out_grams:
            c.out_whitening = whitening_factor(out_grams[c.name], cfg.damping)
        c.sigma = spectrum(c.matrix, c.whitening, c.out_whitening)
        if cfg.output_aware:
            # σ² of Rᵀ W L estimate model-output error in the same units for every layer: let
            # the allocator compare absolute, not per-layer relative, energies.
            c.sensitivity = float((c.sigma**2).sum())


# ------------------------------------------------------------------------- Tucker-2
def _tucker_ranks(c: Candidate, cfg: SVDConfig) -> tuple[int, int]:
    out_c, in_c = c.module.weight.shape[:2]
    if cfg.select == "energy":
        return tucker_energy_ranks(c.module.weight, cfg.energy)
    explicit = settings_for(c.name, c.module, cfg.ranks) if cfg.ranks else None
    if explicit is not None:
        check_rank(explicit, (min(in_c, out_c), min(in_c, out_c)), f"{c.name!r} (Tucker-2, both modes)")
        return explicit, explicit
    return min(cfg.rank, in_c), min(cfg.rank, out_c)


def _tucker_saves(c: Candidate, ranks: tuple[int, int]) -> str | None:
    """None if Tucker-2 at ``ranks`` has fewer params and MACs than the conv, else why not."""
    out_c, in_c, kh, kw = c.module.weight.shape
    r_in, r_out = ranks
    g = c.geometry
    params = in_c * r_in + r_in * r_out * kh * kw + r_out * out_c
    macs = g["h_in"] * g["w_in"] * in_c * r_in + g["positions"] * (r_in * r_out * kh * kw + r_out * out_c)
    dense = out_c * in_c * kh * kw
    if params < dense and macs < g["positions"] * dense:
        return None
    return (
        f"Tucker-2 at ranks {ranks} would not reduce params ({params} vs {dense}) "
        f"and MACs ({macs} vs {g['positions'] * dense})"
    )


# --------------------------------------------------------------------------- apply
def _replace(
    model: nn.Module, c: Candidate, rank: int, *, module: nn.Module | None = None, whitening=None
) -> nn.Module:
    """Put the rank-``rank`` factorization of ``module`` (default: the layer) in the layer's place."""
    module = c.module if module is None else module
    whitening = c.whitening if whitening is None else whitening
    if c.kind == "linear":
        new = factorize_linear(module, rank, whitening=whitening, out_whitening=c.out_whitening, name=c.name)
    else:
        new = factorize_conv(
            module, rank, scheme=c.kind, whitening=whitening, out_whitening=c.out_whitening, name=c.name
        )
    replace_module(model, c.name, new)
    return new


def _head(inputs: Any, n: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs[:n]


def _probe_sensitivity(
    model: nn.Module, cands: list[Candidate], ranks: dict[str, int | None], cfg: SVDConfig, calibration: Any
) -> None:
    """allocation=output: ``c.sensitivity`` = D / e, D the relative distortion of the model's
    output when only layer ``c`` is factorized (at its spectrum-allocated rank, or half its
    break-even rank where that kept it dense) and e the share of its spectrum that rank drops.

    The greedy allocator then compares layers by estimated model-output error instead of
    each layer's own relative error. Layers whose probe drops nothing get the median.
    """
    probe = _head(calibration, cfg.probe_samples)
    ref = model_outputs(model, probe)
    measured: dict[str, float] = {}
    for c in cands:
        top = _break_even(c)
        if top < 1:
            continue
        r = ranks.get(c.name) or max(1, top // 2)
        dropped = sum(energy_share(c.sigma)[r:])
        if dropped <= 1e-12:
            continue
        _replace(model, c, r)
        try:
            measured[c.name] = output_distortion(model, ref, probe) / dropped
        finally:
            replace_module(model, c.name, c.module)
    fallback = statistics.median(measured.values()) if measured else 1.0
    for c in cands:
        c.sensitivity = measured.get(c.name, fallback)


def _refit(
    original: nn.Module, model: nn.Module, c: Candidate, rank: int, cfg: SVDConfig, calibration: Any
) -> nn.Module:
    """sequential: the rank-``rank`` W' minimising ‖X Wᵀ − X̂ W'ᵀ‖² + λ‖W' − W‖², X the layer's
    inputs in the original model and X̂ in ``model`` (earlier layers already factorized).

    With L Lᵀ = X̂ᵀX̂ + λI this is the truncated SVD of W* L mapped back by L⁻¹, where
    W* = W (XᵀX̂ + λI)(L Lᵀ)⁻¹ is the unconstrained optimum (W* = W when X̂ = X)."""
    gram, cross = paired_grams(original, model, c.name, calibration)
    L, lam = damped_cholesky(gram, cfg.damping)
    w = c.matrix.detach().double()  # (m, n)
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    rhs = (cross.to(w.device) + lam * eye).T @ w.T  # (n, m)
    with linalg_threads(w.device):
        target = torch.cholesky_solve(rhs, L.to(w.device)).T  # (m, n) = W*
    module = copy.deepcopy(c.module)
    with torch.no_grad():
        module.weight.copy_(target.reshape(module.weight.shape).to(module.weight.dtype))
    return _replace(model, c, rank, module=module, whitening=L)


def _layer_note(c: Candidate, rank: int) -> dict[str, Any]:
    share = energy_share(c.sigma)
    return {
        "kind": c.kind,
        "shape": list(c.matrix.shape),
        "rank": rank,
        "max_rank": c.top,
        "energy_kept": round(sum(share[:rank]), 6),
        "params_before": c.costs["params"][1],
        "params_after": rank * c.costs["params"][0],
    }


def svd_layers(model: nn.Module, cfg: SVDConfig, *, example=None, calibration=None, skip=None) -> dict[str, Any]:
    """Factorize ``model`` in place as ``cfg`` says; returns per-layer notes (the building block
    of the ``svd`` method).

    ``example``: inputs for one forward (layer geometry, MACs; default: the first calibration
    sample); ``calibration``: inputs for data-aware SVD; ``skip(name, reason)`` records layers
    left dense.
    """
    from netslim.measure import count_params, macs_per_layer

    if example is None:
        if calibration is None:
            raise NetslimError("svd_layers needs 'example' inputs (or 'calibration' inputs).")
        example = calibration[:1] if not isinstance(calibration, dict) else {k: v[:1] for k, v in calibration.items()}

    skip = skip or (lambda name, reason: None)
    if cfg.allocation == "output" and calibration is None:
        raise NetslimError("svd with allocation='output' needs calibration inputs (a task or `calibration=`).")
    cands = _candidates(model, cfg, skip)
    _prepare(model, cands, cfg, example, calibration)
    totals = {"params": count_params(model), "macs": sum(macs_per_layer(model, example).values())}
    svd_cands = [c for c in cands if c.kind != "tucker"]
    ranks = _choose_ranks(svd_cands, cfg, totals) if svd_cands else {}
    if cfg.allocation == "output" and svd_cands:
        _probe_sensitivity(model, svd_cands, ranks, cfg, calibration)
        ranks = _choose_ranks(svd_cands, cfg, totals)
    original = copy.deepcopy(model) if cfg.sequential else None
    notes: dict[str, Any] = {}
    for c in cands:
        if c.kind == "tucker":
            r = _tucker_ranks(c, cfg)
            why = _tucker_saves(c, r)
            if why:
                skip(c.name, why)
                continue
            replace_module(model, c.name, tucker2(c.module, r, iters=cfg.tucker_iters, name=c.name))
            notes[c.name] = {"kind": "tucker", "ranks": list(r)}
            continue
        r = ranks.get(c.name)
        if r is None:
            skip(
                c.name,
                "rank budget allows this layer to stay dense"
                if cfg.select == "budget"
                else "no rank given for this layer",
            )
            continue
        if r > _break_even(c):
            skip(
                c.name,
                f"rank {r} would not reduce params and MACs (break-even rank {_break_even(c)} "
                f"for a {c.matrix.shape[0]}x{c.matrix.shape[1]} matrix)",
            )
            continue
        if original is not None:
            _refit(original, model, c, r, cfg, calibration)
        else:
            _replace(model, c, r)
        notes[c.name] = _layer_note(c, r) | ({"sensitivity": c.sensitivity} if cfg.allocation == "output" else {})
    return {"layers": notes, "params_before": totals["params"], "params_after": count_params(model)}


@register(SVDConfig)
def run_svd(model: nn.Module, cfg: SVDConfig, ctx) -> nn.Module:
    task = ctx.task
    calibration = (
        task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
        if cfg.data_aware or cfg.allocation == "output"
        else None
    )
    ctx.notes[cfg.method] = svd_layers(
        model, cfg, example=task.example_inputs(1), calibration=calibration, skip=ctx.skip
    )
    return model


svd_compress = method_function(SVDConfig, "svd_compress")  # svd_compress(model, x, select="budget", target=0.5)
