"""The base of normlab's Keras layers with moving statistics: Keras' arguments and weights."""

from __future__ import annotations

from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

from normlab.keras._ops import (
    assign_moving_average,
    channel_axis,
    check_batch_statistics,
    check_mask,
    compute_dtype,
    moments,
)


class MovingStatisticsNormalization(keras.layers.Layer):
    """Keras' thirteen ``BatchNormalization`` arguments, their checks, weights and config.

    The base of :class:`~normlab.keras.BatchNormalization`,
    :class:`~normlab.keras.BatchRenormalization` and
    :class:`~normlab.keras.SwitchableNormalization`. It owns ``axis``,
    ``momentum`` (Keras' sense, in [0, 1]), ``epsilon`` (> 0), ``center``,
    ``scale`` and the initializers, regularizers and constraints of ``gamma``,
    ``beta``, ``moving_mean`` and ``moving_variance``, in Keras' positional
    order; it creates those weights with Keras' names and serializes those
    arguments. A subclass builds with :meth:`_add_affine_weights` and
    :meth:`_add_moving_weights` (in that order, Keras' order of the weights),
    then :meth:`_finish_build`, and writes ``call``.

    Input shape: any rank >= 2, channels on ``axis`` (last by default).

    Output shape: same as the input.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive; got {epsilon}.")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None

    def _channels(self, input_shape: tuple[int | None, ...]) -> tuple[int, int]:
        """(channel axis as a non-negative int, number of channels) of ``input_shape``."""
        axis = channel_axis(self.axis, len(input_shape), type(self).__name__)
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs the size of the channel axis {self.axis} when it "
                f"is built; got input shape {tuple(input_shape)}. Give the model's Input a "
                "known channel size."
            )
        return axis, int(channels)

    def _add_affine_weights(self, channels: int) -> None:
        """``gamma`` (if ``scale``) and ``beta`` (if ``center``), each (channels,)."""
        if self.scale:
            self.gamma = self.add_weight(
                shape=(channels,),
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=(channels,),
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )

    def _add_moving_weights(self, shape: tuple[int, ...]) -> None:
        """The non-trainable ``moving_mean`` and ``moving_variance`` of ``shape``."""
        self.moving_mean = self.add_weight(
            shape=shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def _finish_build(self, ndim: int, axis: int, channels: int) -> None:
        """Fix the input's rank and channel count, the shape weights broadcast to and the axes
        batch statistics reduce (all but ``axis``)."""
        self.input_spec = keras.InputSpec(ndim=ndim, axes={self.axis: channels})
        self._channel_axis = axis
        self._broadcast_shape = [channels if a == axis else 1 for a in range(ndim)]
        self._reduction_axes = [a for a in range(ndim) if a != axis]

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        batch_statistics = bool(training and self.trainable)
        if mask is not None:
            check_mask(mask.shape, inputs.shape, type(self).__name__, training=batch_statistics)
        x = ops.cast(inputs, compute_dtype(inputs.dtype))
        if batch_statistics:
            check_batch_statistics(inputs.shape, self._reduction_axes, type(self).__name__)
            weights = None if mask is None else ops.expand_dims(mask, -1)
            mean, variance = moments(x, self._reduction_axes, weights)
            r, d = self._update_moving_statistics(mean, variance)
        else:
            mean = self._broadcast(self.moving_mean, x.dtype)
            variance = self._broadcast(self.moving_variance, x.dtype)
            r = d = None
        outputs = self._normalize(x, mean, variance, r, d)
        return ops.cast(outputs, self.compute_dtype)

    def _update_moving_statistics(self, mean: Any, variance: Any) -> tuple[Any, Any]:
        """Fold the batch's (mean, biased variance) into the moving ones, in Keras' sense.

        Returns the (r, d) correction of the normalized batch (None, None: none).
        """
        assign_moving_average(self.moving_mean, mean, self.momentum)
        assign_moving_average(self.moving_variance, variance, self.momentum)
        return None, None

    def _normalize(self, x: Any, mean: Any, variance: Any, r: Any, d: Any) -> Any:
        """``((x - mean) / sqrt(variance + epsilon) * r + d) * gamma + beta``; r, d may be None."""
        scale = ops.rsqrt(variance + self.epsilon)
        if r is not None:
            scale = scale * r
        offset = d
        if self.scale:
            gamma = self._broadcast(self.gamma, x.dtype)
            scale = scale * gamma
            offset = None if d is None else d * gamma
        if self.center:
            beta = self._broadcast(self.beta, x.dtype)
            offset = beta if offset is None else offset + beta
        outputs = (x - mean) * scale
        return outputs if offset is None else outputs + offset

    def _broadcast(self, value: Any, dtype: str) -> Any:
        """A (C,) or (1,) weight reshaped to broadcast against the input, cast to ``dtype``."""
        shape = self._broadcast_shape if value.shape[0] != 1 else [1] * len(self._broadcast_shape)
        return ops.reshape(ops.cast(value, dtype), shape)

    def _scale_and_offset(self, outputs: Any) -> Any:
        """``outputs * gamma + beta``, each term only where the layer has it."""
        if self.scale:
            outputs = outputs * self._broadcast(self.gamma, outputs.dtype)
        if self.center:
            outputs = outputs + self._broadcast(self.beta, outputs.dtype)
        return outputs

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        channel_axis(self.axis, len(input_shape), type(self).__name__)
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }
        return {**super().get_config(), **config}
