"""A torch.nn.Sequential -> a built keras.Sequential, module by module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from normlab.convert.activations import torch_activation_to_keras
from normlab.convert.batchnorm import (
    channels_last,
    keras_from_state,
    state_from_torch,
    torch_batchnorm_types,
)
from normlab.convert.check import CHECK_BATCH, check_outputs
from normlab.convert.common import (
    ConversionError,
    describe_module,
    first_dtype,
    is_fixed,
    keras_dtype,
    keras_module,
    to_numpy,
)
from normlab.convert.layout import (
    check_flatten_read,
    flatten_order,
    same_padding,
    shape_to_keras,
    shape_to_torch,
)
from normlab.layers.torch_norms import LayerNorm

if TYPE_CHECKING:
    import keras


SUPPORTED_TORCH_MODULES = (
    "Linear, Conv2d, BatchNorm1d/2d/3d, normlab.BatchNorm, LayerNorm, Flatten, MaxPool2d, "
    "ZeroPad2d, Dropout, Identity, nested Sequential, and the activations ReLU, ReLU6, Tanh, "
    "Sigmoid, ELU, SELU, SiLU, GELU, Softplus, LeakyReLU, Softmax"
)


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
    keras = keras_module()
    if not isinstance(model, nn.Sequential):
        raise ConversionError(
            f"expected a torch.nn.Sequential; got {describe_module(model)}. Other modules have "
            "no order of layers to follow."
        )
    torch_shape = tuple(int(size) for size in input_shape)
    if len(torch_shape) not in (1, 3):
        raise ConversionError(
            f"input_shape must be (C, H, W) or (F,), without the batch dim; got {torch_shape}."
        )
    converter = _TorchToKeras()
    shape = shape_to_keras(torch_shape)
    layers: list[Any] = []
    for name, module in _leaves(model, ""):
        for layer, weights in converter.convert(name, module, shape):
            if not layer.built:
                layer.build((None, *shape))
            for attribute, value in weights.items():
                getattr(layer, attribute).assign(value)
            shape = tuple(layer.compute_output_shape((None, *shape))[1:])
            layers.append(layer)
    check_flatten_read(converter.order)
    keras_input = keras.Input(shape_to_keras(torch_shape), dtype=keras_dtype(first_dtype(model)))
    keras_model = keras.Sequential([keras_input, *layers])
    if check:
        check_outputs(
            keras_model,
            model,
            (CHECK_BATCH, *torch_shape),
            first_dtype(model),
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
_Conversion = Callable[[Any, tuple[int, ...], str], list[tuple[Any, _Weights]]]


class _TorchToKeras:
    """Converts torch modules one by one into (Keras layer, weights to assign once it is
    built), keeping the Flatten order pending for the next Linear and the normalizations in
    between."""

    def __init__(self) -> None:
        self.order: np.ndarray | None = None
        self.table = self._table()

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
        """(Keras layer, weights) pairs for the module ``name``, which gets per-sample input of
        Keras-layout ``shape``."""
        where = f"module {name!r} ({describe_module(module)})"
        activation = torch_activation_to_keras(module, flat=len(shape) == 1)
        if activation is not None:
            return [(activation, {})]
        convert = self.table.get(type(module))
        if convert is None:
            raise ConversionError(
                f"cannot convert {where}; supported modules (exact types): "
                f"{SUPPORTED_TORCH_MODULES}."
            )
        return convert(module, shape, where)

    def _table(self) -> dict[type, _Conversion]:
        """torch module type (exact) -> its conversion."""
        layers = keras_module().layers
        table: dict[type, _Conversion] = {
            nn.Identity: lambda module, shape, where: [],
            nn.Linear: lambda module, shape, where: [self._dense(module, shape, where)],
            nn.Conv2d: self._conv,
            nn.LayerNorm: lambda module, shape, where: [self._layer_norm(module, shape, where)],
            LayerNorm: lambda module, shape, where: [self._layer_norm(module, shape, where)],
            nn.Flatten: self._flatten,
            nn.Dropout: lambda module, shape, where: [(layers.Dropout(module.p), {})],
            nn.MaxPool2d: lambda module, shape, where: [(self._max_pool(module, where), {})],
            nn.ZeroPad2d: self._zero_padding,
        }
        table.update(dict.fromkeys(torch_batchnorm_types(), self._batch_norm))
        return table

    def _batch_norm(
        self, module: nn.Module, shape: tuple[int, ...], where: str
    ) -> list[tuple[Any, _Weights]]:
        if channels_last(module) and len(shape) > 1:
            raise ConversionError(
                f"{where} has channel_dim=-1: it normalizes the last dim, but the model takes "
                f"{shape_to_torch(shape)} per sample, i.e. (N, C, H, W) input with the channels "
                "on dim 1. Use channel_dim=1 in a channels-first model."
            )
        self._check_channels(module.num_features, shape, where)
        state = state_from_torch(module)
        if self.order is not None:
            state = state.permuted(np.argsort(self.order))
        return [(keras_from_state(state, len(shape) + 1), {})]

    def _flatten(
        self, module: nn.Flatten, shape: tuple[int, ...], where: str
    ) -> list[tuple[Any, _Weights]]:
        if (module.start_dim, module.end_dim) != (1, -1):
            raise ConversionError(
                f"{where} flattens dims {module.start_dim}..{module.end_dim}; only "
                "Flatten(start_dim=1, end_dim=-1) converts."
            )
        if len(shape) == 3:
            self.order = flatten_order(*shape)
        return [(keras_module().layers.Flatten(), {})]

    def _zero_padding(
        self, module: nn.ZeroPad2d, shape: tuple[int, ...], where: str
    ) -> list[tuple[Any, _Weights]]:
        left, right, top, bottom = module.padding
        return [(keras_module().layers.ZeroPadding2D(((top, bottom), (left, right))), {})]

    def _check_channels(self, channels: int, shape: tuple[int, ...], where: str) -> None:
        if shape[-1] != channels:
            raise ConversionError(
                f"{where} expects {channels} channels or features but gets input of per-sample "
                f"shape {shape_to_torch(shape)}; check input_shape."
            )

    def _dense(self, module: nn.Linear, shape: tuple[int, ...], where: str) -> tuple[Any, _Weights]:
        if len(shape) != 1:
            raise ConversionError(
                f"{where} gets input of per-sample shape {shape_to_torch(shape)}; Linear converts "
                "only on flat (N, F) input: put a Flatten before it."
            )
        self._check_channels(module.in_features, shape, where)
        weights = {"kernel": self._to_keras_order(to_numpy(module.weight).T)}
        self.order = None
        if module.bias is not None:
            weights["bias"] = to_numpy(module.bias)
        dense = keras_module().layers.Dense(
            module.out_features,
            use_bias=module.bias is not None,
            dtype=keras_dtype(module.weight.dtype),
        )
        return dense, weights

    def _conv(
        self, module: nn.Conv2d, shape: tuple[int, ...], where: str
    ) -> list[tuple[Any, _Weights]]:
        layers = keras_module().layers
        if len(shape) != 3:
            raise ConversionError(f"{where} needs (C, H, W) input; got {shape_to_torch(shape)}.")
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
                same_padding(size, k, s, d)
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
        weights = {"kernel": to_numpy(module.weight).transpose(2, 3, 1, 0)}
        if module.bias is not None:
            weights["bias"] = to_numpy(module.bias)
        conv = layers.Conv2D(
            module.out_channels,
            module.kernel_size,
            strides=module.stride,
            padding=padding,
            dilation_rate=module.dilation,
            groups=module.groups,
            use_bias=module.bias is not None,
            dtype=keras_dtype(module.weight.dtype),
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
                f"{shape_to_torch(shape)}; only LayerNorm over the features of (N, F) input, "
                "or normlab's LayerNorm over the channels, converts."
            )
        self._check_channels(module.normalized_shape[0], shape, where)
        weight = module.weight if module.elementwise_affine else None
        bias = module.bias if module.elementwise_affine else None
        scale, center = not is_fixed(weight, 1.0), not is_fixed(bias, 0.0)
        weights: _Weights = {}
        if scale:
            weights["gamma"] = self._to_keras_order(to_numpy(weight))
        if center:
            weights["beta"] = self._to_keras_order(to_numpy(bias))
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        layer = keras_module().layers.LayerNormalization(
            axis=-1, epsilon=module.eps, center=center, scale=scale, dtype=keras_dtype(dtype)
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
        return keras_module().layers.MaxPooling2D(pairs["kernel_size"], pairs["stride"], "valid")
