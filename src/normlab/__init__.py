"""normlab: neural-network normalization layers, inference tooling and a lab to compare them."""

from importlib.metadata import PackageNotFoundError, version

from torch.nn.utils.parametrizations import spectral_norm

from normlab import data, functional, inference, models
from normlab.layers import (
    BatchNorm,
    BatchRenorm,
    FrozenBatchNorm,
    SwitchableNorm,
    SyncBatchNorm,
    WSConv2d,
    WSLinear,
)
from normlab.layers.batch_norm import convert_sync_batchnorm
from normlab.registry import make_norm, norm_kinds
from normlab.swap import replace_norms

try:
    __version__ = version("normlab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "FrozenBatchNorm",
    "SwitchableNorm",
    "SyncBatchNorm",
    "WSConv2d",
    "WSLinear",
    "convert_sync_batchnorm",
    "data",
    "functional",
    "inference",
    "make_norm",
    "models",
    "norm_kinds",
    "replace_norms",
    "spectral_norm",
]
