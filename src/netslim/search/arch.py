"""A MobileNetV2-style family with searchable expansion, kernel size, depth and width.

The zoo's :class:`~netslim.models.cnn.MobileNetV2` fixes expansion 6 and 3x3 kernels; the
architecture search needs them as knobs, so this family generalises it (``width_mult=1,
expansion=6, kernel=3, depth=2`` is the zoo model's layout) and registers as the zoo model
``mbnet`` — artifacts of searched architectures save and reload like any zoo model.
"""

from __future__ import annotations

from torch import nn

from netslim.core.errors import bad_param
from netslim.models import ModelEntry, register_model
from netslim.models.cnn import InvertedResidual, MobileNetV2


class MBNet(nn.Module):
    """Stages of :attr:`MobileNetV2.SETTINGS` with per-network expansion (stages after the first),
    depthwise kernel, repeats capped at ``depth`` and channel width multiplier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        expansion: int = 6,
        kernel: int = 3,
        depth: int = 2,
        last_channel: int = 320,
    ):
        super().__init__()
        if kernel not in (3, 5, 7):
            raise bad_param("MBNet", "kernel", "one of 3, 5, 7", kernel)
        if depth < 1 or expansion < 1:
            raise bad_param("MBNet", "depth/expansion", "ints >= 1", (depth, expansion))
        c0 = max(8, int(32 * width_mult))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU6())
        blocks, cin = [], c0
        for i, (_t, c, n, s) in enumerate(MobileNetV2.SETTINGS):
            cout = max(8, int(c * width_mult))
            for j in range(min(n, depth)):
                blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, 1 if i == 0 else expansion, kernel))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, last_channel, 1, bias=False), nn.BatchNorm2d(last_channel), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


register_model(
    ModelEntry(
        "mbnet",
        MBNet,
        "classification",
        "fashion-mnist",
        "MobileNetV2-style family with searchable expansion / kernel / depth / width (NAS)",
    )
)
