"""``compare``: train one model with each normalization across batch sizes, seeds and any
other axis, keep every record in ``out/results.jsonl`` and write the report. The one way to
run a comparison: ``normlab compare`` builds this call from its flags.

Example, from a notebook::

    import torch
    from torch import nn
    from normlab.lab import compare

    def net(norm, num_classes, input_shape):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), norm(32), nn.ReLU(),
                             nn.Linear(32, num_classes))

    result = compare(norms=["none", "bn", "ln"], batch_sizes=[8, 32], seeds=3,
                     model=net, data=(train_x, train_y, val_x, val_y), out="runs/mine")
    result.records        # one dict per finished run, as results.jsonl holds them
    result.report         # runs/mine/report.html

The same call again resumes: finished runs are skipped.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from normlab.data import Dataset, dataset_from_tensors, dataset_name, load_dataset
from normlab.data.catalog import user_format
from normlab.experiment import ResultsStore, RunConfig, check_runs, plan_runs, read_results
from normlab.experiment.config import OMITTED_DEFAULTS
from normlab.experiment.ddp import torchrun_rank
from normlab.experiment.executors.choose import executor_for
from normlab.experiment.executors.lifetime import is_interrupt
from normlab.experiment.stacked import stack_refusals
from normlab.experiment.store import check_output_directory
from normlab.lab.runner import share_cores, train_runs
from normlab.models import CONTRACT, list_models, model_info, register_model
from normlab.models.registry import check_shippable

Tensors = Sequence[torch.Tensor | np.ndarray]
ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class CompareResult:
    """What a comparison left in ``out``.

    Attributes:
        out: the results folder.
        runs: every run the comparison planned.
        records: the finished runs' records, in the order results.jsonl holds them (runs
            finished by an earlier call included).
        failed: (run, error) for each run that failed in this call.
        interrupted: whether Ctrl-C (or SIGTERM) stopped it; the same call resumes.
        files: the report's files (curves.png, batch_size.png when there are two or more
            batch sizes, report.html); empty when no report was written.
    """

    out: Path
    runs: list[RunConfig]
    records: list[dict[str, Any]]
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)
    interrupted: bool = False
    files: tuple[Path, ...] = ()

    @property
    def report(self) -> Path | None:
        """report.html, when it was written."""
        return next((path for path in self.files if path.suffix == ".html"), None)

    @property
    def complete(self) -> bool:
        """Whether every planned run has finished."""
        return len({record["run_id"] for record in self.records}) == len(self.runs)


def default_out() -> Path:
    """``runs/<the time now>``: where a comparison goes when ``out`` is not given."""
    return Path("runs") / datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


def _one_or_many(value: Any, single: type | tuple[type, ...]) -> list[Any] | None:
    if value is None:
        return None
    return [value] if isinstance(value, single) else list(value)


def model_options(
    hidden: Sequence[int] | Sequence[Sequence[int]] | None = None,
    depth: int | Sequence[int] | None = None,
    dropout: float | Sequence[float] | None = None,
    cell: str | Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The product of the model options given, one dict per model; an option left out
    (None) is left to the model's default, so it does not enter run ids. ``hidden`` is one
    list of widths or a list of such lists; the others one value or a list of values."""
    if hidden is not None:
        hidden = [hidden] if all(isinstance(width, int) for width in hidden) else hidden
        hidden = [list(widths) for widths in hidden]
    given = {
        name: values
        for name, values in (
            ("hidden", hidden),
            ("cell", _one_or_many(cell, str)),
            ("depth", _one_or_many(depth, int)),
            ("dropout", _one_or_many(dropout, (int, float))),
        )
        if values is not None
    }
    return [dict(zip(given, combo, strict=True)) for combo in itertools.product(*given.values())]


