"""What a saved checkpoint holds about normalization: ``normlab inspect CHECKPOINT``.

Two concerns, one module each: :mod:`normlab.checkpoints.loading` loads a file
without running its code (``weights_only=True`` and an allow-list of module
classes) and :mod:`normlab.checkpoints.describing` summarizes and tabulates
its normalization layers.
"""

from normlab.checkpoints.describing import (
    NormLayerSummary,
    Summary,
    describe,
    norm_layers,
    norm_layers_table,
)
from normlab.checkpoints.loading import (
    WRAPPER_KEYS,
    CheckpointError,
    allowed_classes,
    load_checkpoint,
    locate_checkpoint,
)
from normlab.layers.norm_classes import is_norm_layer

__all__ = [
    "WRAPPER_KEYS",
    "CheckpointError",
    "NormLayerSummary",
    "Summary",
    "allowed_classes",
    "describe",
    "is_norm_layer",
    "load_checkpoint",
    "locate_checkpoint",
    "norm_layers",
    "norm_layers_table",
]
