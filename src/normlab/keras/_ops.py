"""keras.ops helpers shared by normlab's Keras layers: stable moments, dtypes, shape checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


def compute_dtype(dtype: Any) -> str:
    """The dtype statistics are computed in: float64 for float64 input, float32 otherwise.

    As Keras' BatchNormalization, float16 and bfloat16 input is upcast so that
    the statistics neither overflow nor lose precision. Unlike
    ``keras.backend.result_type(dtype, "float32")``, which maps float64 to
    float32, float64 input keeps float64.
    """
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def moments(x: Any, axes: Sequence[int], weights: Any = None) -> tuple[Any, Any]:
    """Mean and biased variance of ``x`` over ``axes``, two-pass, with kept dims.

    Never E[x^2] - E[x]^2 (what ``keras.ops.moments`` computes): for float32
    input of 1e4 + N(0, 1) that formula's variance is off by more than 1.

    Args:
        x: tensor of any rank.
        axes: the axes to reduce; the others index the statistics.
        weights: optional tensor broadcastable to ``x`` (a Keras mask with
            the channel axis restored), 1 for the values that count and 0 for
            those that do not. A statistic with no value that counts is 0.

    Returns:
        (mean, variance), each of x's rank with size 1 on ``axes``.
    """
    axes = tuple(axes)
    if weights is None:
        mu = mean(x, axes)
        return mu, mean(ops.square(x - mu), axes)
    weights = ops.broadcast_to(ops.cast(weights, x.dtype), ops.shape(x))
    count = ops.sum(weights, axis=axes, keepdims=True)
    count = ops.where(count > 0, count, 1.0)
    mu = ops.sum(x * weights, axis=axes, keepdims=True) / count
    variance = ops.sum(ops.square(x - mu) * weights, axis=axes, keepdims=True) / count
    return mu, variance


def mean(x: Any, axes: Sequence[int]) -> Any:
    """Mean of ``x`` over ``axes``, with kept dims, in x's dtype.

    ``keras.ops.mean`` computes float64 input in float32 outside TensorFlow
    (Keras' promotion rules follow JAX's 32-bit default); a sum divided by
    the count keeps float64.
    """
    shape = ops.shape(x)
    count = math.prod(shape[a] for a in axes)
    return ops.sum(x, axis=tuple(axes), keepdims=True) / ops.cast(count, x.dtype)


def clip(x: Any, low: Any, high: Any) -> Any:
    """``x`` clipped to [low, high] (tensors of x's dtype), keeping float64 exact.

    ``keras.ops.clip`` and ``ops.minimum``/``ops.maximum`` convert Python
    bounds to float32 (and compute float64 in float32) outside TensorFlow.
    """
    return ops.where(x < low, low, ops.where(x > high, high, x))


def assign_moving_average(variable: keras.Variable, batch_value: Any, momentum: float) -> None:
    """``variable = momentum * variable + (1 - momentum) * batch_value`` (Keras' sense).

    ``batch_value`` holds the variable's values, in any shape of the same size.
    """
    batch_value = ops.reshape(batch_value, variable.shape)
    old = ops.cast(variable, batch_value.dtype)
    new = old * momentum + batch_value * (1.0 - momentum)
    variable.assign(ops.cast(new, variable.dtype))


def standardize_kernel(kernel: Any, epsilon: float) -> Any:
    """Weight standardization of a Keras kernel (Qiao et al. 2019, eq. 5).

    Each output unit's weights (the last axis: Dense (in, out), Conv2D
    (kh, kw, in / groups, out)) are standardized over their fan-in, the
    other axes, with the biased variance and ``epsilon`` inside the square
    root. Computed in at least float32; returns the kernel's shape and dtype.
    """
    dtype = kernel.dtype
    w = ops.cast(kernel, compute_dtype(dtype))
    axes = tuple(range(len(kernel.shape) - 1))
    mu, variance = moments(w, axes)
    return ops.cast((w - mu) * ops.rsqrt(variance + epsilon), dtype)


def channel_axis(axis: int, ndim: int, layer: str) -> int:
    """``axis`` as a non-negative axis of a rank-``ndim`` input, which must be rank 2 or more."""
    if ndim < 2:
        raise ValueError(
            f"{layer} expects input of rank 2 or more, (batch, ..., channels); got rank {ndim}. "
            "Add a batch axis for a single sample, e.g. x[None]."
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{layer} got axis={axis}, out of range for rank-{ndim} input: "
            f"use an axis in [{-ndim}, {ndim - 1}], e.g. -1 for channels last."
        )
    return axis % ndim


def check_batch_statistics(shape: Sequence[int | None], axes: Sequence[int], layer: str) -> None:
    """Refuse a training batch whose statistics would each be taken over a single value.

    Such a batch has variance 0, so the output would be the offset alone
    whatever the input (torch raises for the same case). Shapes not known
    when tracing (None) are not checked.
    """
    sizes = [shape[a] for a in axes]
    if None not in sizes and math.prod(sizes) == 1:
        raise ValueError(
            f"{layer} in training mode needs more than one value per statistic; got input of "
            f"shape {tuple(shape)}. Call it with training=False, use LayerNormalization or "
            "GroupNormalization, or a larger batch."
        )


def check_mask(
    mask_shape: Sequence[int | None],
    input_shape: Sequence[int | None],
    layer: str,
    *,
    training: bool,
) -> None:
    """Refuse a Keras mask that does not broadcast to the input's shape without its last axis.

    Keras' BatchNormalization reads a mask that way whatever its channel
    axis: a (batch, steps) mask for (batch, steps, features) input is
    broadcast over the features. As Keras, inference (``training=False``),
    which ignores the mask, checks only its rank. Sizes not known when
    tracing (None) pass.
    """
    leading = tuple(input_shape)[:-1]
    fits = len(mask_shape) == len(leading) and (
        not training
        or all(m in (1, s) or None in (m, s) for m, s in zip(mask_shape, leading, strict=True))
    )
    if not fits:
        raise ValueError(
            f"{layer}'s mask must be broadcastable to the input's shape without its last axis, "
            f"{leading} (one dimension less; Keras' convention, whatever the channel axis); got "
            f"mask shape {tuple(mask_shape)} for input shape {tuple(input_shape)}."
        )
