"""`normlab compare` and `normlab report` from the command line: outputs, resuming, killing,
and errors that say what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_fixtures import cifar_arrays, mnist_arrays, write_cifar_bin, write_mnist_idx
from holding_model import holders, release, write_holding_model
from process_tree import alive_in_session

SCRIPT = Path(sys.executable).with_name("normlab")
SMALL = ["--epochs", "1", "--hidden", "16", "--jobs", "1"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_compare_writes_results_plots_and_report(tmp_path, run_cli):
    out = tmp_path / "sweep"
    argv = ["compare", "--norms", "none,bn", "--batch-sizes", "32,128", "--seeds", "2"]
    status, stdout, stderr = run_cli([*argv, *SMALL, "--out", str(out)])
    assert status == 0, stderr
    records = [json.loads(line) for line in _lines(out / "results.jsonl")]
    assert len(records) == 8
    assert {(r["config"]["norm"], r["config"]["batch_size"]) for r in records} == {
        ("none", 32),
        ("none", 128),
        ("bn", 32),
        ("bn", 128),
    }
    for name in ("curves.png", "batch_size.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
        assert f"wrote {out / name}" in stdout.replace("\n", "")
    assert "[8/8]" in stdout
    assert "8 runs: digits" in stdout


@pytest.mark.parametrize("model", ["cnn", "rnn"])
def test_the_lab_trains_on_cifar10_and_mnist_files(tmp_path, run_cli, model):
    """The tutorials' CNN on 32x32x3 CIFAR-10 and the row-by-row RNN on 28x28 MNIST, read from
    small files in the published formats."""
    cifar = write_cifar_bin(tmp_path, cifar_arrays(seed=0, n=8))
    mnist = tmp_path / "mnist"
    write_mnist_idx(mnist, mnist_arrays(seed=0, n_train=40, n_val=10), gz=True)
    for dataset, data_dir in (("cifar10", cifar), ("mnist", mnist)):
        out = tmp_path / f"{dataset}-{model}"
        argv = ["compare", "--dataset", dataset, "--data-dir", str(data_dir), "--model", model]
        argv += [
            "--norms",
            "bn,ln",
            "--batch-sizes",
            "8",
            "--seeds",
            "1",
            *SMALL,
            "--out",
            str(out),
        ]
        status, _, stderr = run_cli(argv)
        assert status == 0, stderr
        records = [json.loads(line) for line in _lines(out / "results.jsonl")]
        assert [r["config"]["norm"] for r in records] == ["bn", "ln"]
        assert all(r["status"] == "finished" for r in records)
        assert records[0]["data"]["input_shape"] == (
            [3, 32, 32] if dataset == "cifar10" else [1, 28, 28]
        )


def test_the_same_command_again_resumes_and_changes_nothing(tmp_path, run_cli):
    out = tmp_path / "sweep"
    argv = ["compare", "--norms", "ln", "--seeds", "2", *SMALL, "--out", str(out)]
    assert run_cli(argv)[0] == 0
    before = (out / "results.jsonl").read_bytes()
    status, stdout, _ = run_cli(argv)
    assert status == 0
    assert "2 runs already finished, skipped" in stdout
    assert (out / "results.jsonl").read_bytes() == before
    status, stdout, _ = run_cli([*argv[:4], "3", *argv[5:]])  # one more seed
    assert status == 0
    assert "2 runs already finished" in stdout
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert len(_lines(out / "results.jsonl")) == 3


def test_report_rerenders_everything_from_results_alone(tmp_path, run_cli):
    out = tmp_path / "sweep"
    argv = ["compare", "--norms", "none,ln", "--seeds", "2", *SMALL, "--out", str(out)]
    assert run_cli(argv)[0] == 0
    for name in ("curves.png", "report.html"):
        (out / name).unlink()
    status, stdout, stderr = run_cli(["report", str(out)])
    assert status == 0, stderr
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "report.html").stat().st_size > 0
    assert "ln" in stdout and "none" in stdout


def test_report_of_a_directory_without_results_says_so(tmp_path, run_cli):
    status, _, stderr = run_cli(["report", str(tmp_path)])
    assert status == 2
    assert "no finished runs" in stderr and "results.jsonl" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "none,bnn"], "Did you mean 'bn'"),
        (["--norms", "bn", "--batch-sizes", "1"], "batch size 1 cannot train"),
        (["--norms", "in"], "(N, C, L)"),
        (["--dataset", "mnsit"], "'mnist'"),
        (["--optimizer", "adamm"], "invalid choice"),
        (["--batch-sizes", "0,32"], "--batch-sizes"),
        (["--seeds", "0"], "--seeds"),
        (["--data-dir", "/tmp"], "the digits data set is built in"),
    ],
)
def test_bad_options_fail_before_training_with_a_clear_message(tmp_path, run_cli, argv, message):
    status, stdout, stderr = run_cli(["compare", *argv, *SMALL, "--out", str(tmp_path)])
    assert status == 2
    assert message in stderr
    assert "Traceback" not in stdout + stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_missing_mnist_files_say_which_files_to_put_where(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run_cli(["compare", "--dataset", "mnist", *SMALL])
    assert status == 2
    assert "train-images-idx3-ubyte" in stderr and "--data-dir" in stderr


def _start(out: Path, *extra: str) -> subprocess.Popen:
    """12 runs (none, bn, ln x 4 seeds) of the holding model, run from ``out``'s parent: the
    4 ln runs wait there until ``release(out.parent)``, so the sweep has work left until
    then, however fast the others go."""
    spec = write_holding_model(out.parent)
    argv = [str(SCRIPT), "compare", "--model", spec, "--norms", "none,bn,ln"]
    argv += ["--batch-sizes", "16", "--seeds", "4", "--epochs", "3", "--out", str(out), *extra]
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    return subprocess.Popen(
        argv,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=out.parent,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """Give the sweep SIGINT's default action, as a process started from a terminal has: a
    suite started from a non-interactive shell's background job inherits SIGINT ignored, and
    so would the sweep, which would then sit through the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until(condition, process: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; the process must not end meanwhile. The deadline
    only turns a hang into a failure."""
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen) -> None:
    _wait_until(
        lambda: path.exists() and len(_complete_lines(path)) >= count,
        process,
        f"{path} reaching {count} lines",
    )


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_killed_sweep_keeps_every_finished_run_and_the_rerun_completes_it(tmp_path, jobs):
    """SIGKILL to the whole process group mid-sweep; a partial record line is added as if the
    kill had landed mid-write. The rerun keeps every finished line, redoes the rest."""
    out = tmp_path / "sweep"
    results = out / "results.jsonl"
    process = _start(out, "--jobs", jobs)
    _wait_for_lines(results, 2, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(120)
    finished = results.read_text()
    finished = finished[: finished.rfind("\n") + 1]
    with open(results, "a") as file:
        file.write('{"schema": 1, "run_id": "interrupt')
    release(tmp_path)
    rerun = _start(out, "--jobs", jobs)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr.decode()
    assert b"removed an unfinished record" in stdout
    text = results.read_text()
    assert text.startswith(finished)
    ids = [json.loads(line)["run_id"] for line in text.splitlines()]
    assert len(ids) == len(set(ids)) == 12


def test_ctrl_c_stops_the_sweep_and_says_how_to_resume(tmp_path):
    out = tmp_path / "sweep"
    process = _start(out, "--jobs", "2")
    _wait_for_lines(out / "results.jsonl", 1, process)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr.decode()
    assert b"interrupted" in stdout and b"--out" in stdout
    assert b"Traceback" not in stdout + stderr
    kept = [json.loads(line) for line in _lines(out / "results.jsonl")]
    assert 1 <= len(kept) <= 8  # the held runs cannot have finished


def test_installed_script_documents_every_compare_option():
    result = subprocess.run(
        [str(SCRIPT), "compare", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for option in (
        "--dataset",
        "--data-dir",
        "--model",
        "--norms",
        "--batch-sizes",
        "--seeds",
        "--epochs",
        "--lr",
        "--optimizer",
        "--out",
        "--jobs",
        "--placement",
        "--depth",
        "--dropout",
        "--weight-decay",
    ):
        assert option in result.stdout


def _worker_pids(parent: int) -> list[int]:
    """The pool's worker processes among ``parent``'s children (not multiprocessing's
    resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    workers = []
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            workers.append(int(pid))
    return workers


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_worker_that_dies_fails_its_run_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    process = _start(out, "--jobs", "2")
    _wait_until(lambda: holders(tmp_path), process, "a worker holding a run")
    (worker,) = holders(tmp_path)[:1]
    assert worker in _worker_pids(process.pid)
    os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    release(tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr.decode()
    assert stdout.count(b"worker process training it died") == 2  # as it ends, and in the list
    assert b"1 run(s) failed; run the same command to retry them" in stdout
    assert b"Traceback" not in stdout + stderr
    ids = [json.loads(line)["run_id"] for line in _lines(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 11
    rerun = _start(out, "--jobs", "2")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr.decode()
    assert b"11 runs already finished" in stdout
    ids = [json.loads(line)["run_id"] for line in _lines(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 12


def test_saved_models_reload_to_the_recorded_accuracy(tmp_path, run_cli):
    """--save-models writes each run's state_dict; rebuilt from the record's config and loaded
    with weights_only=True, the model scores the recorded validation accuracy."""
    import torch

    from normlab.data import load_dataset
    from normlab.experiment import RunConfig
    from normlab.experiment.train import build_run_model, evaluate

    out = tmp_path / "sweep"
    argv = ["compare", "--norms", "none,bn", "--seeds", "1", "--epochs", "1", "--hidden", "16"]
    status, _, stderr = run_cli([*argv, "--jobs", "2", "--save-models", "--out", str(out)])
    assert status == 0, stderr
    data = load_dataset("digits")
    records = [json.loads(line) for line in _lines(out / "results.jsonl")]
    assert len(records) == 2
    for record in records:
        assert record["model_file"] == f"models/{record['run_id']}.pt"
        model = build_run_model(RunConfig.from_dict(record["config"]), data)
        model.load_state_dict(torch.load(out / record["model_file"], weights_only=True))
        _, accuracy = evaluate(model, data.val_x, data.val_y)
        assert accuracy == record["final"]["val_acc"]
    assert not list((out / "models").glob("*.partial"))


# --- interruptions: SIGTERM as Ctrl-C, workers that die with the sweep, Ctrl-C at any point ----


def _assert_none_left(session: int) -> None:
    deadline = time.monotonic() + 30
    while alive_in_session(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive_in_session(session) == [], "processes of the sweep outlived it"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_sweep_and_release_its_output(tmp_path):
    """SIGKILL to the sweep's process alone: its workers (and multiprocessing's resource
    tracker) must not keep running and holding its stdout, or `normlab compare | tee` hangs."""
    out = tmp_path / "sweep"
    process = _start(out, "--jobs", "2")
    _wait_for_lines(out / "results.jsonl", 1, process)
    assert _worker_pids(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=300)  # end of file on stdout and stderr: nobody holds them
    _assert_none_left(process.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_sweep_as_ctrl_c_does(tmp_path):
    out = tmp_path / "sweep"
    process = _start(out, "--jobs", "2")
    _wait_for_lines(out / "results.jsonl", 1, process)
    os.kill(process.pid, signal.SIGTERM)  # to the sweep alone, as `kill` and `timeout` send it
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr.decode()
    assert b"interrupted" in stdout and b"--out" in stdout
    assert b"Traceback" not in stdout + stderr
    _assert_none_left(process.pid)
    kept = [json.loads(line) for line in _lines(out / "results.jsonl")]
    assert 1 <= len(kept) <= 8  # the held runs cannot have finished


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_loading_the_data_exits_130_with_the_resume_line(
    tmp_path, run_cli, monkeypatch
):
    import normlab.lab.comparison

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", _interrupt)
    out = tmp_path / "sweep"
    status, stdout, _ = run_cli(
        ["compare", "--norms", "bn", "--seeds", "2", *SMALL, "--out", str(out)]
    )
    assert status == 130
    assert f"interrupted: 0 of 2 runs are saved in {out / 'results.jsonl'}" in stdout
    assert f"--out {out} to resume" in stdout


def _interrupt_inside_a_class_body(*_args, **_kwargs):
    """A Ctrl-C while a module defines a class, as in matplotlib's import: Python 3.11 hands
    it on wrapped in a RuntimeError ("Error calling __set_name__")."""

    class Descriptor:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    class Owner:
        attribute = Descriptor()


def test_ctrl_c_that_python_wraps_during_an_import_exits_130_with_the_resume_line(
    tmp_path, run_cli, monkeypatch
):
    import normlab.lab.comparison

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", _interrupt_inside_a_class_body)
    out = tmp_path / "sweep"
    status, stdout, _ = run_cli(
        ["compare", "--norms", "bn", "--seeds", "2", *SMALL, "--out", str(out)]
    )
    assert status == 130
    assert f"--out {out} to resume" in stdout


def test_a_runtime_error_that_is_no_interrupt_is_not_taken_for_one(tmp_path, run_cli, monkeypatch):
    import normlab.lab.comparison

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(normlab.lab.comparison, "load_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(["compare", "--norms", "bn", *SMALL, "--out", str(tmp_path / "sweep")])


def test_ctrl_c_while_rendering_the_report_exits_130_with_the_resume_line(
    tmp_path, run_cli, monkeypatch
):
    import normlab.report

    monkeypatch.setattr(normlab.report, "render_report", _interrupt)
    out = tmp_path / "sweep"
    argv = ["compare", "--norms", "none", "--seeds", "1", *SMALL, "--out", str(out)]
    status, stdout, _ = run_cli(argv)
    assert status == 130
    assert f"interrupted: 1 of 1 runs are saved in {out / 'results.jsonl'}" in stdout
    monkeypatch.undo()
    status, stdout, _ = run_cli(argv)  # the same command renders what was saved
    assert status == 0 and "1 runs already finished" in stdout and (out / "report.html").exists()


# --- fault injection: signals at each stage of a sweep, then a rerun ----------------------

# 6 runs of the holding model: the 4 none and bn runs finish, the 2 ln runs wait until the
# test releases them, so every signal lands on a sweep with work left.
FAULT_SWEEP = ["--norms", "none,bn,ln", "--batch-sizes", "64", "--seeds", "2", "--epochs", "2"]
# When each signal is sent: once the sweep has printed its first line (normlab is running:
# a Ctrl-C while Python imports torch is Python's to report), then once that many records
# are complete in all (one of the none and bn runs, then all four while the ln runs wait).
STAGES = (0, 1, 4)


def _start_fault_sweep(out: Path, jobs: str) -> subprocess.Popen:
    spec = write_holding_model(out.parent)
    argv = [str(SCRIPT), "compare", "--model", spec, *FAULT_SWEEP]
    argv += ["--jobs", jobs, "--out", str(out)]
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    return subprocess.Popen(
        argv,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=out.parent,
    )


def _complete_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def _hit_at_each_stage(tmp_path: Path, jobs: str, signals: list[int]) -> None:
    """Start the sweep and send the i-th signal at STAGES[i] (SIGINT to the process group,
    as Ctrl-C does; SIGTERM and SIGKILL to the sweep's process alone), check that nothing
    outlives it and no finished record is lost or repeated; then release the held runs and
    rerun it to completion."""
    out = tmp_path / "sweep"
    results = out / "results.jsonl"
    kept: list[str] = []
    for signum, stage in zip(signals, STAGES, strict=False):
        process = _start_fault_sweep(out, jobs)
        process.stdout.readline()  # the sweep's first line: normlab is running
        _wait_for_lines(results, stage, process)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=120)
        assert b"Traceback" not in stderr, stderr.decode()
        assert process.returncode in (130, -signum), (signum, stderr.decode())
        _assert_none_left(process.pid)
        lines = _complete_lines(results)
        assert lines[: len(kept)] == kept, f"a finished record was lost after signal {signum}"
        ids = [json.loads(line)["run_id"] for line in lines]
        assert len(ids) == len(set(ids)), f"a record was written twice after signal {signum}"
        assert len(ids) <= 4, "a held run finished"
        kept = lines
    release(tmp_path)
    rerun = _start_fault_sweep(out, jobs)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr.decode()
    lines = _complete_lines(results)
    assert lines[: len(kept)] == kept
    ids = [json.loads(line)["run_id"] for line in lines]
    assert len(ids) == len(set(ids)) == 6
    _assert_none_left(rerun.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_signals_at_each_stage_lose_and_repeat_nothing(tmp_path):
    _hit_at_each_stage(tmp_path, "2", [signal.SIGKILL, signal.SIGTERM])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_each_signal_at_each_stage_loses_and_repeats_nothing(tmp_path, jobs, signum):
    _hit_at_each_stage(tmp_path, jobs, [signum] * len(STAGES))
