"""A user's own CNN for 28x28 grayscale images (Fashion-MNIST), in a file of its own.

This stands for the model a new user brings: a plain PyTorch class, not from netslim's zoo
and not registered anywhere, and a factory function the CLI can name. It is used by the
"own CNN + image folder" journey of issue 17:

    netslim train --model benchmarks/user_models/fmnist_cnn.py:build --data .cache/byo/fmnist_png

(the image folder is written by ``benchmarks/byo_data.py images .cache/byo/fmnist_png``).
On purpose, this file imports nothing from netslim.

Shape: 1x28x28 -> two conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool: 32 then 64
channels, 28 -> 14 -> 7) -> flatten (64*7*7 = 3136) -> Linear 32 -> ReLU -> Linear 10.
About 120k parameters; most of them sit in the first Linear, which reads the flattened
conv channels (channel pruning of the second block must shrink it too).
"""

from __future__ import annotations

import torch
from torch import nn


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            self._block(1, width),  # (B, 32, 14, 14)
            self._block(width, 2 * width),  # (B, 64, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 3136)
            nn.Linear(2 * width * 7 * 7, hidden),  # (B, 32)
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),  # (B, 10)
        )

    @staticmethod
    def _block(c_in: int, c_out: int) -> nn.Sequential:
        # bias=False: the BatchNorm right after the conv has its own shift.
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, num_classes)
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """The untrained model (PyTorch's default initialisation; seed it before calling)."""
    return FashionCNN()