def _model_name(model: str | ModelFactory, executor: str) -> str:
    """The name runs record for ``model``: a callable is registered as a model under its
    ``__name__`` (``<lambda>`` as ``lambda``), as ``@register_model`` would, unless it is
    already (normlab.models.registry)."""
    if isinstance(model, str):
        return model
    if not callable(model):
        raise ValueError(
            f"`model` must be a lab model's name, 'module:factory' or a callable {CONTRACT}; "
            f"got a {type(model).__name__}."
        )
    if executor in ("ray", "torchrun"):
        raise ValueError(
            f"a model given as an object trains in this process and its pool's workers, not "
            f"in {executor}'s processes: give `model` as 'module:function' (a function at the "
            "top level of a module those processes import)."
        )
    name = re.sub(r"\W", "", getattr(model, "__name__", "") or type(model).__name__)
    held = next((known for known in list_models() if model_info(known).builder is model), None)
    if held is not None:
        return held
    register_model(model, name=name)
    return name


def _check_data(data: Any, data_dir: str | None, executor: str) -> Dataset | str:
    """``data`` as a Dataset (given as one or as tensors) or a data set's name to load."""
    if isinstance(data, str):
        if data_dir is not None and dataset_name(data) == "digits":
            raise ValueError(
                "`data_dir` was given, but the digits data set is built in and reads no "
                "files; choose mnist, fashion-mnist or cifar10 to use the files there."
            )
        if data_dir is not None and user_format(data) is not None:
            raise ValueError(
                f"`data_dir` was given, but {data} names its own path; drop `data_dir`."
            )
        return data
    if data_dir is not None:
        raise ValueError("`data_dir` is where a named data set's files are; drop it.")
    given = data if isinstance(data, Dataset) else dataset_from_tensors(data)
    if executor in ("ray", "torchrun"):
        raise ValueError(
            f"data given in memory trains in this process and its pool's workers, not in "
            f"{executor}'s processes: give `data` as a data set's name or npz:PATH."
        )
    return given


