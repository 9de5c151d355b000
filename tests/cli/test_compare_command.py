"""`normlab compare` and `normlab report` from the command line: each flag reaches
normlab.lab.compare (whose behaviour tests/lab/ specifies), the results and the library's
errors are printed with the flags' names and the right exit status; and the installed
command as a process: killed, interrupted, its workers dying, then run again."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from holding_model import holders, release, write_holding_model
from normlab.experiment import RunConfig
from normlab.lab import CompareResult, compare
from process_tree import alive_in_session
from report_fixtures import make_record, write_results

SCRIPT = Path(sys.executable).with_name("normlab")
SMALL = ["--epochs", "1", "--hidden", "16", "--jobs", "1"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- each flag reaches compare; what compare returns is printed -------------------------


class FakeCompare:
    """Stands in for normlab.lab.compare in the command: keeps the keywords of each call and
    returns ``result`` (made from the call's ``out``) or raises ``error``."""

    def __init__(self, result=None, error: BaseException | None = None) -> None:
        self.calls: list[dict] = []
        self.result, self.error = result, error

    def __call__(self, **options):
        self.calls.append(options)
        if self.error is not None:
            raise self.error
        out = Path(options["out"] or "runs/now")
        return self.result(out) if self.result else CompareResult(out, [], [])


@pytest.fixture
def fake_compare(monkeypatch):
    """Install a FakeCompare in the command; the test may set its ``result`` or ``error``."""
    fake = FakeCompare()
    monkeypatch.setattr(importlib.import_module("normlab.cli.compare"), "compare", fake)
    return fake


FLAG_FAMILIES = {
    "data": (
        ["--dataset", "mnist", "--data-dir", "/data/mnist", "--train-subset", "100"],
        {"data": "mnist", "data_dir": Path("/data/mnist"), "train_subset": 100},
    ),
    "model": (
        [
            *("--model", "rnn", "--hidden", "8,4", "--hidden", "16", "--depth", "1,2"),
            *("--dropout", "0,0.5", "--cell", "gru,lstm", "--placement", "before,after"),
        ],
        {
            "model": "rnn",
            "hidden": [[8, 4], [16]],
            "depth": [1, 2],
            "dropout": [0.0, 0.5],
            "cell": ["gru", "lstm"],
            "placement": ["before", "after"],
        },
    ),
    "norms": (["--norms", "bn,gn(groups=2,eps=1e-3)"], {"norms": ["bn", "gn(groups=2,eps=1e-3)"]}),
    "sweep": (
        [
            *("--batch-sizes", "4,8", "--seeds", "2", "--epochs", "3", "--lr", "0.1,0.01"),
            *("--optimizer", "sgd,adam", "--weight-decay", "0,0.1", "--steps", "7"),
        ],
        {
            "batch_sizes": [4, 8],
            "seeds": 2,
            "epochs": 3,
            "lr": [0.1, 0.01],
            "optimizer": ["sgd", "adam"],
            "weight_decay": [0.0, 0.1],
            "steps": 7,
        },
    ),
    "lr scaling": (
        ["--lr-scaling", "linear", "--lr-reference-batch", "64"],
        {"lr_scaling": "linear", "lr_reference_batch": 64},
    ),
    "records": (["--diagnostics", "--save-models"], {"diagnostics": True, "save_models": True}),
    "output": (["--out", "/runs/mine"], {"out": Path("/runs/mine")}),
    "processes": (["--jobs", "3", "--threads", "2"], {"jobs": 3, "threads": 2}),
    "data-parallel": (["--nproc", "2", "--sync-bn"], {"nproc": 2, "sync_bn": True}),
    "ray": (["--executor", "ray", "--address", "auto"], {"executor": "ray", "address": "auto"}),
    "stacking": (["--stack-seeds"], {"stack_seeds": True}),
}


@pytest.mark.parametrize("family", FLAG_FAMILIES)
def test_each_flag_reaches_compare_as_its_argument(run_cli, fake_compare, family):
    argv, expected = FLAG_FAMILIES[family]
    status, _, stderr = run_cli(["compare", *argv])
    assert status == 0, stderr
    (call,) = fake_compare.calls
    assert {name: call[name] for name in expected} == expected


def _as_list(value):
    return list(value) if isinstance(value, tuple | list) else [value]


def test_without_flags_compare_gets_its_own_defaults(run_cli, fake_compare):
    """The command's defaults are the library's: a flag left out changes nothing."""
    status, _, stderr = run_cli(["compare"])
    assert status == 0, stderr
    (call,) = fake_compare.calls
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(compare).parameters.items()
        if name not in ("console", "report", "progress")
    }
    assert set(call) == {*defaults, "console"}
    for name, default in defaults.items():
        given = call[name]
        same = given == default if default is None or given is None else None
        assert same is not False, name
        if same is None:
            assert _as_list(given) == _as_list(default), name


