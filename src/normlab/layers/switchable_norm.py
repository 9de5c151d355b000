"""Switchable normalization (Luo et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as NF
from normlab._checks import check_batch_statistics, check_input, check_num_features
from normlab.layers._running_stats import (
    register_affine,
    register_running_stats,
    step_momentum,
)


class SwitchableNorm(nn.Module):
    """Switchable normalization over (N, C, *) input.

    Normalizes with a learned mix of instance, layer and batch statistics:
    two softmax-weighted sums over (IN, LN, BN), one for the mean
    (``mean_logits``) and one for the variance (``var_logits``), both
    initialized to equal weights. See
    :func:`normlab.functional.switchable_norm` for the formulas. For (N, C)
    input only the LN and BN terms are mixed. ``momentum`` is in torch's
    sense; ``running_var`` stores the unbiased BN variance, as
    ``torch.nn.BatchNorm``.

    Shape:
        - Input: (N, C, *), channels on dim 1.
        - Output: same shape and dtype as the input.

    Training vs eval: in training the BN term uses the batch's statistics
    and updates the running ones; in eval it uses the running statistics,
    while the IN and LN terms always come from the sample itself, so a
    sample's eval output does not depend on the rest of the batch.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.affine = affine
        factory = {"device": device, "dtype": dtype}
        register_affine(self, num_features, affine, factory)
        self.mean_logits = nn.Parameter(torch.ones(3, **factory))
        self.var_logits = nn.Parameter(torch.ones(3, **factory))
        register_running_stats(self, (num_features,), factory)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_input(input, self.num_features, type(self).__name__)
        if self.training:  # before counting the step: a refused batch changes nothing
            check_batch_statistics(input, type(self).__name__)
        momentum = step_momentum(self.momentum, self.num_batches_tracked, self.training)
        return NF.switchable_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.mean_logits,
            self.var_logits,
            self.training,
            momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )
