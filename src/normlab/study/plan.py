"""The claims study's experiments: which runs each claim needs, at a quick or a full budget.

Every experiment is a list of :class:`~normlab.experiment.RunConfig`; the analysis
finds each run's record by its run id, so experiments that plan the same run share it.
All runs train on MNIST; most on a fixed stratified training subset (``train_subset``)
and every one is validated on the 10,000 test images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from normlab.experiment.config import RunConfig

DATASET = "mnist"
TUTORIAL_HIDDEN = (128, 64)
"""The tutorials' MLP: Dense 128, Dense 64, Dense 10."""


@dataclass(frozen=True)
class Budget:
    """How much the study trains: seeds, epochs, subset sizes and the grids of each axis."""

    name: str
    seeds: int
    epochs: int
    subset: int
    batch_sizes: tuple[int, ...]
    equal_steps: int
    sweep_seeds: int
    sweep_epochs: int
    lrs: tuple[float, ...]
    depths: tuple[int, ...]
    depth_width: int
    widths: tuple[int, ...]
    dropout: float
    dropout_subset: int
    dropout_epochs: int
    small_batches: tuple[int, ...]
    conv_subset: int
    conv_epochs: int
    resnet_subset: int


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        name="quick",
        seeds=2,
        epochs=2,
        subset=2000,
        batch_sizes=(8, 32, 256),
        equal_steps=200,
        sweep_seeds=2,
        sweep_epochs=2,
        lrs=(0.01, 0.1, 1.0),
        depths=(2, 16),
        depth_width=32,
        widths=(16, 256),
        dropout=0.3,
        dropout_subset=1000,
        dropout_epochs=4,
        small_batches=(4, 32),
        conv_subset=1000,
        conv_epochs=1,
        resnet_subset=500,
    ),
    "full": Budget(
        name="full",
        seeds=5,
        epochs=3,
        subset=5000,
        batch_sizes=(4, 32, 256),
        equal_steps=600,
        sweep_seeds=3,
        sweep_epochs=3,
        lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
        depths=(2, 8, 16, 32),
        depth_width=64,
        widths=(16, 64, 256, 1024),
        dropout=0.3,
        dropout_subset=2000,
        dropout_epochs=15,
        small_batches=(4, 32),
        conv_subset=2000,
        conv_epochs=2,
        resnet_subset=1000,
    ),
}


def _runs(seeds: int, **grid: Iterable[Any] | Any) -> list[RunConfig]:
    """Every combination of the iterable fields in ``grid`` (the others fixed), seeds
    innermost. ``model_options`` is fixed unless given as a list of dicts."""
    fixed = {k: v for k, v in grid.items() if not isinstance(v, list)}
    axes = {k: v for k, v in grid.items() if isinstance(v, list)}
    combos: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        combos = [{**combo, name: value} for combo in combos for value in values]
    return [
        RunConfig(dataset=DATASET, seed=seed, **fixed, **combo)
        for combo in combos
        for seed in range(seeds)
    ]


def _epochs_for(steps: int, subset: int, batch_size: int) -> int:
    return math.ceil(steps / math.ceil(subset / batch_size))


