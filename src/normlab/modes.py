"""Train/eval modes changed for a while and then put back, module by module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Within: change the train/eval mode of any module of ``model`` freely. On exit, even
    on an error, every module has the mode it had on entry (each its own: ``model.train(m)``
    would give them all one)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within: ``model`` and all its modules in eval mode; on exit each module's own mode
    is back (see :func:`modes_restored`)."""
    with modes_restored(model):
        model.eval()
        yield model
