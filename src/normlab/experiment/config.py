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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from normlab.data import dataset_name
from normlab.models import check_model_name, check_placement
from normlab.norm_spec import check_norm, format_norm, parse_norm

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCALINGS = ("none", "linear")

MAX_RUNS = 50_000
"""The most runs one sweep plans. Every run is planned (and checked) before the first
trains; a sweep beyond this is refused before any work rather than exhausting memory."""

OMITTED_DEFAULTS: dict[str, Any] = {
    "weight_decay": "default",
    "dropout": 0.0,
    "init": "default",
    "init_scale": 1.0,
}
"""Fields a record leaves out at their default (so the ids of runs that do not set them
stay what they were before the field existed), and how to show that default:
``weight_decay`` of the config (the optimizer's own), the others of its model options."""


def _whole(name: str, value: Any, least: int, option: str | None = None) -> None:
    """Fail unless ``value`` is an int (not a bool) of at least ``least``; ``option`` is the
    argument it comes from, where that is not ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        where = f" (`{option}`)" if option else ""
        raise ValueError(f"{name}{where} must be a whole number of {least} or more; got {value!r}.")


def _positive_finite(name: str, value: Any) -> None:
    """Fail unless ``value`` is a finite real number above 0."""
    real = isinstance(value, int | float) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number above 0; got {value!r}.")


@dataclass(frozen=True)
class RunConfig:
    """One training run: a model with one normalization, one batch size, one seed.

    ``norm`` and ``dataset`` are stored under their canonical names, so
    "batch" and "bn" (or "MNIST" and "mnist") are the same run.
    ``norm_options`` holds the kind's keyword options for ``make_norm``
    (``{"groups": 8}`` for ``gn(groups=8)``), typed and sorted by name (see
    normlab.norm_spec). ``model`` is a lab model or the user's
    ``MODULE:FACTORY`` (see normlab.models.factory), recorded as given.
    ``diagnostics`` records the probes of normlab.experiment.diagnostics with the
    run; ``evaluations`` the after-training evaluations of
    normlab.experiment.evaluations (shifted inputs, batch 1, batch statistics at other
    batch sizes). ``lr_scaling="linear"`` trains at ``lr * batch_size / lr_reference_batch``
    (see effective_lr). ``steps`` ends the run after that many optimizer steps (an
    equal number of updates at every batch size); ``epochs`` must then be enough
    passes to take them.
    ``train_subset`` trains on that many training samples, a fixed stratified
    subset (see normlab.data.stratified_subset); None trains on them all.
    ``model_options`` holds the model builder's keyword
    options (``hidden``, ``cell``, ``depth``, ``dropout``, ``init``, ``init_scale``; see
    normlab.models.build_model), JSON-serializable. ``weight_decay`` is the
    optimizer's (decoupled for adamw, L2 for the others, as torch defines it);
    None keeps the optimizer's default (0.01 for adamw, 0 for the others).
    """

    dataset: str = "digits"
    model: str = "mlp"
    norm: str = "none"
    norm_options: dict[str, Any] = field(default_factory=dict)
    placement: str = "before"
    batch_size: int = 32
    seed: int = 0
    epochs: int = 5
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1
    sync_bn: bool = False
    diagnostics: bool = False
    evaluations: bool = False
    lr_scaling: str = "none"
    lr_reference_batch: int = 32
    steps: int | None = None
    train_subset: int | None = None

    def __post_init__(self) -> None:
        norm, norm_options = check_norm(self.norm, self.norm_options)
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "norm_options", norm_options)
        check_model_name(self.model)
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        if self.weight_decay is not None:
            decay = self.weight_decay
            if isinstance(decay, bool) or not isinstance(decay, int | float):
                raise ValueError(f"`weight_decay` must be a number; got {decay!r}.")
            if not (math.isfinite(decay) and decay >= 0):
                raise ValueError(f"`weight_decay` must be a finite number >= 0; got {decay}.")
            object.__setattr__(self, "weight_decay", float(decay))
        dropout = self.model_options.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ValueError(f"`dropout` must be a number; got {dropout!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        # A model option at its default is left out, so the run keeps the id it has without it.
        options = {
            key: value
            for key, value in self.model_options.items()
            if not (key in OMITTED_DEFAULTS and value == OMITTED_DEFAULTS[key])
            and not (key == "depth" and value is None)
        }
        object.__setattr__(self, "model_options", options)
        # Every number is checked here, where it enters, so a bad one never reaches a run.
        _whole("batch_size", self.batch_size, 1, "batch_sizes")
        _whole("seed", self.seed, 0)
        _whole("`epochs`", self.epochs, 1)
        _whole("`nproc`", self.nproc, 1)
        if self.train_subset is not None:
            _whole("`train_subset`", self.train_subset, 1)
        _positive_finite("lr", self.lr)
        if self.sync_bn and self.nproc == 1:
            raise ValueError(
                "`sync_bn` synchronizes batch norm across `nproc` processes; set `nproc` to 2 "
                "or more."
            )
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(
                f"unknown `lr_scaling` {self.lr_scaling!r}; choose none or linear "
                "(`lr` times batch size / reference batch, Goyal et al. 2017)."
            )
        if self.lr_reference_batch < 1:
            raise ValueError(
                "`lr_reference_batch`, the batch size `lr` is meant for, must be positive; got "
                f"{self.lr_reference_batch}."
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"`steps` must be at least 1; got {self.steps}.")
        if self.diagnostics and self.nproc > 1:
            raise ValueError(
                "`diagnostics` probe one-process runs only; drop `nproc` or `diagnostics`."
            )

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimizer uses: ``lr``, or with linear scaling (Goyal et al.
        2017) ``lr * batch_size / lr_reference_batch``."""
        if self.lr_scaling == "linear":
            return self.lr * self.batch_size / self.lr_reference_batch
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data. ``nproc`` and ``sync_bn`` appear only when
        set, ``norm_options`` only when there are some, ``weight_decay`` and ``train_subset``
        only when given, ``diagnostics``, ``evaluations``, the learning-rate scaling and
        ``steps`` only when set, so runs that do not use them keep the ids they had before
        those options existed."""
        data = asdict(self)
        if self.nproc == 1:
            del data["nproc"], data["sync_bn"]
        if not self.norm_options:
            del data["norm_options"]
        if self.weight_decay is None:
            del data["weight_decay"]
        if not self.diagnostics:
            del data["diagnostics"]
        if not self.evaluations:
            del data["evaluations"]
        if self.lr_scaling == "none":
            del data["lr_scaling"], data["lr_reference_batch"]
        if self.steps is None:
            del data["steps"]
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
    def norm_label(self) -> str:
        """The norm as a spec: ``gn(groups=8)``, or the bare kind without options."""
        return format_norm(self.norm, self.norm_options)

    @property
    def label(self) -> str:
        return f"{self.norm_label} b={self.batch_size} seed={self.seed}"


T = TypeVar("T")


def _axis(values: T | Sequence[T], single: type | tuple[type, ...]) -> list[T]:
    """A sweep axis: one value or a sequence of them, duplicates removed, order kept."""
    items = [values] if isinstance(values, single) else list(values)  # type: ignore[arg-type]
    unique = {json.dumps(item, sort_keys=True): item for item in items}
    return list(unique.values())


def plan_runs(
    *,
    norms: Sequence[str],
    batch_sizes: Sequence[int],
    seeds: int,
    dataset: str = "digits",
    model: str = "mlp",
    placement: str | Sequence[str] = "before",
    epochs: int = 5,
    lr: float | Sequence[float] = 1e-3,
    optimizer: str | Sequence[str] = "adam",
    weight_decay: float | Sequence[float | None] | None = None,
    model_options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    nproc: int = 1,
    sync_bn: bool = False,
    train_subset: int | None = None,
    diagnostics: bool = False,
    lr_scaling: str = "none",
    lr_reference_batch: int = 32,
    steps: int | None = None,
    max_runs: int = MAX_RUNS,
) -> list[RunConfig]:
    """Every run of a sweep: the product of its axes, seeds innermost.

    ``norms`` are specs: a kind or alias, with options as ``gn(groups=8)``
    (see normlab.norm_spec). ``placement``, ``lr``, ``optimizer``,
    ``weight_decay`` and ``model_options`` each take one value or a sequence
    of values (for ``model_options`` a sequence of dicts, e.g. one per depth),
    and the sweep is the product of all of them with ``norms``, ``batch_sizes``
    and the seeds 0 .. seeds-1. Duplicates (an alias and its kind, the same
    options in another order) are planned once. With ``nproc`` > 1 each run
    trains data-parallel over that many processes (see normlab.experiment.ddp),
    its batch norm per process or, with ``sync_bn``, synchronized. ``train_subset``,
    ``diagnostics``, ``lr_scaling``, ``lr_reference_batch`` and ``steps`` apply to every
    run (see RunConfig).

    Raises:
        ValueError: a bad value, or a sweep of more than ``max_runs`` runs (refused
            before any configuration is built).
    """
    if seeds < 1:
        raise ValueError(f"`seeds` must be at least 1; got {seeds}.")
    parsed = [parse_norm(spec) for spec in norms]
    axes: dict[str, list[Any]] = {
        "norms": list({format_norm(*norm): norm for norm in parsed}.values()),
        "placements": _axis(placement, str),
        "optimizers": _axis(optimizer, str),
        "learning rates": _axis(lr, (int, float)),
        "weight decays": _axis(weight_decay, (int, float, type(None))),
        "model options": _axis(model_options or {}, Mapping),
        "batch sizes": _axis(batch_sizes, int),
    }
    size = math.prod(len(values) for values in axes.values()) * seeds
    if size > max_runs:
        factors = [f"{len(values)} {name}" for name, values in axes.items() if len(values) > 1]
        raise ValueError(
            f"this sweep would train {size:,} runs ({' x '.join([*factors, f'{seeds:,} seeds'])}); "
            f"one sweep plans at most {max_runs:,}. Use fewer `seeds` or shorter lists, or "
            "split it into several sweeps with the same `out` (each skips the runs already "
            "finished)."
        )
    bad = [name for name in axes["optimizers"] if name not in OPTIMIZERS]
    if bad:
        raise ValueError(f"unknown optimizer {bad[0]!r}; choose one of {', '.join(OPTIMIZERS)}.")
    for place in axes["placements"]:
        check_placement(place)
    bad = [b for b in axes["batch sizes"] if b < 1]
    if bad:
        raise ValueError(f"`batch_sizes` must be positive integers; got {bad}.")
    return [
        RunConfig(
            dataset=dataset,
            model=model,
            norm=norm,
            norm_options=dict(norm_options),
            placement=place,
            batch_size=batch_size,
            seed=seed,
            epochs=epochs,
            lr=rate,
            optimizer=name,
            weight_decay=decay,
            model_options=dict(options),
            nproc=nproc,
            sync_bn=sync_bn,
            train_subset=train_subset,
            diagnostics=diagnostics,
            lr_scaling=lr_scaling,
            lr_reference_batch=lr_reference_batch,
            steps=steps,
        )
        for (norm, norm_options), place, name, rate, decay, options, batch_size, seed in (
            itertools.product(*axes.values(), range(seeds))
        )
    ]
