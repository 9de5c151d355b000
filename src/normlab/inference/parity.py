"""Train/eval parity: how differently a model behaves with batch statistics and with its
running statistics, on one batch, without changing the model."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from normlab.inference.layers import batch_norm_layers, statistics_kind, tracks_running_stats
from normlab.inference.statistics import batch_input, batch_statistics_mode, recording_inputs
from normlab.modes import eval_mode


@dataclass(frozen=True)
class LayerParity:
    """One batch-norm layer on one batch.

    ``mean_shift``: the largest |batch mean - running mean| over channels, in
    units of the running standard deviation sqrt(running var + eps).
    ``var_ratio_min`` / ``var_ratio_max``: the range over channels of
    (batch var + eps) / (running var + eps), with the biased batch variance
    the layer normalizes with. ``output_change``: ||y_train - y_eval|| /
    ||y_eval|| of the layer's output (it includes what changed upstream).
    """

    name: str
    kind: str
    mean_shift: float
    var_ratio_min: float
    var_ratio_max: float
    output_change: float


@dataclass(frozen=True)
class ParityReport:
    """A model on one batch with batch statistics (training-mode batch norm) and with running
    statistics (eval mode).

    ``output_change``: ||out_train - out_eval|| / ||out_eval||;
    ``max_abs_change``: the largest |out_train - out_eval|;
    ``prediction_agreement``: the fraction of samples whose argmax over dim 1
    is the same in both, for (N, classes) outputs (None otherwise).
    """

    layers: list[LayerParity]
    output_change: float
    max_abs_change: float
    prediction_agreement: float | None
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relative_change(train: torch.Tensor, eval_: torch.Tensor) -> float:
    difference = (train.double() - eval_.double()).norm()
    scale = eval_.double().norm()
    return (difference / scale).item() if scale > 0 else difference.item()


@contextmanager
def _recording_outputs(layers: list[tuple[str, nn.Module]]) -> Iterator[dict[str, torch.Tensor]]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(
            lambda _, __, output, name=name: outputs.setdefault(name, output.detach())
        )
        for name, layer in layers
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def eval_parity(model: nn.Module, batch: Any) -> ParityReport:
    """Compare ``model``'s batch-statistics and running-statistics behaviour on ``batch``.

    The batch-statistics pass runs on a copy of the model with its
    batch-norm layers in training mode and every other module in eval mode
    (no dropout), so the running statistics, modes and counters of ``model``
    are not changed; the running-statistics pass is the model in eval mode.

    Args:
        model: a module with torch's or normlab's batch-norm layers, all
            keeping running statistics.
        batch: a tensor of shape (N, ...), N >= 1, or an (input, target) pair.

    Raises:
        TypeError: ``batch`` is neither a tensor nor an (input, target) pair.
        ValueError: no batch-norm layer with running statistics, an empty
            batch, or a batch the layers cannot normalize in training mode
            (one sample).
    """
    layers = [
        (name, layer) for name, layer in batch_norm_layers(model) if tracks_running_stats(layer)
    ]
    if not layers:
        raise ValueError("the model has no batch-norm layer with running statistics to compare.")
    input = batch_input(batch)
    trial = copy.deepcopy(model)
    trial_layers = dict(batch_norm_layers(trial))
    chosen = [(name, trial_layers[name]) for name, _ in layers]
    with (
        torch.no_grad(),
        batch_statistics_mode(trial),
        recording_inputs(chosen) as moments,
        _recording_outputs(chosen) as train_outputs,
    ):
        out_train = trial(input)
    with eval_mode(model), torch.no_grad(), _recording_outputs(layers) as eval_outputs:
        out_eval = model(input)
    report = []
    for name, layer in layers:
        stats = moments[name]
        scale = (layer.running_var.double() + layer.eps).sqrt()
        ratio = (stats.variance(unbiased=False) + layer.eps) / scale.square()
        report.append(
            LayerParity(
                name=name,
                kind=f"{layer._get_name()}({statistics_kind(layer)})",
                mean_shift=((stats.mean - layer.running_mean.double()).abs() / scale).max().item(),
                var_ratio_min=ratio.min().item(),
                var_ratio_max=ratio.max().item(),
                output_change=_relative_change(train_outputs[name], eval_outputs[name]),
            )
        )
    agreement = None
    if out_eval.ndim == 2 and out_eval.shape[1] > 1:
        agreement = (out_train.argmax(1) == out_eval.argmax(1)).double().mean().item()
    return ParityReport(
        layers=report,
        output_change=_relative_change(out_train, out_eval),
        max_abs_change=(out_train.double() - out_eval.double()).abs().max().item(),
        prediction_agreement=agreement,
        batch_size=len(input),
    )
