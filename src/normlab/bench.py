"""Layer speed as a ratio to torch's native layer doing the same job on the same tensor.

``normlab bench`` times each normalization kind against the torch module that
does its job, in the same process and interleaved with it, and reports
``ours / baseline``: these machines are shared and noisy, so an absolute time
means little while a ratio holds. Timing is ``torch.utils.benchmark``'s:
``Timer.blocked_autorange`` warms each module up and sizes its blocks, then
blocks of ours and of the baseline alternate until each module has had
``min_run_time`` seconds (0.2 by default); each figure is the median of its
blocks. The default run (every kind, every shape, float32, all threads)
took 7.5 minutes on 2 cores shared with other work.

Threads: ``all`` is torch's default thread count. On a machine whose cores
are busy with other processes, a multi-threaded kernel waits for its
descheduled threads, a scheduler time slice (8 ms on the 2-core machines
this was written on) per parallel region: both times then count time slices
and ratios near 1.00 say nothing. ``--threads 1`` measures the layers there.

Shapes (``SHAPES``; every tensor is standard normal):

- ``mlp``: features after a linear layer, (N, C) for N in {32, 256, 4096}
  and C in {128, 1024}.
- ``cnn``: feature maps after a convolution, (N, C, H, W) = (32, 64, 56, 56)
  (an early ResNet stage) and (256, 256, 14, 14) (a late one, large batch),
  each stored contiguous (NCHW) and channels_last (NHWC).
- ``seq``: the tokens of a transformer block, (N, L, C) = (32, 512, 768).
  The kinds whose registry entry says ``tokens_last`` (``ln``, ``rms``) take
  it as transformers hold it, with ``channel_dim=-1``, against
  ``nn.LayerNorm(768)`` / ``nn.RMSNorm(768)`` on that tensor; the others
  (the batch-norm family, ``gn``, ``in``, ``switch``) take the same sizes as
  an (N, C, L) = (32, 768, 512) tensor against BatchNorm1d / GroupNorm /
  InstanceNorm1d on it.

Which kinds are timed, against what and by which target is
:mod:`normlab.bench_targets`' (:class:`~normlab.bench_targets.BenchTarget`:
``baseline``, ``speed_target``, ``variants``); every registered kind with a
bench target is a row, so a kind given one is benchmarked with no change here. The built-in
baselines (same dtype, same mode, same tensor): torch's BatchNorm1d/2d for
``bn``, ``bn-scalar`` (torch has no scalar-statistics batch norm: the ratio
is the price of that choice), ``brn``, ``switch`` and ``sync-bn`` (one
process); BatchNorm with ``eps=1e-3, momentum=0.01`` for ``bn (keras)``,
torch's spelling of the Keras defaults; BatchNorm held in eval mode with its
affine frozen for ``frozen-bn``, in every column, since frozen batch norm is
that layer in both modes; GroupNorm with
:func:`normlab.registry.default_groups` groups for ``gn``;
InstanceNorm1d/2d(affine=True) for ``in``. ``ln`` and ``rms`` on (N, C, H, W)
normalize the C channels at each position; the native way to do that is
timm's LayerNorm2d, ``LayerNorm(C)`` applied to ``x.movedim(1, -1)`` and
moved back, so that is the baseline. Comparing with LayerNorm on a tensor
already stored (N, H, W, C) would time the memory layout, not the layer.

Targets: each kind's ``speed_target`` in its bench target, a median train
fwd+bwd ratio over the shapes in float32 at all threads; the summary table
states it beside the measured median and the verdict.

Jobs: ``train fwd`` is the forward pass in training mode as training runs it
(autograd on, input and parameters requiring grad, running statistics
updated); ``train fwd+bwd`` adds the backward pass of a fixed random upstream
gradient into the input and the parameters, gradients set to None before
each step; ``eval fwd`` is the forward pass in eval mode under
``torch.no_grad()``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils import benchmark

import normlab
from normlab._checks import did_you_mean, name_key
from normlab.bench_targets import bench_target
from normlab.registry import get_kind, make_norm, registered_kinds

#: Seconds each of ours and the baseline is timed per job, by default.
DEFAULT_MIN_RUN_TIME = 0.2

JOBS: tuple[str, ...] = ("train fwd", "train fwd+bwd", "eval fwd")
#: The job the speed targets (``BenchTarget.speed_target``) are judged on.
TARGET_JOB = "train fwd+bwd"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class Shape:
    """One input of the benchmark: its shape set, its sizes (channels on dim 1) and layout."""

    group: str
    size: tuple[int, ...]
    layout: str = "contiguous"


SHAPES: dict[str, tuple[Shape, ...]] = {
    "mlp": tuple(Shape("mlp", (n, c)) for n in (32, 256, 4096) for c in (128, 1024)),
    "cnn": tuple(
        Shape("cnn", size, layout)
        for size in ((32, 64, 56, 56), (256, 256, 14, 14))
        for layout in ("contiguous", "channels_last")
    ),
    # (N, C, L) sizes of transformer tokens held as (N, L, C) = (32, 512, 768).
    "seq": (Shape("seq", (32, 768, 512), "tokens"),),
}


@dataclass(frozen=True)
class Variant:
    """A row of the benchmark: a registry kind with fixed ``make_norm`` options."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.kind)


