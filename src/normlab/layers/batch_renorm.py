"""Batch renormalization (Ioffe 2017)."""

from __future__ import annotations

import torch

from normlab import functional as NF
from normlab._checks import check_batch_statistics, check_input
from normlab.layers._running_stats import step_momentum
from normlab.layers.batch_norm import BatchNorm


class BatchRenorm(BatchNorm):
    """Batch renormalization over (N, C, *) input, per-channel statistics.

    Training normalizes with the batch's statistics and then corrects toward
    the running ones, ``x_hat * r + d`` with ``r`` and ``d`` clipped to
    ``[1/r_max, r_max]`` and ``[-d_max, d_max]`` and treated as constants in
    the backward pass (see :func:`normlab.functional.batch_renorm`). With
    ``r_max=1, d_max=0`` it is batch norm.

    As in the paper (and Keras' ``renorm=True``), the moving average is taken
    of sigma = sqrt(var + eps) with the biased batch variance, not of the
    variance; ``running_var`` holds sigma^2 - eps so that eval mode is
    :class:`BatchNorm`'s formula and BatchNorm tooling (folding, freezing)
    applies unchanged. ``momentum`` is in torch's sense.

    The paper's warm-up: keep ``r_max=1, d_max=0`` for the first
    ``warmup_steps`` training steps, then raise each limit linearly to its
    final value, reached at step ``r_max_steps`` and ``d_max_steps``. The
    paper's ImageNet schedule is ``r_max=3, d_max=5, warmup_steps=5000,
    r_max_steps=40000, d_max_steps=25000``. The defaults use the final
    limits from the first step. The step count is ``num_batches_tracked``.

    Shape:
        - Input: (N, C, *), channels on dim 1.
        - Output: same shape and dtype as the input.

    Training vs eval: training uses the batch statistics with the r/d
    correction and updates the running statistics; eval uses the running
    statistics only, so a sample's output does not depend on the batch.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
        r_max_steps: int = 0,
        d_max_steps: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            momentum=momentum,
            eps=eps,
            affine=affine,
            device=device,
            dtype=dtype,
        )
        if r_max < 1.0 or d_max < 0.0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0; got r_max={r_max}, d_max={d_max}.")
        if min(warmup_steps, r_max_steps, d_max_steps) < 0:
            raise ValueError("warmup_steps, r_max_steps and d_max_steps must be >= 0.")
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps
        self.r_max_steps = r_max_steps
        self.d_max_steps = d_max_steps

    def clip_limits(self, step: int) -> tuple[float, float]:
        """(r_max, d_max) in force at training step ``step`` (0 for the first)."""
        return (
            _ramp(1.0, self.r_max, step, self.warmup_steps, self.r_max_steps),
            _ramp(0.0, self.d_max, step, self.warmup_steps, self.d_max_steps),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_input(input, self.num_features, type(self).__name__)
        if self.training:  # before counting the step: a refused batch changes nothing
            check_batch_statistics(input, type(self).__name__)
        step = int(self.num_batches_tracked)
        momentum = step_momentum(self.momentum, self.num_batches_tracked, self.training)
        r_max, d_max = self.clip_limits(step)
        return NF.batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            r_max,
            d_max,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, r_max={self.r_max}, d_max={self.d_max}, "
            f"warmup_steps={self.warmup_steps}, r_max_steps={self.r_max_steps}, "
            f"d_max_steps={self.d_max_steps}"
        )


def _ramp(start: float, end: float, step: int, warmup: int, full_at: int) -> float:
    """``start`` during warm-up, then linear to ``end`` at step ``full_at``."""
    if step < warmup:
        return start
    if step >= full_at:
        return end
    return start + (end - start) * (step - warmup) / (full_at - warmup)
