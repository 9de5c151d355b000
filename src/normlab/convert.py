"""Convert batch norm layers and Sequential models between Keras 3 and PyTorch.

Layers:

- :func:`batchnorm_keras_to_torch`: ``keras.layers.BatchNormalization`` or
  ``normlab.keras.BatchNormalization`` -> ``torch.nn.BatchNorm1d/2d/3d`` or
  :class:`normlab.BatchNorm`.
- :func:`batchnorm_torch_to_keras`: ``torch.nn.BatchNorm1d/2d/3d`` or
  :class:`normlab.BatchNorm` -> a built Keras layer.

Models:

- :func:`sequential_keras_to_torch`: a built ``keras.Sequential`` -> ``torch.nn.Sequential``.
- :func:`sequential_torch_to_keras`: a ``torch.nn.Sequential`` -> a built ``keras.Sequential``.

:func:`max_abs_difference` runs a Keras and a torch model in inference mode on
the same batch and returns the largest difference of their outputs; every
conversion runs it on a random batch (``check=True``) and raises
:class:`ConversionError` if the outputs differ.

Layout. Torch modules take channels first, (N, C, *); the Keras layers and
models made here and accepted here take channels last, (N, *, C)
(``data_format="channels_last"``, BatchNormalization on ``axis=-1``). So a
torch model converted from Keras takes (N, C, H, W) images where the Keras
model took (N, H, W, C); both take (N, F) features. ``Flatten`` orders the
features differently (H, W, C in Keras, C, H, W in torch): the conversions
permute the input rows of the Dense/Linear layer (and the parameters of any
normalization) that read the flattened features, so the models compute the
same function without a transpose layer.

Batch norm conventions (see ``normlab.BatchNorm``):

========================  ==============================  ==============================
batch norm                Keras (``convention="keras"``)  torch (``convention="torch"``)
========================  ==============================  ==============================
moving-statistics update  ``m * old + (1 - m) * batch``   ``(1 - m) * old + m * batch``
default momentum          0.99                            0.1 (= 1 - 0.99)
variance stored           biased (batch's, over n)        unbiased (over n - 1)
default eps               1e-3                            1e-5
========================  ==============================  ==============================

The conversions translate momentum (``m_torch = 1 - m_keras``) and keep
epsilon as it is: a Keras layer becomes a torch layer with eps=1e-3, never
torch's default 1e-5, so that both normalize ``x`` by ``sqrt(var + eps)`` with
the same numbers. The stored variance is copied unchanged. Keras' moving
variance is a moving average of biased batch variances and torch's of unbiased
ones, ``var * n / (n - 1)``; undoing that factor would need each past batch's
n, which the layer does not record, so no factor is applied. Eval outputs are
exactly preserved either way, since both frameworks normalize with the stored
variance; only future training updates differ: with ``convention="torch"``
each training step from then on blends in the unbiased batch variance, with
``convention="keras"`` (normlab.BatchNorm in Keras' convention) the biased one,
exactly as Keras would.

Not carried across: trainability (``trainable``/``requires_grad``),
regularizers, constraints, initializers and the optimizer state. A Keras layer
with ``trainable=False`` runs in inference mode even in training; for the
same in torch, apply ``normlab.inference.freeze`` to the converted model.

Keras is imported when a conversion runs; it needs Keras 3 and a backend
(e.g. ``KERAS_BACKEND=torch``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from normlab._checks import check_choice
from normlab.layers.batch_norm import BatchNorm, SyncBatchNorm
from normlab.layers.torch_norms import LayerNorm

if TYPE_CHECKING:
    import keras

Convention = Literal["torch", "keras"]
CONVENTIONS: tuple[str, ...] = ("torch", "keras")

#: Largest |keras - torch| accepted by the conversion check, relative to max(1, max |output|).
CHECK_TOLERANCE = 1e-4
CHECK_BATCH = 4
_CHECK_SPATIAL = 5  # side of the random check input of a single layer with spatial dims

_TORCH_BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_TORCH_BATCH_NORM_NDIM = {nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}

SUPPORTED_KERAS_LAYERS = (
    "InputLayer, Dense, Conv2D, BatchNormalization (Keras' or normlab.keras'), "
    "LayerNormalization, Flatten, MaxPooling2D, ZeroPadding2D, Dropout, Activation, ReLU, "
    "LeakyReLU, ELU, Softmax"
)
SUPPORTED_TORCH_MODULES = (
    "Linear, Conv2d, BatchNorm1d/2d/3d, normlab.BatchNorm, LayerNorm, Flatten, MaxPool2d, "
    "ZeroPad2d, Dropout, Identity, nested Sequential, and the activations ReLU, ReLU6, Tanh, "
    "Sigmoid, ELU, SELU, SiLU, GELU, Softplus, LeakyReLU, Softmax"
)


class ConversionError(ValueError):
    """A layer or model cannot be converted, or the converted one computes something else."""


# --------------------------------------------------------------------------------------------
# batch norm state, framework-neutral


@dataclass(frozen=True)
class _BatchNormState:
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

    def permuted(self, order: np.ndarray | None) -> _BatchNormState:
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


def _keras() -> Any:
    try:
        import keras
    except ImportError as error:  # no Keras, or a backend that is not installed
        raise ImportError(
            f"normlab.convert needs Keras 3 with a working backend ({error}). Install it with "
            "`pip install keras` and choose a backend, e.g. KERAS_BACKEND=torch."
        ) from error
    return keras


def _normlab_keras_batchnorm() -> type | None:
    """normlab.keras.BatchNormalization, or None when Keras is not importable."""
    try:
        from normlab.keras import BatchNormalization
    except ImportError:
        return None
    return BatchNormalization


def _numpy(value: Any) -> np.ndarray:
    """A Keras variable, a backend tensor or a torch tensor as a numpy array (a copy;
    float16/bfloat16 as float32)."""
    keras = _keras()
    if isinstance(value, keras.Variable):
        value = value.value
    if not isinstance(value, torch.Tensor):
        return np.array(keras.ops.convert_to_numpy(value))
    # On the torch backend: keras.ops.convert_to_numpy calls np.array(tensor), which warns
    # under numpy 2 (torch's __array__ takes no copy argument).
    value = value.detach().cpu()
    if value.dtype not in (torch.float32, torch.float64):
        value = value.float()
    return value.numpy().copy()


def _complement(momentum: float) -> float:
    """1 - momentum, to 15 significant digits: 0.99 -> 0.01, not 0.010000000000000009."""
    return float(f"{1.0 - momentum:.15g}")


def _torch_dtype(keras_dtype: str) -> torch.dtype:
    dtype = getattr(torch, str(keras_dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConversionError(f"no torch floating-point dtype for Keras dtype {keras_dtype!r}.")
    return dtype


def _keras_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _keras_name(layer: Any) -> str:
    """ "'conv1d' (keras.layers.Conv1D)": the layer's name and public class."""
    kind = type(layer)
    public = kind.__module__
    for package, shown in (("keras.", "keras.layers"), ("normlab.keras.", "normlab.keras")):
        if public.startswith(package):
            public = shown
    return f"{layer.name!r} ({public}.{kind.__qualname__})"


