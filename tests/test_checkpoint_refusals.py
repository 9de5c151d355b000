"""`normlab inspect` on checkpoints that load but are odd: every problem is reported with the
file's name, as a note in the table or as a clear error, never as an internal exception.
Oracles: the tensors and attributes the test itself saved."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from normlab.checkpoints import CheckpointError, describe, load_checkpoint, norm_layers


def _saved(tmp_path: Path, obj, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _notes(path: Path) -> dict[str, str]:
    return {layer.name: layer.notes for layer in norm_layers(load_checkpoint(path))}


def test_complex_running_statistics_are_a_note_not_a_crash(tmp_path, run_cli):
    state = nn.BatchNorm1d(3).state_dict()
    state["running_mean"] = torch.zeros(3, dtype=torch.complex64)
    path = _saved(tmp_path, state)
    layer = norm_layers(load_checkpoint(path))[0]
    assert layer.running_mean is None and "running_mean holds complex64" in layer.notes
    status, out, err = run_cli(["inspect", str(path)])
    assert status == 0, err
    assert "complex64" in out


def test_complex_statistics_in_a_module_are_a_note(tmp_path):
    module = nn.BatchNorm1d(3)
    module.running_var = torch.ones(3, dtype=torch.complex128)
    path = _saved(tmp_path, nn.Sequential(module))
    assert "running_var holds complex128" in _notes(path)["0"]


@pytest.mark.parametrize("where", ["_modules", "_parameters", "_buffers"])
def test_a_module_whose_registries_hold_the_wrong_types_is_refused_naming_the_file(
    tmp_path, run_cli, where
):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    registry = getattr(model[1], where) if where != "_modules" else model._modules
    registry["odd"] = torch.zeros(2) if where == "_modules" else "not a tensor"
    path = _saved(tmp_path, model)
    with pytest.raises(CheckpointError, match=f"{where}") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    status, _, err = run_cli(["inspect", str(path)])
    assert status == 2 and str(path) in err and "Traceback" not in err


def test_a_module_list_with_a_tensor_child_is_refused(tmp_path):
    model = nn.Sequential(nn.Sequential(nn.BatchNorm1d(2)))
    model[0]._modules["x"] = torch.zeros(1)
    path = _saved(tmp_path, model)
    with pytest.raises(CheckpointError, match=r"'0\.x'.*Tensor"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_says_truncated_whatever_torch_raises(tmp_path):
    path = _saved(tmp_path, nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)))
    data = path.read_bytes()
    raised = collections.Counter()
    for size in range(64, len(data), 41):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message
        assert "cannot be read" not in message, (size, message)
        assert "corrupt or truncated" in message or "refused" in message or "not a check" in message
        raised[type(info.value.__cause__).__name__] += 1
    assert raised  # torch raised something on every size


@pytest.mark.parametrize(
    ("attribute", "value"), [("eps", "abc"), ("momentum", "fast"), ("eps", [1e-5])]
)
def test_an_attribute_of_the_wrong_type_is_a_note(tmp_path, run_cli, attribute, value):
    module = nn.BatchNorm1d(3)
    setattr(module, attribute, value)
    path = _saved(tmp_path, nn.Sequential(module))
    layer = norm_layers(load_checkpoint(path))[0]
    assert getattr(layer, attribute) is None
    assert f"{attribute}={value!r} is not a number" in layer.notes
    status, out, err = run_cli(["inspect", str(path)])
    assert status == 0, err
    words = " ".join(out.split())  # the notes column may wrap
    assert "not a" in words and "number" in words


def test_statistics_of_different_lengths_are_a_note_in_a_state_dict(tmp_path):
    state = nn.BatchNorm1d(5).state_dict()
    state["running_var"] = torch.ones(3)
    path = _saved(tmp_path, state)
    note = _notes(path)[""]
    assert "shapes disagree" in note and "running_mean (5,)" in note and "running_var (3,)" in note


def test_statistics_of_different_lengths_are_a_note_in_a_module(tmp_path):
    module = nn.BatchNorm1d(5)
    module.running_var = torch.ones(3)
    path = _saved(tmp_path, nn.Sequential(module))
    header, _ = describe(path)
    note = _notes(path)["0"]
    assert "shapes disagree" in note and "num_features 5" in note and "running_var (3,)" in note
    assert str(path) in header


def test_consistent_layers_get_no_shape_note(tmp_path):
    path = _saved(tmp_path, nn.Sequential(nn.Linear(2, 5), nn.BatchNorm1d(5)))
    assert "shapes disagree" not in _notes(path)["1"]
    path = _saved(tmp_path, nn.BatchNorm1d(5).state_dict(), "state.pt")
    assert "shapes disagree" not in _notes(path)[""]


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_a_file_that_is_not_a_regular_file_is_refused_by_what_it_is(tmp_path, run_cli, kind):
    if kind == "fifo":
        path = tmp_path / "pipe.pt"
        os.mkfifo(path)  # opening it to read would block until a writer comes
        what = "a FIFO"
    else:
        path = Path("/dev/zero")  # reads as endless zero bytes, stat says 0 bytes
        if not path.is_char_device():
            pytest.skip("no /dev/zero on this system")
        what = "a character device"
    with pytest.raises(CheckpointError, match=f"is {what}") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "empty" not in message and "regular file" in message
    status, _, err = run_cli(["inspect", str(path)])
    assert status == 2 and f"is {what}" in err and "Traceback" not in err
