"""Batch normalization with per-channel or scalar statistics, as a Keras 3 layer."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

from normlab._checks import check_choice
from normlab.functional import STATS, Stats
from normlab.keras._ops import (
    assign_moving_average,
    channel_axis,
    check_batch_statistics,
    check_mask,
    compute_dtype,
    moments,
)


@keras.saving.register_keras_serializable(package="normlab")
class BatchNormalization(keras.layers.Layer):
    """Batch normalization with per-channel (``"channel"``) or scalar (``"scalar"``) statistics.

    ``stats="channel"`` (the default, the seed's "2s") is
    ``keras.layers.BatchNormalization``: one mean and variance per channel,
    over every axis but ``axis``. ``stats="scalar"`` (the seed's "1s") takes
    one mean and one variance over every element of the batch; ``gamma`` and
    ``beta`` stay per channel, and ``moving_mean`` and ``moving_variance`` have
    shape (1,), as the running statistics of
    ``normlab.BatchNorm(stats="scalar")``.

    Arguments, defaults, weights (``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``) and the meaning of ``trainable=False`` are Keras':
    in training the batch's statistics normalize the input and update the
    moving ones, ``moving = momentum * moving + (1 - momentum) * batch`` with
    the biased batch variance. Unlike Keras' layer:

    - the variance is computed in two passes (mean, then mean of squared
      deviations), never as E[x^2] - E[x]^2, so inputs with a large mean
      keep their precision in float32;
    - float64 input is normalized in float64 (Keras computes in float32);
      float16 and bfloat16 input is upcast to float32, as Keras does;
    - a training batch with one value per statistic raises a ValueError
      (its output would be ``beta`` whatever the input);
    - ``renorm=True`` is refused: Keras' batch renormalization keeps a second
      pair of moving statistics; ``BatchRenormalization`` is the paper's
      algorithm, and the error names its arguments for the given
      ``renorm_clipping``. ``renorm=False``, ``renorm_clipping`` and
      ``renorm_momentum`` are accepted and serialized, as Keras does;
    - ``synchronized=True`` is refused (Keras supports it on TensorFlow only;
      in PyTorch use ``normlab.SyncBatchNorm``); ``synchronized=False`` is
      accepted and serialized.

    Input shape: any rank >= 2, channels on ``axis`` (last by default).

    Output shape: same as the input.

    Call arguments:
        inputs: the input tensor.
        training: True normalizes with the batch's statistics and updates the
            moving ones; False (the default) normalizes with the moving
            statistics. With ``layer.trainable = False`` the layer always
            runs in inference mode and its state never changes.
        mask: optional boolean tensor broadcastable to the input's shape
            without its last axis (Keras' convention, whatever ``axis`` is:
            a (batch, steps) mask for (batch, steps, features) input), which
            is broadcast over the last axis; masked-out positions do not
            count in the batch statistics. Inference ignores it.

    Args:
        axis: the channel axis (e.g. 1 for ``data_format="channels_first"``).
        momentum: momentum of the moving statistics, in Keras' sense.
        epsilon: added to the variance before the square root.
        center: learn the offset ``beta``.
        scale: learn the scale ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer, beta_regularizer, gamma_regularizer,
        beta_constraint, gamma_constraint: as ``keras.layers.BatchNormalization``.
        stats: ``"channel"`` or ``"scalar"``.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).
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
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        *,
        stats: Stats = "channel",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("stats", stats, STATS)
        if synchronized:
            raise ValueError(
                f"{type(self).__name__} does not synchronize batch statistics across devices "
                "(synchronized=True); each replica normalizes with its own batch. Keras' own "
                "keras.layers.BatchNormalization(synchronized=True) does it on the TensorFlow "
                "backend only; in PyTorch use normlab.SyncBatchNorm (or "
                "normlab.convert_sync_batchnorm(model)) under torch.distributed."
            )
        if renorm:
            raise ValueError(_renorm_refusal(momentum, renorm_clipping, renorm_momentum))
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive; got {epsilon}.")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.stats = stats
        self.renorm = False
        self.renorm_clipping = renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.synchronized = False
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        ndim = len(input_shape)
        axis = channel_axis(self.axis, ndim, type(self).__name__)
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs the size of the channel axis {self.axis} when it "
                f"is built; got input shape {tuple(input_shape)}. Give the model's Input a "
                "known channel size."
            )
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        stat_shape = shape if self.stats == "channel" else (1,)
        self.moving_mean = self.add_weight(
            shape=stat_shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=stat_shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.InputSpec(ndim=ndim, axes={self.axis: channels})
        self._channel_axis = axis
        self._reduction_axes = [a for a in range(ndim) if self.stats == "scalar" or a != axis]
        self._broadcast_shape = [channels if a == axis else 1 for a in range(ndim)]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        channel_axis(self.axis, len(input_shape), type(self).__name__)
        return input_shape

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if mask is not None:
            check_mask(mask.shape, inputs.shape, type(self).__name__)
        x = ops.cast(inputs, compute_dtype(inputs.dtype))
        if training and self.trainable:
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
        """Fold the batch's (mean, variance) into the moving ones.

        Returns the (r, d) correction of the normalized batch (None, None: none).
        """
        assign_moving_average(self.moving_mean, mean, self.momentum)
        assign_moving_average(self.moving_variance, variance, self.momentum)
        return None, None

    def _broadcast(self, value: Any, dtype: str) -> Any:
        """A (C,) or (1,) weight reshaped to broadcast against the input, cast to ``dtype``."""
        shape = self._broadcast_shape if value.shape[0] != 1 else [1] * len(self._broadcast_shape)
        return ops.reshape(ops.cast(value, dtype), shape)

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
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
            "synchronized": self.synchronized,
            "stats": self.stats,
        }
        return {**super().get_config(), **config}


def _renorm_refusal(
    momentum: float, clipping: dict[str, float] | None, renorm_momentum: float
) -> str:
    """The error for Keras' ``renorm=True``, naming the BatchRenormalization it maps to."""
    clipping = clipping or {}
    r_max = float(clipping.get("rmax", math.inf))
    d_max = float(clipping.get("dmax", math.inf))
    notes = []
    rmin = clipping.get("rmin")
    if rmin is not None and not math.isclose(rmin * r_max, 1.0):
        notes.append(f"its r is clipped to [1 / r_max, r_max], not to your rmin={rmin}")
    if renorm_momentum != momentum:
        notes.append(
            f"it corrects toward its moving statistics (momentum={momentum}), with no separate "
            f"renorm_momentum={renorm_momentum}"
        )
    notes.append("see its docstring for what else differs")
    return (
        "normlab.keras.BatchNormalization does not implement Keras' batch renormalization "
        "(renorm=True, with a second pair of moving statistics, renorm_mean and renorm_stddev). "
        f"Use normlab.keras.BatchRenormalization(r_max={r_max}, d_max={d_max}, "
        f"momentum={momentum}), the paper's algorithm: Keras' renorm_clipping rmax and dmax are "
        f"its r_max and d_max; {'; '.join(notes)}."
    )