def _is_keras_batchnorm(layer: Any) -> bool:
    keras = _keras()
    return type(layer) is keras.layers.BatchNormalization or (
        type(layer) is _normlab_keras_batchnorm()
    )


def _check_built(layer: Any) -> None:
    if not layer.built or layer.moving_mean is None:
        raise ConversionError(
            f"Keras layer {_keras_name(layer)} is not built, so it has no weights yet; call it "
            "on a batch or build it with layer.build(input_shape) first."
        )


def _state_from_keras(layer: Any) -> _BatchNormState:
    if not _is_keras_batchnorm(layer):
        raise ConversionError(
            f"expected keras.layers.BatchNormalization or normlab.keras.BatchNormalization; got "
            f"{_keras_name(layer)}."
        )
    if getattr(layer, "renorm", False):
        raise ConversionError(
            f"{_keras_name(layer)} uses batch renormalization (renorm=True), which has no exact "
            "torch counterpart here; convert a layer with renorm=False."
        )
    _check_built(layer)
    return _BatchNormState(
        stats=getattr(layer, "stats", "channel"),
        num_features=int(next(iter(layer.input_spec.axes.values()))),
        momentum=float(layer.momentum),
        eps=float(layer.epsilon),
        gamma=_numpy(layer.gamma) if layer.scale else None,
        beta=_numpy(layer.beta) if layer.center else None,
        mean=_numpy(layer.moving_mean),
        var=_numpy(layer.moving_variance),
        dtype=_torch_dtype(layer.moving_mean.dtype),
    )


def _torch_batchnorm_types() -> tuple[type, ...]:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNorm, SyncBatchNorm)


def _describe_module(module: nn.Module) -> str:
    kind = type(module)
    prefix = "torch.nn" if kind.__module__.startswith("torch.nn") else kind.__module__
    return f"{prefix}.{kind.__qualname__}"


def _state_from_torch(module: nn.Module) -> _BatchNormState:
    if type(module) not in _torch_batchnorm_types():
        raise ConversionError(
            f"expected torch.nn.BatchNorm1d/2d/3d or normlab.BatchNorm; got "
            f"{_describe_module(module)}."
        )
    if not module.track_running_stats or module.running_mean is None:
        raise ConversionError(
            f"{_describe_module(module)} keeps no running statistics "
            "(track_running_stats=False), so it normalizes with batch statistics in eval mode; "
            "Keras' BatchNormalization always uses moving statistics at inference. Train it "
            "with track_running_stats=True, or recalibrate with normlab.inference.recalibrate."
        )
    if module.momentum is None:
        raise ConversionError(
            f"{_describe_module(module)} has momentum=None (a cumulative average), which Keras "
            "cannot express; set module.momentum to a number (e.g. 0.1) before converting."
        )
    convention = getattr(module, "convention", "torch")
    weight, bias = (module.weight, module.bias) if module.affine else (None, None)
    return _BatchNormState(
        stats=getattr(module, "stats", "channel"),
        num_features=module.num_features,
        momentum=float(module.momentum) if convention == "keras" else _complement(module.momentum),
        eps=float(module.eps),
        gamma=None if _is_fixed(weight, 1.0) else _numpy(weight),
        beta=None if _is_fixed(bias, 0.0) else _numpy(bias),
        mean=_numpy(module.running_mean),
        var=_numpy(module.running_var),
        dtype=module.running_mean.dtype,
    )


