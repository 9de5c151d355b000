"""``normlab.SyncBatchNorm.convert_sync_batchnorm(module, process_group=None)`` is
a classmethod, as torch's, so code written for torch calls it on the class.

Oracle: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` on the same model.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab as nl
from normlab.layers import TorchSyncBatchNorm


def small_model() -> nn.Sequential:
    """torch batch norms in a conv net, state far from the defaults, float64."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4, eps=1e-3, momentum=0.2),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False)),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
        nn.BatchNorm1d(5, momentum=None),
    ).double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(1.0 + 2.0 * torch.randn(8, 2, 3, 3, dtype=torch.float64))
    return model


def test_the_signature_is_torchs():
    ours = inspect.signature(nl.SyncBatchNorm.convert_sync_batchnorm)
    theirs = inspect.signature(nn.SyncBatchNorm.convert_sync_batchnorm)
    assert list(ours.parameters) == list(theirs.parameters) == ["module", "process_group"]
    assert ours.parameters["process_group"].default is None


@pytest.mark.parametrize(
    "call",
    [
        lambda cls, model: cls.convert_sync_batchnorm(model),
        lambda cls, model: cls.convert_sync_batchnorm(model, None),
        lambda cls, model: cls.convert_sync_batchnorm(module=model, process_group=None),
    ],
    ids=["module", "positional group", "keywords"],
)
def test_called_on_the_class_it_converts_what_torchs_converts(call):
    model = small_model()
    ours = call(nl.SyncBatchNorm, copy.deepcopy(model))
    theirs = call(nn.SyncBatchNorm, copy.deepcopy(model))

    converted = {n for n, m in ours.named_modules() if isinstance(m, nl.SyncBatchNorm)}
    expected = {n for n, m in theirs.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    assert converted == expected == {"1", "3.1", "6"}
    for name in converted:
        mine, torchs = ours.get_submodule(name), theirs.get_submodule(name)
        for option in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            assert getattr(mine, option) == getattr(torchs, option), (name, option)
        assert mine.training == torchs.training
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, tensor in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    x = 1.0 + 2.0 * torch.randn(6, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert_close(ours.eval()(x), theirs.eval()(x))


def test_a_lone_layer_becomes_a_new_root_as_in_torch():
    layer = nn.BatchNorm2d(4)
    ours = nl.SyncBatchNorm.convert_sync_batchnorm(layer)
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(4))
    # torch's configuration: normlab's SyncBatchNorm that is also torch's _BatchNorm
    assert type(ours) is TorchSyncBatchNorm and type(theirs) is nn.SyncBatchNorm
    assert ours is not layer


def test_the_classmethod_is_the_function():
    """One way to convert: the classmethod gives what normlab.convert_sync_batchnorm gives,
    normlab's own batch norms included."""
    model = nn.Sequential(nl.BatchNorm(4, stats="scalar", channel_dim=-1), nn.BatchNorm1d(4))
    by_class = nl.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    by_function = nl.convert_sync_batchnorm(copy.deepcopy(model))
    expected = [nl.SyncBatchNorm, TorchSyncBatchNorm]  # scalar statistics are not torch's
    assert [type(m) for m in by_class] == [type(m) for m in by_function] == expected
    assert by_class[0].stats == "scalar" and by_class[0].channel_dim == -1
