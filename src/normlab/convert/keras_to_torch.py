"""A built keras.Sequential -> torch.nn.Sequential, layer by layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from normlab._checks import check_choice
from normlab.convert.activations import (
    keras_activation_layer_to_torch,
    keras_activation_layer_types,
    keras_activation_to_torch,
)
from normlab.convert.batchnorm import (
    axis_is_last,
    keras_batchnorm_ndim,
    keras_batchnorm_types,
    state_from_keras,
    torch_from_state,
)
from normlab.convert.check import CHECK_BATCH, check_outputs
from normlab.convert.common import (
    ConversionError,
    first_dtype,
    keras_module,
    keras_name,
    set_affine,
    to_numpy,
    torch_dtype,
)
from normlab.convert.layout import check_flatten_read, flatten_order, same_padding, shape_to_torch
from normlab.functional import CONVENTIONS, Convention
from normlab.layers.torch_norms import LayerNorm

if TYPE_CHECKING:
    import keras


SUPPORTED_KERAS_LAYERS = (
    "InputLayer, Dense, Conv2D, BatchNormalization (Keras' or normlab.keras'), "
    "LayerNormalization, Flatten, MaxPooling2D, ZeroPadding2D, Dropout, Activation, ReLU, "
    "LeakyReLU, ELU, Softmax"
)


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
    keras = keras_module()
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
    check_flatten_read(converter.order)
    torch_model = nn.Sequential(*modules)
    if check:
        torch_shape = shape_to_torch(tuple(model.input_shape[1:]))
        check_outputs(
            model,
            torch_model,
            (CHECK_BATCH, *torch_shape),
            first_dtype(torch_model),
            channels_last=True,
        )
    return torch_model


class _KerasToTorch:
    """Converts Keras layers one by one, keeping the Flatten order pending for the next
    Dense and the normalizations in between."""

    def __init__(self, convention: str) -> None:
        check_choice("convention", convention, CONVENTIONS)
        self.convention = convention
        self.order: np.ndarray | None = None
        self.table = self._table()

    def convert(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        """The torch modules for ``layer``, which gets per-sample input of ``shape``."""
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ConversionError(
                f"{keras_name(layer)} uses data_format={layer.data_format!r}; only "
                "channels_last models convert."
            )
        convert = self.table.get(type(layer))
        if convert is None:
            raise ConversionError(
                f"cannot convert Keras layer {keras_name(layer)}; supported layers (exact types): "
                f"{SUPPORTED_KERAS_LAYERS}."
            )
        return convert(layer, shape)

    def _table(self) -> dict[type, Callable[[Any, tuple[int, ...]], list[nn.Module]]]:
        """Keras layer type (exact) -> its conversion."""
        layers = keras_module().layers
        table: dict[type, Callable[[Any, tuple[int, ...]], list[nn.Module]]] = {
            layers.InputLayer: lambda layer, shape: [],
            layers.Dense: self._dense,
            layers.Conv2D: self._conv,
            layers.LayerNormalization: lambda layer, shape: [self._layer_norm(layer, shape)],
            layers.Flatten: self._flatten,
            layers.Dropout: lambda layer, shape: [nn.Dropout(float(layer.rate))],
            layers.MaxPooling2D: lambda layer, shape: [self._max_pool(layer, shape)],
            layers.ZeroPadding2D: self._zero_padding,
        }
        table.update(dict.fromkeys(keras_activation_layer_types(), self._activation_layer))
        table.update(dict.fromkeys(keras_batchnorm_types(), self._batch_norm))
        return table

    def _activation_layer(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        module = keras_activation_layer_to_torch(layer)
        return [] if module is None else [module]

    def _batch_norm(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        state = state_from_keras(layer).permuted(self.order)
        ndim = keras_batchnorm_ndim(layer, len(shape) + 1)
        if not axis_is_last(layer, ndim):
            raise ConversionError(
                f"{keras_name(layer)} normalizes axis {layer.axis} of a channels_last "
                "model; only the channel axis (-1) converts."
            )
        return [torch_from_state(state, self.convention, ndim)]

    def _flatten(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        if len(shape) == 3:
            self.order = flatten_order(*shape)
        return [nn.Flatten()]

    def _zero_padding(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        (top, bottom), (left, right) = layer.padding
        return [nn.ZeroPad2d((left, right, top, bottom))]

    def _dense(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        if len(shape) != 1:
            raise ConversionError(
                f"{keras_name(layer)} gets input of shape (None, {', '.join(map(str, shape))}); "
                "Dense converts only on flat (None, F) input: put a Flatten before it."
            )
        kernel = to_numpy(layer.kernel)
        if self.order is not None:
            kernel = kernel[self.order]
            self.order = None
        dtype = torch_dtype(layer.kernel.dtype)
        linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=layer.use_bias, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            if layer.use_bias:
                linear.bias.copy_(torch.from_numpy(to_numpy(layer.bias)))
        return [linear, *self._activation(layer)]

    def _conv(self, layer: Any, shape: tuple[int, ...]) -> list[nn.Module]:
        kernel = to_numpy(layer.kernel)  # (kh, kw, in / groups, out)
        dtype = torch_dtype(layer.kernel.dtype)
        modules: list[nn.Module] = []
        padding: tuple[int, int] = (0, 0)
        if layer.padding == "same":
            pads = [
                same_padding(size, k, s, d)
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
                f"{keras_name(layer)} has padding={layer.padding!r}; supported: 'valid', 'same'."
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
                conv.bias.copy_(torch.from_numpy(to_numpy(layer.bias)))
        return [*modules, conv, *self._activation(layer)]

    def _activation(self, layer: Any) -> list[nn.Module]:
        module = keras_activation_to_torch(layer.activation, keras_name(layer))
        return [] if module is None else [module]

    def _layer_norm(self, layer: Any, shape: tuple[int, ...]) -> nn.Module:
        axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        if list(axes) not in ([-1], [len(shape)]) or getattr(layer, "rms_scaling", False):
            raise ConversionError(
                f"{keras_name(layer)} normalizes axes {layer.axis}"
                f"{' with rms_scaling' if getattr(layer, 'rms_scaling', False) else ''}; only "
                "the last axis (the features, or the channels of images) without rms_scaling "
                "converts."
            )
        options = {
            "eps": float(layer.epsilon),
            "elementwise_affine": layer.scale or layer.center,
            "bias": layer.center,
            "dtype": torch_dtype(layer.variable_dtype),
        }
        norm_type = nn.LayerNorm if len(shape) == 1 else LayerNorm
        module = norm_type(shape[-1], **options)
        affine = options["elementwise_affine"]
        if affine:
            gamma = to_numpy(layer.gamma) if layer.scale else None
            beta = to_numpy(layer.beta) if layer.center else None
            if self.order is not None:
                gamma = None if gamma is None else gamma[self.order]
                beta = None if beta is None else beta[self.order]
            set_affine(module, gamma, beta)
        return module

    def _max_pool(self, layer: Any, shape: tuple[int, ...]) -> nn.Module:
        if layer.padding == "same":
            pads = [
                same_padding(size, k, s, 1)
                for size, k, s in zip(shape[:2], layer.pool_size, layer.strides, strict=True)
            ]
            if any(pad != (0, 0) for pad in pads):
                raise ConversionError(
                    f"{keras_name(layer)} with padding='same' pads input of size "
                    f"{shape[:2]}; only pooling that needs no padding converts (padding='valid', "
                    "or sizes divisible by the stride)."
                )
        return nn.MaxPool2d(tuple(layer.pool_size), tuple(layer.strides))
