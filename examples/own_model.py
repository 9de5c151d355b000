"""Your own model in the lab: a torchvision-style ResNet with its batch norms swapped for each kind.

``SmallResNet`` below is written the way a torchvision or timm user writes a model: a
BatchNorm2d after every convolution and a 1x1 convolution + BatchNorm2d downsample branch
where a block changes shape, nothing normlab-specific. ``build`` is the lab's factory
contract, ``factory(norm, num_classes, input_shape) -> nn.Module``: it builds the model and
swaps its norms for the kind being studied with ``normlab.replace_norms``.
``normlab.lab.compare`` then trains it at each kind and batch size, as ``normlab compare``
does:

    python examples/own_model.py                                  # digits, built in
    python examples/own_model.py --dataset mnist --data-dir ../shared/data/mnist \\
        --train-subset 5000 --norms bn,gn,ln,bn-scalar --batch-sizes 4,32
    cd examples && normlab compare --model own_model:small_resnet --norms bn,gn,ln  # the CLI's way
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

import torch
from rich.console import Console
from torch import nn

import normlab
from normlab.lab import compare
from normlab.report import summary_table


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: conv-bn-relu, conv-bn, plus the (downsampled) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    """A stem and two stages of basic blocks (16 and 32 channels), pooled, to a Linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def small_resnet(norm, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The lab's factory contract: SmallResNet with every BatchNorm2d swapped for ``norm.kind``."""
    model = SmallResNet(input_shape[0], num_classes)
    example = torch.zeros(2, *input_shape)  # the swap checks every new layer on real shapes
    return normlab.replace_norms(model, norm.kind, example_input=example, **norm.options).model


def _comma_list(convert):
    return lambda text: [convert(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--norms", type=_comma_list(str), default=["bn", "gn", "ln"])
    parser.add_argument("--batch-sizes", type=_comma_list(int), default=[8, 64])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--out", default=None, help="results (default: a temp dir)")
    args = parser.parse_args(argv)
    console = Console(width=120)
    swapped = normlab.replace_norms(SmallResNet(1), "gn", groups=4)
    console.print("replace_norms(SmallResNet(), 'gn', groups=4):")
    console.print(swapped.summary())
    with tempfile.TemporaryDirectory() as scratch:
        result = compare(
            norms=args.norms,
            batch_sizes=args.batch_sizes,
            seeds=args.seeds,
            epochs=args.epochs,
            data=args.dataset,
            data_dir=args.data_dir,
            model=small_resnet,  # an unusable factory or kind is refused before any training
            train_subset=args.train_subset,
            out=args.out or scratch,
            report=False,
            console=console,
        )
        for config, error in result.failed:
            console.print(f"failed: {config.label}: {error}")
        console.print(summary_table(result.records))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
