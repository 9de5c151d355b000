"""The train loop: one run, seeded, on tensors held in memory.

Batches are rows gathered (``index_select``) by slices of a per-epoch
permutation of the training tensors: no DataLoader, no per-sample Python and
one host synchronization per epoch. Each step writes its loss and its
predictions into tensors preallocated for the epoch, which are reduced once at
its end, and the optimizers take their fused single-kernel step where torch
has one: per step, the lab's loop launches fewer kernels than a hand-written
loop with torch's default optimizer (benchmarks/train_speed.py measures both).
"""

from __future__ import annotations

import io
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import normlab
from normlab.data import Dataset, train_subset
from normlab.experiment.config import RunConfig
from normlab.experiment.diagnostics import Diagnostics
from normlab.experiment.evaluations import evaluate_after_training
from normlab.inference import batch_norm_layers, eval_parity
from normlab.inference.layers import tracks_running_stats
from normlab.layers.batch_norm import convert_sync_batchnorm
from normlab.models import NormFactory, build_model
from normlab.modes import eval_mode

SCHEMA = 1
EVAL_BATCH = 1024
PARITY_SAMPLES = 1024


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: training loss/accuracy averaged over its batches (training mode),
    validation loss/accuracy (eval mode), and the epoch's wall time."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


def make_optimizer(
    name: str, parameters: Any, lr: float, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """adam, adamw and rmsprop with torch's defaults; sgd with momentum 0.9.

    ``weight_decay`` None keeps torch's default (0.01 for adamw, 0 for the others).
    adam, adamw and sgd take torch's fused step (``fused=True``: one kernel per
    parameter instead of about ten, the same update up to rounding); rmsprop has
    no fused step in torch and takes its default one.
    """
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, fused=True, **decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, fused=True, **decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, fused=True, **decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, **decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw, sgd or rmsprop.")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode on (N, C, H, W) images.

    Each module's mode is restored afterwards.
    """
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with eval_mode(model):
        for start in range(0, len(images), EVAL_BATCH):
            logits = model(images[start : start + EVAL_BATCH])
            target = labels[start : start + EVAL_BATCH]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)


def warm_up(optimizer: str) -> None:
    """Pay torch's one-time lazy imports (about 2 s, on a process's first optimizer) up front,
    so that the first run's recorded seconds compare with the others'."""
    make_optimizer(optimizer, [nn.Parameter(torch.zeros(1))], 1e-3)


def batch_slices(size: int, batch_size: int, min_last: int = 2) -> list[slice]:
    """Slices of a length-``size`` permutation into batches of ``batch_size``.

    The last, partial batch is kept (as Keras does) unless it holds fewer
    than ``min_last`` samples: batch norm has no statistics to train on from
    one sample, and a data-parallel run needs two per process. (At
    ``batch_size=1`` every batch is kept.)
    """
    slices = [slice(start, min(start + batch_size, size)) for start in range(0, size, batch_size)]
    if batch_size > 1 and len(slices) > 1 and slices[-1].stop - slices[-1].start < min_last:
        slices.pop()
    return slices


@dataclass(frozen=True)
class Partition:
    """This process's place in a data-parallel run: each global batch is cut into ``world``
    nearly equal contiguous shares (as ``torch.tensor_split``) and this process trains share
    ``rank``. The default is one process training everything."""

    rank: int = 0
    world: int = 1

    def share(self, batch: slice) -> slice:
        """This process's part of ``batch`` (a slice with a step of 1), as a slice."""
        if self.world == 1:
            return batch
        size, extra = divmod(batch.stop - batch.start, self.world)
        start = batch.start + self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every process."""
        if self.world > 1:
            torch.distributed.all_reduce(values)
        return values


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    batches: list[slice],
    generator: torch.Generator,
    partition: Partition,
) -> tuple[float, float, int]:
    """One pass over the shuffled training set: (mean loss, accuracy, samples seen), over
    every process of the partition."""
    model.train()
    order = torch.randperm(len(data.train_x), generator=generator)
    # Per step, two writes into the epoch's tensors instead of a running sum's half-dozen
    # kernels: the loss summed over this process's share of the batch, and the predicted
    # class of each of its samples at the sample's place in ``order`` (-1 for samples this
    # process does not train, which match no label).
    share_losses = torch.empty(len(batches), dtype=torch.float64)
    predicted = torch.full((len(order),), -1, dtype=torch.int64)
    for step, batch in enumerate(batches):
        share = partition.share(batch)
        index = order[share]
        images = data.train_x.index_select(0, index)
        labels = data.train_y.index_select(0, index)
        logits = model(images)
        if partition.world == 1:
            loss = F.cross_entropy(logits, labels)
            share_losses[step] = loss.detach() * len(index)
        else:
            # DistributedDataParallel averages gradients over processes: scaling each
            # share's summed loss by world / global batch makes that average the gradient
            # of the global batch's mean loss, whatever the shares' sizes.
            share_sum = F.cross_entropy(logits, labels, reduction="sum")
            loss = share_sum * (partition.world / (batch.stop - batch.start))
            share_losses[step] = share_sum.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.argmax(logits.detach(), 1, out=predicted[share])
    seen = batches[-1].stop if batches else 0
    correct = (predicted[:seen] == data.train_y[order[:seen]]).sum()
    totals = partition.total(torch.stack([share_losses.sum(), correct.double()]))
    return totals[0].item() / seen, totals[1].item() / seen, seen


def planned_steps(config: RunConfig, batches_per_epoch: int) -> int:
    """The optimizer steps ``config`` takes: ``config.steps``, or every batch of every epoch.

    Raises:
        ValueError: ``config.epochs`` passes hold fewer than ``config.steps`` batches.
    """
    available = config.epochs * batches_per_epoch
    if config.steps is None:
        return available
    if config.steps > available:
        raise ValueError(
            f"run {config.label} asks for {config.steps} steps, but {config.epochs} epochs of "
            f"{batches_per_epoch} batches hold only {available}; raise epochs to at least "
            f"{math.ceil(config.steps / batches_per_epoch)}."
        )
    return config.steps


def epoch_batches(config: RunConfig, batches: list[slice]) -> list[tuple[int, list[slice], int]]:
    """The epochs ``config`` trains: (epoch from 1, its batches, steps done by its end).

    Every epoch takes ``batches`` until ``config.steps`` (see planned_steps) cuts the last
    one short.

    Raises:
        ValueError: as planned_steps.
    """
    steps_left = planned_steps(config, len(batches))
    plan = []
    steps_done = 0
    for epoch in range(1, config.epochs + 1):
        if steps_left == 0:
            break
        taken = batches[:steps_left]
        steps_left -= len(taken)
        steps_done += len(taken)
        plan.append((epoch, taken, steps_done))
    return plan


def run_data(config: RunConfig, data: Dataset) -> Dataset:
    """The data ``config`` trains on: ``data``, or its fixed stratified subset of
    ``config.train_subset`` training samples (the validation split is unchanged)."""
    if config.train_subset is None:
        return data
    return train_subset(data, config.train_subset)


def build_run_model(config: RunConfig, data: Dataset) -> nn.Module:
    """``config``'s model for ``data``'s images and classes."""
    return build_model(
        config.model,
        data.input_shape,
        data.num_classes,
        norm=NormFactory(config.norm, config.norm_options),
        placement=config.placement,
        **config.model_options,
    )


def seeded_model(config: RunConfig, data: Dataset) -> nn.Module:
    """``config``'s model for ``data``, initialized from ``torch.manual_seed(config.seed)``."""
    torch.manual_seed(config.seed)
    return build_run_model(config, data)


