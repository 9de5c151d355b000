"""Synthetic results records for the report tests: schema-1 records with chosen accuracies."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "norm": "none",
    "placement": "before",
    "batch_size": 32,
    "seed": 0,
    "epochs": 5,
    "lr": 0.001,
    "optimizer": "adam",
    "model_options": {"hidden": [128, 64]},
}


def make_record(
    norm: str,
    batch_size: int,
    seed: int,
    val_acc: float,
    *,
    train_acc: float | None = None,
    diverged_epoch: int | None = None,
    seconds: float = 1.5,
    agreement: float | None = None,
    **config: Any,
) -> dict[str, Any]:
    """One run record whose final val accuracy is ``val_acc`` (a fraction).

    ``train_acc`` (final, eval mode) defaults to ``val_acc + 0.02`` capped at 1.
    With ``diverged_epoch`` the run stops there: status "diverged", losses None.
    ``agreement`` is the train/eval prediction agreement of eval_parity (None:
    a model without batch norm).
    Extra keyword arguments override configuration fields.
    """
    cfg = {**DEFAULT_CONFIG, **config, "norm": norm, "batch_size": batch_size, "seed": seed}
    epochs = cfg["epochs"]
    run_epochs = diverged_epoch if diverged_epoch is not None else epochs
    train_final = min(1.0, val_acc + 0.02) if train_acc is None else train_acc
    history = []
    for epoch in range(1, run_epochs + 1):
        lag = (run_epochs - epoch) / max(run_epochs, 1)
        val = val_acc if epoch == run_epochs else val_acc * (1 - 0.25 * lag)
        lost = diverged_epoch is not None and epoch == run_epochs
        history.append(
            {
                "epoch": epoch,
                "train_loss": None if lost else 0.5 * (1 - val) + 0.05,
                "train_acc": min(1.0, val * (1 - 0.1 * lag) + 0.005),
                "val_loss": None if lost else 0.5 * (1 - val),
                "val_acc": val,
                "seconds": seconds / max(run_epochs, 1),
            }
        )
    run_id = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "schema": 1,
        "run_id": run_id,
        "config": cfg,
        "status": "diverged" if diverged_epoch is not None else "finished",
        "history": history,
        "eval_parity": None
        if agreement is None
        else {"batch_size": batch_size, "prediction_agreement": agreement},
        "final": {
            "train_loss": None if diverged_epoch else 0.05,
            "train_acc": train_final,
            "val_loss": None if diverged_epoch else 0.1,
            "val_acc": val_acc,
            "epochs_run": run_epochs,
            "diverged_epoch": diverged_epoch,
        },
        "data": {
            "source": "scikit-learn (bundled)",
            "train_size": 1437,
            "val_size": 360,
            "input_shape": [1, 8, 8],
            "num_classes": 10,
        },
        "threads": 1,
        "seconds": seconds,
        "started": f"2026-11-23T14:{seed:02d}:00+00:00",
        "versions": {
            "normlab": "0.1.0",
            "torch": "2.13.0+cpu",
            "python": "3.11.7",
            "platform": "Linux-6.1-x86_64",
        },
    }


def records_from_values(
    values: Mapping[tuple[str, int], Iterable[float]], **config: Any
) -> list[dict[str, Any]]:
    """Records for {(norm, batch size): [val acc per seed]}, seeds numbered from 0."""
    return [
        make_record(norm, batch_size, seed, value, **config)
        for (norm, batch_size), accuracies in values.items()
        for seed, value in enumerate(accuracies)
    ]


def realistic_records(seed: int = 0) -> list[dict[str, Any]]:
    """3 norms × 3 batch sizes × 3 seeds × 5 epochs, shaped like a digits MLP sweep.

    bn loses accuracy at batch 4 and one of its runs there diverges; ln stays
    flat across batch sizes; none sits a little below both.
    """
    rng = random.Random(seed)
    centre = {
        ("none", 4): 0.962, ("none", 32): 0.958, ("none", 256): 0.935,
        ("bn", 4): 0.925, ("bn", 32): 0.972, ("bn", 256): 0.955,
        ("ln", 4): 0.968, ("ln", 32): 0.970, ("ln", 256): 0.950,
    }  # fmt: skip
    records = []
    for (norm, batch_size), mean in centre.items():
        for run_seed in range(3):
            if (norm, batch_size, run_seed) == ("bn", 4, 2):
                records.append(make_record(norm, batch_size, run_seed, 0.31, diverged_epoch=3))
                continue
            val = mean + rng.gauss(0, 0.004)
            train = min(1.0, val + (0.012 if norm == "bn" else 0.03) + rng.gauss(0, 0.003))
            seconds = {4: 9.0, 32: 1.8, 256: 0.6}[batch_size] * (1.3 if norm != "none" else 1)
            records.append(
                make_record(norm, batch_size, run_seed, val, train_acc=train, seconds=seconds)
            )
    return records


def write_results(directory: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` as ``directory/results.jsonl``; return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (directory / "results.jsonl").write_text(lines, encoding="utf-8")
    return directory


def corrupt(record: dict, case: str) -> dict:
    """``record`` broken in one of the ways a hand edit or another tool breaks a record."""
    if case == "nan-history-val-acc":
        record["history"][-1]["val_acc"] = math.nan
    elif case == "history-val-acc-above-1":
        record["history"][0]["val_acc"] = 97.2
    elif case == "nan-history-epoch":
        record["history"][0]["epoch"] = math.nan
    elif case == "text-history-epoch":
        record["history"][0]["epoch"] = "first"
    elif case == "nan-final-val-acc":
        record["final"]["val_acc"] = math.nan
    elif case == "null-final-val-acc":
        record["final"]["val_acc"] = None
    elif case == "no-final-val-acc":
        del record["final"]["val_acc"]
    elif case == "no-final":
        del record["final"]
    elif case == "list-run-id":
        record["run_id"] = [record["run_id"]]
    elif case == "text-seconds":
        record["seconds"] = "fast"
    return record


CORRUPTIONS = [
    "nan-history-val-acc",
    "history-val-acc-above-1",
    "nan-history-epoch",
    "text-history-epoch",
    "nan-final-val-acc",
    "null-final-val-acc",
    "no-final-val-acc",
    "no-final",
    "list-run-id",
    "text-seconds",
]
