"""Weight-standardized convolution and linear layers (Qiao et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normlab.functional import weight_standardize


class WSConv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` whose weight is standardized on every forward pass.

    Each output channel's weights are standardized over their fan-in
    (C_in / groups x kH x kW) with the biased variance and ``eps`` inside the
    square root, as eq. 5 of the paper (see
    :func:`normlab.functional.weight_standardize`); gradients flow through
    the standardization to the raw ``weight``. The authors' code divides by
    the unbiased std plus eps instead; timm's StdConv2d matches the paper.

    Shape: as ``torch.nn.Conv2d``: (N, C_in, H, W) -> (N, C_out, H_out, W_out).

    Training vs eval: identical (no statistics of the input are kept).

    Args: as ``torch.nn.Conv2d``, plus keyword ``eps`` (default 1e-5).
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, weight_standardize(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class WSLinear(nn.Linear):
    """``torch.nn.Linear`` whose weight rows are standardized on every forward pass.

    Each output feature's weights are standardized over the in_features, as
    :class:`WSConv2d`.

    Shape: as ``torch.nn.Linear``: (*, in_features) -> (*, out_features).

    Training vs eval: identical.

    Args: as ``torch.nn.Linear``, plus keyword ``eps`` (default 1e-5).
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, weight_standardize(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"
