"""normlab: neural-network normalization layers, inference tooling and a lab to compare them."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from torch.nn.utils.parametrizations import spectral_norm

from normlab import functional, inference
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

# The lab's data sets and models import on first use: ``import normlab`` stays the library.
_LAZY_SUBMODULES = ("data", "models")


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"normlab.{name}")
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


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