def _is_fixed(parameter: torch.Tensor | None, identity: float) -> bool:
    """True for a missing parameter, or a frozen one equal to ``identity`` (what a Keras layer
    without ``scale`` or ``center`` converts to)."""
    return parameter is None or (
        not parameter.requires_grad and bool((parameter == identity).all())
    )


def _torch_from_state(state: _BatchNormState, convention: str, input_ndim: int) -> nn.Module:
    check_choice("convention", convention, CONVENTIONS)
    options = {
        "eps": state.eps,
        "affine": state.gamma is not None or state.beta is not None,
        "dtype": state.dtype,
    }
    if convention == "torch" and state.stats == "channel":
        module = _TORCH_BATCH_NORMS[input_ndim](
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
            _set_affine(module, state.gamma, state.beta)
    return module


def _set_affine(module: nn.Module, gamma: np.ndarray | None, beta: np.ndarray | None) -> None:
    """Copy gamma/beta into weight/bias; a missing one stays 1 or 0 and is frozen, since torch
    has no layer with a scale and no offset (or the other way round)."""
    with torch.no_grad():
        for parameter, value in ((module.weight, gamma), (module.bias, beta)):
            if parameter is None:  # LayerNorm(bias=False)
                continue
            if value is None:
                parameter.requires_grad_(False)
            else:
                parameter.copy_(torch.from_numpy(value))


def _keras_from_state(state: _BatchNormState, input_ndim: int) -> Any:
    keras = _keras()
    options = {
        "axis": -1,
        "momentum": state.momentum,
        "epsilon": state.eps,
        "center": state.beta is not None,
        "scale": state.gamma is not None,
        "dtype": _keras_dtype(state.dtype),
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


# --------------------------------------------------------------------------------------------
# public: layers


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
    state = _state_from_keras(layer)
    ndim = _keras_batchnorm_ndim(layer, input_ndim)
    module = _torch_from_state(state, convention, ndim)
    if check:
        shape = (CHECK_BATCH, state.num_features, *([_CHECK_SPATIAL] * (ndim - 2)))
        _check(layer, module, shape, state.dtype, channels_last=_axis_is_last(layer, ndim))
    return module


def _keras_batchnorm_ndim(layer: Any, input_ndim: int | None) -> int:
    spec_ndim = layer.input_spec.ndim if layer.input_spec is not None else None
    ndim = input_ndim if input_ndim is not None else spec_ndim
    if ndim is None:
        raise ConversionError(
            f"the input rank of {_keras_name(layer)} is unknown; pass input_ndim (2 for (N, C), "
            "4 for images)."
        )
    if ndim not in _TORCH_BATCH_NORMS:
        raise ConversionError(f"batch norm input rank must be 2 to 5; got input_ndim={ndim}.")
    if spec_ndim is not None and spec_ndim != ndim:
        raise ConversionError(
            f"{_keras_name(layer)} was built for rank-{spec_ndim} input; got input_ndim={ndim}."
        )
    if layer.axis not in (1, -1, ndim - 1):
        raise ConversionError(
            f"{_keras_name(layer)} normalizes axis {layer.axis} of rank-{ndim} input; only the "
            "channel axis converts: the last (channels_last) or 1 (channels_first)."
        )
    return ndim


def _axis_is_last(layer: Any, ndim: int) -> bool:
    return layer.axis in (-1, ndim - 1)


def batchnorm_torch_to_keras(
    module: nn.Module, *, input_ndim: int | None = None, check: bool = True
) -> keras.layers.Layer:
    """A built Keras layer (``axis=-1``, channels last) computing what ``module`` computes.

    Weights, running statistics, momentum (``1 - momentum`` for the torch
    convention) and eps are carried over; see the module docstring.

    Shape:
        ``module`` takes (N, C, *); the layer takes (N, *, C): move dim 1 last.

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
        ConversionError: not such a module, no running statistics, momentum=None.
    """
    state = _state_from_torch(module)
    ndim = input_ndim if input_ndim is not None else _TORCH_BATCH_NORM_NDIM.get(type(module), 2)
    expected = _TORCH_BATCH_NORM_NDIM.get(type(module))
    if ndim not in _TORCH_BATCH_NORMS or (expected is not None and ndim != expected):
        allowed = expected if expected is not None else "2 to 5"
        raise ConversionError(
            f"{_describe_module(module)} takes rank-{allowed} input; got input_ndim={ndim}."
        )
    layer = _keras_from_state(state, ndim)
    if check:
        shape = (CHECK_BATCH, state.num_features, *([_CHECK_SPATIAL] * (ndim - 2)))
        _check(layer, module, shape, state.dtype, channels_last=True)
    return layer


# --------------------------------------------------------------------------------------------
# public: the check


@torch.no_grad()
def max_abs_difference(
    keras_model: Any, torch_model: nn.Module, inputs: torch.Tensor, *, channels_last: bool = True
) -> float:
    """max |keras output - torch output| of both models in inference mode on ``inputs``.

    The torch model runs in eval mode (every module's mode is restored
    afterwards), the Keras one with ``training=False``.

    Args:
        keras_model: a Keras model or layer.
        torch_model: a torch module.
        inputs: (N, C, *) or (N, F) batch in torch's layout; the Keras model
            gets it with the channels moved last unless ``channels_last=False``
            (a Keras model on channels-first data).
        channels_last: the Keras model's layout.

    Returns:
        The largest absolute difference, computed in float64.
    """
    with _eval_mode(torch_model):
        expected = torch_model(inputs).double().cpu().numpy()
    keras_inputs = inputs.detach().cpu().numpy()
    if channels_last and keras_inputs.ndim > 2:
        keras_inputs = np.moveaxis(keras_inputs, 1, -1)
    actual = _numpy(keras_model(keras_inputs, training=False)).astype(np.float64)
    if channels_last and actual.ndim > 2:
        actual = np.moveaxis(actual, -1, 1)
    if actual.shape != expected.shape:
        raise ConversionError(
            f"the Keras model's output has shape {actual.shape} (channels moved to dim 1) and the "
            f"torch model's {expected.shape}; they are not the same model."
        )
    return float(np.abs(actual - expected).max(initial=0.0))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode; each submodule's own mode is restored on exit."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def _check(
    keras_model: Any,
    torch_model: nn.Module,
    shape: Sequence[int],
    dtype: torch.dtype,
    *,
    channels_last: bool,
) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype)
    difference = max_abs_difference(keras_model, torch_model, inputs, channels_last=channels_last)
    with torch.no_grad(), _eval_mode(torch_model):
        scale = max(1.0, float(torch_model(inputs).abs().max()))
    if not difference <= CHECK_TOLERANCE * scale:  # also catches NaN
        raise ConversionError(
            f"the converted model's eval outputs differ from the original's by up to "
            f"{difference:.3g} on a random batch of shape {tuple(shape)} (allowed "
            f"{CHECK_TOLERANCE * scale:.3g}); please report this with the model's summary."
        )


