"""The batch-norm layers of a model, and how each keeps its running statistics.

The inference tools work on the layers that
:func:`normlab.layers.norm_classes.is_batch_norm` accepts: torch's
``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` (and their subclasses, timm's
``BatchNormAct2d``), and normlab's ``BatchNorm`` (``bn``, ``bn-scalar``, either
convention), ``BatchRenorm`` (``brn``), ``SyncBatchNorm`` and ``SwitchableNorm``
(``switch``, whose batch term has running statistics): every normlab layer that
declares what its running variance holds (``running_var_holds``).
"""

from __future__ import annotations

from torch import nn

from normlab.layers.norm_classes import is_batch_norm, tracks_running_stats

__all__ = [
    "batch_norm_layers",
    "is_batch_norm",
    "statistics_kind",
    "stores_unbiased_variance",
    "tracks_running_stats",
]


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every batch-norm layer of ``model`` as (qualified name, module), in module order.

    A module registered under several names appears once, under its first name.
    """
    return [(name, module) for name, module in model.named_modules() if is_batch_norm(module)]


def statistics_kind(module: nn.Module) -> str:
    """``"scalar"`` for one mean and variance over the whole batch (``bn-scalar``), else
    ``"channel"``."""
    return getattr(module, "stats", "channel")


def stores_unbiased_variance(module: nn.Module) -> bool:
    """Whether ``running_var`` holds the unbiased (n - 1) variance.

    torch's layers, normlab's torch convention and ``switch`` store the
    unbiased variance; normlab's Keras convention stores the biased one, and
    ``brn`` stores sigma^2 - eps, the average of the biased variance.
    """
    return getattr(module, "running_var_holds", "unbiased") == "unbiased"
