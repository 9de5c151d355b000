"""Feed-forward lab models: the tutorials' MLP and CNN, each norm from the registry."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from normlab.models.common import check_placement, dropout_layers, normalized_activation
from normlab.registry import NormSpec, norm_factory


def mlp(
    in_features: int,
    hidden: Sequence[int] = (128, 64),
    num_classes: int = 10,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Multi-layer perceptron: input (N, *) flattened to (N, in_features) -> (N, num_classes).

    ``dropout`` > 0 adds ``nn.Dropout`` after each hidden layer's activation and norm."""
    check_placement(placement)
    make = norm_factory(norm)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for out in hidden:
        layers += [nn.Linear(width, out), *normalized_activation(make(out), placement)]
        layers += dropout_layers(dropout)
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    input_shape: Sequence[int],
    hidden: Sequence[int] = (32, 64),
    num_classes: int = 10,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    dense: int = 64,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Small convolutional network: (N, C, H, W) -> (N, num_classes).

    Each width in ``hidden`` adds a 3x3 convolution (padding 1), the norm,
    ReLU and 2x2 max pooling, so H and W must be at least 2**len(hidden).
    ``dropout`` > 0 adds ``nn.Dropout`` after each pooling and after the dense layer.
    """
    check_placement(placement)
    channels, height, width = input_shape
    if min(height, width) < 2 ** len(hidden):
        raise ValueError(
            f"cnn with {len(hidden)} pooling stages needs images of at least "
            f"{2 ** len(hidden)}x{2 ** len(hidden)}; got {height}x{width}. "
            "Use fewer hidden widths (or a smaller depth)."
        )
    make = norm_factory(norm)
    layers: list[nn.Module] = []
    for out in hidden:
        layers += [
            nn.Conv2d(channels, out, 3, padding=1),
            *normalized_activation(make(out), placement),
            nn.MaxPool2d(2),
            *dropout_layers(dropout),
        ]
        channels, height, width = out, height // 2, width // 2
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, dense),
        nn.ReLU(),
        *dropout_layers(dropout),
        nn.Linear(dense, num_classes),
    ]
    return nn.Sequential(*layers)
