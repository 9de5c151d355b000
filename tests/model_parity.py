"""How far two models compute apart: the oracle of every "the swap to the matching kind is
exact" test, and of benchmarks/third_party_models.py."""

from __future__ import annotations

import torch
from torch import nn


def max_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest |a - b| over train and eval outputs, the input's gradient (for floating
    input) and the gradients of the parameters both hold, by name (a NormAct's ``.norm``
    level left out of ``b``'s names), for the loss mean(output^2)."""
    worst = 0.0
    names_a = dict(a.named_parameters())
    for training in (True, False):
        results = []
        for model in (a, b):
            model.train(training).zero_grad()
            xi = x.clone().requires_grad_(True) if x.is_floating_point() else x
            out = model(xi)
            out.square().mean().backward()
            grads = {
                (name if name in names_a else name.replace(".norm.", ".")): p.grad
                for name, p in model.named_parameters()
                if p.grad is not None
            }
            results.append((out.detach(), xi.grad if x.is_floating_point() else None, grads))
        (out_a, gx_a, grads_a), (out_b, gx_b, grads_b) = results
        assert set(grads_a) == set(grads_b), set(grads_a) ^ set(grads_b)
        pairs = [(out_a, out_b), *((grads_a[n], grads_b[n]) for n in grads_a)]
        if gx_a is not None:
            pairs.append((gx_a, gx_b))
        worst = max([worst, *((p - q).abs().max().item() for p, q in pairs)])
    return worst


def swap_options(kind: str) -> dict:
    """The options with which ``kind`` replaces every norm of the small test models: two
    groups for gn (their widths), identity statistics for frozen-bn (most of their norms
    keep none to fix)."""
    options: dict = {"groups": 2} if kind == "gn" else {}
    if kind == "frozen-bn":
        options["identity_statistics"] = True
    return options


def sgd_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One SGD step (lr 0.01) of ``model`` in training mode on the loss mean(output^2);
    the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model.train()(x).square().mean()
    loss.backward()
    optimizer.step()
    return loss
