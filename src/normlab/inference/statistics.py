"""Running statistics from data: exact population statistics ("precise BN") and a fixed
calibration batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normlab.functional import merge_moments
from normlab.inference.layers import (
    batch_norm_layers,
    statistics_kind,
    stores_unbiased_variance,
    tracks_running_stats,
)
from normlab.modes import modes_restored


def batch_input(batch: Any, where: str = "the batch") -> torch.Tensor:
    """The model input of a batch: the batch itself, or the first item of an (input, target)
    tuple or list, as a DataLoader yields.

    Raises:
        TypeError: ``batch`` is neither.
        ValueError: the input has no samples (N = 0); ``where`` names it in the message.
    """
    if isinstance(batch, torch.Tensor):
        input = batch
    elif isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        input = batch[0]
    else:
        raise TypeError(
            f"{where} must be a tensor or an (input, target) tuple/list; got "
            f"{type(batch).__name__}."
        )
    if input.ndim == 0 or input.shape[0] == 0:
        raise ValueError(
            f"{where} has no samples (shape {tuple(input.shape)}); batch statistics need at "
            "least one sample per batch. Leave empty batches out."
        )
    return input


def check_batches(batches: Any, max_batches: int | None) -> None:
    """Fail unless ``batches`` is an iterable of batches (not one tensor) and ``max_batches``
    is None or a positive integer."""
    if isinstance(batches, torch.Tensor):
        raise TypeError(
            f"batches must be an iterable of batches (a DataLoader, a list of tensors); got one "
            f"tensor of shape {tuple(batches.shape)}, whose rows would each be taken as a "
            "batch. Pass [x] for one batch, or x.split(size) for several."
        )
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of batches (a DataLoader, a list of tensors); got "
            f"{type(batches).__name__}."
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(
            f"max_batches must be a positive integer, or None for every batch; got {max_batches!r}."
        )


class Moments:
    """Count, mean and centered sum of squares of a layer's inputs, merged batch by batch
    in float64 with Chan et al.'s parallel formula (stable: no E[x^2] - E[x]^2).

    ``stats="channel"`` keeps them per channel of (N, C, *) inputs (channels on
    ``channel_dim``: 1, or -1 for (N, *, C)), ``"scalar"`` over every element.
    """

    def __init__(self, stats: str, channel_dim: int = 1) -> None:
        self.stats = stats
        self.channel_dim = channel_dim
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, input: torch.Tensor) -> None:
        if input.numel() == 0:  # an empty call adds nothing (and must not add NaN)
            return
        values = input.detach().double()
        if self.stats == "channel":
            values = values.movedim(self.channel_dim, 0)
            values = values.reshape(values.shape[0], -1)
        else:
            values = values.reshape(1, -1)
        count = values.shape[1]
        mean = values.mean(1)
        m2 = (values - mean[:, None]).square().sum(1)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        counts = torch.tensor([[self.count], [count]], dtype=mean.dtype, device=mean.device)
        _, self.mean, self.m2 = merge_moments(
            counts, torch.stack([self.mean, mean]), torch.stack([self.m2, m2])
        )
        self.count += count

    def variance(self, unbiased: bool) -> torch.Tensor:
        """The population variance (biased, / n) or the unbiased one (/ (n - 1)).

        Raises:
            ValueError: too few values for it (none, or one for the unbiased variance).
        """
        if self.m2 is None or self.count < (2 if unbiased else 1):
            raise ValueError(
                f"a batch-norm layer saw {self.count} value(s) per statistic; its "
                f"{'unbiased ' if unbiased else ''}variance needs at least "
                f"{2 if unbiased else 1}. Use more or larger batches."
            )
        return self.m2 / (self.count - 1 if unbiased else self.count)


@contextmanager
def batch_statistics_mode(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Within: the model's batch-norm layers normalize with batch statistics (training mode)
    and every other module is in eval mode (no dropout). Afterwards, even after an error,
    each module's mode and each layer's buffers (running statistics, ``num_batches_tracked``)
    are what they were: the forward passes within change nothing that stays."""
    layers = batch_norm_layers(model)
    buffers = [
        (buffer, buffer.clone()) for _, layer in layers for buffer in layer.buffers(recurse=False)
    ]
    with modes_restored(model):
        try:
            model.eval()
            for _, layer in layers:
                layer.train()
            yield layers
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


