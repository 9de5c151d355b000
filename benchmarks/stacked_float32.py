"""Stacked seeds against separate runs in float32: the same distribution of final accuracy?

In float64 each stacked replica is its single run up to rounding (tests/experiment/test_stacked.py,
1e-10). In float32 the two computations round differently (one batched product instead
of K, a widened or reshaped norm), and training amplifies rounding: Adam moves a
parameter whose gradient is rounding noise by about lr per step, and a norm that
divides by a near-zero spread (group norm with two values per group on an MLP) flips
on the noise. So a single seed's final accuracy may differ by points; what must not
differ is the distribution over seeds.

For each kind and model this trains ``--seeds`` seeds on digits three ways: separately
in float32, stacked in float32, and separately in float64 (the control: the same
computation as the first, rounded differently). It reports, over seeds, the mean paired
difference stacked - separate in final validation accuracy with its 90% confidence
interval, and the equivalence verdict of two one-sided t-tests at the 5% level with
``--margin`` (the interval inside (-margin, margin)); beside it the mean absolute paired
difference stacked - separate and separate float32 - float64, which show how far
rounding alone moves a seed.

    python benchmarks/stacked_float32.py [--seeds 20] [--epochs 2] [--models mlp,cnn]
        [--norms none,bn,...] [--margin 0.03] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import warnings
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table
from scipy import stats

from normlab.data import Dataset, load_dataset
from normlab.experiment.config import RunConfig
from normlab.experiment.stacked import train_stacked
from normlab.experiment.train import train_model
from normlab.registry import BUILT_IN


def float64_data(data: Dataset) -> Dataset:
    """``data`` with float64 images (Dataset keeps users' images float32; the control
    runs in float64)."""
    wide = dataclasses.replace(data)
    object.__setattr__(wide, "train_x", data.train_x.double())
    object.__setattr__(wide, "val_x", data.val_x.double())
    return wide


def final_accuracies(
    model: str, norm: str, seeds: int, epochs: int, data: Dataset
) -> dict[str, list[float]] | None:
    """Final validation accuracy of each seed, separate float32, stacked float32 and
    separate float64; None when the model cannot take the kind."""
    configs = [RunConfig(model=model, norm=norm, seed=seed, epochs=epochs) for seed in range(seeds)]
    try:
        separate = [train_model(config, data)[1]["final"]["val_acc"] for config in configs]
    except ValueError:
        return None
    stacked = [record["final"]["val_acc"] for _, record in train_stacked(configs, data)]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = float64_data(data)
        control = [train_model(config, wide)[1]["final"]["val_acc"] for config in configs]
    finally:
        torch.set_default_dtype(previous)
    return {"separate": separate, "stacked": stacked, "separate_float64": control}


def equivalence(
    stacked: Sequence[float], separate: Sequence[float], margin: float
) -> dict[str, float | bool]:
    """Paired stacked - separate: mean, 90% confidence interval, and whether two one-sided
    t-tests at 5% put the mean inside (-margin, margin)."""
    differences = [a - b for a, b in zip(stacked, separate, strict=True)]
    mean = statistics.fmean(differences)
    spread = statistics.stdev(differences) / math.sqrt(len(differences))
    half = stats.t.ppf(0.95, len(differences) - 1) * spread
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "equivalent": bool(-margin < mean - half and mean + half < margin),
    }


def compare_kind(model: str, norm: str, seeds: int, epochs: int, data: Dataset, margin: float):
    """One row: the accuracies, the equivalence test and the rounding figures."""
    runs = final_accuracies(model, norm, seeds, epochs, data)
    if runs is None:
        return {"model": model, "norm": norm, "refused": True}
    separate, stacked, control = runs["separate"], runs["stacked"], runs["separate_float64"]
    return {
        "model": model,
        "norm": norm,
        "refused": False,
        **runs,
        "difference": equivalence(stacked, separate, margin),
        "mean_abs_stacked": statistics.fmean(
            abs(a - b) for a, b in zip(stacked, separate, strict=True)
        ),
        "mean_abs_float64": statistics.fmean(
            abs(a - b) for a, b in zip(control, separate, strict=True)
        ),
        "seed_std": statistics.stdev(separate),
    }


def table(rows: list[dict], margin: float) -> Table:
    points = 100
    out = Table(title=f"stacked - separate, final val accuracy in points (margin ±{margin:.1%})")
    for header in (
        "model",
        "norm",
        "mean separate",
        "mean stacked",
        "mean diff [90% CI]",
        "equivalent",
        "mean |stk - sep|",
        "mean |sep64 - sep|",
        "seed std",
    ):
        out.add_column(header)
    for row in rows:
        if row["refused"]:
            out.add_row(row["model"], row["norm"], "refused", *[""] * 6)
            continue
        diff = row["difference"]
        out.add_row(
            row["model"],
            row["norm"],
            f"{points * statistics.fmean(row['separate']):.1f}",
            f"{points * statistics.fmean(row['stacked']):.1f}",
            f"{points * diff['mean']:+.2f} [{points * diff['low']:+.2f}, "
            f"{points * diff['high']:+.2f}]",
            "yes" if diff["equivalent"] else "NO",
            f"{points * row['mean_abs_stacked']:.2f}",
            f"{points * row['mean_abs_float64']:.2f}",
            f"{points * row['seed_std']:.2f}",
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--norms", default=",".join(kind.name for kind in BUILT_IN))
    parser.add_argument("--margin", type=float, default=0.03)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="There is a performance drop")
    data = load_dataset("digits")
    console = Console(width=160)
    rows = []
    for model in args.models.split(","):
        for norm in args.norms.split(","):
            rows.append(compare_kind(model, norm, args.seeds, args.epochs, data, args.margin))
            console.print(table(rows[-1:], args.margin))
            if args.json:
                with open(args.json, "w") as file:
                    json.dump({"arguments": vars(args), "rows": rows}, file, indent=1)
    console.print(table(rows, args.margin))
    return 0 if all(row["refused"] or row["difference"]["equivalent"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
