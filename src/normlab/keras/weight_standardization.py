"""Weight-standardized Conv2D and Dense layers (Qiao et al. 2019) for Keras 3."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from normlab.keras._ops import standardize_kernel


@keras.saving.register_keras_serializable(package="normlab")
class WeightStandardizedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose kernel is standardized on every call.

    The Keras counterpart of ``normlab.WSConv2d``: each output channel's
    weights, ``kernel[..., o]`` of the (kh, kw, in / groups, out) kernel,
    are standardized over their fan-in with the biased variance and
    ``epsilon`` inside the square root (eq. 5 of the paper, as timm's
    StdConv2d). Gradients flow through the standardization to the raw
    ``kernel``, which is what the layer stores and saves. With ``lora_rank``,
    the kernel plus its LoRA update is standardized.

    Input shape: as ``keras.layers.Conv2D`` (channels last by default).

    Output shape: as ``keras.layers.Conv2D``.

    Training vs inference: identical (no statistics of the input are kept).

    Args:
        filters, kernel_size, ...: every argument of ``keras.layers.Conv2D``,
            positionally in its order or by keyword, with its meaning.
        epsilon: added to the variance of the weights, keyword only (1e-5, as
            ``normlab.WSConv2d``).
    """

    def __init__(
        self, filters: int, kernel_size: Any, *args: Any, epsilon: float = 1e-5, **kwargs: Any
    ) -> None:
        super().__init__(filters, kernel_size, *args, **kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive; got {epsilon}.")
        self.epsilon = float(epsilon)

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        return super().convolution_op(inputs, standardize_kernel(kernel, self.epsilon))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="normlab")
class WeightStandardizedDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel columns are standardized on every call.

    The Keras counterpart of ``normlab.WSLinear``: each output unit's
    weights, ``kernel[:, o]`` of the (in, units) kernel, are standardized over
    the inputs as in :class:`WeightStandardizedConv2D`. Like every Dense
    subclass, it cannot be quantized (``quantization_config`` other than
    None is refused). With ``lora_rank``, the kernel plus its LoRA update
    is standardized.

    Input shape: (batch, ..., in).

    Output shape: (batch, ..., units).

    Training vs inference: identical.

    Args:
        units, ...: every argument of ``keras.layers.Dense``, positionally in its
            order or by keyword, with its meaning.
        epsilon: added to the variance of the weights, keyword only (1e-5).
    """

    def __init__(self, units: int, *args: Any, epsilon: float = 1e-5, **kwargs: Any) -> None:
        if kwargs.get("quantization_config") is not None:
            raise ValueError(
                "WeightStandardizedDense cannot be quantized (quantization_config): a quantized "
                "Dense computes with its quantized kernel, so the kernel would no longer be "
                "standardized. Pass quantization_config=None, or fold the standardization into "
                "a plain keras.layers.Dense (kernel = the standardized kernel) and quantize that."
            )
        super().__init__(units, *args, **kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive; got {epsilon}.")
        self.epsilon = float(epsilon)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = ops.matmul(inputs, standardize_kernel(self.kernel, self.epsilon))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
