"""MTCNN's three face-detection networks in facenet-pytorch's parameter layout.

MTCNN (Zhang et al., 2016) finds faces with a cascade: P-Net slides over an
image pyramid and proposes 12x12 windows, R-Net rescores and refines 24x24
crops of them, and O-Net rescores 48x48 crops and places five landmarks.
The weights are facenet-pytorch's conversion of the original release; the
modules below keep its parameter names so its ``.pt`` state dicts load with
strict key and shape checks.

The original networks were trained in Caffe on transposed images, and the
conversion moved that transposition into the weights: the convolutions take
ordinary NCHW images, but the first dense layer of R-Net and O-Net expects
its input flattened in (width, height, channel) order, which is why the
feature maps are permuted before flattening. Every network ends in a
two-class softmax; only the face column is kept as an output.

The cascade itself (pyramid, non-maximum suppression, crops) runs in numpy
in ``service/vision/mtcnn.py``; these graphs do only the network passes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export.artifacts import Artifact
from export.readers.torch_state import load_state_dict

# facenet-pytorch 2.6.0 ships the converted weights inside its wheel (MIT).
_FACENET_PYTORCH = {
    "package": "facenet-pytorch",
    "version": "2.6.0",
    "wheel_sha256": "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    "license": "MIT",
}
PNET_WEIGHTS = Artifact(
    member="facenet_pytorch/data/pnet.pt",
    member_sha256="a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    **_FACENET_PYTORCH,
)
RNET_WEIGHTS = Artifact(
    member="facenet_pytorch/data/rnet.pt",
    member_sha256="bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    **_FACENET_PYTORCH,
)
ONET_WEIGHTS = Artifact(
    member="facenet_pytorch/data/onet.pt",
    member_sha256="165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    **_FACENET_PYTORCH,
)

# Pixels enter every network as (pixel - 127.5) * 0.0078125 on RGB.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125

RNET_INPUT_SIZE = 24
ONET_INPUT_SIZE = 48
# P-Net's receptive field: smaller inputs give an empty output map.
PNET_MIN_INPUT_SIZE = 12

INPUT_NAME = "image"
OUTPUT_NAMES = {
    "pnet": ["box_regression", "face_probability"],
    "rnet": ["box_regression", "face_probability"],
    "onet": ["box_regression", "landmarks", "face_probability"],
}


def _face_column(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over (background, face) and keep the face probability."""
    return torch.softmax(logits, dim=1)[:, 1]


def _flatten_width_first(features: torch.Tensor) -> torch.Tensor:
    """Flatten NCHW features in the (width, height, channel) order of the
    transposed images the dense weights were trained on."""
    return features.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell.

    Returns ``box_regression`` [N, 4, H', W'] (offsets of x1, y1, x2, y2 in
    window widths) and ``face_probability`` [N, H', W'], where a cell at
    (row, column) covers input pixels from (2 * row, 2 * column) to 11
    pixels further on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), _face_column(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement network on 24x24 crops.

    Returns ``box_regression`` [N, 4] and ``face_probability`` [N].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_width_first(x)))
        return self.dense5_2(x), _face_column(self.dense5_1(x))


class ONet(nn.Module):
    """Output network on 48x48 crops.

    Returns ``box_regression`` [N, 4], ``landmarks`` [N, 10] (the x of the
    five points, then their y, as fractions of the crop's width and height)
    and ``face_probability`` [N].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_width_first(x)))
        return self.dense6_2(x), self.dense6_3(x), _face_column(self.dense6_1(x))


def load_pnet(weights_path: Path) -> nn.Module:
    """Return P-Net in eval mode with ``pnet.pt`` loaded strictly."""
    return load_state_dict(PNet(), weights_path)


def load_rnet(weights_path: Path) -> nn.Module:
    """Return R-Net in eval mode with ``rnet.pt`` loaded strictly."""
    return load_state_dict(RNet(), weights_path)


def load_onet(weights_path: Path) -> nn.Module:
    """Return O-Net in eval mode with ``onet.pt`` loaded strictly."""
    return load_state_dict(ONet(), weights_path)
