"""Built-in recipe steps: train / finetune, evaluate, export."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from netslim.core.config import MethodConfig, register
from netslim.core.export import export_formats, exporter
from netslim.train.loop import FinetuneConfig, TrainConfig, fit


@register(TrainConfig)
def run_train(model, cfg: TrainConfig, ctx):
    summary = fit(model.to(ctx.device), ctx.task, cfg)
    ctx.notes["train"] = {k: v for k, v in summary.items() if k != "history"} | {"history": summary["history"]}
    return model


register(FinetuneConfig)(run_train)


class EvaluateConfig(MethodConfig):
    """Score the model on a split (the report also scores every step on the test split)."""

    method = "evaluate"
    modifies_weights = False
    split: Literal["test", "val"] = "test"


@register(EvaluateConfig)
def run_evaluate(model, cfg: EvaluateConfig, ctx):
    ctx.notes["evaluate"] = ctx.task.evaluate(model, cfg.split) | {"split": cfg.split}
    return model


class ExportConfig(MethodConfig):
    """Write the model to OUT/<filename> in a registered format; it becomes the artifact."""

    method = "export"
    modifies_weights = False
    format: str = "safetensors"
    filename: str = Field("model", pattern=r"^[A-Za-z0-9_.-]+$", description="file name without suffix")

    @field_validator("format")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in export_formats():
            raise ValueError(f"must be one of {', '.join(export_formats())}")
        return v


@register(ExportConfig)
def run_export(model, cfg: ExportConfig, ctx):
    write, suffix = exporter(cfg.format)
    path = write(model, ctx.out_dir / f"{cfg.filename}{suffix}", ctx.info)
    ctx.artifacts.append(path)
    ctx.notes["export"] = {"path": str(path), "format": cfg.format, "size_bytes": path.stat().st_size}
    return model
