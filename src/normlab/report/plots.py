"""The report's two figures, drawn with matplotlib's object API (no pyplot state).

Each function returns PNG bytes; figures are ``matplotlib.figure.Figure``
objects rendered by Agg and dropped afterwards, so nothing leaks between
calls and no display is needed. Sizes depend only on the number of batch
sizes and series, never on the text drawn (no ``bbox_inches="tight"``).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from normlab.registry import norm_kinds
from normlab.report.runs import Run, Sweep

DPI = 100
CURVES_WIDTH = 12.0
"""Inches; curves.png is CURVES_WIDTH * DPI pixels wide."""
CURVES_ROW_HEIGHT = 3.4
CURVES_HEADER = 0.9
LEGEND_ROW_HEIGHT = 0.3
LEGEND_COLUMNS = 4
BATCH_SIZE_FIGSIZE = (10.0, 5.5)
"""Inches; batch_size.png is this times DPI pixels."""

COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
LINESTYLES = ("-", "--", ":", "-.")


PANELS = (
    (True, "training accuracy (train mode, mean over batches)"),
    (False, "validation accuracy (eval mode)"),
)


def _style(index: int) -> dict[str, str]:
    """Colour, then line style once the ten colours are used up."""
    return {
        "color": COLORS[index % len(COLORS)],
        "linestyle": LINESTYLES[(index // len(COLORS)) % len(LINESTYLES)],
    }


def _styles(sweep: Sweep) -> dict[str, dict[str, str]]:
    """A style per series. When each series is one norm, the norm's place in the registry
    picks it, so a norm has the same colour in every report; otherwise series go in order."""
    norm_of = {run.series: run.norm for run in sweep.runs}
    kinds = norm_kinds()
    if len(set(norm_of.values())) == len(sweep.series) and set(norm_of.values()) <= set(kinds):
        return {series: _style(kinds.index(norm_of[series])) for series in sweep.series}
    return {series: _style(index) for index, series in enumerate(sweep.series)}


def legend_rows(series_count: int) -> int:
    """How many rows the curves legend takes (a diverged-run entry included)."""
    return math.ceil((series_count + 1) / LEGEND_COLUMNS)


def curves_figsize(batch_size_count: int, series_count: int) -> tuple[float, float]:
    """The size of curves.png in inches: one row per batch size, plus title and legend."""
    header = CURVES_HEADER + LEGEND_ROW_HEIGHT * legend_rows(series_count)
    return CURVES_WIDTH, header + CURVES_ROW_HEIGHT * batch_size_count


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _epoch_bands(
    runs: Sequence[Run], train: bool
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch: mean, min and max accuracy (%) over the runs that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        values = run.epoch_train_acc if train else run.epoch_val_acc
        for epoch, value in zip(run.epochs, values, strict=True):
            by_epoch.setdefault(epoch, []).append(100 * value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[epoch]) for epoch in epochs]
    lows = [min(by_epoch[epoch]) for epoch in epochs]
    highs = [max(by_epoch[epoch]) for epoch in epochs]
    return epochs, means, lows, highs


def _diverged_marker(color: str) -> dict[str, object]:
    return {"marker": "x", "s": 70, "linewidths": 2.2, "color": color, "zorder": 5}


def _diverged_handle(label: str) -> Line2D:
    return Line2D(
        [], [], color="black", marker="x", linestyle="none", markersize=8,
        markeredgewidth=2, label=label,
    )  # fmt: skip


def curves_png(sweep: Sweep) -> bytes:
    """curves.png: training | validation accuracy against epoch, one row per batch size.

    One line per series (mean over seeds) with a min–max band over seeds; the
    two panels of a row share their y-axis. A diverged run is marked with an
    x at its last epoch.
    """
    figure = Figure(figsize=curves_figsize(len(sweep.batch_sizes), len(sweep.series)), dpi=DPI)
    figure.set_layout_engine("constrained", h_pad=0.08, hspace=0.06)
    axes = figure.subplots(len(sweep.batch_sizes), 2, sharey="row", squeeze=False)
    styles = _styles(sweep)
    for row, batch_size in enumerate(sweep.batch_sizes):
        for column, (train, name) in enumerate(PANELS):
            ax = axes[row][column]
            for series in sweep.series:
                runs = sweep.series_group(series, batch_size)
                if not runs:
                    continue
                style = styles[series]
                epochs, means, lows, highs = _epoch_bands(runs, train)
                ax.plot(epochs, means, marker="o", markersize=3.5, linewidth=1.8, **style,
                        label=series)  # fmt: skip
                ax.fill_between(epochs, lows, highs, color=style["color"], alpha=0.15, lw=0)
                for run in runs:
                    if run.diverged and run.epochs:
                        values = run.epoch_train_acc if train else run.epoch_val_acc
                        ax.scatter([run.epochs[-1]], [100 * values[-1]],
                                   **_diverged_marker(style["color"]))  # fmt: skip
            ax.set_title(f"batch size {batch_size}: {name}", fontsize=11)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if column == 0:
                ax.set_ylabel("accuracy (%)")
            if row == len(sweep.batch_sizes) - 1:
                ax.set_xlabel("epoch")
    handles = [
        Line2D([], [], marker="o", markersize=4, linewidth=1.8, label=series, **styles[series])
        for series in sweep.series
    ]
    if any(run.diverged for run in sweep.runs):
        handles.append(_diverged_handle("diverged run (its last epoch)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=LEGEND_COLUMNS,
                  frameon=False, fontsize=10)  # fmt: skip
    figure.suptitle(
        f"{sweep.title()}: accuracy per norm, mean over seeds (band: min to max over seeds)",
        fontsize=13,
    )
    return _png(figure)


def batch_size_png(sweep: Sweep) -> bytes | None:
    """batch_size.png: final validation accuracy against batch size, one line per series.

    Log2 x-axis labelled with the actual batch sizes; error bars are the std
    over seeds; each diverged run is an x at its final accuracy. Series are
    nudged sideways a little so their error bars do not hide each other.
    Returns None with fewer than two batch sizes.
    """
    if len(sweep.batch_sizes) < 2:
        return None
    figure = Figure(figsize=BATCH_SIZE_FIGSIZE, dpi=DPI)
    figure.set_layout_engine("constrained")
    ax = figure.subplots()
    count = len(sweep.series)
    step = min(0.06, 0.4 / max(count, 1))
    styles = _styles(sweep)
    for index, series in enumerate(sweep.series):
        style = styles[series]
        offset = (index - (count - 1) / 2) * step
        xs, means, stds = [], [], []
        for batch_size in sweep.batch_sizes:
            runs = sweep.series_group(series, batch_size)
            if not runs:
                continue
            values = [100 * run.val_acc for run in runs]
            x = math.log2(batch_size) + offset
            xs.append(x)
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            diverged = [100 * run.val_acc for run in runs if run.diverged]
            if diverged:
                ax.scatter([x] * len(diverged), diverged, **_diverged_marker(style["color"]))
        ax.errorbar(xs, means, yerr=stds, marker="o", markersize=5, capsize=4, linewidth=1.8,
                    label=series, **style)  # fmt: skip
    ticks = [math.log2(size) for size in sweep.batch_sizes]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(size) for size in sweep.batch_sizes])
    ax.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("final validation accuracy (%)")
    if ax.get_ylim()[1] > 101:  # a std bar past 100% says nothing the axis needs to show
        ax.set_ylim(top=101)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any(run.diverged for run in sweep.runs):
        handles.append(_diverged_handle("diverged run"))
    figure.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=10)
    ax.set_title(
        f"{sweep.title()}: final validation accuracy against batch size\n"
        "mean ± std over seeds; epochs are fixed, so smaller batches take more steps",
        fontsize=11,
    )
    return _png(figure)
