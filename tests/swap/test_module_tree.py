"""Replacing a module at every place it is registered, all or nothing; and the tools built on it
(``freeze``, ``convert_sync_batchnorm``) on trees where a container is registered twice.

The oracle is the tree as torch sees it (``named_modules(remove_duplicate=False)``)
and the original model's outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.inference import freeze
from normlab.module_tree import module_paths, replace_modules

C = 4


def _block() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C))


def _twice_registered_container() -> tuple[nn.Sequential, nn.Sequential]:
    """A model whose one block (holding a batch norm) is registered at two places, and the
    block; the second place is reached through a wrapper."""
    block = _block()
    return nn.Sequential(block, nn.ReLU(), nn.Sequential(block)), block


def _trained(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        model(2 + 3 * torch.randn(8, C, 3, 3, generator=gen))
    return model.eval()


def _slots(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules(remove_duplicate=False))


def test_module_paths_lists_every_name_of_a_shared_module():
    model, block = _twice_registered_container()
    paths = module_paths(model)
    assert paths[model] == [""]
    assert paths[block] == ["0", "2.0"]
    assert paths[block[1]] == ["0.1", "2.0.1"]


def test_every_place_of_a_module_in_a_container_registered_twice_gets_one_new_module():
    model, block = _twice_registered_container()
    new = nn.GroupNorm(1, C)
    assert replace_modules(model, {block[1]: new}) is model
    slots = _slots(model)
    assert slots["0.1"] is new and slots["2.0.1"] is new
    assert not any(m is not new and isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_module_held_twice_by_one_sequential_is_replaced_at_both_indices():
    bn = nn.BatchNorm1d(C)
    model = nn.Sequential(bn, nn.Linear(C, C), bn)
    new = nn.LayerNorm(C)
    replace_modules(model, {bn: new})
    assert model[0] is new and model[2] is new


def test_replacing_the_root_returns_the_replacement_and_leaves_the_root_alone():
    bn = nn.BatchNorm1d(C)
    new = nn.LayerNorm(C)
    assert replace_modules(bn, {bn: new}) is new


def test_a_module_outside_the_model_is_refused_and_nothing_changes():
    model, block = _twice_registered_container()
    before = _slots(model)
    outsider = nn.BatchNorm2d(C)
    with pytest.raises(ValueError, match="not a submodule"):
        replace_modules(model, {block[1]: nn.Identity(), outsider: nn.Identity()})
    assert _slots(model) == before


def test_a_module_inside_another_to_replace_is_refused_and_nothing_changes():
    model, block = _twice_registered_container()
    before = _slots(model)
    with pytest.raises(ValueError, match="lies inside"):
        replace_modules(model, {block: nn.Identity(), block[1]: nn.Identity()})
    assert _slots(model) == before


def test_freeze_a_batch_norm_in_a_container_registered_twice():
    """Regression: freeze raised KeyError after replacing both places."""
    model, _ = _twice_registered_container()
    _trained(model)
    x = torch.randn(5, C, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    frozen = freeze(model)
    slots = _slots(frozen)
    assert isinstance(slots["0.1"], nl.FrozenBatchNorm) and slots["0.1"] is slots["2.0.1"]
    with torch.no_grad():
        torch.testing.assert_close(frozen.train()(x), expected)


def test_convert_sync_batchnorm_in_a_container_registered_twice():
    model, _ = _twice_registered_container()
    _trained(model)
    x = torch.randn(5, C, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    converted = nl.convert_sync_batchnorm(model)
    slots = _slots(converted)
    assert isinstance(slots["0.1"], nl.SyncBatchNorm) and slots["0.1"] is slots["2.0.1"]
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), expected)
