"""normlab.lab.compare from Python, as a notebook uses it: a model factory given as a
callable (a lambda in this process, a module's function for worker processes), data given
as tensors, resuming, progress on and off, and errors that name the Python argument."""

import json

import pytest
from torch import nn

from normlab.data import load_dataset
from normlab.lab import CompareResult, compare

SMALL = {"epochs": 1, "train_subset": 120, "batch_sizes": [32]}


def small_net(norm, num_classes, input_shape):
    """A factory at the top of a module: it pickles, so worker processes can build it."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * width, 16),
        norm(16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test registers its callables in a registry of its own."""
    from normlab.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


@pytest.fixture(scope="module")
def tensors():
    """The built-in digits as four tensors, as a user's own data arrives."""
    data = load_dataset("digits")
    return data.train_x[:300], data.train_y[:300], data.val_x[:100], data.val_y[:100]


def _lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_lambda_on_tensors_trains_in_process_and_the_same_call_resumes(tmp_path, tensors):
    model = lambda norm, num_classes, input_shape: small_net(norm, num_classes, input_shape)  # noqa: E731
    call = dict(norms=["none", "bn"], seeds=2, model=model, data=tensors, out=tmp_path, **SMALL)
    first = compare(**call, progress=False)
    assert isinstance(first, CompareResult) and first.complete and not first.failed
    assert len(first.records) == len(first.runs) == 4
    assert {r["config"]["norm"] for r in first.records} == {"none", "bn"}
    assert all(r["config"]["dataset"].startswith("memory:") for r in first.records)
    assert first.report == tmp_path / "report.html" and first.report.is_file()
    again = compare(**call, progress=False)
    assert len(_lines(tmp_path)) == 4  # nothing trained twice
    assert [r["run_id"] for r in again.records] == [r["run_id"] for r in first.records]


@pytest.mark.parametrize("factory", ["lambda", "module function"])
def test_worker_processes_train_a_callable_as_this_process_does(tmp_path, tensors, factory):
    model = small_net
    if factory == "lambda":  # travels by value, as a notebook's function does
        model = lambda norm, num_classes, input_shape: small_net(norm, num_classes, input_shape)  # noqa: E731
    call = dict(norms=["bn", "ln"], seeds=1, model=model, data=tensors, threads=1, **SMALL)
    pooled = compare(**call, out=tmp_path, jobs=2, report=False, progress=False)
    assert pooled.complete and not pooled.failed and pooled.files == ()
    again = compare(**call, out=tmp_path, jobs=2, report=False, progress=False)
    assert len(_lines(tmp_path)) == 2 and len(again.records) == 2  # resumed: nothing retrained
    alone = compare(**call, out=tmp_path / "alone", report=False, progress=False)
    by_id = {r["run_id"]: r["final"] for r in alone.records}  # one thread each: same sums
    assert {r["run_id"]: r["final"] for r in pooled.records} == by_id


def test_a_model_that_cannot_travel_to_worker_processes_is_refused_before_any_work(
    tmp_path, tensors
):
    import threading

    lock = threading.Lock()

    def holds_a_lock(norm, num_classes, input_shape):  # a closure over a lock
        with lock:
            return small_net(norm, num_classes, input_shape)

    with pytest.raises(ValueError, match=r"cannot be pickled.*lock.*instead of holding it"):
        compare(norms=["bn"], seeds=1, model=holds_a_lock, data=tensors, out=tmp_path, jobs=2,
                progress=False, **SMALL)  # fmt: skip
    assert not (tmp_path / "results.jsonl").exists()
    alone = compare(norms=["bn"], seeds=1, model=holds_a_lock, data=tensors, out=tmp_path,
                    report=False, progress=False, **SMALL)  # fmt: skip
    assert alone.complete  # by default it trains in this process


