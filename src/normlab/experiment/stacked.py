"""The seeds of one configuration trained together, as one batched computation.

Runs that differ only in their seed train the same model on the same data with the
same optimizer. Here each seed's model is built exactly as a single run builds it
(``seeded_model``), and :class:`StackedModels` runs the K replicas as one model: each
layer computes all K at once on their activations folded into the channels (one batched
matrix product per linear layer, one grouped convolution, batch norm widened to K*C
channels; see normlab.experiment.batched_layers), so a step costs one model's per-step
overhead instead of K. One forward trains every replica on its own batch, from its own
seed's data order. The optimizer steps the stacked tensors: Adam, AdamW, SGD and RMSprop
are elementwise, so one optimizer over them is the replicas' own optimizers side by side
(their step counts, hence Adam's bias correction, are equal). Integer buffers (the step
counts ``num_batches_tracked``) are equal in every replica by construction and are held
once, so layers that read them on the host (a cumulative-average momentum, batch
renormalization's schedule) still can.

So each replica's losses, gradients, parameters and running statistics are a single
run's up to rounding (tests/experiment/test_stacked.py checks them to 1e-10 in float64), and each
seed gets its own record, in the format and under the run id of a single run. A
replica whose loss turns NaN or infinite is recorded diverged at that epoch, from its
state then; the others go on (its slice keeps computing but is ignored: the replicas
share no arithmetic, so its NaNs reach no other replica).

What cannot be stacked is refused by :func:`stack_refusal`, with the reason, and trains
as separate runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.data import Dataset
from normlab.experiment.batched_layers import Batched, batched, fold_shared, unfold
from normlab.experiment.config import RunConfig
from normlab.experiment.train import (
    EVAL_BATCH,
    EpochMetrics,
    Progress,
    batch_slices,
    epoch_batches,
    make_optimizer,
    run_data,
    run_record,
    seeded_model,
)
from normlab.models import is_model, list_models, model_info
from normlab.registry import BUILT_IN

_CHECKED_KINDS = frozenset(kind.name for kind in BUILT_IN)

# torch warns, once per operator, where vmap (batched_layers' fallback, switchable norm's)
# loops over the replicas for want of a batching rule: slower, the same numbers.
_LOOPED_RULE = "There is a performance drop because we have not yet implemented the batching"


def stack_refusal(config: RunConfig) -> str | None:
    """Why ``config``'s seeds cannot train stacked, or None when they can."""
    if config.nproc > 1:
        return "a data-parallel run (`nproc` > 1) trains over processes of its own"
    if config.diagnostics:
        return "diagnostics probe one model at a time"
    if config.model_options.get("dropout", 0.0) > 0:
        return "dropout draws its masks from the global generator in a single run's order"
    if not (is_model(config.model) and model_info(config.model).stacks):
        stacking = [name for name in list_models() if model_info(name).stacks]
        return (
            f"stacking is checked on the models {' and '.join(stacking)}; "
            f"{config.model!r} is not one of them"
        )
    if config.norm not in _CHECKED_KINDS:
        return f"norm kind {config.norm!r} is not a built-in kind the stacker was checked on"
    return None


def seed_groups(runs: Sequence[RunConfig]) -> list[list[RunConfig]]:
    """``runs`` in groups that train together: the seeds of each configuration that
    :func:`stack_refusal` accepts, in order of first appearance; every other run alone."""
    groups: dict[str, list[RunConfig]] = {}
    alone: list[list[RunConfig]] = []
    order: list[list[RunConfig]] = []
    for config in runs:
        if stack_refusal(config) is not None:
            alone.append([config])
            order.append(alone[-1])
            continue
        key = dataclasses.replace(config, seed=0).run_id
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(config)
    return order


def stack_refusals(runs: Sequence[RunConfig]) -> list[tuple[RunConfig, str]]:
    """One (run, reason) per configuration of ``runs`` with several seeds that trains its
    seeds separately, for the message that says so."""
    seen: dict[str, tuple[RunConfig, str]] = {}
    counts: dict[str, int] = {}
    for config in runs:
        key = dataclasses.replace(config, seed=0).run_id
        counts[key] = counts.get(key, 0) + 1
        reason = stack_refusal(config)
        if reason is not None and key not in seen:
            seen[key] = (config, reason)
    return [entry for key, entry in seen.items() if counts[key] > 1]


