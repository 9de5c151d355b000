"""The lab's recurrent model: an image read row by row through stacked LSTM or GRU layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from normlab.models.common import check_placement, dropout_layers
from normlab.registry import NormSpec, norm_factory

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class FeaturesAsChannels(nn.Module):
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
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 10,
        *,
        norm: NormSpec = "none",
        placement: str = "before",
        cell: str = "lstm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_placement(placement)
        self.dropout = nn.Sequential(*dropout_layers(dropout))
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
            self.norms.append(FeaturesAsChannels(make(normalized)))
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
            sequence = self.dropout(sequence)
        return self.head(sequence[:, -1])