def _variant_target(kind: str, label: str) -> float | None:
    target = bench_target(kind)
    if target is None:
        return None
    for variant in target.variants:
        if label == f"{kind} ({variant.name})":
            return variant.speed_target
    return target.speed_target


def speed_targets() -> dict[str, float]:
    """Each variant's label and its speed target (:mod:`normlab.bench_targets`)."""
    return {v.label: _variant_target(v.kind, v.label) for v in default_variants()}


def default_variants() -> list[Variant]:
    """Every registered kind with a bench target, each followed by its variants
    (``bn (keras)`` right after ``bn``)."""
    variants = []
    for entry in registered_kinds():
        target = bench_target(entry.name)
        if target is None:
            continue
        variants.append(Variant(entry.name))
        variants += [
            Variant(entry.name, dict(v.options), f"{entry.name} ({v.name})")
            for v in target.variants
        ]
    return variants


def _items(text: str, what: str) -> list[str]:
    items = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise ValueError(f"expected a comma-separated list of {what}; got {text!r}.")
    return items


def parse_kinds(text: str) -> list[Variant]:
    """Variants from a comma list of registry names or aliases; ``kind:variant`` names one of
    the kind's registered variants (``bn:keras`` is ``bn (keras)``).

    Raises:
        ValueError: an unknown kind (the closest are named), a kind without a
            benchmark baseline (``none``), or an unknown ``:variant``.
    """
    variants = []
    for item in _items(text, "normalization kinds"):
        name, _, variant = item.partition(":")
        entry = get_kind(name)
        target = bench_target(entry.name)
        if target is None:
            why = "is the identity" if entry.name == "none" else "declares no benchmark baseline"
            raise ValueError(
                f"{entry.name!r} {why} and has no layer to time against torch's; drop it."
            )
        if not variant:
            variants.append(Variant(entry.name))
            continue
        known = {name_key(v.name): v for v in target.variants}
        if name_key(variant) not in known:
            every = [
                f"{k.name}:{v.name}"
                for k in registered_kinds()
                for v in getattr(bench_target(k.name), "variants", ())
            ]
            raise ValueError(
                f"unknown variant {item!r}: the registered variants are "
                f"{', '.join(every) or 'none'}; write {entry.name!r} for the kind itself."
            )
        chosen = known[name_key(variant)]
        variants.append(Variant(entry.name, dict(chosen.options), f"{entry.name} ({chosen.name})"))
    return list(dict.fromkeys(variants))


def parse_shape_groups(text: str) -> list[str]:
    """Shape-set names (``mlp``, ``cnn``, ``seq``) from a comma list.

    Raises:
        ValueError: an unknown name; the message names the closest and the choices.
    """
    groups = []
    for item in _items(text, "shape sets"):
        key = name_key(item)
        if key not in SHAPES:
            raise ValueError(
                f"unknown shape set {item!r}.{did_you_mean(item, {k: k for k in SHAPES})} "
                f"Choose from {', '.join(SHAPES)}."
            )
        groups.append(key)
    return list(dict.fromkeys(groups))


