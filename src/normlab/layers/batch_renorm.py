"""Batch renormalization (Ioffe 2017)."""

from __future__ import annotations

import torch

from normlab import functional as NF
from normlab.layers.base import RunningStatsNorm


class BatchRenorm(RunningStatsNorm):
    """Batch renormalization over (N, C, *) input, per-channel statistics.

    Training normalizes with the batch's statistics and then corrects toward
    the running ones, ``x_hat * r + d`` with ``r`` and ``d`` clipped to
    ``[1/r_max, r_max]`` and ``[-d_max, d_max]`` and treated as constants in
    the backward pass (see :func:`normlab.functional.batch_renorm`). With
    ``r_max=1, d_max=0`` it is batch norm.

    As in the paper (and Keras' ``renorm=True``), the moving average is taken
    of sigma = sqrt(var + eps) with the biased batch variance, not of the
    variance; ``running_var`` holds sigma^2 - eps (``running_var_holds``) so
    that eval mode is :class:`BatchNorm`'s formula and batch-norm tooling
    (folding, freezing) applies unchanged. ``momentum`` is in torch's sense.
    A sibling of :class:`BatchNorm`, not a subclass: its running variance
    means something else.

    The paper's warm-up: keep ``r_max=1, d_max=0`` for the first
    ``warmup_steps`` training steps, then raise each limit linearly to its
    final value, reached at step ``r_max_steps`` and ``d_max_steps``. The
    paper's ImageNet schedule is ``r_max=3, d_max=5, warmup_steps=5000,
    r_max_steps=40000, d_max_steps=25000``. The defaults use the final
    limits from the first step. The step count is ``num_batches_tracked``;
    it is read on the host only while a schedule is in force (limits that
    change with the step), so the default layer never waits for the device.

    Shape:
        - Input: (N, C, *), channels on dim 1 (or (N, *, C) with
          ``channel_dim=-1``).
        - Output: same shape and dtype as the input.

    Training vs eval: training uses the batch statistics with the r/d
    correction and updates the running statistics; eval uses the running
    statistics only, so a sample's output does not depend on the batch. An
    empty training batch gives an empty output and changes no statistic.
    """

    running_var_holds = "sigma2_minus_eps"
    _repr_fields = (
        "eps",
        "momentum",
        "affine",
        "r_max",
        "d_max",
        "warmup_steps",
        "r_max_steps",
        "d_max_steps",
    )

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
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if r_max < 1.0 or d_max < 0.0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0; got r_max={r_max}, d_max={d_max}.")
        if min(warmup_steps, r_max_steps, d_max_steps) < 0:
            raise ValueError("warmup_steps, r_max_steps and d_max_steps must be >= 0.")
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

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        if max(self.warmup_steps, self.r_max_steps, self.d_max_steps) == 0:
            r_max, d_max = self.r_max, self.d_max  # no schedule: no need to read the step
        else:
            r_max, d_max = self.clip_limits(int(self.num_batches_tracked))
        output = NF.batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self._step_momentum(),
            self.eps,
            r_max,
            d_max,
            layer=type(self).__name__,
        )
        self._count_step()
        return output


def _ramp(start: float, end: float, step: int, warmup: int, full_at: int) -> float:
    """``start`` during warm-up, then linear to ``end`` at step ``full_at``."""
    if step < warmup:
        return start
    if step >= full_at:
        return end
    return start + (end - start) * (step - warmup) / (full_at - warmup)
