"""normlab's normalization modules; see normlab.registry for the kinds by name."""

from normlab.layers.base import NormBase, RunningStatsNorm
from normlab.layers.batch_norm import BatchNorm, SyncBatchNorm, TorchBatchNorm, TorchSyncBatchNorm
from normlab.layers.batch_renorm import BatchRenorm
from normlab.layers.frozen_batch_norm import FrozenBatchNorm
from normlab.layers.norm_act import NormAct
from normlab.layers.switchable_norm import SwitchableNorm
from normlab.layers.torch_norms import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from normlab.layers.weight_standardization import WSConv2d, WSLinear

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "FrozenBatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "NormAct",
    "NormBase",
    "RMSNorm",
    "RunningStatsNorm",
    "SwitchableNorm",
    "SyncBatchNorm",
    "TorchBatchNorm",
    "TorchSyncBatchNorm",
    "WSConv2d",
    "WSLinear",
]
