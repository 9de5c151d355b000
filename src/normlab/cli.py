"""normlab's command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from normlab.bench_command import add_bench
from normlab.data import DATASETS, DataError, dataset_name, load_dataset
from normlab.data.catalog import user_format
from normlab.experiment import (
    ResultsStore,
    RunConfig,
    check_runs,
    plan_runs,
    read_results,
    run_sweep,
)
from normlab.experiment.config import LR_SCALINGS, OMITTED_DEFAULTS, OPTIMIZERS
from normlab.experiment.ddp import torchrun_rank
from normlab.experiment.executors.choose import (
    SMALL_SWEEP_STEPS,
    executor_for,
    in_process_if_small,
)
from normlab.experiment.executors.contract import Executor, available_cores
from normlab.experiment.executors.lifetime import is_interrupt, terminate_as_interrupt
from normlab.experiment.progress import SweepProgress
from normlab.experiment.stacked import seed_groups, stack_refusals
from normlab.experiment.store import check_output_directory
from normlab.experiment.train import batch_slices, planned_steps
from normlab.models import CELLS, CONTRACT, MODELS, PLACEMENTS
from normlab.norm_spec import parse_norm, split_specs
from normlab.norms_table import norms_table
from normlab.paths import expand


def _batch_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a batch shape N,C[,spatial...] of positive integers, e.g. 16,8,4,4; "
            f"got {text!r}"
        )
    return shape


def _comma_list(convert: Callable[[str], object], what: str) -> Callable[[str], list]:
    """An argparse type for a comma-separated list of ``what``."""

    def parse(text: str) -> list:
        try:
            items = [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {what}; got {text!r}"
            )
        return items

    return parse


def _norm_specs(text: str) -> list[str]:
    """An argparse type for ``--norms``: specs split at the commas outside parentheses, each
    parsed and checked against its kind's options (see normlab.norm_spec)."""
    try:
        specs = split_specs(text)
        for spec in specs:
            parse_norm(spec)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not specs:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of normalization kinds; got {text!r}"
        )
    return specs


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    """A converter for ``_comma_list`` that accepts one of ``choices``."""

    def check(text: str) -> str:
        if text not in choices:
            # argparse's own wording for a single choice
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return text

    return check


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more; got {text!r}")
    return value


def _console() -> Console:
    """A console for tables: the terminal's width, or 120 columns when piped to a file."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 120
    return console


def _norms(args: argparse.Namespace) -> int:
    _console().print(norms_table(args.shape, args.seed))
    return 0


def _default_out() -> Path:
    return Path("runs") / datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


def _show_results(console: Console, directory: Path) -> int:
    """Print the summary table and verdicts of ``directory``'s results and render its report."""
    # Imported here: matplotlib and scipy would otherwise load in every command and in
    # every worker process of a sweep (spawn re-imports the `normlab` script).
    from normlab.report import render_report, summary_table, verdicts, verdicts_table

    files = render_report(directory)  # raises a clear error when there are no records
    records = read_results(directory)
    console.print(summary_table(records))
    console.print(verdicts_table(verdicts(records)))
    for path in (files.curves, files.batch_size, files.html):
        if path is not None:
            console.print(f"wrote {path}")
    return 0


def _model_options(args: argparse.Namespace) -> list[dict]:
    """The product of the model options given on the command line, one dict per model
    (an option left out is left to the model's default, so it does not enter run ids)."""
    given = {
        name: values
        for name, values in (
            ("hidden", args.hidden),
            ("cell", args.cell),
            ("depth", args.depth),
            ("dropout", args.dropout),
        )
        if values is not None
    }
    return [dict(zip(given, combo, strict=True)) for combo in itertools.product(*given.values())]