@contextmanager
def recording_inputs(layers: list[tuple[str, nn.Module]]) -> Iterator[dict[str, Moments]]:
    """Within: the moments of every input each layer sees, by layer name."""
    moments = {
        name: Moments(statistics_kind(layer), getattr(layer, "channel_dim", 1))
        for name, layer in layers
    }
    handles = [
        layer.register_forward_pre_hook(lambda _, args, m=moments[name]: m.add(args[0]))
        for name, layer in layers
    ]
    try:
        yield moments
    finally:
        for handle in handles:
            handle.remove()


def recalibrate(
    model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None
) -> nn.Module:
    """Set every batch-norm layer's running statistics to the exact statistics of its inputs
    over ``batches`` ("precise BN", Wu & Johnson 2021), in place.

    The batches run through the model with its batch-norm layers in training
    mode (they normalize with each batch's statistics, as during training)
    and every other module in eval mode. Each layer's running mean becomes
    the mean over all the values it saw and its running variance their
    population variance, unbiased (n - 1) or biased (n) as the layer stores
    it (see ``stores_unbiased_variance``): an exact pooled statistic, not an
    exponential average. A layer called several times per forward pools all
    its calls. Weights, modes, momentum and ``num_batches_tracked`` are left
    as they were.

    Args:
        model: any module containing torch's or normlab's batch-norm layers.
        batches: an iterable (a DataLoader, a list) of tensors of shape
            (N, ...) with N >= 1, or of (input, target) pairs.
        max_batches: use at most this many batches (a positive integer), or
            None for all.

    Returns:
        ``model``. When anything fails, its statistics are left as they were.

    Raises:
        TypeError: ``batches`` is one tensor (pass ``[x]``) or not iterable,
            or a batch is neither a tensor nor an (input, target) pair.
        ValueError: no batch-norm layer, a layer without running statistics
            (``track_running_stats=False``: recalibration does not turn them
            on), no batches, an empty batch, or ``max_batches`` below 1.
    """
    check_batches(batches, max_batches)
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("the model has no batch-norm layer to recalibrate.")
    untracked = [
        name or layer._get_name() for name, layer in layers if not tracks_running_stats(layer)
    ]
    if untracked:
        raise ValueError(
            f"batch-norm layer(s) {', '.join(untracked)} keep no running statistics "
            "(track_running_stats=False) and always normalize with the batch's; there is "
            "nothing to recalibrate. Build them with track_running_stats=True."
        )
    seen = 0
    with batch_statistics_mode(model), recording_inputs(layers) as moments, torch.no_grad():
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            model(batch_input(batch, f"batch {seen} of batches"))
            seen += 1
    if seen == 0:
        raise ValueError("batches is empty: recalibration needs at least one batch.")
    statistics = [
        (layer, moments[name].mean, moments[name].variance(stores_unbiased_variance(layer)))
        for name, layer in layers
    ]  # all computed (and checked) before any layer changes
    with torch.no_grad():
        for layer, mean, variance in statistics:
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(variance)
    return model


@dataclass(frozen=True)
class StatisticsShift:
    """How far one layer's new running statistics are from its previous ones.

    ``mean_shift``: the largest |new mean - old mean| over channels, in units
    of the old standard deviation sqrt(old var + eps). ``var_ratio_min`` /
    ``var_ratio_max``: the range over channels of (new var + eps) / (old var + eps).
    """

    name: str
    mean_shift: float
    var_ratio_min: float
    var_ratio_max: float


def calibrate_with_batch(model: nn.Module, batch: Any) -> list[StatisticsShift]:
    """Set every batch-norm layer's running statistics from one calibration batch, in place.

    The statistics are those :func:`recalibrate` computes from this batch
    alone.

    Returns:
        Per layer, how far the new statistics are from the running
        statistics they replace.
    """
    before = {
        name: (layer.running_mean.double().clone(), layer.running_var.double().clone())
        for name, layer in batch_norm_layers(model)
        if tracks_running_stats(layer)
    }
    recalibrate(model, [batch])
    shifts = []
    for name, layer in batch_norm_layers(model):
        old_mean, old_var = before[name]
        scale = (old_var + layer.eps).sqrt()
        ratio = (layer.running_var.double() + layer.eps) / (old_var + layer.eps)
        shifts.append(
            StatisticsShift(
                name,
                ((layer.running_mean.double() - old_mean).abs() / scale).max().item(),
                ratio.min().item(),
                ratio.max().item(),
            )
        )
    return shifts
