"""MobileNetV2 in torchvision's parameter layout.

The ImageNet weights published with torchvision use this exact module tree
(``features.N.conv.M``), so they load with strict key and shape checks.
Padding is symmetric and BatchNorm's epsilon is PyTorch's default, 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

# (expand ratio, output channels, repeats, first stride) per stage.
IMAGENET_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) returning ImageNet logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_channels = 32
        features: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=2)]
        for expand_ratio, out_channels, repeats, stride in IMAGENET_STAGES:
            for repeat in range(repeats):
                features.append(
                    InvertedResidual(
                        in_channels,
                        out_channels,
                        stride if repeat == 0 else 1,
                        expand_ratio,
                    )
                )
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, 1280, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean(dim=(2, 3))
        return self.classifier(x)
