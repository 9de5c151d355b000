"""The claims study's figures, one PNG per section, drawn from the records only.

Every panel shows each run as a dot and the mean over seeds as a line or bar, so the
spread behind each estimate is visible.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from normlab.study import measures as m
from normlab.study.findings import Runs
from normlab.study.plan import Budget

COLORS = {
    "none": "#7f7f7f",
    "bn": "#1f77b4",
    "bn-scalar": "#ff7f0e",
    "ln": "#2ca02c",
    "rms": "#9467bd",
    "gn": "#d62728",
}
DPI = 110
FILES = (
    "batch_size.png",
    "gap.png",
    "bn_small_batch.png",
    "convergence.png",
    "learning_rate.png",
    "depth.png",
    "dropout.png",
    "ics.png",
    "landscape.png",
    "sequence.png",
    "step_time.png",
    "width.png",
    "group_norm.png",
)
"""Every figure :func:`write_all` draws, so that the report folder is checked before any run."""


def _line(
    ax: Any,
    xs: Sequence[Any],
    groups: Sequence[Sequence[float]],
    norm: str,
    label: str | None = None,
) -> None:
    color = COLORS.get(norm, "black")
    means = [statistics.fmean(g) if g else float("nan") for g in groups]
    ax.plot(xs, means, marker="o", color=color, label=label or norm, linewidth=1.8)
    for x, values in zip(xs, groups, strict=True):
        ax.scatter([x] * len(values), values, color=color, alpha=0.35, s=12, linewidths=0)


def _values(records: Sequence[Any], measure: m.Measure) -> list[float]:
    return [v for v in (measure(r) for r in records) if v is not None]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def batch_size(
    runs: Runs,
    b: Budget,
    path: Path,
    measure: m.Measure = m.val_acc,
    ylabel: str = "validation accuracy (%)",
) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sizes = list(b.batch_sizes)
    for norm in ("none", "bn", "bn-scalar", "ln"):
        groups = [_values(runs.get("batch", norm=norm, batch_size=s), measure) for s in sizes]
        _line(ax, sizes, groups, norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Tutorials' MLP on MNIST, {b.epochs} epochs (dots: seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def bn_small_batch(runs: Runs, b: Budget, path: Path) -> None:
    sizes = [min(b.batch_sizes), max(b.batch_sizes)]
    protocols = [
        ("equal-steps", f"equal steps ({b.equal_steps})"),
        ("batch", f"equal epochs ({b.epochs})"),
        ("linear-lr", "linear lr scaling"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), sharey=True)
    for ax, (experiment, title) in zip(axes, protocols, strict=True):
        for norm in ("none", "bn", "ln"):
            if not runs.configs(experiment, norm=norm):
                continue
            groups = [
                _values(runs.get(experiment, norm=norm, batch_size=s), m.val_acc) for s in sizes
            ]
            _line(ax, [str(s) for s in sizes], groups, norm)
        ax.set_title(title)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend()
    _save(fig, path)


def convergence(runs: Runs, b: Budget, path: Path) -> None:
    sizes = list(b.batch_sizes)
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.8 * len(sizes), 3.6), sharey=True)
    for ax, size in zip(axes, sizes, strict=True):
        for norm in ("none", "bn", "bn-scalar", "ln"):
            records = runs.get("batch", norm=norm, batch_size=size)
            if not records:
                continue
            epochs = range(1, max(len(r["history"]) for r in records) + 1)
            groups = [
                [100 * r["history"][e - 1]["val_acc"] for r in records if len(r["history"]) >= e]
                for e in epochs
            ]
            _line(ax, list(epochs), groups, norm)
        ax.set_title(f"batch {size}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend()
    _save(fig, path)


def learning_rate(runs: Runs, b: Budget, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for norm in ("none", "bn"):
        _line(
            ax,
            list(b.lrs),
            [_values(runs.get("lr", norm=norm, lr=lr), m.val_acc) for lr in b.lrs],
            norm,
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning-rate sweep (10% is chance level: the run stopped learning)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def depth(runs: Runs, b: Budget, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    panels: list[tuple[str, Callable[[Any], float | None]]] = [
        ("validation accuracy (%)", m.val_acc),
        ("|log10 first/last grad norm|, init", m.grad_ratio),
        ("|log10 first/last grad norm|, training", lambda r: m.grad_ratio(r, at_init=False)),
    ]
    for ax, (label, measure) in zip(axes, panels, strict=True):
        for norm in ("none", "bn", "ln"):
            groups = [
                _values(runs.get("depth", norm=norm, hidden=[b.depth_width] * d), measure)
                for d in b.depths
            ]
            _line(ax, list(b.depths), groups, norm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(b.depths), [str(d) for d in b.depths])
        ax.set_xlabel("hidden layers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    _save(fig, path)


def dropout(runs: Runs, b: Budget, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    labels = ["none", "none + dropout", "bn", "bn + dropout"]
    cells = [("none", 0.0), ("none", b.dropout), ("bn", 0.0), ("bn", b.dropout)]
    for ax, (measure, ylabel) in zip(
        axes,
        [(m.val_acc, "validation accuracy (%)"), (m.gap, "gap: train - val (pp)")],
        strict=True,
    ):
        for i, (norm, p) in enumerate(cells):
            values = _values(runs.get("dropout", norm=norm, dropout=p), measure)
            color = COLORS[norm]
            if values:
                ax.bar(i, statistics.fmean(values), color=color, alpha=0.45 if p else 0.8)
                ax.scatter([i] * len(values), values, color="black", s=10)
        ax.set_xticks(range(4), labels, rotation=15)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    accuracies = [
        v for n, p in cells for v in _values(runs.get("dropout", norm=n, dropout=p), m.val_acc)
    ]
    if accuracies:
        axes[0].set_ylim(min(accuracies) - 1, max(accuracies) + 0.5)
    _save(fig, path)


def _per_probe(records: Sequence[Any], key: str) -> tuple[list[int], list[list[float]]]:
    """Per probe index: the step and, for each run, the mean of ``key`` over layers 2..."""
    probes = [r["diagnostics"]["probes"] for r in records if r.get("diagnostics")]
    if not probes:
        return [], []
    count = min(len(p) for p in probes)
    steps = [probes[0][i]["step"] for i in range(count)]
    values = [[statistics.fmean(p[i][key][1:]) for p in probes] for i in range(count)]
    return steps, values


def ics(runs: Runs, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in (
        (axes[0], "ics", "ICS ‖G - G'‖ (layers 2..)"),
        (axes[1], "ics_cosine", "cos(G, G') (layers 2..)"),
    ):
        for norm in ("none", "bn", "ln"):
            steps, values = _per_probe(runs.get("batch", norm=norm, batch_size=32), key)
            if steps:
                _line(ax, steps, values, norm)
        ax.set_xlabel("optimizer step (batch 32)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    _save(fig, path)


def landscape(runs: Runs, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    etas: list[float] = []
    for norm in ("none", "bn", "ln"):
        records = [r for r in runs.get("batch", norm=norm, batch_size=32) if r.get("diagnostics")]
        if not records:
            continue
        probes = [p for r in records for p in r["diagnostics"]["probes"] if p["epoch"] >= 1]
        etas = probes[0]["landscape"]["step_sizes"]
        for ax, key, relative in ((axes[0], "losses", True), (axes[1], "gradient_changes", False)):
            rows = [[v - p["loss"] if relative else v for v in p["landscape"][key]] for p in probes]
            means = [statistics.fmean(col) for col in zip(*rows, strict=True)]
            ax.plot(etas, means, marker="o", color=COLORS[norm], label=norm)
            ax.fill_between(
                etas,
                [min(c) for c in zip(*rows, strict=True)],
                [max(c) for c in zip(*rows, strict=True)],
                color=COLORS[norm],
                alpha=0.15,
            )
    axes[0].set_ylabel("L(W - η∇L) - L(W)")
    axes[1].set_ylabel("‖∇L(W - η∇L) - ∇L(W)‖")
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        if etas:
            ax.set_xticks(etas, [f"{eta:g}" for eta in etas])
        ax.set_xlabel("step size η along the negative gradient")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle("Probes after each epoch, batch 32 (band: min to max over probes and seeds)")
    _save(fig, path)


def bars(
    path: Path, panels: Sequence[tuple[str, Sequence[tuple[str, str, list[float]]]]], ylabel: str
) -> None:
    """One panel per (title, [(label, norm, values)]): a bar per label at the mean, dots per run."""
    panels = [panel for panel in panels if any(values for _, _, values in panel[1])]
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.6), squeeze=False
    )
    for ax, (title, bars_) in zip(axes[0], panels, strict=False):
        lows = []
        for i, (_label, norm, values) in enumerate(bars_):
            if values:
                ax.bar(i, statistics.fmean(values), color=COLORS.get(norm, "black"), alpha=0.75)
                ax.scatter([i] * len(values), values, color="black", s=10)
                lows.append(min(values))
        ax.set_xticks(range(len(bars_)), [label for label, _, _ in bars_])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        if ylabel.startswith("validation") and lows:
            top = max(v for _, _, values in bars_ for v in values)
            ax.set_ylim(max(0, min(lows) - 2), min(100, top + 1))
    _save(fig, path)


def write_all(runs: Runs, b: Budget, directory: Path) -> None:
    """Every figure of the report into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    batch_size(runs, b, directory / "batch_size.png")
    batch_size(runs, b, directory / "gap.png", m.gap, "generalization gap, train - val (pp)")
    bn_small_batch(runs, b, directory / "bn_small_batch.png")
    convergence(runs, b, directory / "convergence.png")
    learning_rate(runs, b, directory / "learning_rate.png")
    depth(runs, b, directory / "depth.png")
    dropout(runs, b, directory / "dropout.png")
    ics(runs, directory / "ics.png")
    landscape(runs, directory / "landscape.png")
    sequence = [
        (
            model,
            [
                (n, n, _values(runs.get(model, norm=n), m.val_acc))
                for n in ("none", "bn", "ln", "rms")
                if runs.configs(model, norm=n)
            ],
        )
        for model in ("rnn", "transformer")
        if runs.planned(model)
    ]
    bars(directory / "sequence.png", sequence, "validation accuracy (%)")
    timing = [
        (
            f"batch {s}",
            [
                (
                    n,
                    n,
                    [
                        1000 * v
                        for v in _values(runs.get("batch", norm=n, batch_size=s), m.step_seconds)
                    ],
                )
                for n in ("none", "bn", "bn-scalar", "ln")
            ],
        )
        for s in b.batch_sizes
    ]
    bars(directory / "step_time.png", timing, "ms per training step")
    width = [
        (
            f"width {w}",
            [
                (n, n, _values(runs.get("width", norm=n, hidden=[w, w]), m.val_acc))
                for n in ("bn", "bn-scalar")
            ],
        )
        for w in b.widths
    ]
    bars(directory / "width.png", width, "validation accuracy (%)")
    gn = [
        (
            f"{model} at batch {s}",
            [
                (n, n, _values(runs.get(experiment, norm=n, batch_size=s), m.val_acc))
                for n in ("gn", "bn")
            ],
        )
        for model, experiment in (("cnn", "conv-small-batch"), ("resnet20", "resnet20-small-batch"))
        if runs.planned(experiment)
        for s in b.small_batches
    ]
    bars(directory / "group_norm.png", gn, "validation accuracy (%)")
