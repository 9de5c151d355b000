"""One executor from the sweep's options, refusing any option the executor would ignore."""

from __future__ import annotations

import os

from normlab.experiment.executors.contract import Executor
from normlab.experiment.executors.in_process import InProcessExecutor
from normlab.experiment.executors.pool import ProcessPoolExecutor
from normlab.experiment.executors.torchrun import TorchrunExecutor

EXECUTORS = ("processes", "ray", "torchrun")


def executor_for(
    name: str = "processes",
    *,
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    data_dir: str | None = None,
    models_dir: str | os.PathLike | None = None,
    stack_seeds: bool = False,
) -> Executor:
    """The executor ``name`` with these options (None: not given).

    Args:
        name: ``"processes"`` (this machine: ``jobs`` processes, default 1: this
            process), ``"ray"`` (each run a Ray task) or ``"torchrun"`` (this process
            is one of a torchrun launch).
        jobs: with ``"processes"``, runs trained at once.
        threads: torch threads per run (per process of a run over several); default 1,
            under torchrun the launch's setting.
        address: with ``"ray"``, the cluster; None starts a local one.
        data_dir: where the dataset's files are.
        models_dir: where to save each trained model; None saves nothing.
        stack_seeds: train the seeds of each configuration together, as one batched model
            (see normlab.experiment.stacked); ``"processes"`` only.

    Raises:
        ValueError: an unknown name, or an option this executor does not use.
        RayNotInstalledError: ``"ray"`` without Ray installed.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}.")
    if address is not None and name != "ray":
        raise ValueError("`address` names a Ray cluster; add `executor` ray.")
    if jobs is not None and name == "ray":
        raise ValueError(
            "`jobs` sets this machine's processes; with `executor` ray the cluster's CPUs "
            "decide how many runs train at once (each holds `threads` CPUs). Drop `jobs`."
        )
    if stack_seeds and name != "processes":
        raise ValueError(
            "`stack_seeds` trains the seeds of each configuration together in one process of "
            "this machine; it does not combine with `executor` ray or torchrun. Drop one."
        )
    places = {"data_dir": data_dir, "models_dir": models_dir}
    if name == "ray":
        from normlab.experiment.executors.ray_tasks import RayExecutor  # Ray is optional

        return RayExecutor(threads=1 if threads is None else threads, address=address, **places)
    if name == "torchrun":
        if jobs is not None and jobs != 1:
            raise ValueError(
                "under torchrun the launch's processes train every run together; drop `jobs`."
            )
        return TorchrunExecutor(threads=threads, **places)
    if jobs is None or jobs == 1:
        return InProcessExecutor(
            threads=1 if threads is None else threads, stack_seeds=stack_seeds, **places
        )
    return ProcessPoolExecutor(
        jobs=jobs, threads=1 if threads is None else threads, stack_seeds=stack_seeds, **places
    )


#: below this many optimizer steps of the mlp in all (a model's steps weighted by its cost),
#: compare's default trains a sweep in its own process
SMALL_SWEEP_STEPS = 5000


def in_process_if_small(executor: Executor, steps: int, threads: int) -> Executor | None:
    """An InProcessExecutor (``threads`` torch threads, the pool's data and models places) in
    place of the pool ``executor`` when its runs take fewer than SMALL_SWEEP_STEPS optimizer
    steps of the mlp in all (``steps``, each model's weighted by its cost: see
    normlab.lab.runner.mlp_steps): too few to repay starting worker processes (about 2.5 s
    of imports each). The pool is closed. None: keep ``executor``."""
    if not isinstance(executor, ProcessPoolExecutor) or steps >= SMALL_SWEEP_STEPS:
        return None
    executor.close()
    return InProcessExecutor(
        threads=threads,
        data_dir=executor.data_dir,
        models_dir=executor.models_dir,
        stack_seeds=executor.stack_seeds,
    )
