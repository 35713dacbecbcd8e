"""Built-in recipe steps: train / finetune, evaluate, export."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from netslim.core.config import MethodConfig, register
from netslim.core.export import export_formats, exporter
from netslim.train.loop import FinetuneConfig, TrainConfig, fit


def _fit_and_note(model, cfg: TrainConfig | FinetuneConfig, ctx):
    summary = fit(model.to(ctx.device), ctx.task, cfg)
    ctx.notes[cfg.method] = {k: v for k, v in summary.items() if k != "history"} | {"history": summary["history"]}
    return model


@register(TrainConfig)
def run_train(model, cfg: TrainConfig, ctx):
    return _fit_and_note(model, cfg, ctx)


@register(FinetuneConfig)
def run_finetune(model, cfg: FinetuneConfig, ctx):
    return _fit_and_note(model, cfg, ctx)


class EvaluateConfig(MethodConfig):
    """Score the model on a split (the report also scores every step on the test split)."""

    method = "evaluate"
    modifies_weights = False
    split: Literal["test", "val"] = "test"


@register(EvaluateConfig)
def run_evaluate(model, cfg: EvaluateConfig, ctx):
    ctx.notes[cfg.method] = ctx.task.evaluate(model, cfg.split) | {"split": cfg.split}
    return model


class ExportConfig(MethodConfig):
    """Write the model to OUT/<filename> in a registered format; it becomes the artifact."""

    method = "export"
    modifies_weights = False
    format: str = "safetensors"
    filename: str = Field("model", pattern=r"^[A-Za-z0-9_.-]+$", description="file name without suffix")
    # gguf only (llama.cpp): tensor type of the weight matrices, and whether layers off the Q4_0
    # grid may be quantized again (netslim.export.gguf explains both).
    dtype: Literal["f32", "f16", "q8_0", "q4_0"] | None = Field(
        None, description="gguf: f16 (default), f32, q8_0 or q4_0"
    )
    requantize: bool = Field(False, description="gguf q4_0: re-quantize layers off the Q4_0 grid instead of refusing")
    # onnx only: a causal LM as its decoder step with a KV cache (netslim.quantize.onnx_io)
    kv_cache: bool = Field(False, description="onnx, causal LM: the decoder step with past / present keys and values")

    @field_validator("format")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in export_formats():
            raise ValueError(f"must be one of {', '.join(export_formats())}")
        return v

    @model_validator(mode="after")
    def _gguf_options(self):
        if self.format != "gguf" and (self.dtype is not None or self.requantize):
            raise ValueError(f"'dtype' and 'requantize' are options of format 'gguf'; format is {self.format!r}")
        if self.requantize and self.dtype != "q4_0":
            raise ValueError("'requantize' goes with dtype 'q4_0' (q8_0 quantizes any layer it cannot copy)")
        if self.kv_cache and self.format != "onnx":
            raise ValueError(f"'kv_cache' is an option of format 'onnx'; format is {self.format!r}")
        return self

    def format_options(self) -> dict:
        """Options handed to the exporter (only those given)."""
        return {
            k: getattr(self, k) for k in ("dtype", "requantize", "kv_cache") if getattr(self, k) not in (None, False)
        }


@register(ExportConfig)
def run_export(model, cfg: ExportConfig, ctx):
    from netslim.measure.summary import size_on_disk  # a directory (format: hf): the sum of its files

    write, suffix = exporter(cfg.format)
    # An exporter returns the path, or (path, notes) to add to the step's notes.
    result = write(model, ctx.out_dir / f"{cfg.filename}{suffix}", ctx.info, **cfg.format_options())
    path, extra = result if isinstance(result, tuple) else (result, {})
    ctx.artifacts.append(path)
    ctx.notes[cfg.method] = {"path": str(path), "format": cfg.format, "size_bytes": size_on_disk(model, path), **extra}
    return model
