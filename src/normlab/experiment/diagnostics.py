"""Training diagnostics on a fixed probe batch: gradients, activations, internal covariate
shift and loss-landscape smoothness, measured without disturbing the run.

Every measurement is a pure function of the model's parameters and buffers at the moment
it is taken: forwards go through :func:`torch.func.functional_call` on copies of the
buffers (so batch norm's running statistics are left as they were), inside a forked
random-number state seeded the same for every forward (so dropout draws one mask for
every pass of a probe, and the run's own random stream is untouched). A run with
diagnostics therefore trains to exactly the numbers it trains to without them.

Layers. The model's parameters are grouped into *layers*: each module holding a
parameter of two or more dimensions (a Linear, a convolution, a recurrent layer, an
embedding) starts a layer, and modules with only one-dimensional parameters (a norm's
affine) join the layer before them. The gradient norm of a layer is the l2 norm of the
gradients of all its parameters together.

Internal covariate shift (Santurkar et al. 2018, "How Does Batch Normalization Help
Optimization?", Definition 2.1). For layer i at step t on batch (x, y),

    G_{t,i}  = grad_{W_i} L(W_1^t, ..., W_k^t; x, y)
    G'_{t,i} = grad_{W_i} L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t; x, y)

where W^{t+1} is the optimizer's actual update of W^t on the same batch (taken on a copy
of the model and the optimizer). ICS_i = ||G_{t,i} - G'_{t,i}||_2; the cosine of the two
is recorded beside it. Layer 1 has no layer before it, so its ICS is 0 by definition.

Loss landscape (Santurkar et al. 2018, section 3.1 and Figure 4). With g = grad L(W)
on the probe batch and each step size eta in ``step_sizes``, the loss L(W - eta g) and
the gradient change ||grad L(W) - grad L(W - eta g)||_2. Recorded summaries: the loss
variation (max - min of the losses, L(W) included), the gradient predictiveness
(the largest gradient change) and the effective beta-smoothness (the largest gradient
change divided by the distance moved, eta ||g||).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

PROBE_SIZE = 256
STEP_SIZES = (0.025, 0.05, 0.1, 0.2, 0.4)
"""Step sizes along the negative gradient for the landscape measures: plain gradient-descent
steps, the range of learning rates Santurkar et al. use with SGD."""
PROBE_SEED = 1234
"""Seeds the random state of every probe forward (dropout masks), never the run's own."""

