"""End-to-end training speed of the tutorials' MLP on MNIST, three ways, plus sweep scaling
and peak memory.

The MLP is 784-128-64-10 with ``none``, ``bn`` or ``ln`` before each hidden ReLU (normlab's
``mlp``, ``placement="before"``), trained with Adam (lr 1e-3) at batch 32:

(a) lab: ``normlab.experiment.train.train_model``, the loop ``normlab compare`` runs;
(b) hand-written: a minimal eager loop on the same tensors and the same initial model
    (``normlab.models.build_model``, same seed): ``for`` over slices of a ``randperm``,
    ``x[idx]``, ``nn.CrossEntropyLoss``, ``torch.optim.Adam`` with its defaults;
(c) TF-Keras: benchmarks/keras_tutorial_mlp.py, ``model.fit`` on numpy arrays, in a
    subprocess of the TensorFlow virtual environment (.venv-tf, made by ``make
    bench-train``); skipped, saying why, when that is missing or fails.

What is timed: the training pass of each epoch, without validation. The lab's
``EpochMetrics.seconds`` includes its validation pass, so the harness times
``evaluate`` on the validation set separately (best of 3) and subtracts it; the Keras
script subtracts its own validation (``on_test_begin``/``on_test_end``).

Warm-up: the torch ways run in this process after its one-time costs (imports, torch's
lazy imports on the first optimizer, an untimed warm-up epoch) are paid, so their first
epoch is not special; lab and hand-written alternate ``--repeats`` times, each ``--epochs``
epochs from the same fresh model. TF-Keras' first epoch includes tracing its
``tf.function``; it is reported apart, and the Keras run lasts one epoch plus as many
steady epochs as the torch ways get. Ratios compare steady-state epochs (every epoch of
the torch ways; epochs 2+ of TF-Keras), best (fastest) of each: on a shared machine
other processes only ever add time. Medians are shown beside the minimums.

Then, unless switched off:
--sweep: runs per hour of whole ``normlab compare`` commands (a fresh process each: start-up,
    data load, worker start-up, training, report) with --jobs 1, --jobs 2 and no --jobs
    (compare's default), alternating, ``--sweep-repeats`` rounds, on ``make demo``'s sweep
    (36 digits runs of 5 epochs) and on 8 MLP runs of 5 epochs on MNIST (norms none,bn x
    batch sizes 32,256 x 2 seeds); threads per run are compare's default (cores / jobs).
    Shown: wall time, the sum of the runs' own seconds, runs per hour and its ratio to
    --jobs 1, and beside it this machine's ceiling for that ratio, measured before each
    round: two processes of one-thread torch matrix products against one.
    ``--sweep-extra "--epochs 1 --train-subset 500"`` appends arguments to every sweep
    (a quick check of the harness; not the benchmark's figures).
--stacked-seeds N: runs per hour of N seeds of the MLP at batch 32 for each of --norms,
    trained stacked (normlab.experiment.stacked, one batched model) against one after
    another, alternating --repeats times, each from its first model's build to its last
    record; the ratio of their best wall times; and TF-Keras' best epoch over the stacked
    lab's seconds per run-epoch (its best wall time over seeds x epochs).
--memory: peak memory of ``normlab compare --dataset mnist --norms bn --batch-sizes 32
    --seeds 1 --epochs 1``, and of the same with --seeds 2 --jobs 2 (two runs, so that
    worker processes start), over the process tree (Linux /proc): the largest sum of the
    processes' proportional set sizes (PSS: a page shared by k processes counts 1/k in
    each, so the dataset the workers share counts once) seen at once, sampled every 20 ms,
    checked against 1 GB; and each process's peak resident size (VmHWM) summed, an upper
    bound that counts shared pages once per process.
--nproc: per-run overhead of a digits sweep with --nproc 2, a group spawned per run
    against the sweep's one group (benchmarks/nproc_overhead.py).

    python benchmarks/train_speed.py [--data-dir ../shared/data/mnist] [--epochs 1]
        [--norms none,bn,ln] [--repeats 3] [--threads N] [--sweeps demo,mnist]
        [--sweep-jobs 1,2,default] [--sweep-repeats 3] [--sweep-extra ARGS]
        [--json FILE] [--no-sweep] [--no-memory] [--stacked-seeds 3] [--no-nproc]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from normlab.data import Dataset, load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.executors.contract import available_cores
from normlab.experiment.stacked import train_stacked
from normlab.experiment.train import evaluate, train_model, warm_up
from normlab.models import build_model

ROOT = Path(__file__).resolve().parent.parent
KERAS_SCRIPT = Path(__file__).resolve().with_name("keras_tutorial_mlp.py")
TF_VENV = ROOT / ".venv-tf"
BATCH_SIZE = 32
SEED = 0
PSS_LIMIT_MB = 1024


@dataclass
class Way:
    """One way of training one norm: per-epoch training seconds and final val accuracy."""

    name: str
    norm: str
    steps_per_epoch: int
    first: list[float] = field(default_factory=list)  # epochs that pay one-time costs
    steady: list[float] = field(default_factory=list)
    val_acc: float | None = None
    skipped: str | None = None

    @property
    def best(self) -> float:
        return min(self.steady)

    @property
    def median(self) -> float:
        return statistics.median(self.steady)


def hand_written_epochs(data: Dataset, norm: str, epochs: int) -> tuple[list[float], nn.Module]:
    """The plain eager loop: training seconds of each of ``epochs`` epochs, and the model."""
    torch.manual_seed(SEED)
    model = build_model("mlp", data.input_shape, data.num_classes, norm=norm)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    x, y = data.train_x, data.train_y
    model.train()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE]
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds, model


def lab_epochs(data: Dataset, norm: str, epochs: int) -> tuple[list[float], float]:
    """The lab's loop: training seconds of each epoch (its seconds less the validation
    pass, timed apart on the trained model) and the last validation accuracy."""
    config = RunConfig(
        dataset="mnist", model="mlp", norm=norm, batch_size=BATCH_SIZE, epochs=epochs, seed=SEED
    )
    model, record = train_model(config, data)
    validation = []
    for _ in range(3):
        start = time.perf_counter()
        evaluate(model, data.val_x, data.val_y)
        validation.append(time.perf_counter() - start)
    seconds = [epoch["seconds"] - min(validation) for epoch in record["history"]]
    return seconds, record["final"]["val_acc"]


def time_torch(data: Dataset, norm: str, epochs: int, repeats: int) -> tuple[Way, Way]:
    """Lab and hand-written loop, alternating, ``repeats`` times each."""
    steps = -(-len(data.train_x) // BATCH_SIZE)
    lab, hand = Way("lab", norm, steps), Way("hand-written", norm, steps)
    for _ in range(repeats):
        seconds, lab.val_acc = lab_epochs(data, norm, epochs)
        lab.steady += seconds
        seconds, model = hand_written_epochs(data, norm, epochs)
        hand.steady += seconds
        hand.val_acc = evaluate(model, data.val_x, data.val_y)[1]
    return lab, hand


def _install_failure() -> str:
    """The last line of a failed TensorFlow install's log, if there is one."""
    log = TF_VENV / "install.log"
    if (TF_VENV / ".installed").exists() or not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return f"; installing TensorFlow failed ({log}): {lines[-1]}" if lines else ""


