"""Activation functions and layers between Keras and torch, by table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from normlab.convert.common import ConversionError, describe_module, keras_module, keras_name


def keras_activation_to_torch(function: Any, where: str) -> nn.Module | None:
    """The torch module for a Keras activation function (None for ``linear``).

    ``where`` names the layer holding it, for the error an unsupported one raises.
    """
    activations = keras_module().activations
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


def keras_activation_layer_types() -> tuple[type, ...]:
    """The Keras activation layer classes that :func:`keras_activation_layer_to_torch` takes."""
    return tuple(_keras_activation_layers())


def keras_activation_layer_to_torch(layer: Any) -> nn.Module | None:
    """The torch module for a Keras activation layer (exact type), or None for one that
    computes the identity; raises for an activation layer with no counterpart."""
    return _keras_activation_layers()[type(layer)](layer)


def _keras_activation_layers() -> dict[type, Callable[[Any], nn.Module | None]]:
    layers = keras_module().layers
    return {
        layers.Activation: lambda layer: keras_activation_to_torch(
            layer.activation, keras_name(layer)
        ),
        layers.ReLU: _relu,
        layers.LeakyReLU: lambda layer: nn.LeakyReLU(float(layer.negative_slope)),
        layers.ELU: lambda layer: nn.ELU(float(layer.alpha)),
        layers.Softmax: _softmax,
    }


def _relu(layer: Any) -> nn.Module:
    slope, top, threshold = layer.negative_slope, layer.max_value, layer.threshold
    if threshold == 0 and slope == 0 and top is None:
        return nn.ReLU()
    if threshold == 0 and slope == 0 and top == 6:
        return nn.ReLU6()
    if threshold == 0 and top is None:
        return nn.LeakyReLU(float(slope))
    raise ConversionError(
        f"{keras_name(layer)} with max_value={top}, negative_slope={slope}, "
        f"threshold={threshold} has no torch counterpart here; supported: ReLU, ReLU(6) "
        "and ReLU(negative_slope=a)."
    )


def _softmax(layer: Any) -> nn.Module:
    if layer.axis not in (-1, [-1]):
        raise ConversionError(
            f"{keras_name(layer)} takes the softmax over axis {layer.axis}; only the last "
            "axis (the channels) converts."
        )
    return nn.Softmax(dim=1)


def torch_activation_to_keras(module: nn.Module, flat: bool) -> Any:
    """The Keras layer for a torch activation module, or None when ``module`` is not one.

    ``flat``: the module gets (N, F) input, where a softmax over dim -1 is over the channels.
    """
    convert = _TORCH_ACTIVATIONS.get(type(module))
    if convert is None:
        return None
    layer = convert(keras_module().layers, module, flat)
    if layer is None:
        raise ConversionError(
            f"{describe_module(module)}({module.extra_repr()}) has no Keras counterpart here; "
            "supported: GELU(approximate='none'), Softplus(beta=1, threshold=20), Softmax over "
            "the channels (dim=1)."
        )
    return layer


def _plain(name: str) -> Callable[[Any, Any, bool], Any]:
    return lambda layers, module, flat: layers.Activation(name)


#: torch activation type -> (keras.layers, module, flat) -> the Keras layer, or None when the
#: module's settings have no Keras counterpart.
_TORCH_ACTIVATIONS: dict[type, Callable[[Any, Any, bool], Any]] = {
    nn.ReLU: _plain("relu"),
    nn.ReLU6: _plain("relu6"),
    nn.Tanh: _plain("tanh"),
    nn.Sigmoid: _plain("sigmoid"),
    nn.SELU: _plain("selu"),
    nn.SiLU: _plain("silu"),
    nn.ELU: lambda layers, module, flat: layers.ELU(alpha=float(module.alpha)),
    nn.LeakyReLU: lambda layers, module, flat: layers.LeakyReLU(
        negative_slope=float(module.negative_slope)
    ),
    nn.GELU: lambda layers, module, flat: (
        layers.Activation("gelu") if module.approximate == "none" else None
    ),
    nn.Softplus: lambda layers, module, flat: (
        layers.Activation("softplus") if module.beta == 1 and module.threshold == 20 else None
    ),
    nn.Softmax: lambda layers, module, flat: (
        layers.Softmax(axis=-1) if module.dim == 1 or (flat and module.dim == -1) else None
    ),
}