def test_what_compare_prints_reaches_the_terminal_unwrapped(run_cli, fake_compare):
    line = "a line that compare prints, " * 8

    def speaks(out):
        fake_compare.calls[-1]["console"].print(line)
        return CompareResult(out, [], [])

    fake_compare.result = speaks
    status, stdout, _ = run_cli(["compare"])
    assert status == 0 and line in stdout


def test_compare_prints_the_summary_and_each_report_file(tmp_path, run_cli, fake_compare):
    out = write_results(tmp_path / "sweep", [make_record(n, 32, 0, 0.9) for n in ("none", "bn")])
    names = ("curves.png", "batch_size.png", "report.html")
    fake_compare.result = lambda out: CompareResult(
        out, [], [], files=tuple(out / name for name in names)
    )
    status, stdout, stderr = run_cli(["compare", "--out", str(out)])
    assert status == 0, stderr
    for name in names:
        assert f"wrote {out / name}" in stdout.replace("\n", "")
    assert "none" in stdout and "bn" in stdout  # the summary table


def test_failed_runs_are_listed_and_the_status_is_1(tmp_path, run_cli, fake_compare):
    failed = [(RunConfig(norm="bn", seed=1), "the worker process training it died")]
    fake_compare.result = lambda out: CompareResult(out, [], [], failed=failed)
    status, stdout, _ = run_cli(["compare", "--out", str(tmp_path)])
    assert status == 1
    assert "failed: bn b=32 seed=1: the worker process training it died" in stdout
    assert "1 run(s) failed; run the same command to retry them." in stdout


def test_an_interrupted_compare_exits_130_with_the_resume_line(tmp_path, run_cli, fake_compare):
    out = tmp_path / "sweep"
    fake_compare.result = lambda out: CompareResult(out, [], [], interrupted=True)
    status, stdout, _ = run_cli(["compare", "--out", str(out)])
    assert status == 130
    assert f"Run the same command with --out {out} to resume." in stdout


def test_ctrl_c_that_escapes_compare_exits_130_without_a_traceback(run_cli, fake_compare):
    fake_compare.error = KeyboardInterrupt()
    status, stdout, stderr = run_cli(["compare"])
    assert status == 130 and "normlab compare: interrupted" in stderr
    assert "Traceback" not in stdout + stderr


def test_a_runtime_error_that_is_no_interrupt_shows_its_traceback(run_cli, fake_compare):
    fake_compare.error = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(["compare"])


# --- the library's refusals, in the flags' words -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "none,bnn"], "Did you mean 'bn'"),
        (["--optimizer", "adamm"], "invalid choice"),
        (["--batch-sizes", "0,32"], "--batch-sizes"),
        (["--seeds", "0"], "--seeds"),
        (["--data-dir", "/tmp"], "--data-dir was given, but the digits data set is built in"),
        (["--lr=inf"], "--lr must be a finite number above 0"),
        (["--address", "auto"], "--address names a Ray cluster; add --executor ray."),
        (["--nproc", "2", "--jobs", "2"], "drop --jobs"),
        (["--executor", "ray", "--stack-seeds"], "--stack-seeds trains the seeds"),
        (["--dataset", "mnist"], "train-images-idx3-ubyte"),
    ],
)
def test_bad_options_fail_before_training_naming_the_flag(
    tmp_path, run_cli, monkeypatch, argv, message
):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    small = ["--epochs", "1", "--hidden", "16"]
    status, stdout, stderr = run_cli(["compare", *argv, *small, "--out", str(tmp_path)])
    assert status == 2
    assert message in stderr
    assert "Traceback" not in stdout + stderr
    assert not (tmp_path / "results.jsonl").exists()


# --- normlab report ---------------------------------------------------------------------------


def test_report_rerenders_everything_from_results_alone(tmp_path, run_cli):
    out = tmp_path / "sweep"
    compare(norms=["none", "ln"], seeds=2, epochs=1, hidden=[16], jobs=1, out=out,
            progress=False)  # fmt: skip
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


# --- the installed command as a process ---------------------------------------------------


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