def parse_dtypes(text: str) -> list[torch.dtype]:
    """dtypes from a comma list of names in :data:`DTYPES` (``float32,bfloat16``).

    Raises:
        ValueError: an unknown name; the message names the closest and the choices.
    """
    dtypes = []
    for item in _items(text, "dtypes"):
        if item not in DTYPES:
            raise ValueError(
                f"unknown dtype {item!r}.{did_you_mean(item, {k: k for k in DTYPES})} "
                f"Choose from {', '.join(DTYPES)}."
            )
        dtypes.append(DTYPES[item])
    return list(dict.fromkeys(dtypes))


def all_threads() -> int:
    """The thread count ``--threads all`` means: torch's intra-op threads in this process
    (by default one per core; OMP_NUM_THREADS lowers it)."""
    return torch.get_num_threads()


def parse_threads(text: str) -> list[int]:
    """Thread counts from a comma list of positive integers and ``all`` (:func:`all_threads`).

    Raises:
        ValueError: an item that is neither a positive integer nor ``all``.
    """
    counts = []
    for item in _items(text, "thread counts"):
        if item.lower() == "all":
            counts.append(all_threads())
        elif item.isdigit() and int(item) > 0:
            counts.append(int(item))
        else:
            raise ValueError(
                f"thread counts are positive integers or 'all' (every core); got {item!r}. "
                "Example: --threads 1,all."
            )
    return list(dict.fromkeys(counts))