def tf_skip_reason(tf_python: Path) -> str | None:
    """Why TF-Keras cannot run (None when it can)."""
    if tf_python.exists():
        return None
    return (
        f"{tf_python} does not exist (`make bench-train` installs TensorFlow into .venv-tf)"
        + _install_failure()
    )


def time_keras(
    tf_python: Path, data_dir: str, norm: str, steady_epochs: int, threads: int | None
) -> Way:
    """The Keras script for one epoch plus ``steady_epochs`` more, on ``threads`` intra-op
    threads (None: TensorFlow's default, every core)."""
    way = Way("TF-Keras", norm, steps_per_epoch=0)  # the script reports its steps
    reason = tf_skip_reason(tf_python)
    if reason is not None:
        way.skipped = reason
        return way
    command = [str(tf_python), str(KERAS_SCRIPT), "--data-dir", data_dir, "--norm", norm]
    command += ["--epochs", str(1 + steady_epochs), "--seed", str(SEED)]
    if threads is not None:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        way.skipped = (
            f"the Keras script failed (exit {result.returncode}): {tail}" + _install_failure()
        )
        return way
    report = json.loads(lines[-1])
    way.steps_per_epoch = report["steps_per_epoch"]
    seconds = [epoch["train_seconds"] for epoch in report["epochs"]]
    way.first, way.steady = seconds[:1], seconds[1:]
    way.val_acc = report["epochs"][-1]["val_acc"]
    return way