def _axes_line(runs: Sequence[RunConfig]) -> str:
    """``, lr 0.001, 0.01, depth 2, 8``: each option other than norm, batch size and seed
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


def _compare(args: argparse.Namespace) -> int:
    console = _console()
    runs: list[RunConfig] = []
    try:
        return _compare_runs(args, console, runs)
    except (KeyboardInterrupt, RuntimeError) as error:  # Ctrl-C or SIGTERM, at any point
        if not is_interrupt(error):
            raise
        _say_how_to_resume(console, args.out, runs)
        return 130


def _say_how_to_resume(console: Console, out: Path, runs: list[RunConfig]) -> None:
    store = ResultsStore(out)
    try:
        saved = len(store.finished_ids() & {run.run_id for run in runs})
    except (OSError, ValueError):  # the results file itself is what is wrong
        saved = 0
    console.print(
        f"interrupted: {saved} of {len(runs)} runs are saved in {store.path}. "
        f"Run the same command with --out {out} to resume."
    )


def _compare_runs(args: argparse.Namespace, console: Console, runs: list[RunConfig]) -> int:
    """The compare command; fills ``runs`` with the sweep's runs as soon as they are known."""
    rank, world = torchrun_rank()
    if world > 1:
        if args.nproc != 1 or args.jobs is not None or args.executor != "processes":
            raise ValueError(
                f"under torchrun the {world} processes train every run together; drop "
                "--nproc, --jobs and --executor."
            )
        args.nproc, args.executor = world, "torchrun"
    data_dir = None if args.data_dir is None else str(args.data_dir)
    runs += plan_runs(
        norms=args.norms,
        batch_sizes=args.batch_sizes,
        seeds=args.seeds,
        dataset=args.dataset,
        model=args.model,
        placement=args.placement,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay or [None],
        model_options=_model_options(args),
        nproc=args.nproc,
        sync_bn=args.sync_bn,
        train_subset=args.train_subset,
    )
    runs = [
        dataclasses.replace(
            run,
            diagnostics=args.diagnostics,
            lr_scaling=args.lr_scaling,
            lr_reference_batch=args.lr_reference_batch,
            steps=args.steps,
        )
        for run in runs
    ]
    store = ResultsStore(args.out)
    if rank == 0:
        _check_compare_outputs(args)
    finished = store.finished_ids()
    executor = executor_for(
        args.executor,
        data_dir=data_dir,
        models_dir=args.out / "models" if args.save_models else None,
        address=args.address,
        stack_seeds=args.stack_seeds,
        **_jobs_and_threads(args, [run for run in runs if run.run_id not in finished]),
    )
    executor.check(runs)
    if data_dir is not None and dataset_name(args.dataset) == "digits":
        raise ValueError(
            "--data-dir was given, but --dataset digits is built in and reads no files; "
            "add --dataset mnist, fashion-mnist or cifar10 to use the files there."
        )
    if data_dir is not None and user_format(args.dataset) is not None:
        raise ValueError(
            f"--data-dir was given, but --dataset {args.dataset} names its own path; "
            "drop --data-dir."
        )
    if rank > 0:  # rank 0 reports and writes; the others train their shares quietly
        console.quiet = True
        return _sweep_and_report(args, console, store, runs, executor)
    # A second sweep on this --out is refused here, before any work; the pool's workers
    # start while the data loads.
    with store.lock(), executor:
        return _sweep_and_report(args, console, store, runs, executor)


def _check_compare_outputs(args: argparse.Namespace) -> None:
    """Fail unless every file compare writes into --out can be written there."""
    from normlab.report.render import BATCH_SIZE_FILE, CURVES_FILE, HTML_FILE

    check_output_directory(
        args.out,
        files=(CURVES_FILE, BATCH_SIZE_FILE, HTML_FILE),
        directories=("models",) if args.save_models else (),
    )