def save_model(
    model: nn.Module, config: RunConfig, directory: str | os.PathLike, record: dict[str, Any]
) -> None:
    """Save ``model``'s state_dict as ``directory/<run_id>.pt`` (see save_model_bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    save_model_bytes(buffer.getvalue(), config, directory, record)


def save_model_bytes(
    saved: bytes, config: RunConfig, directory: str | os.PathLike, record: dict[str, Any]
) -> None:
    """Write a ``torch.save``'d state_dict as ``directory/<run_id>.pt`` and name it in
    ``record`` (``model_file``, relative to the results directory). The file appears whole
    or not at all."""
    path = Path(directory) / f"{config.run_id}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".pt.partial")
    partial.write_bytes(saved)
    partial.replace(path)
    record["model_file"] = f"{path.parent.name}/{path.name}"


def versions() -> dict[str, str]:
    return {
        "normlab": normlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parity_summary(model: nn.Module, data: Dataset, batch_size: int) -> dict[str, Any] | None:
    """Train/eval parity of a trained model at its training batch size.

    :func:`normlab.inference.eval_parity` on up to PARITY_SAMPLES validation
    samples in batches of ``batch_size`` (at least 2), averaged: how often the
    prediction with batch statistics agrees with the eval-mode one, the
    relative output change, and per batch-norm layer the mean shift and the
    range of variance ratios. None for a model without running statistics.
    """
    if not any(tracks_running_stats(layer) for _, layer in batch_norm_layers(model)):
        return None
    size = max(2, batch_size)
    samples = data.val_x[:PARITY_SAMPLES]
    reports = [eval_parity(model, samples[part]) for part in batch_slices(len(samples), size)]
    layers = [
        {
            "name": first.name,
            "kind": first.kind,
            "mean_shift": statistics.fmean(r.layers[i].mean_shift for r in reports),
            "var_ratio_min": min(r.layers[i].var_ratio_min for r in reports),
            "var_ratio_max": max(r.layers[i].var_ratio_max for r in reports),
            "output_change": statistics.fmean(r.layers[i].output_change for r in reports),
        }
        for i, first in enumerate(reports[0].layers)
    ]
    return {
        "batch_size": size,
        "batches": len(reports),
        "prediction_agreement": statistics.fmean(r.prediction_agreement for r in reports),
        "output_change": statistics.fmean(r.output_change for r in reports),
        "layers": layers,
    }


def train_run(
    config: RunConfig,
    data: Dataset,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> dict[str, Any]:
    """Train ``config``'s model on ``data`` and return the run's record (see train_model)."""
    return train_model(config, data, on_epoch=on_epoch)[1]


def train_model(
    config: RunConfig,
    data: Dataset,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    partition: Partition | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config``'s model on ``data``: the trained model and the run's record.

    The same configuration, data and thread count give the same numbers on
    CPU. A loss that becomes NaN or infinite ends the run at that epoch with
    status "diverged"; otherwise the status is "finished".

    Inside a data-parallel run (``config.nproc`` > 1, started by
    normlab.experiment.ddp), ``partition`` says which share of each batch
    this process trains: the model is wrapped in DistributedDataParallel,
    its batch norm converted to SyncBatchNorm when ``config.sync_bn``, and
    every process returns the same model and record. Evaluation runs on
    every process on the whole validation set (in eval mode nothing is
    communicated), so the numbers are the ones of rank 0's running statistics.

    Returns:
        The model, and the record ``results.jsonl`` stores (see
        normlab.experiment.store): config, per-epoch history, final metrics
        (training-set metrics measured in eval mode after the last epoch),
        train/eval parity (see parity_summary), data summary, thread count,
        seconds and versions.
    """
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    data = run_data(config, data)
    partition = partition or Partition()
    if partition.world != config.nproc:
        raise ValueError(
            f"run {config.label} trains over {config.nproc} processes; this is a partition "
            f"of {partition.world}. Use normlab.experiment.ddp.train_distributed."
        )
    model = seeded_model(config, data)
    trained = model
    if partition.world > 1:
        if config.sync_bn:
            model = convert_sync_batchnorm(model)
        trained = DistributedDataParallel(model)
    optimizer = make_optimizer(
        config.optimizer, trained.parameters(), config.effective_lr, config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    batches = batch_slices(len(data.train_x), config.batch_size, min_last=2 * partition.world)
    plan = epoch_batches(config, batches)
    steps_done = 0
    diagnostics = Diagnostics(model, data.train_x, data.train_y) if config.diagnostics else None
    if diagnostics is not None:
        diagnostics.probe(optimizer, epoch=0, step=0)
    history: list[EpochMetrics] = []
    diverged_epoch = None
    samples = 0
    for epoch, taken, steps_done in plan:
        epoch_clock = time.perf_counter()
        train_loss, train_acc, samples = _train_epoch(
            trained, optimizer, data, taken, generator, partition
        )
        if diagnostics is not None:
            diagnostics.timed_epoch(time.perf_counter() - epoch_clock, len(taken))
            if math.isfinite(train_loss):
                diagnostics.probe(optimizer, epoch=epoch, step=steps_done)
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
        metrics = EpochMetrics(
            epoch, train_loss, train_acc, val_loss, val_acc, time.perf_counter() - epoch_clock
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            diverged_epoch = epoch
            break
    extra = {"diagnostics": diagnostics.summary()} if diagnostics is not None else {}
    record = run_record(
        config,
        model,
        data,
        Progress(history, steps_done, diverged_epoch, samples),
        started,
        clock,
        extra,
    )
    return model, record


@dataclass(frozen=True)
class Progress:
    """How far a run got: its epochs' metrics, the optimizer steps taken, the epoch whose
    loss was not finite (None if none was) and the samples trained per epoch."""

    history: list[EpochMetrics]
    steps: int
    diverged_epoch: int | None
    samples_per_epoch: int


def run_record(
    config: RunConfig,
    model: nn.Module,
    data: Dataset,
    progress: Progress,
    started: datetime,
    clock: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The record of a run of ``config`` that trained ``model`` on ``data`` (see train_model),
    its final training-set metrics, train/eval parity and (when ``config.evaluations``) the
    after-training evaluations measured now; ``clock`` is the ``time.perf_counter()`` of
    its start, ``extra`` more fields (the diagnostics)."""
    history, diverged_epoch = progress.history, progress.diverged_epoch
    if config.evaluations and diverged_epoch is None:
        extra = {**extra, "evaluations": evaluate_after_training(model, data.val_x, data.val_y)}
    final_train_loss, final_train_acc = evaluate(model, data.train_x, data.train_y)
    last = history[-1]
    return {
        "schema": SCHEMA,
        "run_id": config.run_id,
        "config": config.to_dict(),
        "status": "finished" if diverged_epoch is None else "diverged",
        "history": [asdict(metrics) for metrics in history],
        "final": {
            "train_loss": final_train_loss,
            "train_acc": final_train_acc,
            "val_loss": last.val_loss,
            "val_acc": last.val_acc,
            "epochs_run": len(history),
            "steps": progress.steps,
            "diverged_epoch": diverged_epoch,
        },
        "eval_parity": parity_summary(model, data, config.batch_size),
        **extra,
        "data": {
            "source": data.source,
            "train_size": len(data.train_x),
            "val_size": len(data.val_x),
            "samples_per_epoch": progress.samples_per_epoch,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        },
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - clock,
        "started": started.isoformat(timespec="seconds"),
        "versions": versions(),
    }
