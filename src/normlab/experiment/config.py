"""What one training run is, and the sweep of runs ``normlab compare`` plans.

A run is identified by its configuration alone (``run_id``): the same
configuration always has the same id, which is how a resumed sweep knows
which runs are already finished. Where the data came from and how many
threads trained it are recorded beside the configuration, not in it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from normlab.data import dataset_name
from normlab.models import check_model_name, check_placement
from normlab.registry import get_kind

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def _whole(name: str, value: Any, least: int, option: str | None = None) -> None:
    """Fail unless ``value`` is an int (not a bool) of at least ``least``; ``option`` is the
    command-line option it comes from, if one does."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        where = f" ({option})" if option else ""
        raise ValueError(f"{name}{where} must be a whole number of {least} or more; got {value!r}.")


def _positive_finite(name: str, value: Any) -> None:
    """Fail unless ``value`` is a finite real number above 0."""
    real = isinstance(value, int | float) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} (--{name}) must be a finite number above 0; got {value!r}.")


@dataclass(frozen=True)
class RunConfig:
    """One training run: a model with one normalization, one batch size, one seed.

    ``norm`` and ``dataset`` are stored under their canonical names, so
    "batch" and "bn" (or "MNIST" and "mnist") are the same run.
    ``model`` is a lab model or the user's ``MODULE:FACTORY`` (see
    normlab.models.factory), recorded as given. ``model_options`` holds the
    model builder's keyword options (``hidden``, ``cell``), JSON-serializable.
    ``train_subset`` trains on that many training samples, a fixed stratified
    subset (see normlab.data.stratified_subset); None trains on them all.
    """

    dataset: str = "digits"
    model: str = "mlp"
    norm: str = "none"
    placement: str = "before"
    batch_size: int = 32
    seed: int = 0
    epochs: int = 5
    lr: float = 1e-3
    optimizer: str = "adam"
    model_options: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1
    sync_bn: bool = False
    train_subset: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", get_kind(self.norm).name)
        check_model_name(self.model)
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        # Every number is checked here, where it enters, so a bad one never reaches a run.
        _whole("batch_size", self.batch_size, 1, "--batch-sizes")
        _whole("seed", self.seed, 0)
        _whole("epochs", self.epochs, 1, "--epochs")
        _whole("nproc", self.nproc, 1, "--nproc")
        if self.train_subset is not None:
            _whole("train_subset", self.train_subset, 1, "--train-subset")
        _positive_finite("lr", self.lr)
        if self.sync_bn and self.nproc == 1:
            raise ValueError(
                "--sync-bn synchronizes batch norm across --nproc processes; add --nproc 2 or more."
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data. ``nproc``, ``sync_bn`` and ``train_subset``
        appear only when set, so runs keep the ids they had before those options existed."""
        data = asdict(self)
        if self.nproc == 1:
            del data["nproc"], data["sync_bn"]
        if self.train_subset is None:
            del data["train_subset"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)

    @property
    def run_id(self) -> str:
        """12 hex digits of the SHA-1 of the configuration's canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.norm} b={self.batch_size} seed={self.seed}"


def plan_runs(
    *,
    norms: list[str],
    batch_sizes: list[int],
    seeds: int,
    dataset: str = "digits",
    model: str = "mlp",
    placement: str = "before",
    epochs: int = 5,
    lr: float = 1e-3,
    optimizer: str = "adam",
    model_options: dict[str, Any] | None = None,
    nproc: int = 1,
    sync_bn: bool = False,
    train_subset: int | None = None,
) -> list[RunConfig]:
    """Every (norm, batch size, seed) run of a sweep, seeds innermost.

    Seeds are 0 .. seeds-1. Duplicate norms (an alias and its kind) are
    planned once. With ``nproc`` > 1 each run trains data-parallel over that
    many processes (see normlab.experiment.ddp), its batch norm per process or,
    with ``sync_bn``, synchronized.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1; got {seeds}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    check_placement(placement)
    bad = [b for b in batch_sizes if b < 1]
    if bad:
        raise ValueError(f"batch sizes must be positive integers; got {bad}.")
    canonical = list(dict.fromkeys(get_kind(name).name for name in norms))
    runs = [
        RunConfig(
            dataset=dataset,
            model=model,
            norm=norm,
            placement=placement,
            batch_size=batch_size,
            seed=seed,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            model_options=dict(model_options or {}),
            nproc=nproc,
            sync_bn=sync_bn,
            train_subset=train_subset,
        )
        for norm, batch_size, seed in itertools.product(
            canonical, dict.fromkeys(batch_sizes), range(seeds)
        )
    ]
    return runs
