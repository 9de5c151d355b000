"""Batch normalization with per-channel or scalar statistics, as a Keras 3 layer."""

from __future__ import annotations

import math
from typing import Any

import keras

from normlab._checks import check_choice
from normlab.functional import STATS, Stats
from normlab.keras.base import MovingStatisticsNormalization


@keras.saving.register_keras_serializable(package="normlab")
class BatchNormalization(MovingStatisticsNormalization):
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
        super().__init__(
            axis,
            momentum,
            epsilon,
            center,
            scale,
            beta_initializer,
            gamma_initializer,
            moving_mean_initializer,
            moving_variance_initializer,
            beta_regularizer,
            gamma_regularizer,
            beta_constraint,
            gamma_constraint,
            **kwargs,
        )
        self.supports_masking = True
        self.stats = stats
        self.renorm = False
        self.renorm_clipping = renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.synchronized = False

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        axis, channels = self._channels(input_shape)
        self._add_affine_weights(channels)
        self._add_moving_weights((channels,) if self.stats == "channel" else (1,))
        self._finish_build(len(input_shape), axis, channels)
        if self.stats == "scalar":
            self._reduction_axes = list(range(len(input_shape)))

    def get_config(self) -> dict[str, Any]:
        config = {
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
