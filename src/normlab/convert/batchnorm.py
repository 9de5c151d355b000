"""Batch norm layers between Keras and torch, through a framework-neutral state."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from normlab._checks import check_choice
from normlab.convert.check import CHECK_BATCH, CHECK_SPATIAL, check_outputs
from normlab.convert.common import (
    ConversionError,
    describe_module,
    is_fixed,
    keras_dtype,
    keras_module,
    keras_name,
    set_affine,
    to_numpy,
    torch_dtype,
)
from normlab.functional import CONVENTIONS, Convention
from normlab.layers.batch_norm import (
    BatchNorm,
    SyncBatchNorm,
    TorchBatchNorm,
    TorchSyncBatchNorm,
)
from normlab.layers.norm_classes import TORCH_BATCH_NORM_RANKS, torch_batch_norm_for_rank

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BatchNormState:
    """What a batch norm layer holds, as numpy arrays; momentum in Keras' sense."""

    stats: str
    num_features: int
    momentum: float
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    var: np.ndarray
    dtype: torch.dtype

    def permuted(self, order: np.ndarray | None) -> BatchNormState:
        """The state with channel ``j`` taken from channel ``order[j]`` (statistics of shape
        (1,) stay)."""
        if order is None:
            return self

        def take(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None or array.shape[0] == 1 else array[order]

        return replace(
            self,
            gamma=take(self.gamma),
            beta=take(self.beta),
            mean=self.mean if self.stats == "scalar" else take(self.mean),
            var=self.var if self.stats == "scalar" else take(self.var),
        )


def _normlab_keras_batchnorm() -> type | None:
    """normlab.keras.BatchNormalization, or None when Keras is not importable."""
    try:
        from normlab.keras import BatchNormalization
    except ImportError:
        return None
    return BatchNormalization


def _complement(momentum: float) -> float:
    """1 - momentum, to 15 significant digits: 0.99 -> 0.01, not 0.010000000000000009."""
    return float(f"{1.0 - momentum:.15g}")


def keras_batchnorm_types() -> tuple[type, ...]:
    """Keras' BatchNormalization and normlab.keras' (when Keras imports), the exact types that
    convert."""
    normlab_layer = _normlab_keras_batchnorm()
    keras_layer = keras_module().layers.BatchNormalization
    return (keras_layer,) if normlab_layer is None else (keras_layer, normlab_layer)


def _check_built(layer: Any) -> None:
    if not layer.built or layer.moving_mean is None:
        raise ConversionError(
            f"Keras layer {keras_name(layer)} is not built, so it has no weights yet; call it "
            "on a batch or build it with layer.build(input_shape) first."
        )


def state_from_keras(layer: Any) -> BatchNormState:
    if type(layer) not in keras_batchnorm_types():
        raise ConversionError(
            f"expected keras.layers.BatchNormalization or normlab.keras.BatchNormalization; got "
            f"{keras_name(layer)}."
        )
    if getattr(layer, "renorm", False):
        raise ConversionError(
            f"{keras_name(layer)} uses batch renormalization (renorm=True), which has no exact "
            "torch counterpart here; convert a layer with renorm=False."
        )
    _check_built(layer)
    return BatchNormState(
        stats=getattr(layer, "stats", "channel"),
        num_features=int(next(iter(layer.input_spec.axes.values()))),
        momentum=float(layer.momentum),
        eps=float(layer.epsilon),
        gamma=to_numpy(layer.gamma) if layer.scale else None,
        beta=to_numpy(layer.beta) if layer.center else None,
        mean=to_numpy(layer.moving_mean),
        var=to_numpy(layer.moving_variance),
        dtype=torch_dtype(layer.moving_mean.dtype),
    )


def torch_batchnorm_types() -> tuple[type, ...]:
    return (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        BatchNorm,
        TorchBatchNorm,
        SyncBatchNorm,
        TorchSyncBatchNorm,
    )


def state_from_torch(module: nn.Module) -> BatchNormState:
    if type(module) not in torch_batchnorm_types():
        raise ConversionError(
            f"expected torch.nn.BatchNorm1d/2d/3d or normlab.BatchNorm; got "
            f"{describe_module(module)}."
        )
    if not module.track_running_stats or module.running_mean is None:
        raise ConversionError(
            f"{describe_module(module)} keeps no running statistics "
            "(track_running_stats=False), so it normalizes with batch statistics in eval mode; "
            "Keras' BatchNormalization always uses moving statistics at inference. Train it "
            "with track_running_stats=True, or recalibrate with normlab.inference.recalibrate."
        )
    if module.momentum is None:
        raise ConversionError(
            f"{describe_module(module)} has momentum=None (a cumulative average), which Keras "
            "cannot express; set module.momentum to a number (e.g. 0.1) before converting."
        )
    convention = getattr(module, "convention", "torch")
    weight, bias = (module.weight, module.bias) if module.affine else (None, None)
    return BatchNormState(
        stats=getattr(module, "stats", "channel"),
        num_features=module.num_features,
        momentum=float(module.momentum) if convention == "keras" else _complement(module.momentum),
        eps=float(module.eps),
        gamma=None if is_fixed(weight, 1.0) else to_numpy(weight),
        beta=None if is_fixed(bias, 0.0) else to_numpy(bias),
        mean=to_numpy(module.running_mean),
        var=to_numpy(module.running_var),
        dtype=module.running_mean.dtype,
    )


def torch_from_state(state: BatchNormState, convention: str, input_ndim: int) -> nn.Module:
    check_choice("convention", convention, CONVENTIONS)
    options = {
        "eps": state.eps,
        "affine": state.gamma is not None or state.beta is not None,
        "dtype": state.dtype,
    }
    if convention == "torch" and state.stats == "channel":
        module = torch_batch_norm_for_rank(input_ndim)(
            state.num_features, momentum=_complement(state.momentum), **options
        )
    else:
        momentum = state.momentum if convention == "keras" else _complement(state.momentum)
        module = BatchNorm(
            state.num_features,
            stats=state.stats,
            convention=convention,
            momentum=momentum,
            **options,
        )
    with torch.no_grad():
        module.running_mean.copy_(torch.from_numpy(state.mean))
        module.running_var.copy_(torch.from_numpy(state.var))
        if module.affine:
            set_affine(module, state.gamma, state.beta)
    return module


def keras_from_state(state: BatchNormState, input_ndim: int) -> Any:
    keras = keras_module()
    options = {
        "axis": -1,
        "momentum": state.momentum,
        "epsilon": state.eps,
        "center": state.beta is not None,
        "scale": state.gamma is not None,
        "dtype": keras_dtype(state.dtype),
    }
    if state.stats == "channel":
        layer = keras.layers.BatchNormalization(**options)
    else:
        normlab_layer = _normlab_keras_batchnorm()
        if normlab_layer is None:
            raise ConversionError(
                "batch norm with scalar statistics converts to normlab.keras.BatchNormalization"
                "(stats='scalar'), which could not be imported; check that Keras imports."
            )
        layer = normlab_layer(stats=state.stats, **options)
    layer.build((None, *([None] * (input_ndim - 2)), state.num_features))
    layer.moving_mean.assign(state.mean)
    layer.moving_variance.assign(state.var)
    if layer.scale:
        layer.gamma.assign(state.gamma)
    if layer.center:
        layer.beta.assign(state.beta)
    return layer


def batchnorm_keras_to_torch(
    layer: keras.layers.Layer,
    *,
    convention: Convention = "torch",
    input_ndim: int | None = None,
    check: bool = True,
) -> nn.Module:
    """A torch batch norm module computing what the Keras layer ``layer`` computes.

    Weights, moving statistics, momentum and epsilon are carried over (see the
    module docstring for what momentum, epsilon and the stored variance become).
    Eval outputs are identical whatever ``convention``; it decides only how
    future training steps update the running statistics.

    Shape:
        ``layer`` takes (N, *, C) (``axis=-1``) or (N, C, *) (``axis=1``); the
        module takes (N, C, *): move the channel axis to dim 1.

    Args:
        layer: a built ``keras.layers.BatchNormalization`` (renorm=False) or
            ``normlab.keras.BatchNormalization``, with ``axis`` its channel
            axis (the last, or 1).
        convention: ``"torch"`` (default): ``torch.nn.BatchNorm1d/2d/3d`` with
            momentum ``1 - layer.momentum`` and ``eps=layer.epsilon``, or
            ``normlab.BatchNorm(stats="scalar", convention="torch")`` for scalar
            statistics; its running variance is updated with the unbiased batch
            variance from then on. ``"keras"``: ``normlab.BatchNorm(
            convention="keras")``, which keeps Keras' momentum and biased
            variance, so training goes on exactly as in Keras.
        input_ndim: rank of the input, which picks BatchNorm1d (2 or 3), 2d (4)
            or 3d (5); None takes it from the layer's built input spec.
        check: run both on a random batch in inference mode and raise
            :class:`ConversionError` if they disagree.

    Returns:
        The module, in training mode as every new torch module. A Keras layer
        with ``center`` but not ``scale`` (or the reverse) gives an affine
        module whose missing parameter is fixed at 1 (or 0), with
        ``requires_grad=False``.

    Raises:
        ConversionError: not such a layer, not built, renorm, or an axis that
            is not the channel axis.
    """
    state = state_from_keras(layer)
    ndim = keras_batchnorm_ndim(layer, input_ndim)
    module = torch_from_state(state, convention, ndim)
    if check:
        shape = (CHECK_BATCH, state.num_features, *([CHECK_SPATIAL] * (ndim - 2)))
        check_outputs(layer, module, shape, state.dtype, channels_last=axis_is_last(layer, ndim))
    return module


def keras_batchnorm_ndim(layer: Any, input_ndim: int | None) -> int:
    spec_ndim = layer.input_spec.ndim if layer.input_spec is not None else None
    ndim = input_ndim if input_ndim is not None else spec_ndim
    if ndim is None:
        raise ConversionError(
            f"the input rank of {keras_name(layer)} is unknown; pass input_ndim (2 for (N, C), "
            "4 for images)."
        )
    if torch_batch_norm_for_rank(ndim) is None:
        raise ConversionError(f"batch norm input rank must be 2 to 5; got input_ndim={ndim}.")
    if spec_ndim is not None and spec_ndim != ndim:
        raise ConversionError(
            f"{keras_name(layer)} was built for rank-{spec_ndim} input; got input_ndim={ndim}."
        )
    if layer.axis not in (1, -1, ndim - 1):
        raise ConversionError(
            f"{keras_name(layer)} normalizes axis {layer.axis} of rank-{ndim} input; only the "
            "channel axis converts: the last (channels_last) or 1 (channels_first)."
        )
    return ndim


def axis_is_last(layer: Any, ndim: int) -> bool:
    return layer.axis in (-1, ndim - 1)


def batchnorm_torch_to_keras(
    module: nn.Module, *, input_ndim: int | None = None, check: bool = True
) -> keras.layers.Layer:
    """A built Keras layer (``axis=-1``, channels last) computing what ``module`` computes.

    Weights, running statistics, momentum (``1 - momentum`` for the torch
    convention) and eps are carried over; see the module docstring.

    Shape:
        ``module`` takes (N, C, *), or (N, *, C) with ``channel_dim=-1``
        (normlab.BatchNorm); the layer takes (N, *, C): move dim 1 last unless
        the module's channels are already last.

    Args:
        module: ``torch.nn.BatchNorm1d/2d/3d`` or ``normlab.BatchNorm``
            (either convention, either stats), with running statistics and a
            numeric momentum.
        input_ndim: rank of the input the layer is built for; None: 4 for
            BatchNorm2d, 5 for BatchNorm3d, 2 ((N, C) features) otherwise.
        check: run both on a random batch in inference mode and raise
            :class:`ConversionError` if they disagree.

    Returns:
        ``keras.layers.BatchNormalization`` for per-channel statistics,
        ``normlab.keras.BatchNormalization(stats="scalar")`` for scalar ones.
        A frozen (``requires_grad=False``) weight of ones or bias of zeros
        becomes ``scale=False`` or ``center=False``.

    Raises:
        ConversionError: not such a module, no running statistics, momentum=None, an
            input_ndim its class does not take (BatchNorm1d: 2 or 3).
    """
    state = state_from_torch(module)
    ranks = TORCH_BATCH_NORM_RANKS.get(type(module), (2, 3, 4, 5))
    ndim = input_ndim if input_ndim is not None else ranks[0]
    if ndim not in ranks:
        allowed = " or ".join(map(str, ranks)) if len(ranks) < 3 else f"{ranks[0]} to {ranks[-1]}"
        raise ConversionError(
            f"{describe_module(module)} takes rank-{allowed} input; got input_ndim={ndim}."
        )
    layer = keras_from_state(state, ndim)
    if check:
        spatial = [CHECK_SPATIAL] * (ndim - 2)
        if channels_last(module):
            shape = (CHECK_BATCH, *spatial, state.num_features)
        else:
            shape = (CHECK_BATCH, state.num_features, *spatial)
        check_outputs(layer, module, shape, state.dtype, channels_last=not channels_last(module))
    return layer


def channels_last(module: nn.Module) -> bool:
    """True for a torch batch norm that takes (N, *, C) (normlab's ``channel_dim=-1``)."""
    return getattr(module, "channel_dim", 1) == -1
