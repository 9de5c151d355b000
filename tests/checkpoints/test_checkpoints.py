"""normlab.checkpoints: loading checkpoints without running their code, and the summary of
their normalization layers.

The summaries' numbers are checked against the saved model's own tensors,
reduced with numpy in float64; the security tests check that a file which
would run a command is refused before the command runs.
"""

from __future__ import annotations

import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from normlab.checkpoints import (
    WRAPPER_KEYS,
    CheckpointError,
    NormLayerSummary,
    allowed_classes,
    describe,
    load_checkpoint,
    norm_layers,
    norm_layers_table,
)
from normlab.layers import FrozenBatchNorm, LayerNorm
from normlab.models import FeaturesAsChannels, RowRNN, build_model
from normlab.registry import make_norm, norm_kinds

C = 4
#: name -> class of the normalization layers of the zoo model, in module order.
ZOO_LAYERS = {
    "1": "BatchNorm2d",
    "2": "BatchNorm",  # bn-scalar
    "3": "BatchNorm",  # keras convention
    "4": "BatchRenorm",
    "5": "SwitchableNorm",
    "6": "LayerNorm",
    "7": "GroupNorm",
    "8": "FrozenBatchNorm",
}
#: The layers with running statistics: what a state_dict reveals.
ZOO_STATISTICS = ["1", "2", "3", "4", "5", "8"]


def _zoo(steps: int = 3) -> nn.Sequential:
    """A conv followed by one of each kind of layer, with random affines and trained statistics."""
    torch.manual_seed(0)
    frozen = FrozenBatchNorm(C)
    model = nn.Sequential(
        nn.Conv2d(3, C, 3),
        nn.BatchNorm2d(C),
        make_norm("bn-scalar", C),
        make_norm("bn", C, convention="keras"),
        make_norm("brn", C),
        make_norm("switch", C),
        make_norm("ln", C),
        make_norm("gn", C, groups=2),
        frozen,
        nn.ReLU(),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter) + 0.3)
        frozen.running_mean.normal_()
        frozen.running_var.uniform_(0.5, 2.0)
        frozen.weight.normal_()
        frozen.bias.normal_()
        model.train()
        for _ in range(steps):
            model(2.0 * torch.randn(8, 3, 6, 6) + 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def zoo() -> nn.Sequential:
    """One zoo model for the module's tests, which only read it."""
    return _zoo()


def _expected(tensor: torch.Tensor | None) -> tuple[float, float, float] | None:
    """(mean, min, max) in float64 numpy: the oracle for the summaries."""
    if tensor is None:
        return None
    values = tensor.detach().numpy().astype(np.float64)
    return (float(values.mean()), float(values.min()), float(values.max()))


def _assert_numbers_match(layer: NormLayerSummary, module: nn.Module) -> None:
    """Every tensor summary of ``layer`` is the oracle's for ``module``'s tensors."""
    for field in ("running_mean", "running_var", "weight", "bias"):
        expected = _expected(getattr(module, field, None))
        actual = getattr(layer, field)
        if expected is None:
            assert actual is None, field
        else:
            assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), field
    tracked = getattr(module, "num_batches_tracked", None)
    expected_steps = None if tracked is None else int(tracked)
    assert layer.num_batches_tracked == expected_steps


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------- full modules


def test_full_module_lists_every_norm_layer_with_its_own_numbers(tmp_path, zoo):
    model = zoo
    loaded = load_checkpoint(_save(model, tmp_path / "model.pt"))
    assert isinstance(loaded, nn.Sequential)
    layers = norm_layers(loaded)
    assert {layer.name: layer.kind for layer in layers} == ZOO_LAYERS
    assert [layer.name for layer in layers] == list(ZOO_LAYERS)  # module order
    modules = dict(model.named_modules())
    for layer in layers:
        _assert_numbers_match(layer, modules[layer.name])
        assert layer.num_features == C
    by_name = {layer.name: layer for layer in layers}
    assert by_name["1"].num_batches_tracked == 3
    assert by_name["1"].running_mean[1] < by_name["1"].running_mean[2]  # statistics moved
    assert [by_name[n].stats for n in ("1", "2", "3", "4", "5", "8")] == [
        "channel",
        "scalar",
        "channel",
        "channel",
        "channel",
        "channel",
    ]
    assert by_name["6"].stats is None and by_name["7"].stats is None
    assert (by_name["3"].eps, by_name["3"].momentum) == (1e-3, 0.99)
    assert (by_name["1"].eps, by_name["1"].momentum) == (1e-5, 0.1)
    assert by_name["6"].momentum is None and by_name["8"].momentum is None
    assert "convention=keras: running_var is biased" in by_name["3"].notes
    assert "running_var holds sigma^2 - eps (brn)" in by_name["4"].notes
    assert by_name["1"].notes == "" and by_name["2"].notes == ""