def plan(
    budget: Budget, models: Iterable[str] = ("mlp", "cnn", "rnn"), dropout: bool = True
) -> dict[str, list[RunConfig]]:
    """Each experiment's runs, by name. ``models`` are the lab models available; the
    transformer and resnet20 experiments are planned only when those models are, and the
    dropout experiment only when the models take ``dropout``."""
    b = budget
    mlp = {"model": "mlp", "model_options": {"hidden": list(TUTORIAL_HIDDEN)}}
    experiments: dict[str, list[RunConfig]] = {
        # Claims 1, 5, 6, 8, 9, 10 and the seven existing ones: the tutorials' MLP.
        "batch": _runs(
            b.seeds,
            **mlp,
            norm=["none", "bn", "bn-scalar", "ln"],
            batch_size=list(b.batch_sizes),
            epochs=b.epochs,
            train_subset=b.subset,
            diagnostics=True,
        ),
        # "bn degrades at small batch" with the number of updates held equal.
        "equal-steps": [
            replace(run, epochs=_epochs_for(b.equal_steps, b.subset, run.batch_size))
            for run in _runs(
                b.seeds,
                **mlp,
                norm=["bn", "ln", "none"],
                batch_size=[min(b.batch_sizes), max(b.batch_sizes)],
                epochs=1,
                steps=b.equal_steps,
                train_subset=b.subset,
            )
        ],
        # ... and with the learning rate scaled with the batch (Goyal et al. 2017).
        "linear-lr": _runs(
            b.seeds,
            **mlp,
            norm=["bn", "ln"],
            batch_size=[min(b.batch_sizes), max(b.batch_sizes)],
            epochs=b.epochs,
            lr_scaling="linear",
            lr_reference_batch=32,
            train_subset=b.subset,
        ),
        # Claim 2: SGD with momentum over a learning-rate grid.
        "lr": _runs(
            b.sweep_seeds,
            **mlp,
            norm=["none", "bn"],
            optimizer="sgd",
            lr=list(b.lrs),
            batch_size=64,
            epochs=b.sweep_epochs,
            train_subset=b.subset,
        ),
        # Claim 3: depth, with gradient diagnostics.
        "depth": _runs(
            b.sweep_seeds,
            model="mlp",
            norm=["none", "bn", "ln"],
            model_options=[{"hidden": [b.depth_width] * depth} for depth in b.depths],
            batch_size=64,
            epochs=b.sweep_epochs,
            train_subset=b.subset,
            diagnostics=True,
        ),
        # Claim 4: dropout with and without batch norm, on a small subset that overfits.
        "dropout": []
        if not dropout
        else _runs(
            b.seeds,
            model="mlp",
            norm=["none", "bn"],
            model_options=[
                {"hidden": list(TUTORIAL_HIDDEN)},
                {"hidden": list(TUTORIAL_HIDDEN), "dropout": b.dropout},
            ],
            batch_size=32,
            epochs=b.dropout_epochs,
            train_subset=b.dropout_subset,
        ),
        # Claim 11: per-feature vs scalar statistics as the width grows.
        "width": _runs(
            b.sweep_seeds,
            model="mlp",
            norm=["bn", "bn-scalar"],
            model_options=[{"hidden": [width, width]} for width in b.widths],
            batch_size=32,
            epochs=b.sweep_epochs,
            train_subset=b.subset,
        ),
        # Claim 7: recurrent network (and transformer) with ln, bn, rms.
        "rnn": _runs(
            b.sweep_seeds,
            model="rnn",
            model_options={"hidden": [64]},
            norm=["ln", "bn", "rms", "none"],
            batch_size=64,
            epochs=b.sweep_epochs,
            train_subset=b.subset,
        ),
        # Claim 12: group norm vs batch norm at small batches, on convolutional networks.
        "conv-small-batch": _runs(
            b.sweep_seeds,
            model="cnn",
            norm=["gn", "bn"],
            batch_size=list(b.small_batches),
            epochs=b.conv_epochs,
            train_subset=b.conv_subset,
        ),
    }
    if not dropout:
        del experiments["dropout"]
    if "transformer" in models:
        experiments["transformer"] = _runs(
            b.sweep_seeds,
            model="transformer",
            norm=["ln", "bn", "rms"],
            batch_size=64,
            epochs=b.sweep_epochs,
            train_subset=b.conv_subset,
        )
    if "resnet20" in models:
        experiments["resnet20-small-batch"] = _runs(
            b.sweep_seeds,
            model="resnet20",
            norm=["gn", "bn"],
            batch_size=list(b.small_batches),
            epochs=b.conv_epochs,
            train_subset=b.resnet_subset,
        )
    return experiments


def all_runs(experiments: dict[str, list[RunConfig]]) -> list[RunConfig]:
    """Every planned run once, in plan order."""
    unique: dict[str, RunConfig] = {}
    for runs in experiments.values():
        for run in runs:
            unique.setdefault(run.run_id, run)
    return list(unique.values())
