"""What `--nproc 2` costs per run beyond the training itself: a digits sweep trained over two
processes per run, one way with a process group spawned for each run (as `--nproc` did
before the sweep kept one group), the other with the sweep's one group
(normlab.experiment.ddp.TrainingGroup, what ``run_sweep`` does now).

Per-run overhead = (the sweep's wall time - the sum of its runs' own ``seconds``) / runs:
the wall time counts the sweep's data load and warm-up, the groups' start-up and the
hand-over of each run; a run's own seconds count its training and evaluation. Each
repetition of each way is a fresh process, the two ways alternating.

    python benchmarks/nproc_overhead.py [--epochs 1] [--repeats 3] [--json FILE]

``benchmarks/train_speed.py`` reports the same table (switch it off with ``--no-nproc``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

NPROC = 2
NPROC_RUNS = {"norms": ["none", "bn"], "batch_sizes": [32], "seeds": 2}
WAYS = {"spawn": "a group per run (before)", "group": "one group per sweep"}

NPROC_CHILD = textwrap.dedent(
    """
    import functools, json, sys, tempfile, time
    import torch
    from normlab.data import load_dataset
    from normlab.experiment.config import plan_runs
    from normlab.experiment.ddp import train_distributed
    from normlab.experiment.executors.contract import Executor, error_text
    from normlab.experiment.executors.in_process import InProcessExecutor
    from normlab.experiment.store import ResultsStore
    from normlab.experiment.sweep import run_sweep
    from normlab.experiment.train import warm_up


    class GroupPerRun(Executor):
        \"\"\"The in-process executor as it was: a process group spawned for each run.\"\"\"

        def run(self, todo, sink, data=None):
            torch.set_num_threads(1)
            if data is None:
                load_dataset(todo[0].dataset)
            warm_up(todo[0].optimizer)
            for config in todo:
                sink.started(config)
                try:
                    record = train_distributed(
                        config, None, threads=1, on_epoch=functools.partial(sink.epoch, config)
                    )
                except Exception as error:
                    sink.failed(config, error_text(error))
                    continue
                sink.finished(config, record)


    if __name__ == "__main__":
        way, nproc, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        runs = plan_runs(epochs=epochs, nproc=nproc, **json.loads(sys.argv[4]))
        executor = GroupPerRun() if way == "spawn" else InProcessExecutor(threads=1)
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            outcome = run_sweep(runs, ResultsStore(directory), executor=executor)
            wall = time.perf_counter() - start
        print(json.dumps({
            "wall": wall,
            "runs": len(outcome.records),
            "failed": len(outcome.failed),
            "run_seconds": sum(record["seconds"] for record in outcome.records),
        }))
    """
)


def time_nproc_overhead(epochs: int, repeats: int) -> dict[str, Any]:
    """Both ways, alternating, each repetition a fresh process: per way the sweep's wall
    times, its runs' own seconds and the per-run overhead of each repetition."""
    rows: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as directory:
        child = Path(directory) / "nproc_child.py"  # spawn needs a main module on disk
        child.write_text(NPROC_CHILD)
        for _ in range(repeats):
            for way in WAYS:
                command = [sys.executable, str(child), way, str(NPROC), str(epochs)]
                command.append(json.dumps(NPROC_RUNS))
                done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"the --nproc sweep ({WAYS[way]}) failed:\n{done.stderr}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                if result["failed"]:
                    raise RuntimeError(f"{result['failed']} runs of the --nproc sweep failed")
                rows[way].append(result)
    summary: dict[str, Any] = {"nproc": NPROC, "epochs": epochs, "repeats": repeats}
    for way, results in rows.items():
        summary[way] = {
            "runs": results[0]["runs"],
            "walls": [row["wall"] for row in results],
            "run_seconds": [row["run_seconds"] for row in results],
            "overhead_per_run": [
                (row["wall"] - row["run_seconds"]) / row["runs"] for row in results
            ],
        }
    return summary


def _cell(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def nproc_table(summary: dict[str, Any]) -> Table:
    runs = summary["group"]["runs"]
    table = Table(
        title=f"--nproc {summary['nproc']}: digits sweep of {runs} runs, {summary['epochs']} "
        "epoch(s) each (best / median)"
    )
    for column in ("processes", "sweep wall s", "sum of runs' s", "overhead s per run"):
        table.add_column(column, justify="left" if column == "processes" else "right")
    for way, name in WAYS.items():
        row = summary[way]
        table.add_row(
            name, _cell(row["walls"]), _cell(row["run_seconds"]), _cell(row["overhead_per_run"])
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    summary = time_nproc_overhead(args.epochs, args.repeats)
    Console().print(nproc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