@dataclass(frozen=True)
class Case:
    """One variant on one input: how to build the tensor, our module and torch's.

    ``size`` is the tensor's shape as timed, ``options`` the ``make_norm``
    options (the variant's, plus ``channel_dim=-1`` for token norms on
    ``seq``), ``baseline`` names torch's module, and ``skipped`` says why the
    case is not timed (None when it is).
    """

    variant: Variant
    shape: Shape
    size: tuple[int, ...]
    layout: str
    options: dict[str, Any]
    baseline: str
    skipped: str | None = None
    #: torch's module stays in eval mode with a frozen affine in every job (frozen-bn).
    baseline_eval_only: bool = False
    #: builds torch's module when called with ``dtype=``.
    baseline_factory: Callable[..., nn.Module] | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return self.size[-1] if self.options.get("channel_dim") == -1 else self.size[1]

    def make_input(self, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
        """A standard-normal tensor of ``size`` in the case's layout and ``dtype``."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(self.size, generator=generator)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(dtype)

    def make_ours(self, dtype: torch.dtype) -> nn.Module:
        """normlab's module: ``make_norm(kind, C, dtype=dtype, **options)``."""
        return make_norm(self.variant.kind, self.channels, dtype=dtype, **self.options)

    def make_baseline(self, dtype: torch.dtype) -> nn.Module:
        """torch's module for the same job, its parameters in ``dtype``."""
        if self.baseline_factory is None:
            raise ValueError(f"{self.variant.label} on {self.size} is skipped: {self.skipped}")
        module = self.baseline_factory(dtype=dtype)
        if self.baseline_eval_only:
            module.requires_grad_(False)
        return module


def _case(variant: Variant, shape: Shape) -> Case:
    """``variant`` on ``shape`` against the baseline its bench target names."""
    entry, options = get_kind(variant.kind), dict(variant.options)
    target = bench_target(entry.name)
    if target is None:
        raise ValueError(f"normlab bench has no baseline for kind {entry.name!r}.")
    size, layout = shape.size, shape.layout
    if shape.group == "seq":
        if entry.tokens_last:
            n, c, length = size
            size, layout = (n, length, c), "(N, L, C)"
            options["channel_dim"] = -1
        else:
            layout = "(N, C, L)"
    channels = size[-1] if options.get("channel_dim") == -1 else size[1]
    baseline = target.baseline(len(size), channels, options)
    return Case(
        variant,
        shape,
        size,
        layout,
        options,
        baseline.name,
        baseline.skipped,
        baseline.eval_only,
        baseline.build,
    )


def build_cases(
    variants: Sequence[Variant] | None = None, groups: Sequence[str] = tuple(SHAPES)
) -> list[Case]:
    """Every variant on every shape of ``groups``, variant by variant.

    Args:
        variants: from :func:`parse_kinds`; default :func:`default_variants`.
        groups: shape-set names, keys of :data:`SHAPES`.
    """
    variants = default_variants() if variants is None else variants
    return [_case(v, shape) for v in variants for group in groups for shape in SHAPES[group]]


def _train_forward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module(x)


def _train_forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    module.zero_grad(set_to_none=True)
    module(x).backward(grad)


def _eval_forward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    with torch.no_grad():
        module(x)


#: Each job: (training mode, the step timed).
_STEPS: dict[str, tuple[bool, Callable[[nn.Module, torch.Tensor, torch.Tensor], None]]] = {
    "train fwd": (True, _train_forward),
    "train fwd+bwd": (True, _train_forward_backward),
    "eval fwd": (False, _eval_forward),
}


@dataclass(frozen=True)
class Row:
    """One timed (or skipped) job: ``ratio = ours_s / baseline_s``, medians in seconds."""

    kind: str
    options: dict[str, Any]
    shape: list[int]
    layout: str
    dtype: str
    threads: int
    job: str
    ours_s: float | None
    baseline_s: float | None
    ratio: float | None
    baseline: str
    skipped: str | None = None


@dataclass
class BenchResult:
    """A bench run: its environment (versions, cores, settings, elapsed time) and rows."""

    environment: dict[str, Any]
    rows: list[Row]

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``--json`` writes: environment, rows and the per-kind summary."""
        return {
            "environment": self.environment,
            "rows": [asdict(row) for row in self.rows],
            "summary": summarize(self),
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


#: Blocks timed per module and job at least, however long a block takes.
MIN_BLOCKS = 3


def _median_seconds(
    ours: nn.Module,
    baseline: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
    step: Callable[[nn.Module, torch.Tensor, torch.Tensor], None],
    threads: int,
    min_run_time: float,
) -> tuple[float, float]:
    """Median seconds of ``step`` on ours and on the baseline, their blocks interleaved.

    ``blocked_autorange`` warms each module up, sizes its block (enough runs
    for the timer's overhead to vanish) and times its first blocks; then
    blocks of ours and of the baseline alternate until each has been timed
    ``min_run_time`` seconds and ``MIN_BLOCKS`` blocks, so a change in the
    machine's load falls on both alike.
    """
    timers = [
        benchmark.Timer(
            "step(module, x, grad)",
            globals={"step": step, "module": module, "x": x, "grad": grad},
            num_threads=threads,
        )
        for module in (ours, baseline)
    ]
    measured = [[timer.blocked_autorange(min_run_time=min_run_time / 4)] for timer in timers]
    # Blocks of about min_run_time / 8 for both modules (never fewer runs than
    # blocked_autorange chose), so that their blocks alternate evenly.
    numbers = [
        max(runs[0].number_per_run, round(min_run_time / 8 / runs[0].median)) for runs in measured
    ]

    def done(runs: list[benchmark.Measurement]) -> bool:
        raw_times = [t for m in runs for t in m.raw_times]
        return sum(raw_times) >= min_run_time and len(raw_times) >= MIN_BLOCKS

    while not all(done(runs) for runs in measured):
        for runs, timer, number in zip(measured, timers, numbers, strict=True):
            if not done(runs):
                runs.append(timer.timeit(number))
    ours_m, baseline_m = (benchmark.Measurement.merge(runs)[0] for runs in measured)
    return ours_m.median, baseline_m.median


def _failure(
    case: Case, ours: nn.Module, baseline: nn.Module, x: torch.Tensor, grad: torch.Tensor
) -> str | None:
    """Run each job once on both modules (a warm-up); why one fails, or None."""
    for who, module in (("torch's " + case.baseline, baseline), ("normlab's", ours)):
        for training, step in _STEPS.values():
            module.train(training and not (module is baseline and case.baseline_eval_only))
            try:
                step(module, x, grad)
            except (RuntimeError, ValueError, TypeError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                return (
                    f"{who} fails in {_dtype_name(x.dtype)}: {type(error).__name__}: {first_line}"
                )
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run_bench(
    cases: Sequence[Case],
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    threads: Sequence[int] | None = None,
    min_run_time: float = DEFAULT_MIN_RUN_TIME,
    on_step: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time every case in every dtype and thread count, each job against its baseline.

    Args:
        cases: from :func:`build_cases`.
        dtypes: input, parameter and buffer dtype of both modules.
        threads: torch thread counts (default ``[all_threads()]``).
        min_run_time: seconds each module is timed per job, at least.
        on_step: called after each job is timed, with a description of it
            (progress reporting).

    Returns:
        One row per case, dtype, thread count and job, in that order; a case
        that is skipped, or whose modules fail in a dtype, gets rows with the
        reason and no times.
    """
    every = all_threads()
    threads = [every] if threads is None else list(threads)
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be positive seconds; got {min_run_time}.")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    rows = []
    for case in cases:
        for dtype in dtypes:
            skipped, modules = case.skipped, None
            if skipped is None:
                x = case.make_input(dtype).requires_grad_()
                grad = case.make_input(dtype, seed=1)
                torch.manual_seed(0)
                modules = case.make_ours(dtype), case.make_baseline(dtype)
                skipped = _failure(case, *modules, x, grad)
            for count in threads:
                for job, (training, step) in _STEPS.items():
                    times: tuple[float | None, float | None] = (None, None)
                    if skipped is None:
                        ours, baseline = modules
                        ours.train(training)
                        baseline.train(training and not case.baseline_eval_only)
                        times = _median_seconds(ours, baseline, x, grad, step, count, min_run_time)
                    rows.append(
                        Row(
                            kind=case.variant.label,
                            options=case.options,
                            shape=list(case.size),
                            layout=case.layout,
                            dtype=_dtype_name(dtype),
                            threads=count,
                            job=job,
                            ours_s=times[0],
                            baseline_s=times[1],
                            ratio=None if skipped else times[0] / times[1],
                            baseline=case.baseline,
                            skipped=skipped,
                        )
                    )
                    if on_step is not None:
                        on_step(_describe(case, dtype, count, job))
    environment = {
        "normlab": normlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "all_threads": every,
        "threads": threads,
        "dtypes": [_dtype_name(d) for d in dtypes],
        "min_run_time_s": min_run_time,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - clock, 1),
    }
    return BenchResult(environment, rows)


def _describe(case: Case, dtype: torch.dtype, threads: int, job: str) -> str:
    size = "x".join(map(str, case.size))
    return f"{case.variant.label} {size} {case.layout} {_dtype_name(dtype)} {threads}t {job}"


def bench(
    console: Console,
    variants: Sequence[Variant] | None = None,
    groups: Sequence[str] = tuple(SHAPES),
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    threads: Sequence[int] | None = None,
    min_run_time: float = DEFAULT_MIN_RUN_TIME,
) -> BenchResult:
    """:func:`run_bench` on :func:`build_cases` with a rich progress bar on ``console``."""
    cases = build_cases(variants, groups)
    threads = [all_threads()] if threads is None else list(threads)
    total = len(cases) * len(dtypes) * len(threads) * len(JOBS)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("timing jobs", total=total, last="")
        return run_bench(
            cases,
            dtypes,
            threads,
            min_run_time,
            on_step=lambda text: progress.update(task, advance=1, last=text),
        )


def summarize(result: BenchResult) -> list[dict[str, Any]]:
    """Per variant, the median train fwd+bwd ratio over the shapes timed in float32.

    Each entry holds ``median_ratio`` and ``shapes`` (how many shapes entered
    it) at all threads, where the kind's speed ``target`` (its bench target's;
    None for a kind no longer registered or without one) is judged, ``met`` (None when either
    is missing), and ``median_ratio_by_threads``: the median at each thread
    count of the run.
    """
    every = result.environment["all_threads"]
    targets = speed_targets()
    ratios: dict[str, dict[int, list[float]]] = {}
    for row in result.rows:
        by_threads = ratios.setdefault(row.kind, {})
        if row.job == TARGET_JOB and row.dtype == "float32" and row.ratio is not None:
            by_threads.setdefault(row.threads, []).append(row.ratio)
    out = []
    for kind, by_threads in ratios.items():
        medians = {count: statistics.median(values) for count, values in by_threads.items()}
        median = medians.get(every)
        out.append(
            {
                "kind": kind,
                "median_ratio": median,
                "shapes": len(by_threads.get(every, [])),
                "target": targets.get(kind),
                "met": None if median is None or kind not in targets else median <= targets[kind],
                "median_ratio_by_threads": {
                    str(count): medians[count] for count in sorted(medians)
                },
            }
        )
    return out


def _ratio(value: float | None) -> str:
    return "skipped" if value is None else f"{value:.2f}"


def results_table(result: BenchResult) -> Table:
    """Every ratio, one line per kind, shape, dtype and thread count; a section per kind."""
    table = Table(
        title="Time as a ratio to torch's native layer on the same tensor (median; <1 is faster)",
        box=box.SIMPLE_HEAD,
    )
    for column in ("kind", "shape", "layout", "dtype", "threads", "baseline"):
        table.add_column(column)
    for job in JOBS:
        table.add_column(job, justify="right")
    lines: dict[tuple, dict[str, Row]] = {}
    for row in result.rows:
        key = (row.kind, tuple(row.shape), row.layout, row.dtype, row.threads)
        lines.setdefault(key, {})[row.job] = row
    skipped: dict[tuple[str, str, str], list[str]] = {}
    previous = None
    for (kind, shape, layout, dtype, threads), jobs in lines.items():
        if previous is not None and kind != previous:
            table.add_section()
        first = next(iter(jobs.values()))
        table.add_row(
            kind if kind != previous else "",
            "x".join(map(str, shape)),
            layout,
            dtype,
            str(threads),
            first.baseline,
            *(_ratio(jobs[job].ratio) if job in jobs else "" for job in JOBS),
        )
        if first.skipped:
            shapes = skipped.setdefault((kind, dtype, first.skipped), [])
            shapes.append("x".join(map(str, shape)))
        previous = kind
    env = result.environment
    caption = [
        f"torch {env['torch']}, normlab {env['normlab']}, {env['cpu_count']} CPUs, "
        f"{env['min_run_time_s']} s per module and job, {env['elapsed_s']} s in all",
        *(
            f"skipped: {kind} on {', '.join(dict.fromkeys(shapes))} ({dtype}): {reason}"
            for (kind, dtype, reason), shapes in skipped.items()
        ),
    ]
    table.caption = "\n".join(caption)
    return table


def summary_table(result: BenchResult) -> Table:
    """Per kind: the median train fwd+bwd ratio over the shapes (float32) at each thread
    count, and the kind's speed target, judged at all threads."""
    every = result.environment["all_threads"]
    summary = summarize(result)
    counts = sorted({int(count) for entry in summary for count in entry["median_ratio_by_threads"]})
    table = Table(
        title=f"{TARGET_JOB}: median ratio, float32",
        caption=f"medians over the shapes; targets judged at {every} threads",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("kind")
    for count in counts:
        table.add_column(f"{count} thread{'s' * (count > 1)}", justify="right")
    table.add_column("target", justify="right")
    table.add_column("verdict")
    for entry in summary:
        medians = entry["median_ratio_by_threads"]
        verdict = {True: "[green]met[/green]", False: "[red]not met[/red]"}.get(
            entry["met"], f"not measured at {every} threads"
        )
        table.add_row(
            entry["kind"],
            *(f"{medians[str(c)]:.3f}" if str(c) in medians else "n/a" for c in counts),
            "n/a" if entry["target"] is None else f"≤ {entry['target']:.2f}",
            verdict,
        )
    return table
