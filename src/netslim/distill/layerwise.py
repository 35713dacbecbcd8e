"""Layer-wise distillation of a pruned transformer from its unpruned self: logits and hidden states.

:class:`LayerwiseDistillTask` wraps a task as :class:`~netslim.distill.task.DistillTask` does and
adds a hidden-state term::

    loss = (1 - distill) * task loss + distill * soft loss (Hinton KD at distill_temperature, on the logits)
           + hidden_weight * mean over matched blocks of relMSE(h_student, h_teacher)

``relMSE(s, t) = sum ||s - t||^2 / sum ||t||^2`` over the non-padding tokens: a block output
compared with the teacher block it came from, scale-free (a Llama residual stream and a BERT
LayerNorm output weigh alike). Which teacher block and which teacher dims: :func:`lineage` reads
the prune plans the student went through since the teacher (``netslim_plans``): dropped blocks
shift the map, a width plan selects the kept dims. So a pruned student with fewer blocks
(``layers``) or a narrower residual stream (``width``) is compared with exactly what its
surviving parts computed before.

CoFi (:mod:`netslim.prune.cofi`) uses the same task with its *dynamic* layer mapping (Xia et al.
2022): for each teacher block ``t`` in a fixed set, the student block ``m(t) = argmin_j
relMSE(W h_s^j, h_t^t)`` among the candidates CoFi allows, with a learned map ``W``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.train.tasks import Task

from .step import DistillConfig
from .task import Capture, DistillTask, output_distance


def blocks_of(model: nn.Module) -> list[nn.Module]:
    from netslim.prune.structured.hf import block_list

    return list(block_list(model)[0])


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def relative_mse(student: torch.Tensor, teacher: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``sum ||s - t||^2 / sum ||t||^2`` over tokens (B, T, D); ``mask`` (B, T) drops padding tokens."""
    if student.shape != teacher.shape:
        raise NetslimError(
            f"Hidden-state distillation: student block output {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)} differ."
        )
    err = (student.float() - teacher.detach().float()).pow(2).sum(-1)  # (B, T)
    ref = teacher.detach().float().pow(2).sum(-1)
    if mask is not None and mask.shape == err.shape:
        m = mask.to(err.dtype)
        err, ref = err * m, ref * m
    return err.sum() / ref.sum().clamp_min(1e-12)


def _plans(model: nn.Module) -> list[Any]:
    return [r.get("plan") for r in getattr(model, "netslim_plans", []) or []]


def lineage(student: nn.Module, teacher: nn.Module) -> tuple[list[int], list[int] | None]:
    """(teacher block of each student block, teacher hidden dim of each student dim or None = the same)."""
    n_s, n_t = len(blocks_of(student)), len(blocks_of(teacher))
    d_s, d_t = int(student.config.hidden_size), int(teacher.config.hidden_size)
    sp, tp = _plans(student), _plans(teacher)
    if len(sp) >= len(tp) and sp[: len(tp)] == tp:  # the teacher is where the student started
        layers, dims = list(range(n_t)), list(range(d_t))
        for plan in sp[len(tp) :]:
            drop = set(plan.get("drop_layers") or ())
            layers = [layer for i, layer in enumerate(layers) if i not in drop]
            for g in plan.get("groups") or ():
                if g.get("kind") == "hidden" and isinstance(g.get("keep"), list):
                    dims = [dims[i] for i in g["keep"]]
        if len(layers) == n_s and len(dims) == d_s:
            return layers, None if dims == list(range(d_t)) else dims
    if n_s == n_t and d_s == d_t:
        return list(range(n_s)), None
    raise NetslimError(
        f"Hidden-state distillation: the student ({n_s} blocks, width {d_s}) does not come from the "
        f"teacher ({n_t} blocks, width {d_t}) through recorded prune plans, so its blocks and dims "
        "cannot be matched; set distill_hidden: 0 (logits only)."
    )