def _sweep_and_report(
    args: argparse.Namespace,
    console: Console,
    store: ResultsStore,
    runs: list[RunConfig],
    executor: Executor,
) -> int:
    """The rest of compare, on checked options and outputs: load and check, resume, train,
    report."""
    data = load_dataset(args.dataset, None if args.data_dir is None else str(args.data_dir))
    check_runs(runs, data)
    steps = {  # refuses --steps that --epochs cannot hold, before anything trains
        run.run_id: planned_steps(
            run, len(batch_slices(run.train_subset or len(data.train_x), run.batch_size))
        )
        for run in runs
    }
    rank, _ = torchrun_rank()
    dropped = None
    if rank == 0:
        from normlab.report.runs import check_records

        dropped = store.repair()
        check_records(store.directory)  # a record the report cannot read fails now, not after
    if dropped is not None:
        console.print(
            f"removed an unfinished record at the end of {store.path} "
            f"(a write interrupted mid-line, {len(dropped)} characters); its run is redone"
        )
    finished = store.finished_ids()
    already = sum(run.run_id in finished for run in runs)
    todo_steps = sum(steps[run.run_id] for run in runs if run.run_id not in finished)
    threads = args.threads or available_cores()
    if args.jobs is None and (alone := in_process_if_small(executor, todo_steps, threads)):
        executor = alone
        console.print(
            f"{todo_steps} training steps in all: too few to repay starting worker processes; "
            "training in this process (--jobs 2 starts workers anyway)"
        )
    norms = ", ".join(dict.fromkeys(run.norm_label for run in runs))
    batch_sizes = ", ".join(map(str, dict.fromkeys(args.batch_sizes)))
    console.print(
        f"{len(runs)} runs: {args.dataset} ("
        + (f"{args.train_subset} of " if args.train_subset else "")
        + f"{len(data.train_x)} train / {len(data.val_x)} val, "
        f"from {data.source}), model {args.model}, norms {norms}, batch sizes {batch_sizes}"
        f"{_axes_line(runs)}, {args.seeds} seed(s), {args.epochs} epochs"
        + (
            f", {args.nproc} processes per run with batch norm "
            + ("synchronized" if args.sync_bn else "per process")
            if args.nproc > 1
            else ""
        )
    )
    console.print(
        f"results: {store.path}"
        + (f" ({already} runs already finished, skipped)" if already else "")
    )
    for config, reason in stack_refusals(runs) if args.stack_seeds else ():
        where = f"{config.model} {config.norm_label} b={config.batch_size}"
        console.print(f"--stack-seeds: {where} trains its seeds as separate runs: {reason}")
    with SweepProgress(console, total=len(runs), already_done=already) as progress:
        outcome = run_sweep(runs, store, executor=executor, listener=progress, data=data)
    if outcome.interrupted:
        _say_how_to_resume(console, args.out, runs)
        return 130
    if rank == 0 and store.records():
        _show_results(console, Path(args.out))
    if outcome.failed:
        for config, error in outcome.failed:
            console.print(f"[red]failed: {config.label}: {escape(error)}[/red]")
        console.print(f"{len(outcome.failed)} run(s) failed; run the same command to retry them.")
        return 1
    return 0


