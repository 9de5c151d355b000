"""Batch norm at inference, the tutorials' four remedies measured on one trained model.

Trains the tutorials' MLP with batch norm (`normlab compare`'s train loop), then scores the
validation set one sample at a time (batch size 1) with each way of handling batch norm at
inference:

    python examples/bn_inference.py                                   # digits, built in
    python examples/bn_inference.py --dataset mnist --data-dir ../shared/data/mnist --batch-size 2
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from normlab.data import load_dataset
from normlab.experiment import RunConfig
from normlab.experiment.train import batch_slices, train_model
from normlab.inference import calibrate_with_batch, eval_parity, fold_batchnorm, freeze, recalibrate

CALIBRATION_SIZE = 32


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    """Accuracy with the model in its current mode, fed ``batch_size`` samples at a time."""
    correct = 0
    for part in batch_slices(len(images), batch_size):
        correct += (model(images[part]).argmax(1) == labels[part]).sum().item()
    seen = batch_slices(len(images), batch_size)[-1].stop
    return correct / seen


def remedies(
    model: nn.Module, train_x: torch.Tensor, batch_size: int
) -> dict[str, Callable[[], nn.Module]]:
    """Each way to run the trained ``model`` at inference, as a function building that model."""

    def recalibrated() -> nn.Module:
        batches = [train_x[part] for part in batch_slices(len(train_x), batch_size)]
        return recalibrate(copy.deepcopy(model), batches).eval()

    def calibrated() -> nn.Module:
        calibrated = copy.deepcopy(model)
        calibrate_with_batch(calibrated, train_x[:CALIBRATION_SIZE])
        return calibrated.eval()

    def frozen() -> nn.Module:
        return freeze(copy.deepcopy(model)).train()  # training mode: frozen layers ignore it

    return {
        "eval mode, running statistics from training": lambda: copy.deepcopy(model).eval(),
        f"recalibrated: precise BN over the training set (batches of {batch_size})": recalibrated,
        f"calibration batch: {CALIBRATION_SIZE} training samples": calibrated,
        "frozen (FrozenBatchNorm), in training mode": frozen,
        "folded into the Linear layers (eval)": lambda: fold_batchnorm(copy.deepcopy(model).eval()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--norm", default="bn", help="a batch-norm kind: bn, bn-scalar, brn")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    data = load_dataset(args.dataset, args.data_dir)
    config = RunConfig(
        dataset=args.dataset,
        norm=args.norm,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
    )
    console.print(f"training {config.model} with {config.norm} on {config.dataset}, batch size "
                  f"{config.batch_size}, {config.epochs} epochs, seed {config.seed}")  # fmt: skip
    model, record = train_model(config, data)
    val_x, val_y = data.val_x, data.val_y
    batch = max(2, args.batch_size)  # batch statistics need two samples
    parity = eval_parity(model, val_x[:batch])
    table = Table(title=f"validation accuracy, {len(val_x)} samples fed one at a time")
    table.add_column("batch norm at inference")
    table.add_column("accuracy %", justify="right")
    with_batch_statistics = accuracy(copy.deepcopy(model).train(), val_x, val_y, batch)
    table.add_row(
        f"training mode, batch statistics (batches of {batch})",
        f"{100 * with_batch_statistics:.2f}",
    )
    for name, build in remedies(model, data.train_x, args.batch_size).items():
        table.add_row(name, f"{100 * accuracy(build(), val_x, val_y, 1):.2f}")
    console.print(table)
    console.print(
        f"train/eval parity on one validation batch of {parity.batch_size}: predictions agree "
        f"{parity.prediction_agreement:.1%}, output change {parity.output_change:.3f}; layers: "
        + "; ".join(
            f"{layer.name} mean shift {layer.mean_shift:.2f} sd, var ratio "
            f"{layer.var_ratio_min:.2f}..{layer.var_ratio_max:.2f}"
            for layer in parity.layers
        )
    )
    console.print(f"(recorded val acc after training: {record['final']['val_acc']:.2%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
