"""Switchable normalization (Luo et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as NF
from normlab.layers.base import RunningStatsNorm


class SwitchableNorm(RunningStatsNorm):
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
        - Input: (N, C, *), channels on dim 1 (or (N, *, C) with
          ``channel_dim=-1``).
        - Output: same shape and dtype as the input.

    Training vs eval: in training the BN term uses the batch's statistics
    and updates the running ones; in eval it uses the running statistics,
    while the IN and LN terms always come from the sample itself, so a
    sample's eval output does not depend on the rest of the batch. An empty
    batch gives an empty output and changes no statistic.
    """

    _repr_fields = ("eps", "momentum", "affine")

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            True,
            channel_dim=channel_dim,
            device=device,
            dtype=dtype,
        )
        self.mean_logits = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        self.var_logits = nn.Parameter(torch.ones(3, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        """Reset running statistics and affine, and the mixing logits to equal weights."""
        super().reset_parameters()
        with torch.no_grad():
            self.mean_logits.fill_(1.0)
            self.var_logits.fill_(1.0)

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        output = NF.switchable_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.mean_logits,
            self.var_logits,
            self.training,
            self._step_momentum(),
            self.eps,
            layer=type(self).__name__,
        )
        self._count_step()
        return output
