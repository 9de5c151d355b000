"""The claims study's figures, one PNG per section, drawn from the records only.

Every panel shows each run as a dot and the mean over seeds with its 95% t interval, so
the spread behind each estimate is visible. Accuracy axes that do not start at 0 say so in
their label, and panels where training can fail show chance (10%) as a dashed line.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scipy import stats as scipy_stats

from normlab.experiment.evaluations import BATCH_SIZES, SHIFTS
from normlab.report.catalogue import TUTORIAL_ACCURACY
from normlab.study import measures as m
from normlab.study.cells import (
    GN,
    Runs,
    after_records,
    batch_records,
    depth_records,
    dropout_records,
    gn_records,
    ics_records,
    init_records,
)
from normlab.study.plan import Budget

COLORS = {
    "none": "#7f7f7f",
    "none (He init)": "#000000",
    "bn": "#1f77b4",
    "bn-scalar": "#ff7f0e",
    "ln": "#2ca02c",
    "brn": "#8c564b",
    "rms": "#9467bd",
    GN: "#d62728",
}
DPI = 110


def interval(values: Sequence[float]) -> float:
    """Half-width of the 95% t interval of the mean of ``values`` (0 for fewer than 2)."""
    if len(values) < 2:
        return 0.0
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return float(scipy_stats.t.ppf(0.975, len(values) - 1)) * sem


def _line(
    ax: Any,
    xs: Sequence[Any],
    groups: Sequence[Sequence[float]],
    label: str,
    joined: bool = True,
) -> None:
    """Means with 95% intervals joined by a line (not for categories: ``joined=False``), and
    every run as a faint dot."""
    color = COLORS.get(label)
    kept = [(x, g) for x, g in zip(xs, groups, strict=True) if g]
    if not kept:
        return
    means = [statistics.fmean(g) for _, g in kept]
    errors = [interval(g) for _, g in kept]
    line = ax.errorbar(
        [x for x, _ in kept], means, yerr=errors, marker="o", capsize=3, color=color,
        label=label, linewidth=1.6, linestyle="-" if joined else "none",
    )  # fmt: skip
    color = line[0].get_color()
    for x, values in kept:
        ax.scatter([x] * len(values), values, color=color, alpha=0.3, s=10, linewidths=0)


def _values(records: Sequence[Any], measure: m.Measure) -> list[float]:
    return [v for v in (measure(r) for r in records) if v is not None and math.isfinite(v)]


def _chance(ax: Any) -> None:
    ax.axhline(m.CHANCE, color="black", linestyle="--", linewidth=0.8, label="chance")


def _finish(ax: Any, xlabel: str, ylabel: str, title: str, zoomed: bool = False) -> None:
    """Labels, grid and legend; a zoomed accuracy axis says so, an empty panel says why."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "runs not finished yet", ha="center", transform=ax.transAxes)
    if zoomed:
        note = "y axis zoomed: it does not start at 0"
        ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.35")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def replication(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    norms = ["none", "bn", "bn-scalar", "ln"]
    for i, norm in enumerate(norms):
        _line(ax, [i], [_values(runs.get("replication", norm=norm), m.val_acc)], norm)
        if norm in TUTORIAL_ACCURACY:
            tutorial = TUTORIAL_ACCURACY[norm]
            ax.scatter([i + 0.15], [tutorial], marker="*", s=120, color="black", zorder=3)
    ax.scatter([], [], marker="*", s=80, color="black", label="the tutorial (one run)")
    ax.set_xticks(range(len(norms)), norms)
    _finish(
        ax,
        "norm",
        "validation accuracy (%)",
        f"The tutorial's MLP, batch 32, {b.epochs} epochs, {b.replication_seeds} seeds\n"
        "(mean and 95% CI; dots: seeds; stars: the tutorial's single runs)",
        zoomed=True,
    )
    _save(fig, path)