# --- sweep scaling ----------------------------------------------------------

DEMO_SWEEP = ["--norms", "none,bn,bn-scalar,ln", "--batch-sizes", "4,32,256", "--seeds", "3"]
MNIST_SWEEP = ["--model", "mlp", "--norms", "none,bn", "--batch-sizes", "32,256", "--seeds", "2"]


def sweeps_to_time(data_dir: str) -> dict[str, list[str]]:
    """The sweeps timed, as ``normlab compare`` arguments: ``make demo``'s (36 digits runs of
    5 epochs) and 8 MLP runs of 5 epochs on MNIST."""
    mnist = ["--dataset", "mnist", "--data-dir", data_dir, *MNIST_SWEEP, "--epochs", "5"]
    return {"demo": DEMO_SWEEP, "mnist": mnist}


def time_compare(argv: list[str], jobs: str) -> dict[str, float]:
    """One ``normlab compare`` (``jobs``: a number, or "default": no --jobs) in a fresh
    process: its wall time from start to exit, the runs it wrote and their own seconds."""
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, "-m", "normlab.cli", "compare", *argv, "--out", directory]
        command += [] if jobs == "default" else ["--jobs", jobs]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        lines = (Path(directory) / "results.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    return {
        "wall": wall,
        "runs": len(records),
        "run_seconds": sum(record["seconds"] for record in records),
    }


BURN = """
import time, torch
torch.set_num_threads(1)
a, b = torch.randn(256, 256), torch.randn(256, 256)
start = time.perf_counter()
for _ in range(1500):
    a @ b
print(time.perf_counter() - start)
"""


