"""normlab's batch norm in torch's eager-mode fusion, ``torch.ao.quantization.fuse_modules``.

``fuse_modules`` finds its fuser by the exact classes of the modules it is given, so it
knows torch's ``BatchNorm1d/2d/3d`` only. :data:`FUSER_METHOD_MAPPING` adds normlab's
batch norm in torch's configuration (:class:`normlab.layers.TorchBatchNorm`, what
``BatchNorm(...)`` and ``make_norm("bn", ...)`` build by default), which computes exactly
what torch's does, with torch's own fusers::

    from torch.ao.quantization import fuse_modules
    fused = fuse_modules(
        model.eval(), [["conv", "bn", "relu"]],
        fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHOD_MAPPING},
    )

In eval mode the batch norm is folded into the convolution or Linear before it. For
quantization-aware training (``fuse_modules_qat``) torch's fused modules take
``BatchNorm*d`` only and refuse the layer. Other configurations (scalar statistics,
Keras' convention, channels last) are not in the mapping, so ``fuse_modules`` refuses
them by name; :func:`normlab.inference.fold_batchnorm` folds every batch norm.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.ao.quantization.fuser_method_mappings import (
    fuse_conv_bn,
    fuse_conv_bn_relu,
    fuse_linear_bn,
)

from normlab.layers import TorchBatchNorm

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: ``additional_fuser_method_mapping`` for ``fuse_modules``: (Conv1d/2d/3d, BatchNorm),
#: (Conv1d/2d/3d, BatchNorm, ReLU) and (Linear, BatchNorm), BatchNorm in torch's configuration.
FUSER_METHOD_MAPPING: dict[tuple[type[nn.Module], ...], Callable[..., nn.Module]] = {
    **{(conv, TorchBatchNorm): fuse_conv_bn for conv in _CONVOLUTIONS},
    **{(conv, TorchBatchNorm, nn.ReLU): fuse_conv_bn_relu for conv in _CONVOLUTIONS},
    (nn.Linear, TorchBatchNorm): fuse_linear_bn,
}
