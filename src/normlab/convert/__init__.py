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

Modules, one concern each: ``batchnorm`` (the layers), ``keras_to_torch`` and
``torch_to_keras`` (Sequential models), ``activations``, ``layout`` (shapes,
padding, the Flatten order), ``check`` (:func:`max_abs_difference`) and
``common`` (the error, Keras' import, dtypes).
"""

from normlab.convert.batchnorm import batchnorm_keras_to_torch, batchnorm_torch_to_keras
from normlab.convert.check import CHECK_BATCH, CHECK_TOLERANCE, max_abs_difference
from normlab.convert.common import ConversionError
from normlab.convert.keras_to_torch import SUPPORTED_KERAS_LAYERS, sequential_keras_to_torch
from normlab.convert.torch_to_keras import SUPPORTED_TORCH_MODULES, sequential_torch_to_keras
from normlab.functional import CONVENTIONS, Convention

__all__ = [
    "CHECK_BATCH",
    "CHECK_TOLERANCE",
    "CONVENTIONS",
    "SUPPORTED_KERAS_LAYERS",
    "SUPPORTED_TORCH_MODULES",
    "Convention",
    "ConversionError",
    "batchnorm_keras_to_torch",
    "batchnorm_torch_to_keras",
    "max_abs_difference",
    "sequential_keras_to_torch",
    "sequential_torch_to_keras",
]
