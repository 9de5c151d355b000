"""The lab's models, each built around one normalization kind from the registry.

Every builder takes images of shape (N, C, H, W) and returns logits of shape
(N, num_classes); ``norm`` is any name ``normlab.make_norm`` accepts, or any
callable that takes a channel count C and returns a module for (N, C, *)
input (as timm's ``get_norm_layer``), and ``placement`` puts it before or
after each activation.

=======  ==========================================================  ======================
model    layers (``placement="before"``)                             after the activation
=======  ==========================================================  ======================
mlp      Flatten, [Linear, norm, ReLU] per hidden width, Linear      Linear, ReLU, norm
         (the tutorials' Dense 128 / Dense 64 / Dense 10)
cnn      [Conv 3x3 (padding 1), norm, ReLU, MaxPool 2] per width,    Conv, ReLU, norm, pool
         Flatten, Linear 64, ReLU, Linear (the tutorials' Conv
         32 / Conv 64 with batch norm, Dense 64, Dense 10)
rnn      rows of the image as a sequence of H steps of C*W values;   the norm on each
         per width a recurrent layer (LSTM or GRU) whose input       recurrent layer's
         sequence is normalized first; Linear on the last step       output sequence
=======  ==========================================================  ======================

A recurrent layer's activations are inside the cell, so for ``rnn`` the
placement chooses pre-norm (normalize what enters each layer) or post-norm
(normalize what leaves it). The norm there sees (N, C, L) with the features
as channels: ``bn`` takes statistics per feature over samples and steps,
``ln`` over the features of each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from normlab._checks import did_you_mean
from normlab.registry import NormSpec, norm_factory

MODELS = ("mlp", "cnn", "rnn")
PLACEMENTS = ("before", "after")
DEFAULT_HIDDEN = {"mlp": (128, 64), "cnn": (32, 64), "rnn": (128, 128)}
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def check_placement(placement: str) -> None:
    """Raise ValueError unless ``placement`` is one of :data:`PLACEMENTS`."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"placement must be 'before' or 'after' the activation; got {placement!r}."
        )


def _normalized_activation(norm: nn.Module, placement: str) -> list[nn.Module]:
    return [norm, nn.ReLU()] if placement == "before" else [nn.ReLU(), norm]


def mlp(
    in_features: int,
    hidden: Sequence[int] = DEFAULT_HIDDEN["mlp"],
    num_classes: int = 10,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
) -> nn.Sequential:
    """Multi-layer perceptron: input (N, *) flattened to (N, in_features) -> (N, num_classes)."""
    check_placement(placement)
    make = norm_factory(norm)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for out in hidden:
        layers += [nn.Linear(width, out), *_normalized_activation(make(out), placement)]
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    input_shape: Sequence[int],
    hidden: Sequence[int] = DEFAULT_HIDDEN["cnn"],
    num_classes: int = 10,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    dense: int = 64,
) -> nn.Sequential:
    """Small convolutional network: (N, C, H, W) -> (N, num_classes).

    Each width in ``hidden`` adds a 3x3 convolution (padding 1), the norm,
    ReLU and 2x2 max pooling, so H and W must be at least 2**len(hidden).
    """
    check_placement(placement)
    channels, height, width = input_shape
    if min(height, width) < 2 ** len(hidden):
        raise ValueError(
            f"cnn with {len(hidden)} pooling stages needs images of at least "
            f"{2 ** len(hidden)}x{2 ** len(hidden)}; got {height}x{width}. "
            "Use fewer --hidden widths."
        )
    make = norm_factory(norm)
    layers: list[nn.Module] = []
    for out in hidden:
        layers += [
            nn.Conv2d(channels, out, 3, padding=1),
            *_normalized_activation(make(out), placement),
            nn.MaxPool2d(2),
        ]
        channels, height, width = out, height // 2, width // 2
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, dense),
        nn.ReLU(),
        nn.Linear(dense, num_classes),
    ]
    return nn.Sequential(*layers)


class _FeaturesAsChannels(nn.Module):
    """Applies an (N, C, L) norm to (N, L, C) sequences."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.norm(sequence.transpose(1, 2)).transpose(1, 2)


class RowRNN(nn.Module):
    """Recurrent classifier reading an image row by row.

    Shape:
        - Input: (N, C, H, W), read as H steps of C*W values.
        - Output: (N, num_classes), from the last step's hidden state.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int] = DEFAULT_HIDDEN["rnn"],
        num_classes: int = 10,
        *,
        norm: NormSpec = "none",
        placement: str = "before",
        cell: str = "lstm",
    ) -> None:
        super().__init__()
        check_placement(placement)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {cell!r}.")
        channels, _, width = input_shape
        self.placement = placement
        self.norms = nn.ModuleList()
        self.layers = nn.ModuleList()
        make = norm_factory(norm)
        features = channels * width
        for out in hidden:
            normalized = features if placement == "before" else out
            self.norms.append(_FeaturesAsChannels(make(normalized)))
            self.layers.append(CELLS[cell](features, out, batch_first=True))
            features = out
        self.head = nn.Linear(features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        sequence = images.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        for norm, layer in zip(self.norms, self.layers, strict=True):
            if self.placement == "before":
                sequence = norm(sequence)
            sequence, _ = layer(sequence)
            if self.placement == "after":
                sequence = norm(sequence)
        return self.head(sequence[:, -1])


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormSpec = "none",
    placement: str = "before",
    hidden: Sequence[int] | None = None,
    cell: str = "lstm",
) -> nn.Module:
    """The lab's model ``name`` for (N, *input_shape) images with ``num_classes`` classes.

    ``norm`` is a kind's name or a callable ``C -> module`` (see
    :func:`normlab.registry.norm_factory`); ``hidden`` defaults to the
    tutorials' widths (see DEFAULT_HIDDEN); ``cell`` applies to ``rnn`` only.
    """
    if name not in MODELS:
        hint = did_you_mean(name, {model: model for model in MODELS})
        raise ValueError(f"unknown model {name!r}.{hint} Choose one of {', '.join(MODELS)}.")
    if name != "rnn" and cell != "lstm":
        raise ValueError(f"--cell applies to the rnn model only; got model {name!r}.")
    hidden = tuple(DEFAULT_HIDDEN[name] if hidden is None else hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden widths must be positive integers; got {list(hidden)}.")
    options = {"norm": norm, "placement": placement}
    if name == "mlp":
        in_features = 1
        for size in input_shape:
            in_features *= size
        return mlp(in_features, hidden, num_classes, **options)
    if name == "cnn":
        return cnn(input_shape, hidden, num_classes, **options)
    return RowRNN(input_shape, hidden, num_classes, cell=cell, **options)