def parallel_ceiling() -> float:
    """What a second training process adds on this machine: the throughput of two processes
    doing one-thread torch matrix products at once over that of one alone (2.0 on two free
    cores; about 1.0 where the two cores share one core's vector units or are taken by
    others), the bound on any --jobs 2 speed-up."""

    def loop_seconds(count: int) -> float:
        processes = [
            subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        return max(float(process.communicate()[0]) for process in processes)

    return 2 * loop_seconds(1) / loop_seconds(2)


def time_sweeps(name: str, argv: list[str], jobs: list[str], repeats: int) -> dict[str, Any]:
    """The sweep ``argv`` with each of ``jobs`` in turn, ``repeats`` rounds, each a fresh
    ``normlab compare`` process (threads per run: compare's default, cores / jobs)."""
    results: dict[str, list[dict[str, float]]] = {job: [] for job in jobs}
    ceiling = []
    for _ in range(repeats):
        ceiling.append(parallel_ceiling())
        for job in jobs:
            results[job].append(time_compare(argv, job))
    summary: dict[str, Any] = {"sweep": name, "argv": argv, "repeats": repeats}
    summary["ceiling"] = ceiling
    for job, rows in results.items():
        summary[f"jobs {job}"] = {
            "walls": [row["wall"] for row in rows],
            "runs": rows[0]["runs"],
            "runs_per_hour": [3600 * row["runs"] / row["wall"] for row in rows],
            "run_seconds": [row["run_seconds"] for row in rows],
        }
    baseline = summary[f"jobs {jobs[0]}"]["runs_per_hour"]
    for job in jobs[1:]:
        rates = summary[f"jobs {job}"]["runs_per_hour"]
        summary[f"jobs {job}"]["over_first_median"] = statistics.median(rates) / statistics.median(
            baseline
        )
        summary[f"jobs {job}"]["over_first_best"] = max(rates) / max(baseline)
    return summary


# --- peak memory ------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def _proc_kb(pid: int, file: str, key: str) -> int:
    """A ``key: <n> kB`` value of /proc/<pid>/<file>; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def peak_memory(data_dir: str, jobs: int, seeds: int) -> dict[str, Any]:
    """Peak resident memory of one ``normlab compare`` on MNIST, sampled every 20 ms."""
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, "-m", "normlab.cli", "compare", "--dataset", "mnist"]
        command += ["--data-dir", data_dir, "--norms", "bn", "--batch-sizes", "32"]
        command += ["--seeds", str(seeds), "--epochs", "1", "--jobs", str(jobs)]
        command += ["--out", directory]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peaks: dict[int, int] = {}  # pid -> VmHWM, kB
        pss = 0  # largest sum of the processes' proportional set sizes at one instant, kB
        while process.poll() is None:
            tree = _tree(process.pid)
            for pid in tree:
                peaks[pid] = max(peaks.get(pid, 0), _proc_kb(pid, "status", "VmHWM"))
            pss = max(pss, sum(_proc_kb(pid, "smaps_rollup", "Pss") for pid in tree))
            time.sleep(0.02)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"normlab compare --jobs {jobs} failed:\n{stderr}")
    return {
        "jobs": jobs,
        "seeds": seeds,
        "processes": len(peaks),
        "sum_of_peaks_mb": sum(peaks.values()) / 1024,
        "largest_process_mb": max(peaks.values()) / 1024,
        "pss_together_mb": pss / 1024,
    }


# --- report -----------------------------------------------------------------


def ratios(ways: dict[str, list[Way]]) -> dict[str, dict[str, float | None]]:
    """Per norm, lab / hand-written and TF-Keras / lab on the best steady epochs."""
    result = {}
    for norm, (lab, hand, keras) in ways.items():
        result[norm] = {
            "lab_over_hand": lab.best / hand.best,
            "tf_keras_over_lab": None if keras.skipped else keras.best / lab.best,
            "lab_over_hand_median": lab.median / hand.median,
            "tf_keras_over_lab_median": None if keras.skipped else keras.median / lab.median,
        }
    return result


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def speed_table(ways: dict[str, list[Way]]) -> Table:
    table = Table(
        title="One epoch of MNIST at batch 32, training pass only (best / median of steady epochs)"
    )
    for column in (
        "norm",
        "way",
        "first epoch s",
        "steady epoch s",
        "ms/step",
        "val acc",
        "lab / hand",
        "TF-Keras / lab",
    ):
        table.add_column(column, justify="left" if column in ("norm", "way") else "right")
    for norm, rows in ways.items():
        by_name = {way.name: way for way in rows}
        lab, hand, keras = by_name["lab"], by_name["hand-written"], by_name["TF-Keras"]
        for way in rows:
            if way.skipped:
                table.add_row(norm, way.name, "skipped", "", "", "", "", "")
                continue
            lab_hand = tf_lab = ""
            if way is lab:
                lab_hand = f"{lab.best / hand.best:.2f}"
                if not keras.skipped:
                    tf_lab = f"{keras.best / lab.best:.2f}"
            table.add_row(
                norm,
                way.name,
                _cell(way.first),
                _cell(way.steady),
                f"{1000 * way.best / way.steps_per_epoch:.3f}",
                "-" if way.val_acc is None else f"{way.val_acc:.4f}",
                lab_hand,
                tf_lab,
            )
    return table


def sweep_table(sweeps: list[dict[str, Any]]) -> Table:
    table = Table(title="Sweeps as whole normlab compare commands (best / median)")
    columns = ("sweep", "jobs", "runs", "wall s", "sum of runs' s", "runs/hour", "vs first")
    for column in (*columns, "ceiling"):
        table.add_column(column, justify="left" if column == "sweep" else "right")
    for sweep in sweeps:
        for key in [key for key in sweep if key.startswith("jobs ")]:
            row = sweep[key]
            ratio = ceiling = ""
            if "over_first_best" in row:
                ratio = f"{row['over_first_best']:.2f} / {row['over_first_median']:.2f}"
                ceiling = f"{max(sweep['ceiling']):.2f} / {statistics.median(sweep['ceiling']):.2f}"
            rates = row["runs_per_hour"]
            table.add_row(
                sweep["sweep"],
                key.removeprefix("jobs "),
                str(row["runs"]),
                _cell(row["walls"]),
                _cell(row["run_seconds"]),
                f"{max(rates):.0f} / {statistics.median(rates):.0f}",
                ratio,
                ceiling,
            )
    return table


def time_stacked(data: Dataset, norm: str, seeds: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Runs per hour of the MNIST MLP at batch 32 with ``norm``: ``seeds`` seeds trained
    stacked (normlab.experiment.stacked) against the same seeds trained one after another
    (train_model), alternating ``repeats`` times; each wall time from the first model's
    build to the last record (validation, final metrics and parity included)."""
    configs = [
        RunConfig(dataset="mnist", model="mlp", norm=norm, batch_size=BATCH_SIZE, epochs=epochs)
    ]
    configs = [dataclasses.replace(configs[0], seed=seed) for seed in range(seeds)]
    separate, stacked = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for config in configs:
            train_model(config, data)
        separate.append(time.perf_counter() - start)
        start = time.perf_counter()
        train_stacked(configs, data)
        stacked.append(time.perf_counter() - start)
    return {
        "norm": norm,
        "seeds": seeds,
        "epochs": epochs,
        "separate_seconds": separate,
        "stacked_seconds": stacked,
        "separate_runs_per_hour": 3600 * seeds / min(separate),
        "stacked_runs_per_hour": 3600 * seeds / min(stacked),
        "ratio_best": min(separate) / min(stacked),
        "ratio_median": statistics.median(separate) / statistics.median(stacked),
        # the whole stacked run (build, validation, records) shared by its seeds and epochs
        "seconds_per_run_epoch": min(stacked) / (seeds * epochs),
    }


def stacked_table(rows: list[dict[str, Any]]) -> Table:
    """Stacked against separate runs; with ``tf_keras_epoch`` in a row (TF-Keras' best steady
    epoch, s), that over the stacked lab's seconds per run-epoch."""
    table = Table(title="Seeds stacked vs separate runs, MNIST MLP at batch 32 (best / median)")
    columns = ("norm", "seeds", "separate s", "stacked s", "runs/h separate", "runs/h stacked")
    for column in (*columns, "stacked / separate", "TF-Keras epoch / stacked run-epoch"):
        table.add_column(column, justify="right")
    for row in rows:
        keras = row.get("tf_keras_epoch")
        table.add_row(
            row["norm"],
            str(row["seeds"]),
            _cell(row["separate_seconds"]),
            _cell(row["stacked_seconds"]),
            f"{row['separate_runs_per_hour']:.0f}",
            f"{row['stacked_runs_per_hour']:.0f}",
            f"{row['ratio_best']:.2f} / {row['ratio_median']:.2f}",
            "skipped" if keras is None else f"{keras / row['seconds_per_run_epoch']:.2f}",
        )
    return table


def memory_table(memory: list[dict[str, Any]]) -> Table:
    table = Table(title="Peak memory of normlab compare on MNIST (bn, batch 32, 1 epoch)")
    columns = ("jobs", "seeds", "processes", "sum of peaks MB", "largest MB", "PSS MB")
    for column in (*columns, "PSS under 1 GB"):
        table.add_column(column, justify="right")
    for row in memory:
        table.add_row(
            str(row["jobs"]),
            str(row["seeds"]),
            str(row["processes"]),
            f"{row['sum_of_peaks_mb']:.0f}",
            f"{row['largest_process_mb']:.0f}",
            f"{row['pss_together_mb']:.0f}",
            "yes" if row["pss_together_mb"] < PSS_LIMIT_MB else "NO",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per torch run (default 1)")
    parser.add_argument("--norms", default="none,bn,ln")
    parser.add_argument("--repeats", type=int, default=3, help="torch runs per way (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=available_cores(),
        help="torch threads, and TensorFlow's intra-op threads (default: every core)",
    )
    parser.add_argument("--tf-python", type=Path, default=TF_VENV / "bin" / "python")
    parser.add_argument("--sweeps", default="demo,mnist", help="sweeps to time: demo, mnist")
    parser.add_argument(
        "--sweep-jobs", default="1,2,default", help="--jobs of each sweep; the first is the base"
    )
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument(
        "--sweep-extra", default="", help="arguments appended to every sweep's compare"
    )
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--stacked-seeds",
        type=int,
        default=3,
        help="seeds trained stacked vs separately for each of --norms (0: skip; default 3)",
    )
    parser.add_argument("--no-nproc", action="store_true", help="skip --nproc 2's overhead")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    sweep_names = [name.strip() for name in args.sweeps.split(",")]
    unknown = set(sweep_names) - set(sweeps_to_time(args.data_dir))
    if unknown and not args.no_sweep:
        parser.error(f"unknown --sweeps {sorted(unknown)}; choose from demo, mnist")
    console = Console()

    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    warm_up("adam")
    hand_written_epochs(data, "bn", 1)  # untimed: the process's first epoch
    norms = [norm.strip() for norm in args.norms.split(",")]
    ways: dict[str, list[Way]] = {}
    for norm in norms:
        lab, hand = time_torch(data, norm, args.epochs, args.repeats)
        tf_threads = None if args.threads == available_cores() else args.threads
        keras = time_keras(args.tf_python, args.data_dir, norm, len(lab.steady), tf_threads)
        ways[norm] = [lab, hand, keras]
        tf_seconds = "skipped" if keras.skipped else f"{keras.best:.2f} s"
        console.print(
            f"{norm}: lab {lab.best:.2f} s, hand-written {hand.best:.2f} s, TF-Keras {tf_seconds}"
        )
    console.print(speed_table(ways))
    skipped = {way.skipped for rows in ways.values() for way in rows if way.skipped}
    for reason in skipped:
        console.print(f"TF-Keras skipped: {reason}")
    console.print(
        f"torch {torch.__version__}, {args.threads} threads. Every torch epoch is steady (this "
        "process's warm-up was paid first); TF-Keras' first epoch traces its tf.function. "
        "Ratios from the best steady epochs."
    )

    sweeps: list[dict[str, Any]] = []
    if not args.no_sweep:
        known = sweeps_to_time(args.data_dir)
        jobs = [job.strip() for job in args.sweep_jobs.split(",")]
        for name in sweep_names:
            argv = known[name] + shlex.split(args.sweep_extra)
            sweeps.append(time_sweeps(name, argv, jobs, args.sweep_repeats))
        console.print(sweep_table(sweeps))
        console.print(
            f"{available_cores()} cores. ceiling: what two processes of one-thread torch "
            "matrix products get done together over one alone, measured before each round "
            "(2.00 on two free cores)"
            + (f"; every sweep with {args.sweep_extra}" if args.sweep_extra else "")
        )
    memory: list[dict[str, Any]] = []
    if not args.no_memory:
        if Path("/proc/self/task").exists():
            # --jobs 2 needs two runs to start a worker process: two seeds
            memory = [peak_memory(args.data_dir, 1, 1), peak_memory(args.data_dir, 2, 2)]
            console.print(memory_table(memory))
        else:
            console.print("memory skipped: it reads the process tree from Linux's /proc")

    stacked: list[dict[str, Any]] = []
    if args.stacked_seeds > 0:
        for norm in norms:
            row = time_stacked(data, norm, args.stacked_seeds, args.epochs, args.repeats)
            keras = ways[norm][2]
            row["tf_keras_epoch"] = None if keras.skipped else keras.best
            stacked.append(row)
        console.print(stacked_table(stacked))
    nproc = None
    if not args.no_nproc:
        from nproc_overhead import nproc_table, time_nproc_overhead  # beside this script

        nproc = time_nproc_overhead(epochs=1, repeats=args.sweep_repeats)
        console.print(nproc_table(nproc))

    if args.json:
        report = {
            "torch": torch.__version__,
            "threads": args.threads,
            "cores": os.cpu_count(),
            "speed": {norm: [asdict(way) for way in rows] for norm, rows in ways.items()},
            "ratios": ratios(ways),
            "sweeps": sweeps,
            "memory": memory,
            "stacked": stacked,
            "nproc": nproc,
        }
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
