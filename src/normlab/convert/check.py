"""The conversion check: a Keras and a torch model compute the same on a random batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from normlab.convert.common import ConversionError, to_numpy
from normlab.modes import eval_mode

#: Largest |keras - torch| accepted by the conversion check, relative to max(1, max |output|).
CHECK_TOLERANCE = 1e-4


CHECK_BATCH = 4


CHECK_SPATIAL = 5  # side of the random check input of a single layer with spatial dims


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
    with eval_mode(torch_model):
        expected = torch_model(inputs).double().cpu().numpy()
    keras_inputs = inputs.detach().cpu().numpy()
    if channels_last and keras_inputs.ndim > 2:
        keras_inputs = np.moveaxis(keras_inputs, 1, -1)
    actual = to_numpy(keras_model(keras_inputs, training=False)).astype(np.float64)
    if channels_last and actual.ndim > 2:
        actual = np.moveaxis(actual, -1, 1)
    if actual.shape != expected.shape:
        raise ConversionError(
            f"the Keras model's output has shape {actual.shape} (channels moved to dim 1) and the "
            f"torch model's {expected.shape}; they are not the same model."
        )
    return float(np.abs(actual - expected).max(initial=0.0))


def check_outputs(
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
    with torch.no_grad(), eval_mode(torch_model):
        scale = max(1.0, float(torch_model(inputs).abs().max()))
    if not difference <= CHECK_TOLERANCE * scale:  # also catches NaN
        raise ConversionError(
            f"the converted model's eval outputs differ from the original's by up to "
            f"{difference:.3g} on a random batch of shape {tuple(shape)} (allowed "
            f"{CHECK_TOLERANCE * scale:.3g}); please report this with the model's summary."
        )
