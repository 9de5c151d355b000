"""normlab's normalization layers as Keras 3 layers.

Needs Keras 3 (``pip install "normlab[keras]"``) and a Keras backend: torch,
installed with normlab, is selected with the environment variable
``KERAS_BACKEND=torch``. The layers are written with ``keras.ops`` only, so
they run on every Keras 3 backend (JAX, TensorFlow, PyTorch); Keras'
conventions hold: channels last by default, ``momentum`` in Keras' sense,
biased moving variance, ``trainable=False`` meaning inference mode for the
layers with moving statistics. Every class is
registered with Keras' serialization under the package name ``normlab``, so
models using them save to ``.keras`` and load back without custom_objects.

- :class:`BatchNormalization`: ``keras.layers.BatchNormalization`` with
  ``stats="channel"`` or ``"scalar"`` and a stable (two-pass) variance.
- :class:`BatchRenormalization`: batch renormalization (Ioffe 2017).
- :class:`SwitchableNormalization`: learned mix of IN, LN and BN (Luo et al. 2018).
- :class:`WeightStandardizedConv2D`, :class:`WeightStandardizedDense`:
  weight standardization (Qiao et al. 2019).
"""

try:
    import keras
except ModuleNotFoundError as error:
    if error.name == "keras":
        raise ImportError(
            "normlab.keras needs Keras 3, which is not installed. Install it with: "
            'pip install "normlab[keras]"'
        ) from error
    if (error.name or "").split(".")[0] in ("tensorflow", "jax", "jaxlib"):
        raise ImportError(
            f"Keras could not load its backend: {error.name} is not installed (Keras uses "
            "TensorFlow unless KERAS_BACKEND says otherwise). normlab installs torch: set the "
            f"environment variable KERAS_BACKEND=torch before importing keras, or install "
            f"{error.name.split('.')[0]}."
        ) from error
    raise

if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(
        f"normlab.keras needs Keras 3; found Keras {keras.__version__}. Upgrade it with: "
        'pip install "normlab[keras]"'
    )

from normlab.keras.batch_normalization import BatchNormalization
from normlab.keras.batch_renormalization import BatchRenormalization
from normlab.keras.switchable_normalization import SwitchableNormalization
from normlab.keras.weight_standardization import (
    WeightStandardizedConv2D,
    WeightStandardizedDense,
)

__all__ = [
    "BatchNormalization",
    "BatchRenormalization",
    "SwitchableNormalization",
    "WeightStandardizedConv2D",
    "WeightStandardizedDense",
]