class LayerwiseDistillTask(DistillTask):
    """``task`` with Hinton KD on the outputs and relative-MSE hidden-state matching (module docstring).

    ``layer_map[i]``: the teacher block of student block ``i`` (None: leave it unmatched);
    ``dims``: teacher dims of the student's hidden features (None: the same). ``dynamic``: CoFi's
    mapping instead — a sequence of teacher blocks, each matched to the closest student block
    among ``candidates()``, through ``transform`` (a module applied to student hidden states)."""

    def __init__(
        self,
        task: Task,
        teacher: nn.Module,
        *,
        distill: float,
        distill_temperature: float,
        hidden_weight: float,
        layer_map: Sequence[int | None] = (),
        dims: Sequence[int] | None = None,
        dynamic: Sequence[int] | None = None,
        candidates: Callable[[], list[int]] | None = None,
        transform: nn.Module | None = None,
    ):
        super().__init__(task, teacher, DistillConfig(distill=distill, distill_temperature=distill_temperature))
        self.hidden_weight, self.layer_map, self.dynamic = hidden_weight, list(layer_map), dynamic
        self.dims = None if dims is None else torch.as_tensor(list(dims), dtype=torch.long)
        self.candidates, self.transform = candidates, transform
        self.teacher_blocks = blocks_of(teacher)
        self.last: dict[str, float] = {}

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        cfg = self.cfg
        student_blocks = blocks_of(model) if self.hidden_weight else []
        root = Capture(with_inputs=True)
        s_caps = [Capture(False) for _ in student_blocks]
        with hooked([(model, root), *zip(student_blocks, s_caps)], kind="forward_kwargs"):
            hard = self.inner.loss(model, batch)
        if not root.calls:
            raise NetslimError(f"Task {self.inner.name!r} computed its loss without calling the model.")
        t_blocks = self.teacher_blocks if self.hidden_weight else []
        t_caps = [Capture(False) for _ in t_blocks]
        with hooked(list(zip(t_blocks, t_caps)), kind="forward_kwargs"), torch.no_grad():
            t_outs = [self.teacher(*args, **kwargs) for args, kwargs, _ in root.calls]
        loss = (1 - cfg.distill) * hard
        if cfg.distill:
            soft = sum(output_distance(out, t_out, kwargs, cfg) for (_, kwargs, out), t_out in zip(root.calls, t_outs))
            loss = loss + cfg.distill * soft / len(root.calls)
        if self.hidden_weight:
            mask = root.calls[-1][1].get("attention_mask")
            student = [_first(c.calls[-1][2]) for c in s_caps]
            teacher = [_first(c.calls[-1][2]) for c in t_caps]
            hidden = self._hidden(student, teacher, mask)
            self.last = {"hidden": float(hidden.detach())}
            loss = loss + self.hidden_weight * hidden
        return loss

    def _teacher_feature(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.dims is None else t.index_select(-1, self.dims.to(t.device))

    def _hidden(self, student: list[torch.Tensor], teacher: list[torch.Tensor], mask) -> torch.Tensor:
        if self.dynamic is not None:
            return self._dynamic(student, teacher, mask)
        terms = [
            relative_mse(s, self._teacher_feature(teacher[j]), mask=mask)
            for s, j in zip(student, self.layer_map)
            if j is not None
        ]
        if not terms:
            raise NetslimError("Hidden-state distillation: no student block is matched to a teacher block.")
        return torch.stack(terms).mean()

    def _dynamic(self, student: list[torch.Tensor], teacher: list[torch.Tensor], mask) -> torch.Tensor:
        cands = (self.candidates() if self.candidates is not None else None) or list(range(len(student)))
        mapped = {j: self.transform(student[j]) if self.transform is not None else student[j] for j in cands}
        terms = []
        for t in self.dynamic:
            target = self._teacher_feature(teacher[t])
            with torch.no_grad():  # the matching itself is not differentiated (CoFi's argmin)
                best = min(cands, key=lambda j: float(relative_mse(mapped[j], target, mask=mask)))
            terms.append(relative_mse(mapped[best], target, mask=mask))
        return torch.stack(terms).mean()


def layerwise_task(
    task: Task,
    student: nn.Module,
    *,
    teacher: nn.Module,
    distill: float,
    distill_temperature: float,
    hidden_weight: float,
) -> Task:
    """:class:`LayerwiseDistillTask` for a pruned ``student`` of ``teacher`` (blocks and dims by :func:`lineage`)."""
    layer_map, dims = lineage(student, teacher) if hidden_weight else ([], None)
    return LayerwiseDistillTask(
        task,
        teacher,
        distill=distill,
        distill_temperature=distill_temperature,
        hidden_weight=hidden_weight,
        layer_map=layer_map,
        dims=dims,
    )
