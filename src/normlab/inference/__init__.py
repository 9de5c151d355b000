"""Batch norm at inference: precise statistics, calibration batches, freezing, folding into
the previous layer, and train/eval parity checks."""

from normlab.inference.folding import fold_batchnorm, unfoldable_batchnorms
from normlab.inference.freezing import freeze
from normlab.inference.fusion import FUSER_METHOD_MAPPING
from normlab.inference.layers import batch_norm_layers, is_batch_norm
from normlab.inference.parity import LayerParity, ParityReport, eval_parity
from normlab.inference.statistics import StatisticsShift, calibrate_with_batch, recalibrate

__all__ = [
    "FUSER_METHOD_MAPPING",
    "LayerParity",
    "ParityReport",
    "StatisticsShift",
    "batch_norm_layers",
    "calibrate_with_batch",
    "eval_parity",
    "fold_batchnorm",
    "freeze",
    "is_batch_norm",
    "recalibrate",
    "unfoldable_batchnorms",
]
