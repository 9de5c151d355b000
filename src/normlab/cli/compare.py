"""``normlab compare``: its flags, turned into one call of normlab.lab.compare, and the
results printed."""

from __future__ import annotations

import argparse

from rich.markup import escape

from normlab.cli.arguments import choice, comma_list, console, norm_specs, positive_int
from normlab.cli.report import show_results
from normlab.data import DATASETS
from normlab.experiment.config import LR_SCALINGS, OPTIMIZERS
from normlab.experiment.executors.choose import SMALL_SWEEP_STEPS
from normlab.lab import compare
from normlab.models import CELLS, CONTRACT, MODELS, PLACEMENTS
from normlab.paths import expand


def _compare(args: argparse.Namespace) -> int:
    out = console()
    result = compare(
        norms=args.norms, batch_sizes=args.batch_sizes, seeds=args.seeds, epochs=args.epochs,
        data=args.dataset, data_dir=args.data_dir, model=args.model, hidden=args.hidden,
        depth=args.depth, dropout=args.dropout, cell=args.cell, placement=args.placement,
        train_subset=args.train_subset, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, lr_scaling=args.lr_scaling,
        lr_reference_batch=args.lr_reference_batch, steps=args.steps,
        diagnostics=args.diagnostics, out=args.out, jobs=args.jobs, nproc=args.nproc,
        sync_bn=args.sync_bn, threads=args.threads, executor=args.executor,
        address=args.address, stack_seeds=args.stack_seeds, save_models=args.save_models,
        console=out,
    )  # fmt: skip
    if result.interrupted:
        out.print(f"Run the same command with --out {result.out} to resume.")
        return 130
    if result.files:
        show_results(out, result.out, result.files)
    for config, error in result.failed:
        out.print(f"[red]failed: {config.label}: {escape(error)}[/red]")
    if result.failed:
        out.print(f"{len(result.failed)} run(s) failed; run the same command to retry them.")
        return 1
    return 0


def add_compare(commands: argparse._SubParsersAction) -> None:
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
        type=comma_list(positive_int, "positive integers"),
        action="append",
        help="hidden widths: mlp layer sizes (default 128,64), cnn conv channels (32,64), "
        "rnn recurrent layer sizes (128,128), resnet20 stage channels (16,32,64), "
        "transformer block widths, one per block (64,64,64,64); repeat the option to sweep "
        "several, "
        "e.g. --hidden 128,64 --hidden 256",
    )
    compare.add_argument(
        "--depth",
        type=comma_list(positive_int, "positive integers"),
        help="comma list of depths: N hidden layers (cnn: conv stages, rnn: recurrent layers) "
        "of one width, --hidden's single width or the first default one",
    )
    compare.add_argument(
        "--dropout",
        type=comma_list(float, "probabilities in [0, 1)"),
        help="comma list of dropout probabilities after each hidden block (default 0: none)",
    )
    compare.add_argument(
        "--cell",
        type=comma_list(choice(tuple(CELLS)), "rnn cells"),
        help=f"comma list of rnn cells: {', '.join(CELLS)} (default lstm)",
    )
    compare.add_argument(
        "--norms",
        type=norm_specs,
        default=["none", "bn", "ln"],
        help="comma list of kinds from `normlab norms`, each with options if wanted, e.g. "
        '"bn,gn(groups=8,eps=1e-3),bn(convention=keras)" (quote the parentheses; default '
        "none,bn,ln)",
    )
    compare.add_argument(
        "--placement",
        type=comma_list(choice(PLACEMENTS), "placements"),
        default=["before"],
        help="norm before or after the activation (transformer: pre-norm or post-norm); "
        "both: before,after (default before)",
    )
    compare.add_argument(
        "--batch-sizes",
        type=comma_list(positive_int, "positive integers"),
        default=[32],
        help="comma list of batch sizes (default 32)",
    )
    compare.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds per configuration: 0..N-1 (default 3)"
    )
    compare.add_argument(
        "--epochs", type=positive_int, default=5, help="epochs per run (default 5)"
    )
    compare.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N training samples, a fixed stratified subset (the same for every "
        "run); validation uses the whole test split (default: all)",
    )
    compare.add_argument(
        "--lr",
        type=comma_list(float, "learning rates"),
        default=[1e-3],
        help="comma list of learning rates (default 0.001)",
    )
    compare.add_argument(
        "--optimizer",
        type=comma_list(choice(OPTIMIZERS), "optimizers"),
        default=["adam"],
        help=f"comma list of optimizers: {', '.join(OPTIMIZERS)} (default adam)",
    )
    compare.add_argument(
        "--weight-decay",
        type=comma_list(float, "weight decays"),
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
        type=positive_int,
        default=32,
        help="the batch size --lr is meant for under --lr-scaling linear (default 32)",
    )
    compare.add_argument(
        "--steps",
        type=positive_int,
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
        type=positive_int,
        default=None,
        help="runs trained at once, each in its own process (default: the number of cores; "
        "1 with --nproc, and 1 (this process) when the runs to train take fewer than "
        f"{SMALL_SWEEP_STEPS} optimizer steps of the mlp in all (a model's steps weighted by "
        "its cost, see `normlab models`), too few to repay starting workers)",
    )
    compare.add_argument(
        "--nproc",
        type=positive_int,
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
        type=positive_int,
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