def test_loaded_module_summary_equals_the_live_model_s(tmp_path, zoo):
    model = zoo
    assert norm_layers(load_checkpoint(_save(model, tmp_path / "m.pt"))) == norm_layers(model)


def test_notes_for_untracked_statistics_and_cumulative_momentum():
    model = nn.Sequential(
        nn.BatchNorm1d(3, track_running_stats=False),
        nn.BatchNorm1d(3, momentum=None),
        nn.BatchNorm1d(3),
    )
    untracked, cumulative, untrained = norm_layers(model)
    assert untracked.notes == "track_running_stats=False"
    assert untracked.running_mean is None and untracked.momentum is None
    assert cumulative.notes.startswith("momentum=None: cumulative average")
    assert "statistics never updated" in untrained.notes


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mlp", ["2", "5"]),
        ("cnn", ["1", "5"]),
        ("rnn", ["norms.0.norm", "norms.1.norm"]),
    ],
)
def test_lab_models_load_whole_and_as_state_dicts(tmp_path, name, expected):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, norm="bn", hidden=(6, 6))
    model.train()(torch.randn(5, 1, 8, 8))
    whole = load_checkpoint(_save(model, tmp_path / "whole.pt"))
    state = load_checkpoint(_save(model.state_dict(), tmp_path / "state.pt"))
    assert type(whole) is type(model)
    assert [layer.name for layer in norm_layers(whole)] == expected
    assert [layer.name for layer in norm_layers(state)] == expected
    modules = dict(model.named_modules())
    for layer in norm_layers(state):
        _assert_numbers_match(layer, modules[layer.name])


@pytest.mark.parametrize("kind", norm_kinds())
def test_every_registered_kind_loads_whole_inside_the_rnn_model(tmp_path, kind):
    """The allow-list covers every kind (the rnn feeds its norms (N, C, L), which all take)."""
    torch.manual_seed(0)
    model = build_model("rnn", (1, 4, 4), 3, norm=kind, hidden=(4,))
    model.train()(torch.randn(3, 1, 4, 4))
    loaded = load_checkpoint(_save(model, tmp_path / "rnn.pt"))
    assert isinstance(loaded, RowRNN)
    names = [layer.name for layer in norm_layers(loaded)]
    assert names == ([] if kind == "none" else ["norms.0.norm"])


def test_allow_list_holds_modules_only():
    allowed = allowed_classes()
    assert all(issubclass(cls, nn.Module) for cls in allowed)
    for cls in (nn.Sequential, nn.LSTM, nn.BatchNorm2d, LayerNorm, RowRNN, FeaturesAsChannels):
        assert cls in allowed


# --------------------------------------------------------------------------- state_dicts


def test_state_dict_finds_the_layers_with_running_statistics(tmp_path, zoo):
    model = zoo
    state = load_checkpoint(_save(model.state_dict(), tmp_path / "state.pt"))
    assert isinstance(state, dict) and list(state) == list(model.state_dict())
    layers = norm_layers(state)
    assert [layer.name for layer in layers] == ZOO_STATISTICS
    modules = dict(model.named_modules())
    for layer in layers:
        assert layer.kind == "batch-norm statistics"
        assert (layer.eps, layer.momentum, layer.num_features) == (None, None, C)
        _assert_numbers_match(layer, modules[layer.name])
    by_name = {layer.name: layer for layer in layers}
    assert by_name["2"].stats == "scalar"
    assert by_name["1"].stats == "channel"
    assert "mean_logits, var_logits" in by_name["5"].notes
    assert "no num_batches_tracked" in by_name["8"].notes


def test_scalar_statistics_are_told_from_a_single_channel():
    def state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}

    tensors = {
        **state(make_norm("bn-scalar", 5), "scalar"),
        **state(make_norm("bn", 1), "one"),
        **state(make_norm("bn-scalar", 5, affine=False), "bare"),
    }
    by_name = {layer.name: layer for layer in norm_layers(tensors)}
    assert (by_name["scalar"].stats, by_name["scalar"].num_features) == ("scalar", 5)
    assert (by_name["one"].stats, by_name["one"].num_features) == ("channel", 1)
    assert (by_name["bare"].stats, by_name["bare"].num_features) == (None, None)
    assert "one channel, or scalar" in by_name["bare"].notes


