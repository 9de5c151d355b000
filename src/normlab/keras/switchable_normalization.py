"""Switchable normalization (Luo et al. 2018) as a Keras 3 layer."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from normlab.keras._ops import (
    assign_moving_average,
    check_batch_statistics,
    compute_dtype,
    mean,
    moments,
)
from normlab.keras.base import MovingStatisticsNormalization


@keras.saving.register_keras_serializable(package="normlab")
class SwitchableNormalization(MovingStatisticsNormalization):
    """Switchable normalization: a learned mix of instance, layer and batch statistics.

    The Keras counterpart of ``normlab.SwitchableNorm``, channels last. With
    IN statistics over the spatial axes (all but the batch and channel
    axes), LN over the spatial and channel axes and BN over the batch and
    spatial axes, all variances biased::

        mean = sum_k softmax(mean_logits)_k * mean_k      k in (IN, LN, BN)
        var  = sum_k softmax(var_logits)_k * var_k
        y    = (x - mean) / sqrt(var + epsilon) * gamma + beta

    ``mean_logits`` and ``var_logits`` are trainable (3,) weights initialized
    to ones (equal mixing). The LN and BN statistics are derived from the IN
    ones by the law of total variance (two-pass, stable). For rank-2
    (batch, channels) input there are no spatial axes: only the LN and BN
    terms are mixed, with the softmax over ``logits[1:]``.

    In training the BN term uses the batch's statistics and updates
    ``moving_mean`` and ``moving_variance`` (biased variance, Keras'
    momentum: ``moving = momentum * moving + (1 - momentum) * batch``); in
    inference it uses the moving ones. As Keras' BatchNormalization,
    ``trainable=False`` means inference mode. The IN and LN terms always come
    from the sample itself. Statistics are computed in float32 for float16
    and bfloat16 input, in float64 for float64 input.

    Input shape: any rank >= 2, channels on ``axis`` (last by default), batch
    on axis 0.

    Output shape: same as the input.

    Call arguments:
        inputs: the input tensor.
        training: True takes the BN term from the batch and updates the
            moving statistics; False (the default) uses the moving ones.

    Args:
        axis: the channel axis; not 0, the batch axis.
        momentum: momentum of the moving statistics, in Keras' sense.
        epsilon: added to the mixed variance before the square root.
        center, scale, beta_initializer, gamma_initializer,
        moving_mean_initializer, moving_variance_initializer,
        beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as ``keras.layers.BatchNormalization``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        axis, channels = self._channels(input_shape)
        if axis == 0:
            raise ValueError(
                f"{type(self).__name__} needs the batch on axis 0 and the channels elsewhere; "
                f"got axis={self.axis}. Use axis=-1 for channels last or 1 for channels first."
            )
        self._add_affine_weights(channels)
        self.mean_logits = self.add_weight(
            shape=(3,), name="mean_logits", initializer="ones", autocast=False
        )
        self.var_logits = self.add_weight(
            shape=(3,), name="var_logits", initializer="ones", autocast=False
        )
        self._add_moving_weights((channels,))
        self._finish_build(len(input_shape), axis, channels)
        self._spatial_axes = [a for a in range(1, len(input_shape)) if a != axis]

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = ops.cast(inputs, compute_dtype(inputs.dtype))
        if self._spatial_axes:
            mean_in, var_in = moments(x, self._spatial_axes)
        else:  # (batch, channels): each instance statistic is the value itself
            mean_in, var_in = x, ops.zeros_like(x)
        mean_ln, var_ln = _pooled(mean_in, var_in, self._channel_axis)
        if training and self.trainable:
            check_batch_statistics(inputs.shape, [0, *self._spatial_axes], type(self).__name__)
            mean_bn, var_bn = _pooled(mean_in, var_in, 0)
            assign_moving_average(self.moving_mean, mean_bn, self.momentum)
            assign_moving_average(self.moving_variance, var_bn, self.momentum)
        else:
            mean_bn = self._broadcast(self.moving_mean, x.dtype)
            var_bn = self._broadcast(self.moving_variance, x.dtype)
        first = 0 if self._spatial_axes else 1
        mean_weights = ops.softmax(ops.cast(self.mean_logits, x.dtype)[first:])
        var_weights = ops.softmax(ops.cast(self.var_logits, x.dtype)[first:])
        means = (mean_in, mean_ln, mean_bn)[first:]
        variances = (var_in, var_ln, var_bn)[first:]
        mixed_mean = sum(mean_weights[k] * m for k, m in enumerate(means))
        mixed_var = sum(var_weights[k] * v for k, v in enumerate(variances))
        outputs = (x - mixed_mean) * ops.rsqrt(mixed_var + self.epsilon)
        return ops.cast(self._scale_and_offset(outputs), self.compute_dtype)


def _pooled(mean_in: Any, var_in: Any, axis: int) -> tuple[Any, Any]:
    """Mean and variance of groups of instances along ``axis``, by the law of total variance.

    ``mean_in`` and ``var_in`` are per-(sample, channel) statistics of equal
    counts; the pooled variance is the mean of the variances plus the
    variance of the means, both two-pass.
    """
    mu = mean(mean_in, [axis])
    return mu, mean(var_in, [axis]) + mean(ops.square(mean_in - mu), [axis])
