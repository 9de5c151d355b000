"""A normalization layer followed by the drop and activation of the layer it replaced."""

from __future__ import annotations

import torch
from torch import nn


class NormAct(nn.Module):
    """``act(drop(norm(x)))``: what a norm + activation layer (timm's ``BatchNormAct2d``,
    ``GroupNormAct``, ``LayerNormAct``, ...) computes, with the normalization swapped.

    ``replace_norms``, ``inference.freeze`` and ``convert_sync_batchnorm`` build one when
    the layer they replace also applies a drop or an activation after normalizing: the
    new normalization layer is ``norm``, and ``drop`` and ``act`` are the old layer's own
    modules. Normalization tools find ``norm`` as any other layer.

    Shape:
        - Input: what ``norm`` takes.
        - Output: same shape as the input.

    Args:
        norm: the normalization layer.
        drop: applied to its output first (timm's drop_layer); None for none.
        act: applied last; None for none.
    """

    def __init__(
        self, norm: nn.Module, drop: nn.Module | None = None, act: nn.Module | None = None
    ):
        super().__init__()
        self.norm = norm
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(input)))