# --------------------------------------------------------------------------------------------
# activations


def _keras_activation_to_torch(function: Any, where: str) -> nn.Module | None:
    keras = _keras()
    activations = keras.activations
    table: dict[Any, Callable[[], nn.Module | None]] = {
        activations.linear: lambda: None,
        activations.relu: nn.ReLU,
        activations.relu6: nn.ReLU6,
        activations.tanh: nn.Tanh,
        activations.sigmoid: nn.Sigmoid,
        activations.elu: nn.ELU,
        activations.selu: nn.SELU,
        activations.silu: nn.SiLU,
        activations.gelu: nn.GELU,  # Keras' default is the exact erf form, as torch's
        activations.softplus: nn.Softplus,
        activations.softmax: lambda: nn.Softmax(dim=1),  # Keras' last axis = torch's channels
        activations.leaky_relu: lambda: nn.LeakyReLU(0.2),  # Keras' default negative slope
    }
    if function not in table:
        name = getattr(function, "__name__", repr(function))
        raise ConversionError(
            f"activation {name!r} of {where} has no torch counterpart here; supported: "
            + ", ".join(sorted(f.__name__ for f in table))
            + "."
        )
    return table[function]()


def _keras_activation_layer_to_torch(layer: Any) -> nn.Module | None:
    keras = _keras()
    kind = type(layer)
    if kind is keras.layers.Activation:
        return _keras_activation_to_torch(layer.activation, _keras_name(layer))
    if kind is keras.layers.ReLU:
        slope, top, threshold = layer.negative_slope, layer.max_value, layer.threshold
        if threshold == 0 and slope == 0 and top is None:
            return nn.ReLU()
        if threshold == 0 and slope == 0 and top == 6:
            return nn.ReLU6()
        if threshold == 0 and top is None:
            return nn.LeakyReLU(float(slope))
        raise ConversionError(
            f"{_keras_name(layer)} with max_value={top}, negative_slope={slope}, "
            f"threshold={threshold} has no torch counterpart here; supported: ReLU, ReLU(6) "
            "and ReLU(negative_slope=a)."
        )
    if kind is keras.layers.LeakyReLU:
        return nn.LeakyReLU(float(layer.negative_slope))
    if kind is keras.layers.ELU:
        return nn.ELU(float(layer.alpha))
    if kind is keras.layers.Softmax:
        if layer.axis not in (-1, [-1]):
            raise ConversionError(
                f"{_keras_name(layer)} takes the softmax over axis {layer.axis}; only the last "
                "axis (the channels) converts."
            )
        return nn.Softmax(dim=1)
    return None


def _torch_activation_to_keras(module: nn.Module, flat: bool) -> Any:
    """The Keras layer for a torch activation module, or None when ``module`` is not one."""
    keras = _keras()
    layers = keras.layers
    kind = type(module)
    plain = {
        nn.ReLU: "relu",
        nn.ReLU6: "relu6",
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        nn.SELU: "selu",
        nn.SiLU: "silu",
    }
    if kind in plain:
        return layers.Activation(plain[kind])
    if kind is nn.ELU:
        return layers.ELU(alpha=float(module.alpha))
    if kind is nn.LeakyReLU:
        return layers.LeakyReLU(negative_slope=float(module.negative_slope))
    if kind is nn.GELU and module.approximate == "none":
        return layers.Activation("gelu")
    if kind is nn.Softplus and module.beta == 1 and module.threshold == 20:
        return layers.Activation("softplus")
    if kind is nn.Softmax and (module.dim == 1 or (flat and module.dim == -1)):
        return layers.Softmax(axis=-1)
    if kind in (nn.GELU, nn.Softplus, nn.Softmax):
        raise ConversionError(
            f"{_describe_module(module)}({module.extra_repr()}) has no Keras counterpart here; "
            "supported: GELU(approximate='none'), Softplus(beta=1, threshold=20), Softmax over "
            "the channels (dim=1)."
        )
    return None