def _jobs_and_threads(args: argparse.Namespace, pending: list[RunConfig]) -> dict[str, int | None]:
    """--jobs and --threads for the executor: what was given, else this machine's cores
    shared between the tasks trained at once (runs, or stacked seeds; and between the
    processes of each run)."""
    cores = available_cores()
    if args.executor == "torchrun":  # torchrun decides the processes and their threads
        return {"jobs": args.jobs, "threads": args.threads}
    tasks = len(seed_groups(pending)) if args.stack_seeds else len(pending)
    at_once = max(1, min(args.jobs or (cores if args.nproc == 1 else 1), tasks))
    threads = args.threads or max(1, cores // (at_once * args.nproc))
    return {
        "jobs": at_once if args.jobs is None and args.executor != "ray" else args.jobs,
        "threads": threads,
    }


def _report(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        raise ValueError(f"{args.directory} is not a directory; pass the --out of a compare run.")
    return _show_results(_console(), args.directory)


def _inspect(args: argparse.Namespace) -> int:
    from normlab.checkpoints import describe

    console = _console()
    header, table = describe(args.checkpoint)
    console.print(header)
    console.print(table)
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="train one model with each normalization across batch sizes and seeds",
        description="Train the same model with each normalization kind, at each batch size "
        "and seed; write results.jsonl, curves.png, batch_size.png and report.html to --out. "
        "Re-running with the same --out resumes: finished runs are skipped.",
    )
    compare.add_argument(
        "--dataset",
        default="digits",
        help=f"one of {', '.join(DATASETS)} (default digits, built in), or your own data: "
        "npz:PATH (arrays x_train, y_train, x_test, y_test) or folder:PATH "
        "(PATH/train/<class>/*.png|jpg and PATH/test/<class>/...)",
    )
    compare.add_argument(
        "--data-dir",
        type=expand,
        help="directory holding the dataset's files (mnist, fashion-mnist, cifar10)",
    )
    compare.add_argument(
        "--model",
        default="mlp",
        help=f"one of {', '.join(MODELS)} (default mlp), or your own as MODULE:FACTORY, "
        f"a function {CONTRACT} in a module importable from the current directory",
    )
    compare.add_argument(
        "--hidden",
        type=_comma_list(_positive_int, "positive integers"),
        action="append",
        help="hidden widths: mlp layer sizes (default 128,64), cnn conv channels (32,64), "
        "rnn recurrent layer sizes (128,128), resnet20 stage channels (16,32,64), "
        "transformer block widths, one per block (64,64,64,64); repeat the option to sweep "
        "several, "
        "e.g. --hidden 128,64 --hidden 256",
    )
    compare.add_argument(
        "--depth",
        type=_comma_list(_positive_int, "positive integers"),
        help="comma list of depths: N hidden layers (cnn: conv stages, rnn: recurrent layers) "
        "of one width, --hidden's single width or the first default one",
    )
    compare.add_argument(
        "--dropout",
        type=_comma_list(float, "probabilities in [0, 1)"),
        help="comma list of dropout probabilities after each hidden block (default 0: none)",
    )
    compare.add_argument(
        "--cell",
        type=_comma_list(_choice(tuple(CELLS)), "rnn cells"),
        help=f"comma list of rnn cells: {', '.join(CELLS)} (default lstm)",
    )
    compare.add_argument(
        "--norms",
        type=_norm_specs,
        default=["none", "bn", "ln"],
        help="comma list of kinds from `normlab norms`, each with options if wanted, e.g. "
        '"bn,gn(groups=8,eps=1e-3),bn(convention=keras)" (quote the parentheses; default '
        "none,bn,ln)",
    )
    compare.add_argument(
        "--placement",
        type=_comma_list(_choice(PLACEMENTS), "placements"),
        default=["before"],
        help="norm before or after the activation (transformer: pre-norm or post-norm); "
        "both: before,after (default before)",
    )
    compare.add_argument(
        "--batch-sizes",
        type=_comma_list(_positive_int, "positive integers"),
        default=[32],
        help="comma list of batch sizes (default 32)",
    )
    compare.add_argument(
        "--seeds", type=_positive_int, default=3, help="seeds per configuration: 0..N-1 (default 3)"
    )
    compare.add_argument(
        "--epochs", type=_positive_int, default=5, help="epochs per run (default 5)"
    )
    compare.add_argument(
        "--train-subset",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on N training samples, a fixed stratified subset (the same for every "
        "run); validation uses the whole test split (default: all)",
    )
    compare.add_argument(
        "--lr",
        type=_comma_list(float, "learning rates"),
        default=[1e-3],
        help="comma list of learning rates (default 0.001)",
    )
    compare.add_argument(
        "--optimizer",
        type=_comma_list(_choice(OPTIMIZERS), "optimizers"),
        default=["adam"],
        help=f"comma list of optimizers: {', '.join(OPTIMIZERS)} (default adam)",
    )
    compare.add_argument(
        "--weight-decay",
        type=_comma_list(float, "weight decays"),
        default=None,
        help="comma list of the optimizer's weight decays (default: the optimizer's, 0.01 "
        "for adamw, 0 for the others)",
    )
    compare.add_argument(
        "--lr-scaling",
        default="none",
        choices=LR_SCALINGS,
        help="linear: train at lr * batch size / --lr-reference-batch (Goyal et al. 2017), "
        "so batch-size sweeps keep the step per sample; none: --lr at every batch size "
        "(default none)",
    )
    compare.add_argument(
        "--lr-reference-batch",
        type=_positive_int,
        default=32,
        help="the batch size --lr is meant for under --lr-scaling linear (default 32)",
    )
    compare.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="end each run after this many optimizer steps, the same number at every batch "
        "size; --epochs must hold that many batches at the largest batch size",
    )
    compare.add_argument(
        "--diagnostics",
        action="store_true",
        help="record per-layer gradient norms, activation statistics, internal covariate "
        "shift and loss-landscape smoothness on a fixed probe batch after each epoch, and "
        "the time per step (normlab.experiment.diagnostics)",
    )
    compare.add_argument(
        "--out", type=expand, default=None, help="output directory (default runs/<timestamp>)"
    )
    compare.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="runs trained at once, each in its own process (default: the number of cores; "
        "1 with --nproc, and 1 (this process) when the runs to train take fewer than "
        f"{SMALL_SWEEP_STEPS} optimizer steps in all, too few to repay starting workers)",
    )
    compare.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="train each run data-parallel over this many processes (DistributedDataParallel, "
        "gloo), the global batch split between them (default 1)",
    )
    compare.add_argument(
        "--sync-bn",
        action="store_true",
        help="with --nproc: synchronize bn and bn-scalar across the processes "
        "(default: per-process statistics, as DDP leaves them)",
    )
    compare.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads per run (default: cores / jobs)",
    )
    compare.add_argument(
        "--executor",
        choices=("processes", "ray"),
        default="processes",
        help="where runs train: processes on this machine (default) or Ray tasks "
        "(pip install 'normlab[ray]')",
    )
    compare.add_argument(
        "--address",
        help="with --executor ray: the cluster (auto, HOST:6379 or ray://HOST:10001); "
        "default: a local cluster started for the sweep",
    )
    compare.add_argument(
        "--stack-seeds",
        action="store_true",
        help="train the seeds of each configuration together, as one batched model "
        "(the same numbers per seed; refused configurations train separately)",
    )
    compare.add_argument(
        "--save-models",
        action="store_true",
        help="save each trained model's state_dict as OUT/models/<run_id>.pt "
        "(read it with `normlab inspect`)",
    )
    compare.set_defaults(run=_compare)


