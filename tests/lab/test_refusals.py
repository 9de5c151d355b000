"""A comparison refuses what it cannot do before any work (before the data loads, before
anything is written): bad options naming the Python argument, data it cannot find, an output
folder it cannot use, and an output folder another comparison is writing."""

from __future__ import annotations

import os
import re

import pytest
from torch import nn

import normlab.lab.comparison
from normlab.data import DataError
from normlab.experiment import ResultsStore
from normlab.experiment.store import StoreBusyError
from normlab.lab import compare

SMALL = {"epochs": 1, "hidden": [8], "jobs": 1, "batch_sizes": [128], "progress": False}


@pytest.fixture
def no_work(monkeypatch):
    """Make loading the data fail the test: a refusal must come first."""

    def work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", work)


@pytest.fixture
def registry(monkeypatch):
    """A registry of this test's own: the callables it trains are forgotten afterwards."""
    from normlab.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norms": ["none", "bnn"]}, "Did you mean 'bn'"),
        ({"norms": ["bn"], "batch_sizes": [1]}, "batch size 1 cannot train"),
        ({"norms": ["in"]}, "(N, C, L)"),
        ({"data": "mnsit"}, "'mnist'"),
        ({"optimizer": "adamm"}, "unknown optimizer 'adamm'"),
        ({"batch_sizes": [0, 32]}, "`batch_sizes`"),
        ({"data_dir": "/tmp"}, "`data_dir` was given, but the digits data set is built in"),
        ({"address": "auto"}, "`address` names a Ray cluster; add `executor` ray."),
    ],
)
def test_bad_options_fail_before_training_with_a_clear_message(tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compare(out=tmp_path, **{**SMALL, **options})
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, 0.0, float("-inf")])
def test_a_bad_lr_is_refused_before_any_work(tmp_path, no_work, lr):
    with pytest.raises(ValueError, match="`lr` must be a finite number above 0"):
        compare(lr=lr, out=tmp_path, **SMALL)
    assert not (tmp_path / "results.jsonl").exists()


def test_steps_that_the_epochs_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ValueError, match="raise epochs to at least"):
        compare(norms=["bn"], steps=1000, out=tmp_path, **{**SMALL, "batch_sizes": [64]})
    assert not (tmp_path / "results.jsonl").exists()


def test_steps_that_the_train_subsets_epochs_cannot_hold_are_refused(tmp_path):
    """320 samples at batch 64 are 5 batches an epoch; the full split's 23 would hold 10."""
    with pytest.raises(ValueError, match="1 epochs of 5 batches hold only 5"):
        compare(norms=["bn"], train_subset=320, steps=10, out=tmp_path,
                **{**SMALL, "batch_sizes": [64]})  # fmt: skip
    assert not (tmp_path / "results.jsonl").exists()


# --- data -----------------------------------------------------------------------------


def test_missing_mnist_files_say_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as missing:
        compare(data="mnist", out=tmp_path / "sweep", **SMALL)
    assert "train-images-idx3-ubyte" in str(missing.value) and "--data-dir" in str(missing.value)
    assert not (tmp_path / "sweep" / "results.jsonl").exists()


# --- the output folder ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("file", "is a file"),
        ("under-a-file", "lies under the file"),
        ("jsonl", "names a .jsonl file"),
        ("results-is-a-directory", "results.jsonl is a directory"),
        ("report-is-a-directory", "report.html is a directory"),
        ("models-is-a-file", "models is not a directory"),
    ],
)
def test_an_unusable_out_is_refused_before_any_work(tmp_path, no_work, case, message):
    out = tmp_path / "out"
    if case == "file":
        out.write_text("x")
    elif case == "under-a-file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "out"
    elif case == "jsonl":
        out = tmp_path / "out.jsonl"
    elif case == "results-is-a-directory":
        (out / "results.jsonl").mkdir(parents=True)
    elif case == "report-is-a-directory":
        (out / "report.html").mkdir(parents=True)
    else:
        out.mkdir()
        (out / "models").write_text("x")
    with pytest.raises(ValueError, match=re.escape(message)):
        compare(out=out, save_models=case == "models-is-a-file", **SMALL)


def test_a_second_sweep_on_a_busy_out_is_refused_before_any_work(tmp_path, no_work):
    with ResultsStore(tmp_path).lock(), pytest.raises(StoreBusyError) as busy:
        compare(out=tmp_path, **SMALL)
    message = str(busy.value)
    assert "in use by another sweep" in message and f"pid {os.getpid()}" in message
    assert str(tmp_path) in message
    assert not (tmp_path / "results.jsonl").exists()


def test_a_compare_on_the_out_of_one_in_progress_is_refused_naming_the_folder(tmp_path, registry):
    """Two comparisons at once into one folder: the second, started while the first trains
    (from inside the first's model builder), is refused before any work; the first goes
    on and writes its runs alone."""
    out = tmp_path / "sweep"
    refusals: list[str] = []

    def net(norm, num_classes, input_shape):
        if not refusals:
            try:
                compare(norms=["ln"], out=out, seeds=1, **SMALL)
            except StoreBusyError as error:
                refusals.append(str(error))
            else:
                refusals.append("the second comparison was not refused")
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), norm(8), nn.ReLU(),
                             nn.Linear(8, num_classes))  # fmt: skip

    options = {name: value for name, value in SMALL.items() if name != "hidden"}
    first = compare(norms=["bn"], model=net, out=out, seeds=2, report=False, **options)
    (refusal,) = refusals
    assert f"{out} is in use by another sweep (pid {os.getpid()}" in refusal
    assert first.complete and first.failed == []
    assert [r["config"]["norm"] for r in first.records] == ["bn", "bn"]