# --------------------------------------------------------------------------------------------
# padding


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) zeros Keras' padding="same" adds to a side of ``size``."""
    span = dilation * (kernel - 1) + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------
# public: models


def _flatten_order(height: int, width: int, channels: int) -> np.ndarray | None:
    """``order[j]``: the Keras (H, W, C) flat index of torch's (C, H, W) flat index j; None
    when they are the same (one channel, or 1x1 images)."""
    order = np.arange(height * width * channels).reshape(height, width, channels)
    order = order.transpose(2, 0, 1).reshape(-1)
    return None if (order == np.arange(order.size)).all() else order


def sequential_keras_to_torch(
    model: keras.Sequential, *, convention: Convention = "torch", check: bool = True
) -> nn.Sequential:
    """A ``torch.nn.Sequential`` computing what the built Keras Sequential ``model`` computes.

    Dense -> Linear (kernel (in, out) -> weight (out, in)); Conv2D -> Conv2d
    (kernel (kh, kw, in, out) -> weight (out, in, kh, kw); "same" padding
    becomes symmetric padding, or a ZeroPad2d where Keras pads one more on the
    bottom/right); a Dense/Conv2D ``activation`` becomes its own module;
    BatchNormalization as :func:`batchnorm_keras_to_torch` with ``convention``;
    LayerNormalization -> LayerNorm (normlab's over the channels for images);
    Flatten, MaxPooling2D, ZeroPadding2D, Dropout and the activation layers to
    their torch modules. See the module docstring for the Flatten permutation.

    Shape:
        ``model`` takes (N, H, W, C) or (N, F); the returned module takes
        (N, C, H, W) or (N, F). Outputs: (N, F) for both, or (N, C, H, W) where
        Keras gives (N, H, W, C).

    Args:
        model: a built ``keras.Sequential`` in ``channels_last`` layout, of the
            layers listed above (exact types: subclasses are refused).
        convention: for the batch norm layers, see :func:`batchnorm_keras_to_torch`.
        check: run both on a random batch in inference mode and raise
            :class:`ConversionError` if they disagree.

    Returns:
        The torch model in training mode, in the dtype of each Keras layer's weights.

    Raises:
        ConversionError: an unsupported layer or setting (the message names the
            layer and what is supported), or a model that is not built.
    """
    keras = _keras()
    if not isinstance(model, keras.Sequential):
        raise ConversionError(
            f"expected a keras.Sequential; got {type(model).__name__}. Functional and subclassed "
            "models are not supported."
        )
    if not model.built or not model.layers:
        raise ConversionError(
            "the Keras model is not built (or has no layers); give it a keras.Input or call "
            "model.build((None, *input_shape)) first."
        )
    shape = tuple(model.input_shape[1:])
    if len(shape) not in (1, 3) or any(size is None for size in shape):
        raise ConversionError(
            f"the Keras model takes input of shape {model.input_shape}; supported: (None, F) "
            "features or (None, H, W, C) images of known size."
        )
    converter = _KerasToTorch(convention)
    modules: list[nn.Module] = []
    for layer in model.layers:
        modules += converter.convert(layer, shape)
        shape = tuple(layer.compute_output_shape((None, *shape))[1:])
    _check_flatten_read(converter.order)
    torch_model = nn.Sequential(*modules)
    if check:
        torch_shape = _shape_to_torch(tuple(model.input_shape[1:]))
        _check(
            model,
            torch_model,
            (CHECK_BATCH, *torch_shape),
            _first_dtype(torch_model),
            channels_last=True,
        )
    return torch_model


def _check_flatten_read(order: np.ndarray | None) -> None:
    if order is not None:
        raise ConversionError(
            "the model's output is flattened image features that no Dense/Linear reads; Keras "
            "orders them (H, W, C) and torch (C, H, W), so the outputs would differ by a "
            "permutation. End the model with a Dense/Linear layer, or without the Flatten."
        )


def _shape_to_torch(shape: Sequence[int]) -> tuple[int, ...]:
    """A per-sample Keras shape (H, W, C) -> torch's (C, H, W); (F,) stays."""
    shape = tuple(shape)
    return shape if len(shape) < 2 else (shape[-1], *shape[:-1])


def _shape_to_keras(shape: Sequence[int]) -> tuple[int, ...]:
    """A per-sample torch shape (C, H, W) -> Keras' (H, W, C); (F,) stays."""
    shape = tuple(shape)
    return shape if len(shape) < 2 else (*shape[1:], shape[0])


def _first_dtype(module: nn.Module) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


