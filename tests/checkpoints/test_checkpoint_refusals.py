"""`normlab inspect` on checkpoints that load but are odd: every problem is reported with the
file's name, as a note in the table or as a clear error, never as an internal exception.
Oracles: the tensors and attributes the test itself saved."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
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


class _Calls:
    """Pickles as a call of ``target(*args)`` (REDUCE): what a crafted file can ask of the
    unpickler."""

    def __init__(self, target, args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return (self.target, self.args)


class _New:
    """Pickles as ``target.__new__(target, *args)`` (NEWOBJ); the pickler checks that the class
    is the object's own, so the opcodes are written by hand."""

    def __init__(self, target, args) -> None:
        self.target, self.args = target, args

    def pickled(self) -> bytes:
        module, name = self.target.__module__, self.target.__qualname__
        args = pickle.dumps(self.args, protocol=2)[2:-1]  # the tuple's opcodes alone
        return b"\x80\x02c" + f"{module}\n{name}\n".encode() + args + b"\x81."


def _saved_with_pickle(tmp_path: Path, pickled: bytes) -> Path:
    """A torch.save zip whose data.pkl is ``pickled``."""
    template = _saved(tmp_path, {}, "template.pt")
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info.filename, data)
    return path


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (_Calls(nn.Linear, (2000, 2000)), "torch.nn.modules.linear.Linear"),
        (
            _Calls(nn.Sequential, tuple(_Calls(nn.Linear, (500, 500)) for _ in range(4))),
            "torch.nn.modules.container.Sequential",
        ),
        (_Calls(bytearray, (10**6,)), "builtins.bytearray"),
        (_Calls(torch.FloatTensor, (1000, 1000)), "torch.FloatTensor"),
        (_New(torch.Tensor, (1000, 1000)), "torch.Tensor"),
        (_Calls(torch.UntypedStorage, (10**6,)), "torch.storage.UntypedStorage"),
    ],
    ids=[
        "Linear",
        "Sequential of Linears",
        "bytearray",
        "FloatTensor",
        "Tensor.__new__",
        "storage",
    ],
)
@pytest.mark.parametrize("where", ["top level", "under model"])
def test_a_checkpoint_that_calls_a_constructor_is_refused_before_it_allocates(
    tmp_path, run_cli, monkeypatch, payload, named, where
):
    constructed = []
    original = nn.Linear.__init__

    def recording(self, *args, **kwargs):
        constructed.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Linear, "__init__", recording)
    if isinstance(payload, _New):
        pickled = payload.pickled()
        if where != "top level":  # {"model": payload}
            pickled = b"\x80\x02}X\x05\x00\x00\x00model" + pickled[2:-1] + b"s."
        path = _saved_with_pickle(tmp_path, pickled)
    else:
        path = _saved(tmp_path, payload if where == "top level" else {"model": payload})
    assert path.stat().st_size < 4096  # a tiny file that asks for megabytes (or gigabytes)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and named in message and "state_dict()" in message
    assert constructed == []  # refused from the file's opcodes, before any constructor ran
    status, _, err = run_cli(["inspect", str(path)])
    assert status == 2 and named in err and "Traceback" not in err


def test_a_tensor_that_views_more_elements_than_its_storage_holds_is_refused(tmp_path, run_cli):
    state = nn.BatchNorm1d(4).state_dict()
    state["running_mean"] = torch.zeros(1).expand(10**6)  # 4 bytes of storage, 10**6 elements
    path = _saved(tmp_path, state)
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError, match=r"'running_mean' is a tensor of shape \(1000000,\)"):
        load_checkpoint(path)
    module = nn.Sequential(nn.BatchNorm1d(4))
    module[0].running_var = torch.ones(1, 1).expand(1000, 1000)
    path = _saved(tmp_path, module, "module.pt")
    with pytest.raises(CheckpointError, match=r"'0.running_var' is a tensor of shape"):
        load_checkpoint(path)
    status, _, err = run_cli(["inspect", str(path)])
    assert status == 2 and ".contiguous()" in err and "Traceback" not in err


def test_what_torch_save_writes_for_modules_and_training_loops_still_loads(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LSTM(2, 3), nn.LayerNorm(3))
    optimizer = torch.optim.Adam(model.parameters())
    model[0](torch.ones(1, 1, 4, 4)).sum().backward()
    optimizer.step()
    shared = torch.arange(6.0)
    state = {"a": shared[:3], "b": shared[3:]}  # views of one storage, as a state_dict may hold
    loop = {"model": model, "optimizer": optimizer.state_dict(), "epoch": 2, "seen": {1, 2}}
    for obj in (loop, {"state_dict": model.state_dict(), "device": torch.device("cpu")}, state):
        load_checkpoint(_saved(tmp_path, obj))


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (_Calls(torch.FloatTensor, (1000, 1000)), "torch.FloatTensor"),
        (_Calls(bytearray, (10**6,)), "builtins.bytearray"),
    ],
    ids=["FloatTensor", "bytearray"],
)
def test_a_legacy_format_checkpoint_that_calls_a_constructor_is_refused(tmp_path, payload, named):
    """(torch.save's legacy format writes a module class as a persistent id, which torch
    refuses by itself; a global it may call is refused as in the zip format.)"""
    path = tmp_path / "legacy.pt"
    torch.save({"model": payload, "w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=f"refused to load: its pickle calls {named}"):
        load_checkpoint(path)
    state = nn.BatchNorm1d(3).state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert sorted(load_checkpoint(path)) == sorted(state)  # what torch.save writes still loads


@pytest.mark.parametrize("layers", [5000, 10**7])
def test_a_recurrent_layer_declaring_thousands_of_layers_is_refused_before_it_loads(
    tmp_path, layers
):
    """torch rebuilds an old-format RNN's weight names in a loop over its ``num_layers``, in
    time quadratic in it: a 3 kB file declaring 10**7 layers would keep inspect busy for
    days. The file's number is read from the pickle before anything is unpickled."""
    lstm = nn.LSTM(2, 2)
    lstm.num_layers = layers
    lstm._all_weights = [[0]]  # the old format, whose names torch rebuilds on loading
    path = tmp_path / "lstm.pt"
    torch.save(lstm, path)
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError, match=f"num_layers={layers}") as info:
        load_checkpoint(path)
    assert "refused to load" in str(info.value) and str(path) in str(info.value)


def test_a_recurrent_layer_of_ordinary_depth_still_loads(tmp_path):
    path = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(2, 2, num_layers=3), path)
    assert isinstance(load_checkpoint(path), nn.LSTM)
