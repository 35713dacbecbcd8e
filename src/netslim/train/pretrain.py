"""Baseline training of zoo models, with one default configuration per model.

``netslim train NAME`` and the benchmarks both use :func:`train_baseline`, so the
checkpoint the demo compresses is the one BENCHMARKS.md describes. Where a trained baseline
is kept: :func:`netslim.core.cache.checkpoint_path`.
"""

from __future__ import annotations

from torch import nn

from netslim.core.errors import NetslimError
from netslim.models import build_model, model_entry
from netslim.train.loop import TrainConfig, fit
from netslim.train.tasks import get_task

# Hyper-parameters per zoo model: the smallest budgets found to reach the targets
# on 2 shared CPU cores (BENCHMARKS.md, "Baselines"). Conv nets use bf16 autocast: on this CPU
# (AVX-512 BF16, no AMX) it measured ~2x faster than fp32 with no accuracy cost. Per-epoch cost (bf16, batch 128,
# quiet machine): resnet20 ~37 s, vgg11bn ~38 s, mobilenetv2 ~195 s (depthwise convs are
# slow on CPU), lenet5 ~11 s (fp32), lenet300 ~1 s. vgg11bn and mobilenetv2 have no
# accuracy target and get short budgets to spare the shared CPU.
DEFAULT_TRAINING: dict[str, dict] = {
    "lenet300": {"epochs": 20, "lr": 0.05, "batch_size": 128, "weight_decay": 1e-4},
    "lenet5": {"epochs": 10, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4},
    "resnet20": {"epochs": 15, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "amp": "bf16", "warmup_epochs": 1},
    "mobilenetv2": {"epochs": 3, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "amp": "bf16", "warmup_epochs": 1},
    "vgg11bn": {"epochs": 5, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4, "amp": "bf16", "warmup_epochs": 1},
    # The usual BERT fine-tuning setting (AdamW 5e-5, 10 % warm-up then cosine) on docs-sections'
    # 24.5k training paragraphs; the best validation epoch is kept.
    "minilm-docs": {
        "epochs": 3,
        "lr": 5e-5,
        "batch_size": 32,
        "weight_decay": 0.01,
        "optimizer": "adamw",
        "warmup_epochs": 0.1,
    },
}
# Random crop + flip: helps the conv nets, hurts nothing; the MLP trains on plain images.
AUGMENT = {"lenet300": False, "lenet5": False, "resnet20": True, "mobilenetv2": True, "vgg11bn": True}
# Train these in channels-last memory format: oneDNN's NHWC convolutions (depthwise above
# all) are 15-30 % faster per step on CPU. The returned model is back in the default format.
CHANNELS_LAST = {"resnet20", "mobilenetv2", "vgg11bn"}


def augment_option(name: str) -> dict:
    """``{"augment": ...}`` for the image models, nothing for the others (their tasks take no such option)."""
    return {"augment": AUGMENT[name]} if name in AUGMENT else {}


def baseline_config(name: str, **overrides) -> TrainConfig:
    if name not in DEFAULT_TRAINING:
        raise NetslimError(
            f"Model {name!r} has no training recipe; trainable zoo models: {', '.join(sorted(DEFAULT_TRAINING))}."
        )
    return TrainConfig(**{**DEFAULT_TRAINING[name], **overrides})


def train_baseline(name: str, *, task=None, seed: int = 0, **overrides) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` from scratch on its dataset; returns (model, fit summary)."""
    entry = model_entry(name)
    if entry.pretrained:
        raise NetslimError(f"Model {name!r} comes pretrained from its package; there is nothing to train.")
    task = task or get_task(entry.dataset, seed=seed, **augment_option(name))
    import torch

    torch.manual_seed(seed)
    model = build_model(name)
    cfg = baseline_config(name, seed=seed, **overrides)
    if name in CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    summary = fit(model, task, cfg)
    if name in CHANNELS_LAST:
        model.to(memory_format=torch.contiguous_format)
    return model, summary