def batch_size(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sizes = list(b.batch_sizes)
    for norm in ("none", "bn", "bn-scalar", "ln", "brn"):
        groups = [_values(batch_records(runs, norm, s), m.val_acc) for s in sizes]
        _line(ax, sizes, groups, norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    _finish(
        ax,
        "batch size (Adam lr 1e-3 x sqrt(batch / 32))",
        "validation accuracy (%)",
        f"The tutorials' MLP on MNIST, {b.epochs} epochs\n(mean and 95% CI; dots: seeds)",
        zoomed=True,
    )
    _save(fig, path)


def convergence(runs: Runs, b: Budget, path: Path) -> None:
    sizes = [32, max(b.batch_sizes)]
    fig, axes = plt.subplots(1, len(sizes), figsize=(10, 3.8), sharey=True)
    for ax, size in zip(axes, sizes, strict=True):
        for norm in ("none", "bn", "bn-scalar", "ln"):
            records = batch_records(runs, norm, size)
            epochs = range(1, b.epochs + 1)
            groups = [
                _values(records, lambda r, e=e: 100.0 * r["history"][e - 1]["val_acc"])
                for e in epochs
            ]
            _line(ax, list(epochs), groups, norm)
        ax.set_xticks(list(range(1, b.epochs + 1)))
        _finish(ax, "epoch", "validation accuracy (%)", f"batch {size}", zoomed=True)
    _save(fig, path)


def learning_rate(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for norm in ("none", "bn", "ln"):
        groups = [_values(runs.get("lr", norm=norm, lr=lr), m.val_acc) for lr in b.lrs]
        _line(ax, list(b.lrs), groups, norm)
    _chance(ax)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    _finish(ax, "learning rate (SGD, momentum 0.9)", "validation accuracy (%)", "Learning rate")
    _save(fig, path)


def depth(runs: Runs, b: Budget, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    models = (
        ("none", "none", False),
        ("none (He init)", "none", True),
        ("bn", "bn", False),
        ("ln", "ln", False),
    )
    for ax, (measure, ylabel) in zip(
        axes,
        ((m.val_acc, "validation accuracy (%)"), (m.signed_grad_ratio, "log10 gradient ratio")),
        strict=True,
    ):
        for label, norm, he in models:
            groups = [_values(depth_records(runs, b, norm, d, he), measure) for d in b.depths]
            _line(ax, list(b.depths), groups, label)
        ax.set_xticks(list(b.depths), [str(d) for d in b.depths])
        if measure is m.val_acc:
            _chance(ax)
            ax.set_ylim(0, 100)
            title = f"Depth: MLPs of width {b.depth_width}"
        else:
            ax.axhline(0, color="black", linewidth=0.8)
            title = "first / last layer gradient norm at init (<0 vanishing, >0 exploding)"
        _finish(ax, "hidden layers", ylabel, title)
    _save(fig, path)


def init(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    scales = list(b.init_scales)
    for norm in ("none", "bn", "ln"):
        _line(ax, scales, [_values(init_records(runs, norm, s), m.val_acc) for s in scales], norm)
    _chance(ax)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    _finish(ax, "weight scale (x He init)", "validation accuracy (%)", "Initialization")
    _save(fig, path)


def dropout(runs: Runs, b: Budget, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for ax, (measure, ylabel) in zip(
        axes,
        ((m.val_acc, "validation accuracy (%)"), (m.gap, "train - validation (pp)")),
        strict=True,
    ):
        for norm in ("none", "bn", "ln"):
            groups = [_values(dropout_records(runs, norm, p), measure) for p in b.dropouts]
            _line(ax, list(b.dropouts), groups, norm)
        title = f"{b.fit_subset}-image subset, fitted"
        _finish(ax, "dropout probability", ylabel, title, zoomed=measure is m.val_acc)
    _save(fig, path)


def _probe_series(records: Sequence[Any], measure: Callable[[Any], float | None]) -> list[list]:
    """Per probe index, the values of ``measure`` over ``records``' probes."""
    series: list[list[float]] = []
    for record in records:
        for i, probe in enumerate((record.get("diagnostics") or {}).get("probes") or []):
            value = measure(probe)
            if value is not None and math.isfinite(value):
                while len(series) <= i:
                    series.append([])
                series[i].append(value)
    return series


def _relative(probe: Any) -> float | None:
    pairs = [(s, n) for s, n in zip(probe["ics"][1:], probe["grad_norms"][1:], strict=True)]
    values = [s / n for s, n in pairs if n > 0]
    return statistics.fmean(values) if values else None


def ics(runs: Runs, b: Budget, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for ax, optimizer in zip(axes, ("adam", "sgd"), strict=True):
        for norm in ("none", "bn", "bn-scalar", "ln"):
            series = _probe_series(ics_records(runs, b, norm, optimizer, False), _relative)
            _line(ax, list(range(len(series))), series, norm)
        ax.set_yscale("log")
        _finish(
            ax,
            "probe (0: step 0, then after each epoch)",
            "relative ICS ||G - G'|| / ||G||",
            f"The tutorials' MLP, {optimizer}",
        )
    _save(fig, path)


def landscape(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for norm in ("none", "bn", "bn-scalar", "ln"):
        series = _probe_series(
            ics_records(runs, b, norm, "adam", False),
            lambda probe: probe["landscape"]["beta_smoothness"],
        )
        _line(ax, list(range(len(series))), series, norm)
    ax.set_yscale("log")
    _finish(ax, "probe", "effective beta-smoothness", "The tutorials' MLP, Adam")
    _save(fig, path)


def width(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for norm in ("bn", "bn-scalar"):
        groups = [_values(runs.get("width", norm=norm, hidden=[w, w]), m.val_acc) for w in b.widths]
        _line(ax, list(b.widths), groups, norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(b.widths), [str(w) for w in b.widths])
    _finish(ax, "hidden width", "validation accuracy (%)", "Two hidden layers", zoomed=True)
    _save(fig, path)


def group_norm(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sizes = list(b.small_batches)
    for norm in (GN, "bn", "brn", "ln"):
        _line(ax, sizes, [_values(gn_records(runs, norm, s), m.val_acc) for s in sizes], norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    _finish(ax, "batch size", "validation accuracy (%)", "The CNN on MNIST", zoomed=True)
    _save(fig, path)


def after_training(runs: Runs, b: Budget, path: Path) -> None:
    fig, (shifts, one, stats) = plt.subplots(
        1, 3, figsize=(14, 4.0), gridspec_kw={"width_ratios": [3, 1.2, 2]}
    )
    conditions = [("clean", m.val_acc), *((name, m.shifted_acc(name)) for name in SHIFTS)]
    norms = ("none", "bn", "bn-scalar", "ln")
    for offset, norm in enumerate(norms):
        records = after_records(runs, norm)
        xs = [i + 0.15 * (offset - 1.5) for i in range(len(conditions))]
        groups = [_values(records, measure) for _, measure in conditions]
        _line(shifts, xs, groups, norm, joined=False)
        _line(one, [offset], [_values(records, m.batch1_acc)], norm)
    shifts.set_xticks(range(len(conditions)), [name for name, _ in conditions], fontsize=7)
    _chance(shifts)
    shifts.set_ylim(0, 100)
    _finish(shifts, "validation images", "validation accuracy (%)", "Shifted inputs (eval mode)")
    one.set_xticks(range(len(norms)), norms, fontsize=7)
    _finish(one, "norm", "validation accuracy (%)", "Batch 1 (eval mode)", zoomed=True)
    for norm in ("bn", "bn-scalar"):
        groups = [_values(after_records(runs, norm), m.batch_stats_acc(s)) for s in BATCH_SIZES]
        _line(stats, list(BATCH_SIZES), groups, norm)
    _chance(stats)
    stats.set_xscale("log", base=2)
    stats.set_xticks(list(BATCH_SIZES), [str(s) for s in BATCH_SIZES])
    stats.set_ylim(0, 100)
    _finish(
        stats,
        "batch size of the batch statistics (trained at 32)",
        "validation accuracy (%)",
        "Batch norms with batch statistics",
    )
    fig.suptitle(
        f"The tutorials' MLP after training, {b.seeds} seeds (mean and 95% CI; dots: seeds)",
        fontsize=10,
    )
    _save(fig, path)


FIGURES: dict[str, Callable[[Runs, Budget, Path], None]] = {
    "replication.png": replication,
    "batch_size.png": batch_size,
    "convergence.png": convergence,
    "learning_rate.png": learning_rate,
    "depth.png": depth,
    "init.png": init,
    "dropout.png": dropout,
    "ics.png": ics,
    "landscape.png": landscape,
    "width.png": width,
    "group_norm.png": group_norm,
    "after_training.png": after_training,
}


FILES = tuple(FIGURES)
"""Every figure :func:`write_all` draws, so that the report folder is checked before any run."""


def write_all(runs: Runs, b: Budget, directory: Path) -> list[Path]:
    """Every figure into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in FIGURES.items():
        draw(runs, b, directory / name)
        paths.append(directory / name)
    return paths
