"""The claims study's experiments: which runs each claim needs, at a quick or a full budget.

Every experiment is a list of :class:`~normlab.experiment.RunConfig`; the analysis
finds each run's record by its run id, so experiments that plan the same run share it
(the batch experiment's runs at batch 32 are the replication's first seeds). All runs
train on MNIST, on the full training set at the full budget (the regularization
experiment on a subset it can fit), and every one is validated on the 10,000 test images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from normlab.experiment.config import RunConfig

DATASET = "mnist"
TUTORIAL_HIDDEN = (128, 64)
"""The tutorials' MLP: Dense 128, Dense 64, Dense 10."""


THRESHOLDS = {"mlp": 97.5, "cnn": 98.5, "resnet20": 98.5, "rnn": 97.0, "transformer": 96.5}
"""The validation accuracy (%) the best configuration of an experiment on each model must
reach for the experiment to count as trained (on the full training set)."""
FIT_THRESHOLD = 99.0
"""Experiments on a training subset that must fit it: the best configuration's final
training accuracy (%)."""
REFERENCE_BATCH = 32
"""The tutorials' batch size; learning rates scale with the square root of the batch
relative to it (Adam), so batch 32 trains at the tutorials' own 1e-3."""


@dataclass(frozen=True)
class Budget:
    """How much the study trains: seeds, epochs, training-set sizes and each axis's grid.

    ``subset`` None trains on the full training set."""

    name: str
    replication_seeds: int
    seeds: int
    epochs: int
    subset: int | None
    batch_sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    depths: tuple[int, ...]
    depth_width: int
    widths: tuple[int, ...]
    dropouts: tuple[float, ...]
    fit_subset: int
    fit_epochs: int
    init_scales: tuple[float, ...]
    small_batches: tuple[int, ...]
    conv_epochs: int
    ics_depth: int


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        name="quick",
        replication_seeds=2,
        seeds=2,
        epochs=1,
        subset=2000,
        batch_sizes=(8, 32, 256),
        lrs=(0.01, 0.1, 1.0),
        depths=(2, 8),
        depth_width=32,
        widths=(16, 128),
        dropouts=(0.0, 0.5),
        fit_subset=500,
        fit_epochs=3,
        init_scales=(0.1, 1.0, 10.0),
        small_batches=(4, 32),
        conv_epochs=1,
        ics_depth=4,
    ),
    "full": Budget(
        name="full",
        replication_seeds=10,
        seeds=5,
        epochs=5,
        subset=None,
        batch_sizes=(4, 8, 32, 256),
        lrs=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
        depths=(2, 8, 16, 32),
        depth_width=128,
        widths=(16, 64, 256, 1024),
        dropouts=(0.0, 0.1, 0.3, 0.5),
        fit_subset=10000,
        fit_epochs=30,
        init_scales=(0.1, 0.3, 1.0, 3.0, 10.0),
        small_batches=(2, 4, 8, 32),
        conv_epochs=2,
        ics_depth=8,
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


def sqrt_scaled(batch_size: int, lr: float = 1e-3) -> float:
    """Adam's learning rate at ``batch_size``: ``lr`` at the tutorials' batch of 32, scaled
    with the square root of the batch (the noise scale of Adam's update; Malladi et al.
    2022), rounded to 6 significant digits so that run ids are stable."""
    return float(f"{lr * math.sqrt(batch_size / REFERENCE_BATCH):.6g}")


def _by_batch(seeds: int, batch_sizes: Sequence[int], **grid: Any) -> list[RunConfig]:
    """``_runs`` at each batch size with Adam's learning rate scaled by ``sqrt_scaled``."""
    return [
        run
        for size in batch_sizes
        for run in _runs(seeds, batch_size=size, lr=sqrt_scaled(size), **grid)
    ]


def plan(budget: Budget) -> dict[str, list[RunConfig]]:
    """Each experiment's runs, by name, in the order they train (the primary tests' first).

    Every experiment trains on the full MNIST training set at the full budget, except
    those that must fit their training set (``fit_subset``)."""
    b = budget
    mlp = {"model": "mlp", "model_options": {"hidden": list(TUTORIAL_HIDDEN)}}
    data = {"epochs": b.epochs, "train_subset": b.subset}
    he = {"init": "he"}
    return {
        # The first tutorial's experiment as it ran it: Adam 1e-3, batch 32, 5 epochs.
        "replication": _runs(
            b.replication_seeds,
            **mlp,
            **data,
            norm=["none", "bn", "bn-scalar", "ln"],
            batch_size=REFERENCE_BATCH,
        ),
        # Batch size, with batch renorm as the mechanism control for small batches.
        "batch": _by_batch(
            b.seeds, b.batch_sizes, **mlp, **data, norm=["none", "bn", "bn-scalar", "ln", "brn"]
        ),
        # SGD with momentum over a grid that brackets every norm's optimum.
        "lr": _runs(
            b.seeds,
            **mlp,
            **data,
            norm=["none", "bn", "ln"],
            optimizer="sgd",
            lr=list(b.lrs),
            batch_size=64,
        ),
        # Depth: torch's default init and He init without normalization, bn and ln.
        "depth": [
            run
            for options, norms in (({}, ["none", "bn", "ln"]), (he, ["none"]))
            for run in _runs(
                b.seeds,
                model="mlp",
                **data,
                norm=norms,
                model_options=[
                    {"hidden": [b.depth_width] * depth, **options} for depth in b.depths
                ],
                batch_size=64,
                diagnostics=True,
            )
        ],
        # Initialization: He init times a scale, with and without each norm.
        "init": _runs(
            b.seeds,
            model="mlp",
            **data,
            norm=["none", "bn", "ln"],
            model_options=[
                {"hidden": list(TUTORIAL_HIDDEN), **he, "init_scale": scale}
                for scale in b.init_scales
            ],
            batch_size=REFERENCE_BATCH,
        ),
        # Regularization: a subset small enough to fit, dropout with and without a norm.
        "dropout": _runs(
            b.seeds,
            model="mlp",
            norm=["none", "bn", "ln"],
            model_options=[{"hidden": list(TUTORIAL_HIDDEN), "dropout": p} for p in b.dropouts],
            batch_size=REFERENCE_BATCH,
            epochs=b.fit_epochs,
            train_subset=b.fit_subset,
        ),
        # Per-feature vs scalar statistics as the width grows.
        "width": _runs(
            b.seeds,
            model="mlp",
            **data,
            norm=["bn", "bn-scalar"],
            model_options=[{"hidden": [width, width]} for width in b.widths],
            batch_size=REFERENCE_BATCH,
        ),
        # Internal covariate shift and smoothness, probed from step 0, Adam and SGD.
        "ics": [
            run
            for optimizer, lr in (("adam", 1e-3), ("sgd", 0.03))
            for run in _runs(
                b.seeds,
                model="mlp",
                **data,
                norm=["none", "bn", "bn-scalar", "ln"],
                model_options=[
                    {"hidden": list(TUTORIAL_HIDDEN)},
                    {"hidden": [TUTORIAL_HIDDEN[0]] * b.ics_depth},
                ],
                optimizer=optimizer,
                lr=lr,
                batch_size=REFERENCE_BATCH,
                diagnostics=True,
            )
        ],
        # Group norm (8 groups, not instance norm) against bn, brn and ln at small batches.
        "group-norm": [
            run
            for norm, options in (("gn", {"groups": 8}), ("bn", {}), ("brn", {}), ("ln", {}))
            for run in _by_batch(
                b.seeds,
                b.small_batches,
                model="cnn",
                norm=norm,
                norm_options=options,
                epochs=b.conv_epochs,
                train_subset=b.subset,
            )
        ],
        # The tutorials' MLP evaluated after training: under shifted inputs, at batch 1, and
        # with batch statistics at other batch sizes (normlab.experiment.evaluations).
        "after-training": _runs(
            b.seeds,
            **mlp,
            **data,
            norm=["none", "bn", "bn-scalar", "ln"],
            batch_size=REFERENCE_BATCH,
            evaluations=True,
        ),
    }


def all_runs(experiments: dict[str, list[RunConfig]]) -> list[RunConfig]:
    """Every planned run once, in plan order."""
    unique: dict[str, RunConfig] = {}
    for runs in experiments.values():
        for run in runs:
            unique.setdefault(run.run_id, run)
    return list(unique.values())
