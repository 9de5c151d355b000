"""Batch norm with fixed statistics and affine."""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as NF
from normlab._checks import check_choice
from normlab.layers.base import NormBase
from normlab.layers.norm_classes import is_batch_norm, mixes_sample_statistics


class FrozenBatchNorm(NormBase):
    """Batch norm whose statistics and affine are fixed buffers.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in
    every mode: nothing is updated and nothing receives a gradient (the
    input still does). Used to fine-tune with small batches. A stand-in for
    torchvision's ``FrozenBatchNorm2d(num_features, eps)``, with its
    buffers, and loads the state_dict of a :class:`BatchNorm` or
    ``torch.nn.BatchNorm*d`` with the same ``stats`` (``num_batches_tracked``
    is ignored); build one from a live layer with :meth:`from_batchnorm`,
    which also copies ``eps``.

    Shape:
        - Input: (N, C, *), channels on dim 1 (or (N, *, C) with
          ``channel_dim=-1``).
        - Output: same shape and dtype as the input.

    Training vs eval: identical; ``train()`` changes nothing.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root (finite, > 0).
        stats: ``"channel"`` for (C,) statistics, ``"scalar"`` for (1,).
        channel_dim: 1 for (N, C, *) input, -1 for (N, *, C).
    """

    _repr_fields = ("stats", "eps")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        stats: NF.Stats = "channel",
        channel_dim: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_choice("stats", stats, NF.STATS)
        super().__init__(num_features, eps, channel_dim=channel_dim)
        self.stats = stats
        factory = {"device": device, "dtype": dtype}
        stat_shape = (num_features,) if stats == "channel" else (1,)
        self._register_affine(True, True, factory, as_buffers=True)
        self.register_buffer("running_mean", torch.zeros(stat_shape, **factory))
        self.register_buffer("running_var", torch.ones(stat_shape, **factory))

    def reset_running_stats(self) -> None:
        """Set running_mean to 0 and running_var to 1."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """Freeze a batch-norm layer with running statistics.

        Accepts every batch norm (:func:`normlab.layers.norm_classes.is_batch_norm`)
        but switchable norm: :class:`normlab.BatchNorm` (either convention, either
        stats), :class:`normlab.BatchRenorm`, :class:`normlab.SyncBatchNorm` and
        ``torch.nn.BatchNorm*d`` / ``SyncBatchNorm``; a layer without affine
        gets weight 1 and bias 0. The frozen layer's output equals ``bn``'s
        in eval mode.
        """
        if not is_batch_norm(bn) or mixes_sample_statistics(bn):
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
        frozen = cls(
            bn.num_features,
            bn.eps,
            stats=getattr(bn, "stats", "channel"),
            channel_dim=getattr(bn, "channel_dim", 1),
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

    def _normalize(self, input: torch.Tensor) -> torch.Tensor:
        return NF.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # A batch-norm state_dict counts its steps; a frozen layer has none.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