def _study(args: argparse.Namespace) -> int:
    from normlab.study.run import render_from_records, run_study  # loads matplotlib and scipy

    console = _console()
    command = f"normlab study claims --data-dir DIR --budget {args.budget} --report {args.report}"
    if args.report_only:
        console.print(f"wrote {render_from_records(args.report, args.budget, command)}")
        return 0
    if args.data_dir is None:
        raise ValueError("the study trains on MNIST: give --data-dir (or --report-only).")
    result = run_study(
        str(args.data_dir), args.out, args.report, budget=args.budget, jobs=args.jobs,
        threads=args.threads, executor=args.executor, address=args.address,
        command=command, console=console,
    )  # fmt: skip
    if result.report is None:
        failed = len(result.outcome.failed)
        console.print(
            f"{result.finished} of {result.planned} runs finished"
            + (f", {failed} failed" if failed else "")
            + f"; run the same command to resume ({args.out})."
        )
        return 130 if result.outcome.interrupted else 1
    console.print(f"wrote {result.report}")
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser(
        "study",
        help="run a packaged study; `normlab study claims` checks every tutorial claim",
        description="Studies that plan their own experiments. `claims`: every claim of the "
        "normalization tutorials as an experiment on MNIST, with an estimate, a 95% interval "
        "and a Holm-adjusted verdict, written as a markdown report with figures.",
    )
    study.add_argument("study", choices=("claims",), help="the study to run")
    study.add_argument("--data-dir", type=expand, help="directory holding the MNIST IDX files")
    study.add_argument(
        "--budget", choices=("quick", "full"), default="full",
        help="full: about 4 hours on 2 cores, resumable; quick: a few minutes (default full)",
    )  # fmt: skip
    study.add_argument(
        "--report-only", action="store_true",
        help="regenerate the report from the records kept in --report, training nothing",
    )  # fmt: skip
    study.add_argument("--out", type=expand, help="where the runs go (default runs/<timestamp>)")
    study.add_argument(
        "--report",
        type=expand,
        help="where claims.md and its figures go (default OUT/report); files there that "
        "normlab did not write are refused",
    )
    study.add_argument("--jobs", type=_positive_int, default=None, help="runs at once")
    study.add_argument("--threads", type=_positive_int, default=None, help="threads per run")
    study.add_argument("--executor", choices=("processes", "ray"), default="processes")
    study.add_argument("--address", help="with --executor ray: the cluster")
    study.set_defaults(run=_study)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab", description="Normalization layers and a lab to compare them."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    norms = commands.add_parser(
        "norms", help="list every registered normalization kind, applied to one batch"
    )
    norms.add_argument(
        "--shape",
        type=_batch_shape,
        default=(16, 8, 4, 4),
        help="batch shape N,C[,spatial...] (default 16,8,4,4)",
    )
    norms.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    norms.set_defaults(run=_norms)
    _add_compare(commands)
    report = commands.add_parser(
        "report", help="re-render the table, plots and report.html of a compare run's results"
    )
    report.add_argument("directory", type=expand, help="the --out directory of a compare run")
    report.set_defaults(run=_report)
    inspect = commands.add_parser(
        "inspect",
        help="print the normalization layers of a saved model and their statistics",
        description="Print the normalization layers of a checkpoint saved with torch.save "
        "(a state_dict, a dict holding one, or a whole module made of torch.nn and normlab "
        "layers) and their running statistics. Files are loaded with weights_only=True: "
        "nothing in them runs.",
    )
    inspect.add_argument("checkpoint", type=expand, help="a .pt file, e.g. OUT/models/<run_id>.pt")
    inspect.set_defaults(run=_inspect)
    add_bench(commands, _console, expand)
    _add_study(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", "unset") is None:
        args.out = _default_out()
    if getattr(args, "report", "unset") is None:
        args.report = args.out / "report"
    try:
        with terminate_as_interrupt():  # `timeout`, `kill` and container stops: as Ctrl-C
            return args.run(args)
    except (KeyboardInterrupt, RuntimeError) as error:
        if not is_interrupt(error):
            raise
        print(f"normlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, DataError) as error:  # a usage error; anything else is a bug: traceback
        print(f"normlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