Tensors = dict[str, torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """One layer of the model for the diagnostics: a name and its parameters' names."""

    name: str
    parameters: tuple[str, ...]


def model_layers(model: nn.Module) -> list[Layer]:
    """The model's parameters grouped into layers (see the module docstring), in module order.

    Raises:
        ValueError: the model has no parameters.
    """
    groups: list[tuple[str, list[str]]] = []
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        names = [f"{module_name}.{name}" if module_name else name for name, _ in own]
        if any(parameter.ndim >= 2 for _, parameter in own) or not groups:
            groups.append((module_name or type(module).__name__, names))
        else:
            groups[-1][1].extend(names)
    if not groups:
        raise ValueError("diagnostics need a model with parameters; this one has none.")
    return [Layer(name, tuple(names)) for name, names in groups]


def probe_batch(
    images: torch.Tensor, labels: torch.Tensor, size: int = PROBE_SIZE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of ``size`` training samples (all of them when fewer), chosen by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(images), generator=generator)[:size]
    return images[index], labels[index]


def _parameters(model: nn.Module) -> Tensors:
    return {name: parameter.detach() for name, parameter in model.named_parameters()}


def _buffers(model: nn.Module) -> Tensors:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def loss_and_gradients(
    model: nn.Module,
    parameters: Tensors,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Loss = F.cross_entropy,
) -> tuple[float, Tensors]:
    """The training-mode loss of ``model`` with ``parameters`` on one batch, and its gradient
    with respect to every parameter. The model's own parameters, buffers, mode and the
    global random state are left as they were."""
    was_training = model.training
    model.train()
    leaves = {name: value.detach().requires_grad_(True) for name, value in parameters.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PROBE_SEED)
            logits = functional_call(model, {**leaves, **_buffers(model)}, (images,))
        loss = loss_fn(logits, labels)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    finally:
        model.train(was_training)
    gradients = {
        name: torch.zeros_like(value) if grad is None else grad
        for (name, value), grad in zip(leaves.items(), grads, strict=True)
    }
    return loss.item(), gradients


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(math.fsum(float(t.double().pow(2).sum()) for t in tensors))


def _layer_norms(layers: Sequence[Layer], tensors: Tensors) -> list[float]:
    return [_norm([tensors[name] for name in layer.parameters]) for layer in layers]


def activation_statistics(
    model: nn.Module, layers: Sequence[Layer], images: torch.Tensor
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each layer's leading module's output (before its norm
    and activation) in training mode on ``images``; the model's state is left as it was."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:
        module = modules.get(layer.name)
        if module is None:  # parameters held by the root model itself
            continue

        def keep(_module: nn.Module, _inputs: Any, output: Any, name: str = layer.name) -> None:
            outputs[name] = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(module.register_forward_hook(keep))
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(PROBE_SEED)
            functional_call(model, {**_parameters(model), **_buffers(model)}, (images,))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    means, stds = [], []
    for layer in layers:
        output = outputs.get(layer.name)
        means.append(float("nan") if output is None else output.double().mean().item())
        stds.append(float("nan") if output is None else output.double().std().item())
    return means, stds


def updated_parameters(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Loss = F.cross_entropy,
) -> Tensors:
    """The parameters one optimizer step on this batch would give, taken on copies of the
    model and the optimizer (its moments included); the originals are untouched."""
    twin_model, twin_optimizer = copy.deepcopy((model, optimizer))
    twin_model.train()
    twin_optimizer.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROBE_SEED)
        loss = loss_fn(twin_model(images), labels)
    loss.backward()
    twin_optimizer.step()
    return _parameters(twin_model)


def covariate_shift(
    model: nn.Module,
    layers: Sequence[Layer],
    gradients: Tensors,
    updated: Tensors,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Loss = F.cross_entropy,
) -> tuple[list[float], list[float]]:
    """Santurkar et al.'s ICS of every layer: ||G_i - G'_i||_2 and the cosine of G_i and G'_i.

    Args:
        gradients: G, the gradient at the current parameters on this batch.
        updated: the parameters after the optimizer's update (see updated_parameters).
    """
    current = _parameters(model)
    distances, cosines = [], []
    for i, layer in enumerate(layers):
        before = {name for earlier in layers[:i] for name in earlier.parameters}
        mixed = {
            name: updated[name] if name in before else value for name, value in current.items()
        }
        _, shifted = loss_and_gradients(model, mixed, images, labels, loss_fn)
        g = torch.cat([gradients[name].double().flatten() for name in layer.parameters])
        g_shifted = torch.cat([shifted[name].double().flatten() for name in layer.parameters])
        distances.append((g - g_shifted).norm().item())
        scale = g.norm().item() * g_shifted.norm().item()
        cosines.append(float("nan") if scale == 0.0 else (g @ g_shifted).item() / scale)
    return distances, cosines


def landscape(
    model: nn.Module,
    gradients: Tensors,
    loss: float,
    images: torch.Tensor,
    labels: torch.Tensor,
    step_sizes: Sequence[float] = STEP_SIZES,
    loss_fn: Loss = F.cross_entropy,
) -> dict[str, Any]:
    """Loss and gradient change along the negative gradient (see the module docstring)."""
    current = _parameters(model)
    names = list(gradients)
    g = [gradients[name].double() for name in names]
    g_norm = _norm(g)
    losses, changes, smoothness = [], [], []
    for eta in step_sizes:
        moved = {name: current[name] - eta * gradients[name] for name in names}
        moved_loss, moved_gradients = loss_and_gradients(model, moved, images, labels, loss_fn)
        change = _norm(
            [moved_gradients[name].double() - gi for name, gi in zip(names, g, strict=True)]
        )
        losses.append(moved_loss)
        changes.append(change)
        distance = eta * g_norm
        smoothness.append(change / distance if distance > 0 else float("nan"))
    finite = [value for value in [loss, *losses] if math.isfinite(value)]
    return {
        "step_sizes": list(step_sizes),
        "losses": losses,
        "gradient_changes": changes,
        "loss_variation": (max(finite) - min(finite)) if len(finite) == len(losses) + 1 else None,
        "gradient_predictiveness": max(changes) if all(map(math.isfinite, changes)) else None,
        "beta_smoothness": max(smoothness) if all(map(math.isfinite, smoothness)) else None,
    }


class Diagnostics:
    """Probes one run: call :meth:`probe` at the steps to measure and :meth:`timed_epoch`
    with each epoch's training time; :meth:`summary` is what the run's record stores.

    Args:
        model: the model being trained (not wrapped for data parallelism).
        images, labels: the training set; a fixed probe batch is drawn from it.
        probe_size: samples in the probe batch.
        step_sizes: the landscape's steps along the negative gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        probe_size: int = PROBE_SIZE,
        step_sizes: Sequence[float] = STEP_SIZES,
    ) -> None:
        self.model = model
        self.layers = model_layers(model)
        self.images, self.labels = probe_batch(images, labels, probe_size)
        self.step_sizes = tuple(step_sizes)
        self.probes: list[dict[str, Any]] = []
        self.step_seconds: list[float] = []

    def probe(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> dict[str, Any]:
        """Measure everything at the current parameters; returns (and keeps) the probe."""
        x, y = self.images, self.labels
        loss, gradients = loss_and_gradients(self.model, _parameters(self.model), x, y)
        grad_norms = _layer_norms(self.layers, gradients)
        means, stds = activation_statistics(self.model, self.layers, x)
        updated = updated_parameters(self.model, optimizer, x, y)
        ics, cosines = covariate_shift(self.model, self.layers, gradients, updated, x, y)
        result = {
            "epoch": epoch,
            "step": step,
            "loss": loss,
            "grad_norms": grad_norms,
            "grad_ratio": grad_norms[0] / grad_norms[-1] if grad_norms[-1] > 0 else None,
            "activation_mean": means,
            "activation_std": stds,
            "ics": ics,
            "ics_cosine": cosines,
            "landscape": landscape(self.model, gradients, loss, x, y, self.step_sizes),
        }
        self.probes.append(result)
        return result

    def timed_epoch(self, seconds: float, steps: int) -> None:
        """Record one epoch's training time (probes excluded) over its optimizer steps."""
        self.step_seconds.append(seconds / steps if steps else float("nan"))

    def summary(self) -> dict[str, Any]:
        """The record's ``diagnostics`` entry."""
        return {
            "layers": [layer.name for layer in self.layers],
            "probe_size": len(self.images),
            "step_seconds": self.step_seconds,
            "probes": self.probes,
        }