class StackedModels(nn.Module):
    """K models of one architecture, an ``nn.Sequential``, as one module: layer i runs every
    replica's layer i at once (normlab.experiment.batched_layers), on the replicas'
    activations folded into the channels, and holds their tensors as its own.

    Args:
        models: the replicas, built alike (same layers, shapes and dtypes).

    Raises:
        ValueError: a model that is not an ``nn.Sequential`` of the first one's layers, or
            replicas whose integer buffers (shared) differ.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        sequential = all(isinstance(model, nn.Sequential) for model in models)
        if not sequential or len({tuple(map(type, model)) for model in models}) != 1:
            raise ValueError(
                "stacked replicas must be nn.Sequential models with the same layers; "
                f"got {', '.join(type(model).__name__ for model in models)}."
            )
        self.replicas = len(models)
        self.layers = nn.Sequential(*(batched(layers) for layers in zip(*models, strict=True)))

    def forward(self, folded: torch.Tensor) -> torch.Tensor:
        """Logits (K, N, classes) of the replicas' inputs folded into the channels,
        (N, K*C, *): see batched_layers.fold and fold_shared."""
        return unfold(self.layers(folded), self.replicas)

    def replica_state(self, index: int, *, grads: bool = False) -> dict[str, torch.Tensor]:
        """Replica ``index``'s state_dict (with ``grads``: its parameters' gradients)."""
        state = {}
        for position, layer in enumerate(self.layers):
            if isinstance(layer, Batched):
                held = layer.replica_state(index, grads=grads)
                state |= {f"{position}.{name}": value for name, value in held.items()}
        return state

    def replica(self, index: int, model: nn.Module) -> nn.Module:
        """``model`` (built as the replicas were) with replica ``index``'s state copied in."""
        with torch.no_grad():
            model.load_state_dict(self.replica_state(index), strict=True)
        return model


def _losses(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """(K,) cross-entropy of (K, N, classes) logits against (K, N) labels."""
    per_sample = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    per_sample = per_sample.view(labels.shape)
    return per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)


