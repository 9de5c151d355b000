"""What every conversion needs: the error, Keras' lazy import, numpy copies, dtypes, names."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class ConversionError(ValueError):
    """A layer or model cannot be converted, or the converted one computes something else."""


def keras_module() -> Any:
    """The ``keras`` module, imported when a conversion runs (normlab does not need Keras)."""
    try:
        import keras
    except ImportError as error:  # no Keras, or a backend that is not installed
        raise ImportError(
            f"normlab.convert needs Keras 3 with a working backend ({error}). Install it with "
            "`pip install keras` and choose a backend, e.g. KERAS_BACKEND=torch."
        ) from error
    return keras


def to_numpy(value: Any) -> np.ndarray:
    """A Keras variable, a backend tensor or a torch tensor as a numpy array (a copy;
    float16/bfloat16 as float32)."""
    keras = keras_module()
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


def torch_dtype(keras_dtype: str) -> torch.dtype:
    dtype = getattr(torch, str(keras_dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConversionError(f"no torch floating-point dtype for Keras dtype {keras_dtype!r}.")
    return dtype


def keras_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def keras_name(layer: Any) -> str:
    """ "'conv1d' (keras.layers.Conv1D)": the layer's name and public class."""
    kind = type(layer)
    public = kind.__module__
    for package, shown in (("keras.", "keras.layers"), ("normlab.keras.", "normlab.keras")):
        if public.startswith(package):
            public = shown
    return f"{layer.name!r} ({public}.{kind.__qualname__})"


def describe_module(module: nn.Module) -> str:
    kind = type(module)
    prefix = "torch.nn" if kind.__module__.startswith("torch.nn") else kind.__module__
    return f"{prefix}.{kind.__qualname__}"


def is_fixed(parameter: torch.Tensor | None, identity: float) -> bool:
    """True for a missing parameter, or a frozen one equal to ``identity`` (what a Keras layer
    without ``scale`` or ``center`` converts to)."""
    return parameter is None or (
        not parameter.requires_grad and bool((parameter == identity).all())
    )


def set_affine(module: nn.Module, gamma: np.ndarray | None, beta: np.ndarray | None) -> None:
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


def first_dtype(module: nn.Module) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()
