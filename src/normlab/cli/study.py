"""``normlab study``: the packaged studies; ``normlab study claims`` checks every tutorial
claim (normlab.study)."""

from __future__ import annotations

import argparse

from normlab.cli.arguments import console as make_console
from normlab.cli.arguments import positive_int
from normlab.lab.comparison import default_out
from normlab.paths import expand


def _study(args: argparse.Namespace) -> int:
    from normlab.study.run import render_from_records, run_study  # loads matplotlib and scipy

    console = make_console()
    args.out = default_out() if args.out is None else args.out
    args.report = args.out / "report" if args.report is None else args.report
    command = f"normlab study claims --data-dir DIR --budget {args.budget} --report {args.report}"
    if args.cost:
        from normlab.data import load_dataset
        from normlab.study.cost import measure, write_cost

        if args.data_dir is None:
            raise ValueError("--cost times training to an accuracy on MNIST: give --data-dir.")
        data = load_dataset("mnist", str(args.data_dir))
        console.print("timing the cost measurements at one thread (keep the machine idle)")
        console.print(f"wrote {write_cost(args.report, measure(data=data))}")
    if args.report_only or args.cost:
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


def add_study(commands: argparse._SubParsersAction) -> None:
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
    study.add_argument(
        "--cost", action="store_true",
        help="time the cost claims' measurements (one thread, a few minutes; keep the machine "
        "idle) into --report's cost.json, then regenerate the report, training nothing else",
    )  # fmt: skip
    study.add_argument("--out", type=expand, help="where the runs go (default runs/<timestamp>)")
    study.add_argument(
        "--report",
        type=expand,
        help="where claims.md and its figures go (default OUT/report); files there that "
        "normlab did not write are refused",
    )
    study.add_argument("--jobs", type=positive_int, default=None, help="runs at once")
    study.add_argument("--threads", type=positive_int, default=None, help="threads per run")
    study.add_argument("--executor", choices=("processes", "ray"), default="processes")
    study.add_argument("--address", help="with --executor ray: the cluster")
    study.set_defaults(run=_study)
