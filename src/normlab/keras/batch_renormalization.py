"""Batch renormalization (Ioffe 2017) as a Keras 3 layer."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from normlab.keras._ops import assign_moving_average, clip
from normlab.keras.base import MovingStatisticsNormalization


@keras.saving.register_keras_serializable(package="normlab")
class BatchRenormalization(MovingStatisticsNormalization):
    """Batch renormalization (Ioffe 2017, Algorithm 1), per-channel statistics.

    The Keras counterpart of ``normlab.BatchRenorm``. Training normalizes
    with the batch's statistics and corrects toward the moving ones::

        sigma_B = sqrt(var_B + epsilon)                 # biased var_B
        sigma   = sqrt(moving_variance + epsilon)
        r = clip(sigma_B / sigma, 1 / r_max, r_max)     # no gradient
        d = clip((mu_B - moving_mean) / sigma, -d_max, d_max)   # no gradient
        y = ((x - mu_B) / sigma_B * r + d) * gamma + beta

    and then updates ``moving_mean`` and the moving sigma with Keras'
    momentum (``moving = momentum * moving + (1 - momentum) * batch``),
    storing ``moving_variance = sigma^2 - epsilon``, so that inference is
    ``BatchNormalization``'s formula. With ``r_max=1, d_max=0`` it is batch
    norm.

    The paper's warm-up: ``r_max=1, d_max=0`` for the first ``warmup_steps``
    training steps, then each limit rises linearly to its final value,
    reached at step ``r_max_steps`` and ``d_max_steps`` (ImageNet:
    ``r_max=3, d_max=5, warmup_steps=5000, r_max_steps=40000,
    d_max_steps=25000``). The defaults use the final limits from the first
    step. The non-trainable integer weight ``steps`` counts the training steps (as an
    optimizer's ``iterations``: int64 on TensorFlow, int32 elsewhere).

    Differences from ``keras.layers.BatchNormalization(renorm=True)``:
    Keras keeps a second pair of moving statistics (``renorm_mean``,
    ``renorm_stddev``, updated with ``renorm_momentum``) for r and d, and
    starts its sigma at sqrt(moving_variance_initializer) where this layer
    starts at sqrt(moving_variance + epsilon); its clipping is
    ``rmin, rmax, dmax`` with no warm-up, and its variance is
    E[x^2] - E[x]^2 in float32. Keras with ``renorm_momentum=momentum`` and
    ``renorm_clipping={"rmin": 1 / r_max, "rmax": r_max, "dmax": d_max}``,
    and this layer with ``moving_variance_initializer=Constant(1 - epsilon)``,
    compute the same outputs, gradients and moving statistics up to Keras'
    float32 arithmetic.

    Input shape: any rank >= 2, channels on ``axis`` (last by default).

    Output shape: same as the input.

    Call arguments: as ``BatchNormalization`` (training=False, or
    ``trainable=False``, is batch norm with the moving statistics; the
    mask counts in training only).

    Args:
        *args, **kwargs: the thirteen arguments of
        ``keras.layers.BatchNormalization`` from ``axis`` to
        ``gamma_constraint`` (positional in Keras' order or by keyword; see
        ``MovingStatisticsNormalization``) and the base layer's, plus, by
        keyword, ``r_max`` (>= 1), ``d_max`` (>= 0), ``warmup_steps``,
        ``r_max_steps``, ``d_max_steps``. Statistics
        are per channel only (no ``stats``); Keras' ``renorm`` arguments
        belong to its BatchNormalization and are not taken here.
    """

    def __init__(
        self,
        *args: Any,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
        r_max_steps: int = 0,
        d_max_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("stats", "channel") != "channel":
            raise ValueError(
                f"BatchRenormalization keeps per-channel statistics only (as normlab.BatchRenorm); "
                f"got stats={kwargs['stats']!r}. For scalar statistics use "
                "normlab.keras.BatchNormalization(stats='scalar')."
            )
        kwargs.pop("stats", None)
        super().__init__(*args, **kwargs)
        if r_max < 1.0 or d_max < 0.0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0; got r_max={r_max}, d_max={d_max}.")
        if min(warmup_steps, r_max_steps, d_max_steps) < 0:
            raise ValueError("warmup_steps, r_max_steps and d_max_steps must be >= 0.")
        self.supports_masking = True
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.warmup_steps = int(warmup_steps)
        self.r_max_steps = int(r_max_steps)
        self.d_max_steps = int(d_max_steps)
        self.steps = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        axis, channels = self._channels(input_shape)
        self._add_affine_weights(channels)
        self._add_moving_weights((channels,))
        self._finish_build(len(input_shape), axis, channels)
        self.steps = self.add_weight(
            shape=(), name="steps", initializer="zeros", dtype="int", trainable=False
        )

    def _update_moving_statistics(self, mean: Any, variance: Any) -> tuple[Any, Any]:
        dtype = mean.dtype
        step = ops.cast(self.steps, dtype)
        r_max = _ramp(1.0, self.r_max, step, self.warmup_steps, self.r_max_steps)
        d_max = _ramp(0.0, self.d_max, step, self.warmup_steps, self.d_max_steps)
        moving_mean = self._broadcast(self.moving_mean, dtype)
        moving_std = ops.sqrt(self._broadcast(self.moving_variance, dtype) + self.epsilon)
        std = ops.sqrt(variance + self.epsilon)
        r = clip(std / moving_std, 1.0 / r_max, r_max)
        d = clip((mean - moving_mean) / moving_std, -d_max, d_max)
        new_std = moving_std * self.momentum + std * (1.0 - self.momentum)
        assign_moving_average(self.moving_mean, mean, self.momentum)
        new_variance = ops.relu(ops.square(new_std) - self.epsilon)
        new_variance = ops.reshape(new_variance, self.moving_variance.shape)
        self.moving_variance.assign(ops.cast(new_variance, self.moving_variance.dtype))
        self.steps.assign_add(ops.cast(1, self.steps.dtype))
        return ops.stop_gradient(r), ops.stop_gradient(d)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "r_max": self.r_max,
            "d_max": self.d_max,
            "warmup_steps": self.warmup_steps,
            "r_max_steps": self.r_max_steps,
            "d_max_steps": self.d_max_steps,
        }


def _ramp(start: float, end: float, step: Any, warmup: int, full_at: int) -> Any:
    """``start`` before step ``warmup``, then linear to ``end``, reached at step ``full_at``.

    ``step`` is a float scalar tensor; the result is a tensor of its dtype.
    """
    if full_at <= warmup:
        fraction = ops.cast(step >= warmup, step.dtype)
    else:
        fraction = ops.clip((step - warmup) / (full_at - warmup), 0.0, 1.0)
    return start + (end - start) * fraction
