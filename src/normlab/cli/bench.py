"""``normlab bench``: its arguments and what it prints (the timing is normlab.bench's)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable

import torch

from normlab.cli.arguments import console, positive_int
from normlab.experiment.store import check_output_file
from normlab.paths import expand


def _bench(args: argparse.Namespace) -> int:
    from normlab.bench import bench, build_cases, results_table, summary_table

    out = console()
    if args.json is not None:
        check_output_file(args.json)  # before minutes of timing, not after
    if args.profile:
        from normlab.bench_profile import profile_cases, profile_table

        threads = [1] if args.threads is None else args.threads
        with out.status("profiling"):
            profiles = profile_cases(
                build_cases(args.kinds, args.shapes), args.dtype[0], threads, args.profile_steps
            )
        out.print(profile_table(profiles))
        if args.json is not None:
            rows = [dataclasses.asdict(p) | {"outside_share": p.outside_share} for p in profiles]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"profiles": rows}, indent=1) + "\n")
            out.print(f"wrote {args.json}")
        return 0
    result = bench(out, args.kinds, args.shapes, args.dtype, args.threads, args.min_run_time)
    out.print(results_table(result))
    out.print(summary_table(result))
    if args.json is not None:
        result.write_json(args.json)
        out.print(f"wrote {args.json}")
    return 0


def _bench_list(parser_name: str) -> Callable[[str], list]:
    """An argparse type for a comma list parsed by ``normlab.bench.<parser_name>``."""

    def parse(text: str) -> list:
        import normlab.bench  # torch.utils.benchmark loads only for this command

        try:
            return getattr(normlab.bench, parser_name)(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds; got {text!r}")
    return value


def add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="time each kind as a ratio to torch's native layer on the same tensor",
        description="Time each normalization kind's training forward, training forward + "
        "backward and eval forward as a ratio to torch's native layer doing the same job on "
        "the same tensor, timed in the same run (torch.utils.benchmark, medians). The "
        "default run takes about 8 minutes on 2 cores. On a machine busy with other work, "
        "multi-threaded timings mostly measure the scheduler: use --threads 1 there. "
        "With --profile, say where each kind's time goes instead.",
    )
    bench.add_argument(
        "--kinds",
        type=_bench_list("parse_kinds"),
        default=None,
        help="comma list of kinds from `normlab norms`, and bn:keras for batch norm in the "
        "Keras convention (default: every kind but none, and bn:keras)",
    )
    bench.add_argument(
        "--shapes",
        type=_bench_list("parse_shape_groups"),
        default=["mlp", "cnn", "seq"],
        help="comma list of shape sets: mlp (N, C), cnn (N, C, H, W) contiguous and "
        "channels_last, seq (N, L, C) tokens (default mlp,cnn,seq)",
    )
    bench.add_argument(
        "--dtype",
        type=_bench_list("parse_dtypes"),
        default=[torch.float32],
        help="comma list of float32, bfloat16, float16, float64 (default float32; --profile "
        "uses the first)",
    )
    bench.add_argument(
        "--threads",
        type=_bench_list("parse_threads"),
        default=None,
        help="comma list of torch thread counts; all = torch's default, one per core "
        "(default all; 1 with --profile)",
    )
    bench.add_argument(
        "--min-run-time",
        type=_positive_float,
        default=0.2,
        help="seconds each of ours and torch's layer is timed per job (default 0.2)",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, profile each kind and shape (torch.profiler): per step of "
        "the training forward, the training backward and the eval forward, normlab's and "
        "torch's wall time, aten ops, time inside them and the share outside them",
    )
    bench.add_argument(
        "--profile-steps",
        type=positive_int,
        default=10,
        help="steps profiled per module and mode with --profile (default 10)",
    )
    bench.add_argument(
        "--json",
        type=expand,
        default=None,
        metavar="FILE",
        help="also write the environment, every row and the summary (with --profile: every "
        "phase's figures) here as JSON",
    )
    bench.set_defaults(run=_bench)
