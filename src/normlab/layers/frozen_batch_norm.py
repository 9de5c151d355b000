"""Batch norm with fixed statistics and affine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normlab import functional as NF
from normlab._checks import check_choice, check_input, check_num_features
from normlab.layers.batch_norm import BatchNorm


class FrozenBatchNorm(nn.Module):
    """Batch norm whose statistics and affine are fixed buffers.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in
    every mode: nothing is updated and nothing receives a gradient (the
    input still does). Used to fine-tune with small batches. Loads the
    state_dict of a :class:`BatchNorm` or ``torch.nn.BatchNorm*d`` with the
    same ``stats`` (``num_batches_tracked`` is ignored); build one from a
    live layer with :meth:`from_batchnorm`, which also copies ``eps``.

    Shape:
        - Input: (N, C, *), channels on dim 1.
        - Output: same shape and dtype as the input.

    Training vs eval: identical; ``train()`` changes nothing.

    Args:
        num_features: C, the number of channels.
        stats: ``"channel"`` for (C,) statistics, ``"scalar"`` for (1,).
        eps: added to the variance before the square root.
    """

    def __init__(
        self,
        num_features: int,
        *,
        stats: NF.Stats = "channel",
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        check_choice("stats", stats, NF.STATS)
        self.num_features = num_features
        self.stats = stats
        self.eps = eps
        factory = {"device": device, "dtype": dtype}
        stat_shape = (num_features,) if stats == "channel" else (1,)
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(stat_shape, **factory))
        self.register_buffer("running_var", torch.ones(stat_shape, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """Freeze a batch-norm layer with running statistics.

        Accepts :class:`normlab.BatchNorm` (either convention, either stats,
        and its subclasses BatchRenorm and SyncBatchNorm) and
        ``torch.nn.BatchNorm*d`` / ``SyncBatchNorm``; a layer without affine
        gets weight 1 and bias 0. The frozen layer's output equals ``bn``'s
        in eval mode.
        """
        if not isinstance(bn, (BatchNorm, nn.modules.batchnorm._BatchNorm)):
            raise TypeError(
                f"from_batchnorm takes a batch-norm layer (normlab.BatchNorm, BatchRenorm or "
                f"torch.nn.BatchNorm*d); got {type(bn).__name__}, whose eval output is not "
                "batch norm's formula."
            )
        if bn.running_mean is None:
            raise ValueError(
                f"cannot freeze {type(bn).__name__} without running statistics "
                "(track_running_stats=False): there are no statistics to fix."
            )
        stats = bn.stats if isinstance(bn, BatchNorm) else "channel"
        frozen = cls(
            bn.num_features,
            stats=stats,
            eps=bn.eps,
            device=bn.running_mean.device,
            dtype=bn.running_mean.dtype,
        )
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
        return frozen

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_input(input, self.num_features, type(self).__name__)
        channels = self.num_features
        return F.batch_norm(
            input,
            self.running_mean.expand(channels),
            self.running_var.expand(channels),
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # A batch-norm state_dict counts its steps; a frozen layer has none.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, stats={self.stats!r}, eps={self.eps}"