@pytest.mark.parametrize("key", WRAPPER_KEYS)
def test_training_loop_dict_is_unwrapped(tmp_path, zoo, key):
    model = zoo
    optimizer = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}
    saved = {"epoch": 3, key: model.state_dict(), "optimizer": optimizer}
    path = _save(saved, tmp_path / "ckpt.pt")
    state = load_checkpoint(path)
    assert list(state) == list(model.state_dict())
    assert [layer.name for layer in norm_layers(state)] == ZOO_STATISTICS
    header, _ = describe(path)
    assert f"under {key!r}; the file also holds epoch, optimizer" in header


def test_dict_holding_a_whole_model_is_unwrapped(tmp_path, zoo):
    model = zoo
    loaded = load_checkpoint(_save({"model": model, "epoch": 1}, tmp_path / "m.pt"))
    assert [layer.name for layer in norm_layers(loaded)] == list(ZOO_LAYERS)


# --------------------------------------------------------------------------- refusals


class _UserBlock(nn.Module):
    """A user's own layer: not on the allow-list."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)


class _UserNet(nn.Module):
    """A user's own model class, holding a user's layer: neither is on the allow-list."""

    def __init__(self) -> None:
        super().__init__()
        self.block = _UserBlock()


class _Exploit:
    """Unpickling this runs a shell command that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",))


def test_a_user_class_is_refused_with_the_state_dict_advice(tmp_path):
    path = _save(_UserNet(), tmp_path / "user.pt")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert "_UserNet" in message and "_UserBlock" in message  # every refused class
    assert "torch.save(model.state_dict(), PATH)" in message
    assert "weights_only=False" not in message
    # The advice works: the same model's state_dict loads.
    state = load_checkpoint(_save(_UserNet().state_dict(), tmp_path / "state.pt"))
    assert [layer.name for layer in norm_layers(state)] == ["block.bn"]


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle default"])
def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Exploit(marker)}, path)
    else:
        protocol = 2 if writer == "pickle protocol 2" else pickle.DEFAULT_PROTOCOL
        path.write_bytes(pickle.dumps({"epoch": 1, "hook": _Exploit(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        load_checkpoint(path)
    assert not marker.exists()
    if writer != "pickle default":  # a newer protocol fails on its opcodes before the global
        assert "system" in str(caught.value)
        assert "state_dict()" in str(caught.value)


def _truncated(path: Path) -> None:
    torch.save({"w": torch.zeros(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "the file is empty"),
        ("random bytes", "not a checkpoint that can be loaded safely"),
        ("text", "not a torch checkpoint"),
        ("truncated", "corrupt or truncated"),
        ("a zip", "not a torch checkpoint"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(tmp_path, case, problem):
    path = tmp_path / "ckpt.pt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif case == "truncated":
        _truncated(path)
    elif case == "a zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not a checkpoint")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (torch.zeros(3), "holds a Tensor, not a model or a state_dict"),
        ({}, "holds an empty dict"),
        ({"epoch": 3, "weights": [torch.zeros(2)]}, "keys 'epoch', 'weights'"),
    ],
)
def test_contents_other_than_a_model_or_state_dict_are_refused(tmp_path, content, problem):
    path = _save(content, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


# --------------------------------------------------------------------------- describe


def test_describe_headers(tmp_path, zoo):
    model = zoo
    parameters = sum(p.numel() for p in model.parameters())
    whole = _save(model, tmp_path / "whole.pt")
    state = _save(model.state_dict(), tmp_path / "state.pt")
    header, _ = describe(whole)
    holds = f"full module Sequential ({parameters:,} parameters)"
    assert header == f"{whole}: {holds}; 8 normalization layers"
    header, _ = describe(state)
    tensors = len(model.state_dict())
    assert header == f"{state}: state_dict with {tensors} tensors; 6 batch-norm layers"


def _render(table) -> str:
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_table_shows_every_layer_within_120_columns(tmp_path, zoo):
    model = zoo
    _, table = describe(_save(model, tmp_path / "whole.pt"))
    text = _render(table)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    for kind in ("BatchNorm2d", "BatchRenorm", "SwitchableNorm", "FrozenBatchNorm", "GroupNorm"):
        assert kind in text
    first = norm_layers(model)[0]
    mean, low, high = first.running_mean
    assert f"{mean:.3g}" in text and f"{low:.3g}" in text and f"{high:.3g}" in text
    assert "convention=keras" in text
    row = next(line for line in lines if "BatchRenorm" in line)
    assert row.split()[0] == "4"  # the layer's name starts its row


def test_table_says_when_there_is_no_normalization_layer(tmp_path):
    _, table = describe(_save(nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt"))
    assert "no batch-norm statistics found" in _render(table)
    assert "no normalization layer found" in _render(norm_layers_table([], "none"))
    header, table = describe(_save(nn.Sequential(nn.Linear(3, 2)), tmp_path / "seq.pt"))
    assert header.endswith("; 0 normalization layers")
    assert "no normalization layer found" in _render(table)