def test_other_tensors_are_other_runs(tmp_path, tensors):
    train_x, train_y, val_x, val_y = tensors
    first = compare(norms=["none"], seeds=1, model=small_net, data=tensors, out=tmp_path,
                    report=False, progress=False, **SMALL)  # fmt: skip
    shifted = (train_x + 0.5, train_y, val_x + 0.5, val_y)
    second = compare(norms=["none"], seeds=1, model=small_net, data=shifted, out=tmp_path,
                     report=False, progress=False, **SMALL)  # fmt: skip
    assert first.records[0]["run_id"] != second.records[0]["run_id"]
    assert len(_lines(tmp_path)) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seeds": 0}, "`seeds` must be at least 1"),
        ({"epochs": 0}, "`epochs` must be a whole number"),
        ({"lr": float("nan")}, "`lr` must be a finite number"),
        ({"sync_bn": True}, "`sync_bn` synchronizes"),
        ({"jobs": 2, "executor": "ray"}, "`jobs` sets this machine's processes"),
        ({"data_dir": "/tmp"}, "`data_dir` was given, but the digits data set is built in"),
    ],
)
def test_errors_name_the_python_argument(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        compare(out=tmp_path, progress=False, **{"norms": ["bn"], **options})
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, vx, vy: (x[:, 0], y, vx, vy), r"\(N, C, H, W\).*unsqueeze\(1\)"),
        (lambda x, y, vx, vy: (x, y.float(), vx, vy), "integer class labels"),
        (lambda x, y, vx, vy: (x, y[:-1], vx, vy), "one label per image"),
        (lambda x, y, vx, vy: (x, y, vx), "must be four"),
    ],
)
def test_bad_tensors_are_refused_naming_the_problem(tmp_path, tensors, change, message):
    with pytest.raises(ValueError, match=message):
        compare(norms=["bn"], data=change(*tensors), out=tmp_path, progress=False)


def test_progress_shows_each_run_and_can_be_turned_off(tmp_path, tensors, capsys):
    call = dict(norms=["none"], seeds=1, model=small_net, data=tensors, report=False, **SMALL)
    compare(**call, out=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().out == ""
    compare(**call, out=tmp_path / "shown")
    assert "[1/1] none b=32 seed=0: val acc" in capsys.readouterr().out


def test_two_different_lambdas_are_not_taken_for_one_model(tmp_path, tensors):
    wide = lambda norm, num_classes, input_shape: nn.Sequential(  # noqa: E731
        nn.Flatten(), nn.Linear(64, 32), norm(32), nn.ReLU(), nn.Linear(32, num_classes)
    )
    narrow = lambda norm, num_classes, input_shape: small_net(norm, num_classes, input_shape)  # noqa: E731
    compare(norms=["none"], seeds=1, model=wide, data=tensors, out=tmp_path, report=False,
            progress=False, **SMALL)  # fmt: skip
    with pytest.raises(ValueError, match=r"named 'lambda' is already registered.*another name"):
        compare(norms=["none"], seeds=1, model=narrow, data=tensors, out=tmp_path,
                progress=False, **SMALL)  # fmt: skip
    assert len(_lines(tmp_path)) == 1


def test_a_dataset_object_keeps_its_name(tmp_path):
    digits = load_dataset("digits")
    result = compare(norms=["none"], seeds=1, data=digits, out=tmp_path, report=False,
                     progress=False, **SMALL)  # fmt: skip
    assert result.records[0]["config"]["dataset"] == "digits"


SCRIPT = """
from torch import nn
from normlab.data import load_dataset
from normlab.lab import compare

digits = load_dataset("digits")
net = lambda norm, num_classes, input_shape: nn.Sequential(
    nn.Flatten(), nn.Linear(64, 16), norm(16), nn.ReLU(), nn.Linear(16, num_classes))
result = compare(norms=["bn", "ln"], seeds=1, epochs=1, model=net, jobs=2, report=False,
                 data=(digits.train_x[:200], digits.train_y[:200], digits.val_x, digits.val_y),
                 out=OUT, progress=False)
print("records", len(result.records), "failed", len(result.failed))
"""


def test_a_script_without_a_main_guard_trains_a_lambda_in_worker_processes(tmp_path):
    """multiprocessing's spawn runs the parent's main script in each child; the lab's workers
    must not, or a notebook-style script (no `if __name__ == "__main__":`) starts its sweep
    again in every worker and every run fails as a dead worker."""
    import subprocess
    import sys

    script = tmp_path / "notebook.py"
    script.write_text(f"OUT = {str(tmp_path / 'out')!r}\n" + SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "records 2 failed 0" in done.stdout
    assert len(_lines(tmp_path / "out")) == 2
