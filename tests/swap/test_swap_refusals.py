"""`normlab.replace_norms` refusing what it cannot do faithfully, and leaving the model as it was.

Each case is a model or a factory that an earlier swap handled silently wrong: a factory that
hands out one module for two layers, a TorchScript model, hooks on a replaced layer, a replaced
layer still reachable through a plain Python list, a factory that returns no module. Oracle:
the model's own modules and state before the call (nothing may change on a refusal).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import normlab as nl


def _two_norms() -> nn.Module:
    model = nn.Module()
    model.n1 = nn.BatchNorm1d(4)
    model.n2 = nn.BatchNorm1d(4)
    with torch.no_grad():
        model.n1.weight.fill_(2.0)
        model.n2.weight.fill_(3.0)
    model.forward = lambda x: model.n2(model.n1(x))
    return model


def _unchanged(model: nn.Module, slots: dict, state: dict) -> None:
    assert dict(model.named_modules(remove_duplicate=False)) == slots
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    return dict(model.named_modules(remove_duplicate=False)), copy.deepcopy(model.state_dict())


@pytest.mark.parametrize(
    ("build", "example"),
    [(lambda c: nn.GroupNorm(2, c), None), (lambda c: nn.LayerNorm(c + 1), torch.randn(3, 4))],
    ids=["tied", "lost-on-undo"],
)
def test_a_factory_returning_one_module_for_two_layers_is_refused_and_nothing_changes(
    build, example
):
    """functools.cache hands the same module to both BatchNorm1d(4): the two layers would be
    tied, or, when the swap then fails on the example, n1 lost. Refused before anything moves."""
    model = _two_norms()
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"n2 .*same module.*n1.*new module") as error:
        nl.replace_norms(model, functools.cache(build), example_input=example)
    assert "Nothing was changed" in str(error.value)
    _unchanged(model, slots, state)
    assert model.n1 is not model.n2


def test_a_factory_returning_a_module_of_the_model_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU())
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"a module of the model at 2") as error:
        nl.replace_norms(model, lambda c: model[2])
    assert "Nothing was changed" in str(error.value)
    _unchanged(model, slots, state)


def test_a_failed_check_undoes_each_layer_from_its_own_old_module():
    """A factory whose layers fail on the example: every place gets its own old layer back,
    with its weights (the undo must not key on the new modules)."""
    model = _two_norms()
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match="failed on example_input"):
        nl.replace_norms(model, lambda c: nn.LayerNorm(c + 1), example_input=torch.randn(3, 4))
    _unchanged(model, slots, state)


@pytest.mark.parametrize("returned", [3, None, "gn", nn.Linear])
def test_a_factory_that_returns_no_module_is_refused_with_the_contract(returned):
    model = _two_norms()
    slots, state = _snapshot(model)
    with pytest.raises(TypeError, match=r"must return a new torch\.nn\.Module.*got"):
        nl.replace_norms(model, lambda c: returned)
    _unchanged(model, slots, state)


def test_a_scripted_model_is_refused_naming_torchscript():
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)))
    with pytest.raises(TypeError, match=r"TorchScript.*before torch\.jit\.script"):
        nl.replace_norms(scripted, "gn", groups=2)
    outer = nn.Sequential(nn.Linear(4, 4), torch.jit.script(nn.Sequential(nn.BatchNorm1d(4))))
    with pytest.raises(TypeError, match=r"TorchScript module at 1"):
        nl.replace_norms(outer, "ln")


def test_a_scripted_part_without_norms_does_not_block_the_swap():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), torch.jit.script(nn.ReLU()))
    replaced = nl.replace_norms(model, "ln", example_input=torch.randn(3, 4))
    assert [r.path for r in replaced.replacements] == ["1"]


@pytest.mark.parametrize(
    "register",
    [
        lambda m: m.register_forward_hook(lambda *a: None),
        lambda m: m.register_forward_pre_hook(lambda *a: None),
        lambda m: m.register_full_backward_hook(lambda *a: None),
    ],
    ids=["forward", "forward-pre", "backward"],
)
def test_a_layer_with_hooks_is_refused_naming_the_hooks(register):
    """A hook on the old layer would silently stop firing on the new one."""
    model = _two_norms()
    register(model.n2)
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"n2 \(BatchNorm1d\): .*hook") as error:
        nl.replace_norms(model, "ln")
    assert "Nothing was changed" in str(error.value)
    _unchanged(model, slots, state)


class HeldInList(nn.Module):
    """Its forward calls the norm through a plain list, which named_modules cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 4)
        self.steps = [self.linear, self.norm]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def test_a_layer_also_held_in_a_plain_list_is_refused():
    model = HeldInList()
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"norm \(BatchNorm1d\).*steps\[1\].*nn\.ModuleList"):
        nl.replace_norms(model, "ln", example_input=torch.randn(3, 4))
    _unchanged(model, slots, state)
    with pytest.raises(ValueError, match=r"steps\[1\]"):
        nl.replace_norms(model, "ln")


class HeldInClosure(nn.Module):
    """Its forward reaches the norm through a closure no attribute scan finds."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        norm = self.norm
        self.apply_norm = lambda x: norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_norm(x)


def test_a_replaced_layer_that_still_runs_on_the_example_is_refused():
    model = HeldInClosure()
    slots, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"norm \(BatchNorm1d\) still ran") as error:
        nl.replace_norms(model, "ln", example_input=torch.randn(3, 4))
    assert "Nothing was changed" in str(error.value)
    _unchanged(model, slots, state)
