"""Sensitivity analysis: the metric as a function of one layer's knob, all others untouched.

Knobs: ``channels`` (share of a coupled group's channels removed, through the ``channels``
plan), ``sparsity`` (magnitude pruning of one layer's weight), ``bits`` (per-channel weight
quantization of one layer, reusing :func:`netslim.quantize.mixed.kl_sensitivity`; the value
is the KL divergence of the outputs, lower is better).

A :class:`SensitivityTable` is cached on disk under a key made of the model's weights, the
knob, its options and the evaluation's description, so a search (or a second search with
another budget) reuses it instead of re-evaluating. It renders as a Markdown table and a
plot with one curve per layer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.serialize import atomic_write

KNOBS = ("channels", "sparsity", "bits")


@dataclass
class SensitivityTable:
    knob: str
    metric: str
    higher_is_better: bool
    baseline: float
    options: list[float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # layer -> value per option

    def losses(self, name: str) -> list[float]:
        """Metric lost at each option (>= 0 is worse; relative to the untouched model)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (self.baseline - v) for v in self.curves[name]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        return cls(**d)

    def to_markdown(self) -> str:
        head = "| layer | " + " | ".join(f"{self.knob}={o:g}" for o in self.options) + " |"
        rule = "|---" * (len(self.options) + 1) + "|"
        rows = [f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + " |" for n, vals in self.curves.items()]
        return "\n".join(
            [
                f"{self.metric} per layer ({self.knob} of that layer alone; untouched: {self.baseline:.4f})",
                "",
                head,
                rule,
                *rows,
            ]
        )

    def plot(self, path: str | os.PathLike) -> Path:
        from netslim.report.plots import plt, save_figure

        fig, ax = plt.subplots(figsize=(7, 4.5))
        cmap = plt.get_cmap("viridis", max(len(self.curves), 2))
        for i, (name, vals) in enumerate(self.curves.items()):
            ax.plot(self.options, vals, "o-", ms=3, lw=1, color=cmap(i), label=name)
        ax.axhline(self.baseline, color="gray", ls=":", lw=1)
        ax.set_xlabel(self.knob)
        ax.set_ylabel(self.metric)
        ax.set_title(f"Sensitivity: {self.metric} vs one layer's {self.knob}")
        ax.legend(fontsize=6, ncol=2)
        return save_figure(fig, Path(path))


def model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def cache_path(
    model: nn.Module, knob: str, options: Sequence[float], eval_key: str, cache_dir: str | os.PathLike | None
) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256(json.dumps([model_digest(model), knob, list(options), eval_key]).encode()).hexdigest()
    return Path(cache_dir) / f"sensitivity-{knob}-{key[:20]}.json"


def default_cache_dir() -> Path:
    from netslim.core.cache import cache_dir

    return cache_dir() / "search"


def cached(path: Path | None, compute: Callable[[], SensitivityTable]) -> SensitivityTable:
    if path is not None and path.is_file():
        return SensitivityTable.from_dict(json.loads(path.read_text()))
    table = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(table.to_dict(), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return table


def channel_sensitivity(
    space,
    evaluate: Callable[[nn.Module], float],
    *,
    eval_key: str,
    metric: str = "accuracy",
    cache_dir: str | os.PathLike | None = None,
) -> SensitivityTable:
    """One curve per group of a :class:`~netslim.search.channels.ChannelSpace` (``evaluate``: higher is better)."""
    opts = list(space.options)
    key = f"{eval_key}|{space.criterion}|{space.min_keep_ratio}|{space.round_to}|{sorted(space.exclude)}"

    def compute() -> SensitivityTable:
        base = float(evaluate(space.model))
        curves = {n: [base if r == 0 else float(evaluate(space.apply({n: r}))) for r in opts] for n in space.names}
        return SensitivityTable("channels", metric, True, base, opts, curves)

    return cached(cache_path(space.model, "channels", opts, key, cache_dir), compute)


@torch.no_grad()
def sparsity_sensitivity(
    model: nn.Module,
    names: Sequence[str],
    options: Sequence[float],
    evaluate: Callable[[nn.Module], float],
    *,
    eval_key: str,
    metric: str = "accuracy",
    cache_dir: str | os.PathLike | None = None,
) -> SensitivityTable:
    """Magnitude-prune one layer's weight to each sparsity in ``options`` (the others dense)."""
    opts = sorted(float(s) for s in options)
    if not opts:
        raise NetslimError("The 'sparsity' search range is empty: give at least one value in [0, 1).")
    if any(not 0 <= s < 1 for s in opts):
        raise bad_param("sparsity_sensitivity", "options", "values in [0, 1)", opts)

    def compute() -> SensitivityTable:
        base = float(evaluate(model))
        curves = {}
        for n in names:
            w = model.get_submodule(n).weight
            orig = w.detach().clone()
            vals = []
            for s in opts:
                k = int(s * orig.numel())
                if k:
                    thresh = orig.abs().flatten().kthvalue(k).values
                    w.copy_(torch.where(orig.abs() > thresh, orig, torch.zeros_like(orig)))
                vals.append(float(evaluate(model)))
                w.copy_(orig)
            curves[n] = vals
        return SensitivityTable("sparsity", metric, True, base, opts, curves)

    return cached(cache_path(model, "sparsity", opts, eval_key + "|" + ",".join(names), cache_dir), compute)


def bits_sensitivity(
    model: nn.Module,
    batch: torch.Tensor,
    names: Sequence[str],
    choices: Sequence[int],
    *,
    cache_dir: str | os.PathLike | None = None,
) -> SensitivityTable:
    """KL(fp32 || one layer at b bits) per layer, from :func:`netslim.quantize.mixed.kl_sensitivity`."""
    from netslim.quantize.mixed import kl_sensitivity

    opts = sorted(int(b) for b in choices)
    if not opts:
        raise NetslimError("The 'bits' search range is empty: give at least one width in [2, 8].")
    if any(b not in range(2, 9) for b in opts):
        raise bad_param("bits_sensitivity", "choices", "widths in [2, 8]", opts)
    digest = hashlib.sha256(batch.contiguous().numpy().tobytes()).hexdigest()[:16]

    def compute() -> SensitivityTable:
        m = copy.deepcopy(model)
        sens = kl_sensitivity(m, batch, list(names), opts)
        curves = {n: [sens[n][b] for b in opts] for n in names}
        return SensitivityTable("bits", "kl", False, 0.0, [float(b) for b in opts], curves)

    return cached(cache_path(model, "bits", opts, digest + "|" + ",".join(names), cache_dir), compute)
