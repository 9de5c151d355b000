"""He et al. 2016's ResNet for CIFAR ("Deep Residual Learning for Image Recognition", §4.2).

A 3x3 convolution with 16 filters, then three stages of n basic blocks (two 3x3
convolutions each) on 16, 32 and 64 channels, the first block of the second
and third stage subsampling by a stride of 2, then global average pooling and a
Linear layer to the classes: 6n + 2 weighted layers, ``resnet20`` at n = 3
(0.27 M parameters in the paper's Table 6). The shortcuts are the paper's
option A, used in all its CIFAR experiments: the identity, subsampled and
zero-padded with new channels where the shape changes, so they have no
parameters. Every convolution is followed by a norm of the kind studied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normlab.models.common import check_placement
from normlab.registry import NormSpec, norm_factory

RESNET_WIDTHS = (16, 32, 64)
RESNET20_BLOCKS = 3


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the norm after it has its own shift (as in the paper and torchvision).
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PaddedIdentity(nn.Module):
    """Option A shortcut: the identity, subsampled by ``stride`` and zero-padded with channels.

    Shape:
        - Input: (N, C_in, H, W).
        - Output: (N, C_out, ceil(H / stride), ceil(W / stride)), the input's channels
          first and C_out - C_in channels of zeros after them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"a zero-padding shortcut cannot shrink {in_channels} channels to "
                f"{out_channels}; stage widths must not decrease."
            )
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        subsampled = input[:, :, :: self.stride, :: self.stride]
        return F.pad(subsampled, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a norm after each, added to the shortcut.

    ``placement="before"`` is the paper's block: conv, norm, ReLU, conv, norm,
    add, ReLU. ``"after"`` moves each norm behind its ReLU: conv, ReLU, norm,
    conv, add, ReLU, norm.

    Shape:
        - Input: (N, in_channels, H, W).
        - Output: (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: Callable[[int], nn.Module],
        placement: str,
    ) -> None:
        super().__init__()
        check_placement(placement)
        self.placement = placement
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.norm1 = norm(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.norm2 = norm(out_channels)
        self.shortcut = (
            PaddedIdentity(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.placement == "before":
            out = F.relu(self.norm1(self.conv1(input)))
            return F.relu(self.norm2(self.conv2(out)) + self.shortcut(input))
        out = self.norm1(F.relu(self.conv1(input)))
        return self.norm2(F.relu(self.conv2(out) + self.shortcut(input)))


class ResNet(nn.Module):
    """The CIFAR ResNet: a 3x3 stem, stages of basic blocks, global pooling, Linear.

    Args:
        input_shape: (C, H, W) of one image; any size works (28x28x1, 32x32x3, ...).
        num_classes: outputs of the final Linear layer.
        widths: channels of each stage (the paper's 16, 32, 64); the stem has
            ``widths[0]``, every stage after the first halves H and W.
        blocks: basic blocks per stage (n; 6n + 2 layers with three stages).
        norm: a kind ``normlab.make_norm`` accepts, or a callable ``C -> module`` for
            (N, C, H, W) input, used after every convolution.
        placement: each norm ``"before"`` its ReLU (the paper) or ``"after"`` it.

    Shape:
        - Input: (N, C, H, W).
        - Output: (N, num_classes) logits.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        *,
        widths: Sequence[int] = RESNET_WIDTHS,
        blocks: int = RESNET20_BLOCKS,
        norm: NormSpec = "none",
        placement: str = "before",
    ) -> None:
        super().__init__()
        check_placement(placement)
        if blocks < 1:
            raise ValueError(f"a ResNet stage needs at least one block; got blocks={blocks}.")
        make = norm_factory(norm)
        channels = input_shape[0]
        self.placement = placement
        self.stem = _conv3x3(channels, widths[0])
        self.stem_norm = make(widths[0])
        stages = []
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(
                    BasicBlock(channels, width, stride if block == 0 else 1, make, placement)
                )
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He et al. 2015's initialization, as the paper
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.stem(images)
        if self.placement == "before":
            out = F.relu(self.stem_norm(out))
        else:
            out = self.stem_norm(F.relu(out))
        out = self.stages(out)
        return self.head(out.mean((2, 3)))


def resnet20(
    input_shape: Sequence[int],
    num_classes: int = 10,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    widths: Sequence[int] = RESNET_WIDTHS,
) -> ResNet:
    """He et al. 2016's ResNet-20 for (N, C, H, W) images -> (N, num_classes) logits."""
    return ResNet(
        input_shape,
        num_classes,
        widths=widths,
        blocks=RESNET20_BLOCKS,
        norm=norm,
        placement=placement,
    )
