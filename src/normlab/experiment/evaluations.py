"""After-training evaluations of a trained model, on the validation set: under shifted
inputs, one sample at a time, and with batch statistics at other batch sizes.

Each answers a question the tutorials' claims raise and a run's final accuracy does not:

- **Shifted inputs** (does the norm degrade when the input distribution moves?): eval-mode
  accuracy on the validation images with their brightness raised, their intensity halved,
  or Gaussian noise added (clamped to the pixel range [0, 1]; the noise is drawn from a
  fixed seed, so every run sees the same shifted images).
- **Batch 1** (online inference): eval-mode accuracy on the first :data:`BATCH1_SAMPLES`
  validation images fed one at a time, and whether a training-mode forward, which uses
  the batch's own statistics, runs at all on one sample (batch norm's per-channel
  statistics need more than one value per channel; batch norms in training mode, every
  other module in eval mode).
- **Batch statistics at other batch sizes** (is the model sensitive to the batch it
  sees?): accuracy with the model's batch norms in training mode, normalizing with each
  batch's own statistics (every other module in eval mode: no dropout), over the
  validation set cut into batches of each of :data:`BATCH_SIZES` (whole batches only).
  The model's running statistics are left as they were: the forwards run on a copy.

Accuracies are fractions in [0, 1], as the record's ``final`` block holds them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normlab.inference import batch_norm_layers
from normlab.modes import eval_mode

SHIFT_SEED = 4321
BATCH1_SAMPLES = 2000
BATCH_SIZES = (2, 4, 8, 32, 128, 512)

Shift = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _brighter(amount: float) -> Shift:
    return lambda images, _: (images + amount).clamp(0.0, 1.0)


def _dimmer(factor: float) -> Shift:
    return lambda images, _: images * factor


def _noisy(std: float) -> Shift:
    def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
        return (images + std * noise).clamp(0.0, 1.0)

    return shift


SHIFTS: dict[str, Shift] = {
    "brightness +0.2": _brighter(0.2),
    "brightness +0.4": _brighter(0.4),
    "intensity x0.5": _dimmer(0.5),
    "noise sd 0.2": _noisy(0.2),
    "noise sd 0.4": _noisy(0.4),
}
"""The input shifts, by name: each maps (N, C, H, W) images in [0, 1] to shifted ones."""


def evaluate_after_training(
    model: nn.Module, val_x: torch.Tensor, val_y: torch.Tensor
) -> dict[str, Any]:
    """The evaluations above for ``model`` on (N, C, H, W) images ``val_x`` in [0, 1] and
    (N,) labels ``val_y``; each module's mode is restored afterwards.

    Returns:
        ``{"shifted_val_acc": {shift: acc}, "batch1_val_acc": acc, "batch1_samples": n,
        "batch1_train_mode": None or the reason a training-mode forward of one sample fails,
        "batch_stats_val_acc": {str(batch size): acc or None where the validation set
        holds no whole batch of that size}}``.
    """
    generator = torch.Generator().manual_seed(SHIFT_SEED)
    shifted = {
        name: _accuracy(model, shift(val_x, generator), val_y, len(val_x))
        for name, shift in SHIFTS.items()
    }
    samples = min(BATCH1_SAMPLES, len(val_x))
    return {
        "shifted_val_acc": shifted,
        "batch1_val_acc": _accuracy(model, val_x[:samples], val_y[:samples], 1),
        "batch1_samples": samples,
        "batch1_train_mode": _training_forward_failure(model, val_x[:1]),
        "batch_stats_val_acc": {
            str(size): _batch_stats_accuracy(model, val_x, val_y, size) for size in BATCH_SIZES
        },
    }


@torch.no_grad()
def _accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    """Eval-mode accuracy on ``images`` fed ``batch_size`` at a time."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


@torch.no_grad()
def _batch_stats_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float | None:
    """Accuracy with batch statistics over the whole batches of ``batch_size`` in ``images``, on a
    copy of ``model`` (its running statistics untouched); None when there is no whole batch."""
    batches = len(images) // batch_size
    if batches == 0:
        return None
    probe = _batch_statistics(model)
    correct = 0
    for start in range(0, batches * batch_size, batch_size):
        logits = probe(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / (batches * batch_size)


@torch.no_grad()
def _training_forward_failure(model: nn.Module, one: torch.Tensor) -> str | None:
    """None when a forward with batch statistics of the single sample ``one`` (a (1, C, H, W)
    batch) runs, on a copy of ``model``; otherwise the error it raises, first line."""
    try:
        _batch_statistics(model)(one)
    except (ValueError, RuntimeError) as error:
        return str(error).splitlines()[0]
    return None


def _batch_statistics(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode but for its batch norms, which normalize with the
    batch's statistics (training mode)."""
    probe = copy.deepcopy(model).eval()
    for _, layer in batch_norm_layers(probe):
        layer.train()
    return probe