class _KerasToTorch:
    """Converts Keras layers one by one, keeping the Flatten order pending for the next
    Dense and the normalizations in between."""

    def __init__(self, convention: str) -> None:
        check_choice("convention", convention, CONVENTIONS)
        self.convention = convention
        self.order: np.ndarray | None = None

    def convert(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        keras = _keras()
        kind = type(layer)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ConversionError(
                f"{_keras_name(layer)} uses data_format={layer.data_format!r}; only "
                "channels_last models convert."
            )
        activation = _keras_activation_layer_to_torch(layer)
        if activation is not None or kind in (keras.layers.Activation, keras.layers.InputLayer):
            return [] if activation is None else [activation]
        if kind is keras.layers.Dense:
            return self._dense(layer, shape)
        if kind is keras.layers.Conv2D:
            return self._conv(layer, shape)
        if _is_keras_batchnorm(layer):
            state = _state_from_keras(layer).permuted(self.order)
            ndim = _keras_batchnorm_ndim(layer, len(shape) + 1)
            if not _axis_is_last(layer, ndim):
                raise ConversionError(
                    f"{_keras_name(layer)} normalizes axis {layer.axis} of a channels_last "
                    "model; only the channel axis (-1) converts."
                )
            return [_torch_from_state(state, self.convention, ndim)]
        if kind is keras.layers.LayerNormalization:
            return [self._layer_norm(layer, shape)]
        if kind is keras.layers.Flatten:
            if len(shape) == 3:
                self.order = _flatten_order(*shape)
            return [nn.Flatten()]
        if kind is keras.layers.Dropout:
            return [nn.Dropout(float(layer.rate))]
        if kind is keras.layers.MaxPooling2D:
            return [self._max_pool(layer, shape)]
        if kind is keras.layers.ZeroPadding2D:
            (top, bottom), (left, right) = layer.padding
            return [nn.ZeroPad2d((left, right, top, bottom))]
        raise ConversionError(
            f"cannot convert Keras layer {_keras_name(layer)}; supported layers (exact types): "
            f"{SUPPORTED_KERAS_LAYERS}."
        )

    def _dense(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        if len(shape) != 1:
            raise ConversionError(
                f"{_keras_name(layer)} gets input of shape (None, {', '.join(map(str, shape))}); "
                "Dense converts only on flat (None, F) input: put a Flatten before it."
            )
        kernel = _numpy(layer.kernel)
        if self.order is not None:
            kernel = kernel[self.order]
            self.order = None
        dtype = _torch_dtype(layer.kernel.dtype)
        linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=layer.use_bias, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            if layer.use_bias:
                linear.bias.copy_(torch.from_numpy(_numpy(layer.bias)))
        return [linear, *self._activation(layer)]

    def _conv(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        kernel = _numpy(layer.kernel)  # (kh, kw, in / groups, out)
        dtype = _torch_dtype(layer.kernel.dtype)
        modules: list[nn.Module] = []
        padding: tuple[int, int] = (0, 0)
        if layer.padding == "same":
            pads = [
                _same_padding(size, k, s, d)
                for size, k, s, d in zip(
                    shape[:2], layer.kernel_size, layer.strides, layer.dilation_rate, strict=True
                )
            ]
            if all(before == after for before, after in pads):
                padding = (pads[0][0], pads[1][0])
            else:
                (top, bottom), (left, right) = pads
                modules.append(nn.ZeroPad2d((left, right, top, bottom)))
        elif layer.padding != "valid":
            raise ConversionError(
                f"{_keras_name(layer)} has padding={layer.padding!r}; supported: 'valid', 'same'."
            )
        conv = nn.Conv2d(
            shape[-1],
            kernel.shape[-1],
            tuple(layer.kernel_size),
            stride=tuple(layer.strides),
            padding=padding,
            dilation=tuple(layer.dilation_rate),
            groups=layer.groups,
            bias=layer.use_bias,
            dtype=dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            if layer.use_bias:
                conv.bias.copy_(torch.from_numpy(_numpy(layer.bias)))
        return [*modules, conv, *self._activation(layer)]

    def _activation(self, layer: Any) -> list[nn.Module]:
        module = _keras_activation_to_torch(layer.activation, _keras_name(layer))
        return [] if module is None else [module]

    def _layer_norm(self, layer: Any, shape: tuple[int, ...]) -> nn.Module:
        axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        if list(axes) not in ([-1], [len(shape)]) or getattr(layer, "rms_scaling", False):
            raise ConversionError(
                f"{_keras_name(layer)} normalizes axes {layer.axis}"
                f"{' with rms_scaling' if getattr(layer, 'rms_scaling', False) else ''}; only "
                "the last axis (the features, or the channels of images) without rms_scaling "
                "converts."
            )
        options = {
            "eps": float(layer.epsilon),
            "elementwise_affine": layer.scale or layer.center,
            "bias": layer.center,
            "dtype": _torch_dtype(layer.variable_dtype),
        }
        norm_type = nn.LayerNorm if len(shape) == 1 else LayerNorm
        module = norm_type(shape[-1], **options)
        affine = options["elementwise_affine"]
        if affine:
            gamma = _numpy(layer.gamma) if layer.scale else None
            beta = _numpy(layer.beta) if layer.center else None
            if self.order is not None:
                gamma = None if gamma is None else gamma[self.order]
                beta = None if beta is None else beta[self.order]
            _set_affine(module, gamma, beta)
        return module

    def _max_pool(self, layer: Any, shape: tuple[int, ...]) -> nn.Module:
        if layer.padding == "same":
            pads = [
                _same_padding(size, k, s, 1)
                for size, k, s in zip(shape[:2], layer.pool_size, layer.strides, strict=True)
            ]
            if any(pad != (0, 0) for pad in pads):
                raise ConversionError(
                    f"{_keras_name(layer)} with padding='same' pads input of size "
                    f"{shape[:2]}; only pooling that needs no padding converts (padding='valid', "
                    "or sizes divisible by the stride)."
                )
        return nn.MaxPool2d(tuple(layer.pool_size), tuple(layer.strides))


def sequential_torch_to_keras(
    model: nn.Sequential, input_shape: Sequence[int], *, check: bool = True
) -> keras.Sequential:
    """A built ``keras.Sequential`` computing what the torch ``model`` computes.

    The inverse of :func:`sequential_keras_to_torch`: Linear -> Dense,
    Conv2d -> Conv2D ("same" when torch's symmetric padding is what Keras' would
    add, otherwise ZeroPadding2D and "valid"), batch norm as
    :func:`batchnorm_torch_to_keras`, LayerNorm over the last dim (or
    normlab's over the channels) -> LayerNormalization, and Flatten,
    MaxPool2d, ZeroPad2d, Dropout and the activations to their Keras layers;
    Identity is dropped and nested Sequentials are flattened.

    Shape:
        ``model`` takes (N, *input_shape), with input_shape (C, H, W) or (F,);
        the Keras model takes (N, H, W, C) or (N, F).

    Args:
        model: a ``torch.nn.Sequential`` of the modules above (exact types).
        input_shape: the per-sample input shape in torch's layout.
        check: run both on a random batch in inference mode and raise
            :class:`ConversionError` if they disagree.

    Returns:
        The Keras model, built, in each module's dtype.

    Raises:
        ConversionError: an unsupported module or setting (the message names
            it and what is supported), or an input shape the model does not take.
    """
    keras = _keras()
    if not isinstance(model, nn.Sequential):
        raise ConversionError(
            f"expected a torch.nn.Sequential; got {_describe_module(model)}. Other modules have "
            "no order of layers to follow."
        )
    torch_shape = tuple(int(size) for size in input_shape)
    if len(torch_shape) not in (1, 3):
        raise ConversionError(
            f"input_shape must be (C, H, W) or (F,), without the batch dim; got {torch_shape}."
        )
    converter = _TorchToKeras()
    shape = _shape_to_keras(torch_shape)
    layers: list[Any] = []
    for name, module in _leaves(model, ""):
        for layer, weights in converter.convert(name, module, shape):
            if not layer.built:
                layer.build((None, *shape))
            for attribute, value in weights.items():
                getattr(layer, attribute).assign(value)
            shape = tuple(layer.compute_output_shape((None, *shape))[1:])
            layers.append(layer)
    _check_flatten_read(converter.order)
    keras_input = keras.Input(_shape_to_keras(torch_shape), dtype=_keras_dtype(_first_dtype(model)))
    keras_model = keras.Sequential([keras_input, *layers])
    if check:
        _check(
            keras_model,
            model,
            (CHECK_BATCH, *torch_shape),
            _first_dtype(model),
            channels_last=True,
        )
    return keras_model


def _leaves(model: nn.Sequential, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_children():
        full = f"{prefix}{name}"
        if type(module) is nn.Sequential:
            yield from _leaves(module, f"{full}.")
        else:
            yield full, module


_Weights = dict[str, np.ndarray]


class _TorchToKeras:
    """Converts torch modules one by one into (Keras layer, weights to assign once it is
    built), keeping the Flatten order pending for the next Linear and the normalizations in
    between."""

    def __init__(self) -> None:
        self.order: np.ndarray | None = None

    def _to_keras_order(self, array: np.ndarray) -> np.ndarray:
        """Features (rows) in torch's flat order -> Keras' (under a pending Flatten order)."""
        if self.order is None:
            return array
        result = np.empty_like(array)
        result[self.order] = array
        return result

    def convert(
        self, name: str, module: nn.Module, shape: tuple[int, ...]
    ) -> list[tuple[Any, _Weights]]:
        layers = _keras().layers
        kind = type(module)
        where = f"module {name!r} ({_describe_module(module)})"
        activation = _torch_activation_to_keras(module, flat=len(shape) == 1)
        if activation is not None:
            return [(activation, {})]
        if kind is nn.Identity:
            return []
        if kind is nn.Linear:
            return [self._dense(module, shape, where)]
        if kind is nn.Conv2d:
            return self._conv(module, shape, where)
        if kind in _torch_batchnorm_types():
            self._check_channels(module.num_features, shape, where)
            state = _state_from_torch(module)
            if self.order is not None:
                state = state.permuted(np.argsort(self.order))
            return [(_keras_from_state(state, len(shape) + 1), {})]
        if kind in (nn.LayerNorm, LayerNorm):
            return [self._layer_norm(module, shape, where)]
        if kind is nn.Flatten:
            if (module.start_dim, module.end_dim) != (1, -1):
                raise ConversionError(
                    f"{where} flattens dims {module.start_dim}..{module.end_dim}; only "
                    "Flatten(start_dim=1, end_dim=-1) converts."
                )
            if len(shape) == 3:
                self.order = _flatten_order(*shape)
            return [(layers.Flatten(), {})]
        if kind is nn.Dropout:
            return [(layers.Dropout(module.p), {})]
        if kind is nn.MaxPool2d:
            return [(self._max_pool(module, where), {})]
        if kind is nn.ZeroPad2d:
            left, right, top, bottom = module.padding
            return [(layers.ZeroPadding2D(((top, bottom), (left, right))), {})]
        raise ConversionError(
            f"cannot convert {where}; supported modules (exact types): {SUPPORTED_TORCH_MODULES}."
        )

    def _check_channels(self, channels: int, shape: tuple[int, ...], where: str) -> None:
        if shape[-1] != channels:
            raise ConversionError(
                f"{where} expects {channels} channels or features but gets input of per-sample "
                f"shape {_shape_to_torch(shape)}; check input_shape."
            )

    def _dense(self, module: nn.Linear, shape: tuple[int, ...], where: str) -> tuple[Any, _Weights]:
        if len(shape) != 1:
            raise ConversionError(
                f"{where} gets input of per-sample shape {_shape_to_torch(shape)}; Linear converts "
                "only on flat (N, F) input: put a Flatten before it."
            )
        self._check_channels(module.in_features, shape, where)
        weights = {"kernel": self._to_keras_order(_numpy(module.weight).T)}
        self.order = None
        if module.bias is not None:
            weights["bias"] = _numpy(module.bias)
        dense = _keras().layers.Dense(
            module.out_features,
            use_bias=module.bias is not None,
            dtype=_keras_dtype(module.weight.dtype),
        )
        return dense, weights

    def _conv(
        self, module: nn.Conv2d, shape: tuple[int, ...], where: str
    ) -> list[tuple[Any, _Weights]]:
        layers = _keras().layers
        if len(shape) != 3:
            raise ConversionError(f"{where} needs (C, H, W) input; got {_shape_to_torch(shape)}.")
        self._check_channels(module.in_channels, shape, where)
        if module.padding_mode != "zeros":
            raise ConversionError(
                f"{where} has padding_mode={module.padding_mode!r}; only 'zeros' converts."
            )
        result: list[tuple[Any, _Weights]] = []
        if isinstance(module.padding, str):
            padding = module.padding
        else:
            pads = tuple(module.padding)
            keras_same = tuple(
                _same_padding(size, k, s, d)
                for size, k, s, d in zip(
                    shape[:2], module.kernel_size, module.stride, module.dilation, strict=True
                )
            )
            if pads == (0, 0):
                padding = "valid"
            elif keras_same == ((pads[0], pads[0]), (pads[1], pads[1])):
                padding = "same"
            else:
                padding = "valid"
                zeros = ((pads[0], pads[0]), (pads[1], pads[1]))
                result.append((layers.ZeroPadding2D(zeros), {}))
        weights = {"kernel": _numpy(module.weight).transpose(2, 3, 1, 0)}
        if module.bias is not None:
            weights["bias"] = _numpy(module.bias)
        conv = layers.Conv2D(
            module.out_channels,
            module.kernel_size,
            strides=module.stride,
            padding=padding,
            dilation_rate=module.dilation,
            groups=module.groups,
            use_bias=module.bias is not None,
            dtype=_keras_dtype(module.weight.dtype),
        )
        return [*result, (conv, weights)]

    def _layer_norm(
        self, module: nn.Module, shape: tuple[int, ...], where: str
    ) -> tuple[Any, _Weights]:
        over_channels = type(module) is LayerNorm and module.over == "channels"
        flat_last = len(shape) == 1 and tuple(module.normalized_shape) == (shape[-1],)
        if not (flat_last or over_channels) or getattr(module, "channel_dim", 1) != 1:
            raise ConversionError(
                f"{where} normalizes over {tuple(module.normalized_shape)} of per-sample shape "
                f"{_shape_to_torch(shape)}; only LayerNorm over the features of (N, F) input, "
                "or normlab's LayerNorm over the channels, converts."
            )
        self._check_channels(module.normalized_shape[0], shape, where)
        weight = module.weight if module.elementwise_affine else None
        bias = module.bias if module.elementwise_affine else None
        scale, center = not _is_fixed(weight, 1.0), not _is_fixed(bias, 0.0)
        weights: _Weights = {}
        if scale:
            weights["gamma"] = self._to_keras_order(_numpy(weight))
        if center:
            weights["beta"] = self._to_keras_order(_numpy(bias))
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        layer = _keras().layers.LayerNormalization(
            axis=-1, epsilon=module.eps, center=center, scale=scale, dtype=_keras_dtype(dtype)
        )
        return layer, weights

    def _max_pool(self, module: nn.MaxPool2d, where: str) -> Any:
        pairs = {
            name: (value, value) if isinstance(value, int) else tuple(value)
            for name, value in (
                ("kernel_size", module.kernel_size),
                ("stride", module.stride if module.stride is not None else module.kernel_size),
                ("padding", module.padding),
                ("dilation", module.dilation),
            )
        }
        if pairs["padding"] != (0, 0) or pairs["dilation"] != (1, 1) or module.ceil_mode:
            raise ConversionError(
                f"{where} has padding={module.padding}, dilation={module.dilation}, "
                f"ceil_mode={module.ceil_mode}; only MaxPool2d with padding=0, dilation=1 and "
                "ceil_mode=False converts."
            )
        return _keras().layers.MaxPooling2D(pairs["kernel_size"], pairs["stride"], "valid")