def _train_epoch(
    stack: StackedModels,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    batches: list[slice],
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass of every replica over its own shuffle of the training set: (K,) mean losses,
    (K,) accuracies, and the samples seen (as train.py's one-run epoch, per replica)."""
    stack.train()
    replicas, size = stack.replicas, len(data.train_x)
    orders = torch.stack([torch.randperm(size, generator=g) for g in generators])  # (K, size)
    losses = torch.empty(len(batches), replicas, dtype=torch.float64)
    predicted = torch.full((replicas, size), -1, dtype=torch.int64)
    for step, batch in enumerate(batches):
        # Gathered sample-major, (N*K) rows: already the folded (N, K*C, *) layout.
        index = orders[:, batch].t().reshape(-1)
        images = data.train_x.index_select(0, index)
        labels = data.train_y.index_select(0, index).view(-1, replicas).t()  # (K, N)
        logits = stack(images.view(labels.shape[1], -1, *images.shape[2:]))
        loss = _losses(logits, labels, "mean")
        losses[step] = loss.detach() * labels.shape[1]
        optimizer.zero_grad(set_to_none=True)
        # Each replica's loss reaches only its own slice: the sum's gradient is theirs.
        loss.sum().backward()
        optimizer.step()
        predicted[:, batch] = logits.detach().argmax(2)
    seen = batches[-1].stop if batches else 0
    correct = (predicted[:, :seen] == data.train_y[orders[:, :seen]]).sum(1)
    return losses.sum(0) / seen, correct.double() / seen, seen


@torch.no_grad()
def _evaluate(
    stack: StackedModels, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) mean cross-entropy and (K,) accuracy of every replica in eval mode on the same
    (N, *) images (as train.evaluate, per replica)."""
    stack.train(False)
    loss_sum = torch.zeros(stack.replicas, dtype=torch.float64)
    correct = torch.zeros(stack.replicas, dtype=torch.int64)
    for start in range(0, len(images), EVAL_BATCH):
        logits = stack(fold_shared(images[start : start + EVAL_BATCH], stack.replicas))
        target = labels[start : start + EVAL_BATCH].expand(stack.replicas, -1)
        loss_sum += _losses(logits, target, "sum")
        correct += (logits.argmax(2) == target).sum(1)
    return loss_sum / len(images), correct.double() / len(images)


def check_group(configs: Sequence[RunConfig]) -> None:
    """Refuse ``configs`` unless they are the seeds of one stackable configuration.

    Raises:
        ValueError: naming the run and what is wrong.
    """
    if not configs:
        raise ValueError("stacked training needs at least one run; got none.")
    first = dataclasses.replace(configs[0], seed=0)
    seeds = [config.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"stacked runs need distinct seeds; got {seeds}.")
    for config in configs:
        if dataclasses.replace(config, seed=0) != first:
            raise ValueError(
                f"run {config.label} differs from {configs[0].label} in more than its seed; "
                "only the seeds of one configuration train stacked."
            )
    reason = stack_refusal(configs[0])
    if reason is not None:
        raise ValueError(
            f"the seeds of {configs[0].label} cannot train stacked: {reason}. "
            "Train them as separate runs."
        )


def train_stacked(
    configs: Sequence[RunConfig],
    data: Dataset,
    *,
    on_epoch: Callable[[RunConfig, EpochMetrics], None] | None = None,
    on_done: Callable[[RunConfig, nn.Module, dict[str, Any]], None] | None = None,
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Train the seeds ``configs`` of one configuration together on ``data``.

    Each seed's model and record are those of ``train_model(config, data)`` up to
    rounding; the records' ``seconds`` and each epoch's are the group's wall time so far
    divided among its seeds (they train at once: a seed's share is what it cost, and the
    shares add up to the sweep's time), ``started`` the group's start.

    Args:
        configs: runs equal but for their seeds (see check_group).
        on_epoch: told each replica's epoch as it ends, (config, metrics).
        on_done: told each replica's trained model and record as soon as it is final:
            at its divergence, or at the end.

    Returns:
        (model, record) per config, in the order of ``configs``.

    Raises:
        ValueError: runs that cannot train stacked (before any training).
    """
    check_group(configs)
    config = configs[0]
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    data = run_data(config, data)
    models = [seeded_model(run, data) for run in configs]
    batches = batch_slices(len(data.train_x), config.batch_size)
    plan = epoch_batches(config, batches)
    stack = StackedModels(models)
    optimizer = make_optimizer(
        config.optimizer, list(stack.parameters()), config.effective_lr, config.weight_decay
    )
    generators = [torch.Generator().manual_seed(run.seed) for run in configs]
    histories: list[list[EpochMetrics]] = [[] for _ in configs]
    results: dict[int, tuple[nn.Module, dict[str, Any]]] = {}

    def finish(index: int, steps: int, samples: int, diverged_epoch: int | None) -> None:
        model = stack.replica(index, models[index])
        progress = Progress(histories[index], steps, diverged_epoch, samples)
        record = run_record(configs[index], model, data, progress, started, clock, {})
        record["seconds"] /= len(configs)
        results[index] = (model, record)
        if on_done is not None:
            on_done(configs[index], model, record)

    steps, samples = 0, 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LOOPED_RULE)
        for epoch, taken, steps in plan:
            epoch_clock = time.perf_counter()
            train_loss, train_acc, samples = _train_epoch(stack, optimizer, data, taken, generators)
            val_loss, val_acc = _evaluate(stack, data.val_x, data.val_y)
            seconds = (time.perf_counter() - epoch_clock) / len(configs)
            for index, run in enumerate(configs):
                if index in results:
                    continue
                metrics = EpochMetrics(
                    epoch,
                    train_loss[index].item(),
                    train_acc[index].item(),
                    val_loss[index].item(),
                    val_acc[index].item(),
                    seconds,
                )
                histories[index].append(metrics)
                if on_epoch is not None:
                    on_epoch(run, metrics)
                if not (math.isfinite(metrics.train_loss) and math.isfinite(metrics.val_loss)):
                    finish(index, steps, samples, epoch)
            if len(results) == len(configs):
                break
        for index in range(len(configs)):
            if index not in results:
                finish(index, steps, samples, None)
    return [results[index] for index in range(len(configs))]
