"""``normlab.functional`` is laid out as ``torch.nn.functional``: its public functions
listed in ``__all__``, and the autograd Functions behind them (hand-written backwards) in a
private module, out of its namespace. What the functions compute is tested with the layers
(test_batch_norm.py, test_batch_renorm.py, test_switchable_norm.py)."""

from __future__ import annotations

import inspect

import torch

import normlab.functional as NF


def test_all_names_every_public_function_of_the_module():
    defined = {
        name
        for name, value in vars(NF).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == NF.__name__
    }
    assert defined <= set(NF.__all__)
    assert {"batch_norm", "batch_renorm", "switchable_norm", "weight_standardize"} <= defined
    assert [name for name in NF.__all__ if not hasattr(NF, name)] == []


def test_no_autograd_function_is_in_the_public_namespace():
    public = {name: getattr(NF, name) for name in dir(NF) if not name.startswith("_")}
    functions = [
        name
        for name, value in public.items()
        if inspect.isclass(value) and issubclass(value, torch.autograd.Function)
    ]
    assert functions == []


def test_star_import_gives_exactly_all():
    namespace: dict[str, object] = {}
    exec("from normlab.functional import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(NF.__all__)


def test_the_private_functions_train_through_the_public_ones():
    """bn-scalar's and switchable norm's hand-written backwards, reached through
    ``normlab.functional``, agree with autograd through float64 finite differences."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(3, generator=generator, dtype=torch.float64).add_(0.5).requires_grad_()
    bias = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)

    def scalar(x, weight, bias):
        mean, var = torch.zeros(1, dtype=x.dtype), torch.ones(1, dtype=x.dtype)
        return NF.batch_norm(x, mean, var, weight, bias, True, stats="scalar")

    def switchable(x, weight, bias, logits):
        mean, var = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
        return NF.switchable_norm(x, mean, var, weight, bias, logits, -logits, True, 0.1, 1e-5)

    assert torch.autograd.gradcheck(scalar, (x, weight, bias))
    assert torch.autograd.gradcheck(switchable, (x, weight, bias, logits))