def compare(
    *,
    norms: Sequence[str] = ("none", "bn", "ln"),
    batch_sizes: Sequence[int] = (32,),
    seeds: int = 3,
    epochs: int = 5,
    data: str | Dataset | Tensors = "digits",
    data_dir: str | os.PathLike | None = None,
    model: str | ModelFactory = "mlp",
    hidden: Sequence[int] | Sequence[Sequence[int]] | None = None,
    depth: int | Sequence[int] | None = None,
    dropout: float | Sequence[float] | None = None,
    cell: str | Sequence[str] | None = None,
    placement: str | Sequence[str] = "before",
    train_subset: int | None = None,
    lr: float | Sequence[float] = 1e-3,
    optimizer: str | Sequence[str] = "adam",
    weight_decay: float | Sequence[float] | None = None,
    lr_scaling: str = "none",
    lr_reference_batch: int = 32,
    steps: int | None = None,
    diagnostics: bool = False,
    out: str | os.PathLike | None = None,
    jobs: int | None = None,
    nproc: int = 1,
    sync_bn: bool = False,
    threads: int | None = None,
    executor: str = "processes",
    address: str | None = None,
    stack_seeds: bool = False,
    save_models: bool = False,
    report: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> CompareResult:
    """Train ``model`` with each of ``norms`` at each batch size and seed (and each value
    of every other axis given as a list), keep the records in ``out/results.jsonl`` and
    write the report there. Runs ``out`` already holds finished are skipped: the same call
    again resumes.

    Args:
        norms: kinds from ``normlab norms``, with options as ``"gn(groups=8)"``.
        batch_sizes: batch sizes to train at.
        seeds: seeds per configuration, 0 .. seeds-1.
        epochs: epochs per run.
        data: a data set's name (``"digits"``, built in; ``"mnist"``, ``"fashion-mnist"``,
            ``"cifar10"`` from ``data_dir``; ``"npz:PATH"``, ``"folder:PATH"``), a
            normlab.data.Dataset, or four tensors ``(train_images, train_labels,
            val_images, val_labels)``, images (N, C, H, W) float or uint8.
        data_dir: where a named data set's files are.
        model: a registered model's name (the lab's: normlab.models.MODELS),
            ``"module:factory"``, or a callable ``factory(norm, num_classes, input_shape)
            -> nn.Module`` (normlab.models.factory), which is registered under its
            ``__name__`` (normlab.models.register_model); worker processes receive it
            pickled, by value where needed (a lambda, a notebook's function).
        hidden, depth, dropout, cell: the lab models' options (one value or a list to
            sweep; ``hidden`` one list of widths or a list of them).
        placement: ``"before"`` or ``"after"`` the activation, or both as a list.
        train_subset: train on this many training samples (a fixed stratified subset).
        lr, optimizer, weight_decay: one value or a list to sweep.
        lr_scaling, lr_reference_batch: ``"linear"`` trains at lr x batch size / reference.
        steps: end each run after this many optimizer steps.
        diagnostics: record the probes of normlab.experiment.diagnostics.
        out: the results folder; default ``runs/<the time now>``.
        jobs: runs at once, each in a worker process (default: this machine's cores, or
            this process for a sweep as long as fewer than 5000 steps of the mlp, each
            model's steps weighted by its cost: normlab.models.ModelInfo.cost).
        nproc, sync_bn: train each run data-parallel over ``nproc`` processes.
        threads: torch threads per run (default: cores / jobs).
        executor: ``"processes"`` or ``"ray"`` (with ``address``).
        stack_seeds: train each configuration's seeds together as one batched model.
        save_models: save each trained model as ``out/models/<run_id>.pt``.
        report: write curves.png, batch_size.png and report.html into ``out``.
        progress: show progress bars and a line per finished run.
        console: where messages and progress go (a rich Console); default a new one.

    Returns:
        CompareResult: the records, the failed runs, whether it was interrupted, the report.

    Raises:
        ValueError: an option that cannot be used (naming the argument), a model that
            cannot train on the data, a folder that cannot be written (before any work).
        normlab.data.DataError: a data file missing or corrupt.
    """
    console = console or Console()
    if not progress:
        console.quiet = True
    rank, world = torchrun_rank()
    if world > 1:
        if nproc != 1 or jobs is not None or executor != "processes":
            raise ValueError(
                f"under torchrun the {world} processes train every run together; drop "
                "`nproc`, `jobs` and `executor`."
            )
        nproc, executor = world, "torchrun"
    out = default_out() if out is None else Path(out)
    data_dir = None if data_dir is None else str(data_dir)
    source = _check_data(data, data_dir, executor)
    dataset = source if isinstance(source, str) else source.name
    runs = plan_runs(
        norms=norms,
        batch_sizes=batch_sizes,
        seeds=seeds,
        dataset=dataset,
        model=_model_name(model, executor),
        placement=placement,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        weight_decay=[None] if weight_decay is None else weight_decay,
        model_options=model_options(hidden, depth, dropout, cell),
        nproc=nproc,
        sync_bn=sync_bn,
        train_subset=train_subset,
        diagnostics=diagnostics,
        lr_scaling=lr_scaling,
        lr_reference_batch=lr_reference_batch,
        steps=steps,
    )
    if jobs is None and executor == "processes" and not isinstance(model, str):
        try:
            check_shippable(runs[0].model)
        except ValueError:  # the default trains in this process instead
            jobs = 1
            console.print(
                f"model {runs[0].model!r} cannot be sent to worker processes (it holds "
                "something that does not pickle): training in this process"
            )
    store = ResultsStore(out)
    if rank == 0:
        check_output_directory(
            out,
            files=("curves.png", "batch_size.png", "report.html"),
            directories=("models",) if save_models else (),
        )
    finished = store.finished_ids()
    workers = share_cores(
        [run for run in runs if run.run_id not in finished],
        executor=executor, jobs=jobs, threads=threads, nproc=nproc, stack_seeds=stack_seeds,
    )  # fmt: skip
    chosen = executor_for(
        executor,
        data_dir=data_dir,
        models_dir=out / "models" if save_models else None,
        address=address,
        stack_seeds=stack_seeds,
        jobs=workers.jobs,
        threads=workers.threads,
    )
    chosen.check(runs)
    try:
        if rank > 0:  # rank 0 reports and writes; the others train their shares quietly
            console.quiet = True
            outcome = _train(runs, store, source, data_dir, chosen, console, jobs, threads, rank)
        else:  # a second comparison on this out is refused here, before any work; the
            # pool's workers start while the data loads
            with store.lock(), chosen:
                outcome = _train(
                    runs, store, source, data_dir, chosen, console, jobs, threads, rank,
                    stack_seeds=stack_seeds,
                )  # fmt: skip
        if outcome.interrupted:
            return _result(out, runs, interrupted=True, console=console)
        files: tuple[Path, ...] = ()
        if report and rank == 0 and store.records():
            from normlab.report import render_report  # loads matplotlib and scipy

            written = render_report(out)
            files = tuple(p for p in (written.curves, written.batch_size, written.html) if p)
    except (KeyboardInterrupt, RuntimeError) as error:  # Ctrl-C or SIGTERM, at any point
        if not is_interrupt(error):
            raise
        return _result(out, runs, interrupted=True, console=console)
    return _result(out, runs, failed=list(outcome.failed), files=files, console=console)


def _train(
    runs: list[RunConfig],
    store: ResultsStore,
    source: Dataset | str,
    data_dir: str | None,
    chosen: Any,
    console: Console,
    jobs: int | None,
    threads: int | None,
    rank: int,
    stack_seeds: bool = False,
) -> Any:
    """Load and check the data, say what the sweep is, and train it."""
    data = load_dataset(source, data_dir) if isinstance(source, str) else source
    check_runs(runs, data)
    for config, reason in stack_refusals(runs) if stack_seeds else ():
        where = f"{config.model} {config.norm_label} b={config.batch_size}"
        console.print(f"`stack_seeds`: {where} trains its seeds as separate runs: {reason}")
    return train_runs(
        runs,
        store,
        data,
        chosen,
        console=console,
        writes=rank == 0,
        keep_small_in_process=jobs is None,
        threads=threads,
        describe=describe(runs, data),
    )


def describe(runs: Sequence[RunConfig], data: Dataset) -> str:
    """One line saying what a sweep trains: data, model, norms, batch sizes and each other
    axis that takes more than one value."""
    first = runs[0]
    norms = ", ".join(dict.fromkeys(run.norm_label for run in runs))
    batch_sizes = ", ".join(map(str, dict.fromkeys(run.batch_size for run in runs)))
    seeds = len({run.seed for run in runs})
    line = (
        f"{len(runs)} runs: {first.dataset} ("
        + (f"{first.train_subset} of " if first.train_subset else "")
        + f"{len(data.train_x)} train / {len(data.val_x)} val, from {data.source}), "
        f"model {first.model}, norms {norms}, batch sizes {batch_sizes}{_axes(runs)}, "
        f"{seeds} seed(s), {first.epochs} epochs"
    )
    if first.nproc > 1:
        how = "synchronized" if first.sync_bn else "per process"
        line += f", {first.nproc} processes per run with batch norm {how}"
    return line


def _axes(runs: Sequence[RunConfig]) -> str:
    """``, lr 0.001 / 0.01, depth 2 / 8``: each option other than norm, batch size and seed
    that takes more than one value in ``runs``."""
    values: dict[str, dict[str, None]] = {}
    for run in runs:
        fields = {
            "placement": run.placement,
            "optimizer": run.optimizer,
            "lr": run.lr,
            "weight decay": "default" if run.weight_decay is None else run.weight_decay,
            "dropout": OMITTED_DEFAULTS["dropout"],
            **run.model_options,
        }
        for name, value in fields.items():
            values.setdefault(name, {})[str(value)] = None
    return "".join(f", {name} {' / '.join(seen)}" for name, seen in values.items() if len(seen) > 1)


def _result(
    out: Path,
    runs: list[RunConfig],
    *,
    console: Console,
    failed: list[tuple[RunConfig, str]] | None = None,
    interrupted: bool = False,
    files: tuple[Path, ...] = (),
) -> CompareResult:
    planned = {run.run_id for run in runs}
    try:
        records = [r for r in read_results(out) if r.get("run_id") in planned]
    except (OSError, ValueError):  # the results file itself is what is wrong
        records = []
    if interrupted:
        saved = len({record["run_id"] for record in records})
        console.print(
            f"interrupted: {saved} of {len(runs)} runs are saved in {ResultsStore(out).path}."
        )
    return CompareResult(out, runs, records, failed or [], interrupted, files)
